"""CKKS secure aggregation (docstring rewritten below)."""

from protocols.ckks.errors import (
    CiphertextFormatError,
    CoefficientRangeError,
    KeyRoleError,
    UpdateRangeError,
)
from protocols.ckks.params import MAX_MODULUS_BITS_128, CKKSParams
from protocols.ckks.protocol import CKKSProtocol
from protocols.ckks.roles import CKKSClient, CKKSServer, RefusedError

__all__ = [
    "MAX_MODULUS_BITS_128",
    "CKKSClient",
    "CKKSParams",
    "CKKSProtocol",
    "CKKSServer",
    "CiphertextFormatError",
    "CoefficientRangeError",
    "KeyRoleError",
    "RefusedError",
    "UpdateRangeError",
]
