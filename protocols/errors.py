"""Typed errors raised by secure-aggregation protocols.

Every rejection of a peer's bytes is a :class:`PayloadError` subclass so that the
server can drop exactly the offending client and keep the round going.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error raised by :mod:`protocols`."""


class ProtocolConfigError(ProtocolError, ValueError):
    """A protocol was constructed with parameters that are invalid or insecure."""


class PayloadError(ProtocolError, ValueError):
    """A payload sent by a peer is malformed, oversized, forged or otherwise unusable."""


class EnvelopeError(PayloadError):
    """The versioned envelope around a payload is malformed (magic, version, lengths)."""


class PayloadTooLargeError(PayloadError):
    """A payload exceeds the size limit; it is refused before any parsing."""


class WrongRoundError(PayloadError):
    """A payload is bound to another round, stage or client than the one expected (replay)."""


class StageError(ProtocolError):
    """An interactive protocol was driven through an illegal stage transition."""


class RoundAbortedError(ProtocolError):
    """Too few clients survived for the round to release anything (e.g. fewer than t in SecAgg)."""
