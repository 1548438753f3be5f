"""Typed errors of :mod:`securefrl`; each message says what was wrong and what is allowed."""

from __future__ import annotations


class SecureFRLError(Exception):
    """Base class of the library's own errors."""


class ConfigError(SecureFRLError, ValueError):
    """A configuration value is unknown, of the wrong type, or out of range.

    ``field`` names the offending config field (dotted path), so tools can point at it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class CoordinateClipWarning(UserWarning):
    """A protocol with a per-coordinate range (SecAgg's fixed-point ``clip``) clipped coordinates of an update.

    The opened mean is then not the mean of the updates. Bound updates with ``federation.clip_norm`` (an L2
    bound no larger than the range bounds every coordinate) or widen the protocol's range.
    """


class UpdateRejectedError(SecureFRLError, ValueError):
    """A client update is unusable (NaN, Inf, wrong length) and must not be aggregated."""
