"""Small argument checks shared by the privacy modules; each raises :class:`ConfigError` naming the field."""

from __future__ import annotations

import math
import numbers

from securefrl.errors import ConfigError


def positive(field: str, value: float) -> float:
    """Return ``value`` as a float if it is finite and > 0, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ConfigError(field, f"must be a finite number > 0, got {value!r}")
    return float(value)


def non_negative(field: str, value: float) -> float:
    """Return ``value`` as a float if it is finite and >= 0, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ConfigError(field, f"must be a finite number >= 0, got {value!r}")
    return float(value)


def probability(field: str, value: float, *, allow_one: bool = True) -> float:
    """Return ``value`` if it lies in (0, 1] (or (0, 1) when ``allow_one`` is false), else raise."""
    v = positive(field, value)
    if v > 1 or (v == 1 and not allow_one):
        allowed = "(0, 1]" if allow_one else "(0, 1)"
        raise ConfigError(field, f"must lie in {allowed}, got {value!r}")
    return v


def positive_int(field: str, value: int) -> int:
    """Return ``value`` if it is an integer >= 1, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(field, f"must be an integer >= 1, got {value!r}")
    return int(value)
