"""Secure aggregation over flat float vectors: plaintext, CKKS (TenSEAL), SecAgg+ masking.

Knows nothing of RL or torch; :mod:`securefrl` builds on it.
"""

from protocols.base import Aggregate, AggregationProtocol, OpenedAggregate
from protocols.errors import PayloadError, ProtocolConfigError, ProtocolError
from protocols.plaintext import PlaintextProtocol

__all__ = [
    "Aggregate",
    "AggregationProtocol",
    "OpenedAggregate",
    "PayloadError",
    "PlaintextProtocol",
    "ProtocolConfigError",
    "ProtocolError",
]
