"""Build the aggregation protocol named in the config (imports are lazy: CKKS pulls TenSEAL)."""

from __future__ import annotations

from typing import Any

from protocols.base import AggregationProtocol
from protocols.errors import ProtocolConfigError
from securefrl.errors import ConfigError


def make_protocol(name: str, dim: int, n_clients: int, params: dict[str, Any] | None = None) -> AggregationProtocol:
    """The protocol ``name`` for flat vectors of length ``dim`` among ``n_clients`` clients."""
    params = dict(params or {})
    try:
        if name == "plaintext":
            from protocols.plaintext import PlaintextProtocol

            return PlaintextProtocol(dim, **params)
        if name == "ckks":
            from protocols.ckks import CKKSProtocol

            return CKKSProtocol(dim, n_clients=n_clients, **params)
        if name == "secagg":
            from protocols.secagg import SecAggProtocol

            return SecAggProtocol(dim, n_clients=n_clients, **params)
    except TypeError as err:  # unknown keyword in protocol.params
        raise ConfigError("protocol.params", f"{err}") from None
    except ProtocolConfigError as err:
        raise ConfigError("protocol.params", str(err)) from None
    raise ConfigError("protocol.name", f"unknown protocol {name!r}; choose plaintext, ckks or secagg")
