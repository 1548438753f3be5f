"""Typed errors specific to CKKS aggregation (all payload rejections are :class:`PayloadError`)."""

from __future__ import annotations

from protocols.errors import PayloadError, ProtocolError


class CiphertextFormatError(PayloadError):
    """A CKKS payload has the wrong structure: wrong length, ciphertext count or PRNG descriptor."""


class CoefficientRangeError(PayloadError):
    """A ciphertext coefficient is not reduced modulo q, so the bytes are not a valid ciphertext."""


class KeyRoleError(ProtocolError):
    """An operation was asked of a role that does not hold the key material it needs."""


class UpdateRangeError(ProtocolError, ValueError):
    """A client update is too large for the parameters: the encrypted sum could wrap around modulo q."""
