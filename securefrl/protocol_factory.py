"""Build the aggregation protocol named in the config (imports are lazy: CKKS pulls TenSEAL)."""

from __future__ import annotations

from typing import Any

from protocols.base import AggregationProtocol
from protocols.errors import ProtocolConfigError
from securefrl.errors import ConfigError


def make_protocol(name: str, dim: int, n_clients: int, params: dict[str, Any] | None = None,
                  max_weight: float = 1.0) -> AggregationProtocol:
    """The protocol ``name`` for flat vectors of length ``dim`` among ``n_clients`` clients.

    ``max_weight`` is the largest aggregation weight a client will use (SecAgg sizes its fixed-point
    range with it).
    """
    params = dict(params or {})
    try:
        if name == "plaintext":
            from protocols.plaintext import PlaintextProtocol

            return PlaintextProtocol(dim, **params)
        if name == "ckks":
            from protocols.ckks import CKKSProtocol

            return CKKSProtocol(dim, **params)
        if name == "secagg":
            from protocols.secagg import SecAggProtocol

            params.setdefault("max_weight", max_weight)
            return SecAggProtocol(dim, n_clients=n_clients, **params)
    except TypeError as err:  # unknown keyword in protocol.params
        raise ConfigError("protocol.params", f"{err}") from None
    except ProtocolConfigError as err:
        raise ConfigError("protocol.params", str(err)) from None
    raise ConfigError("protocol.name", f"unknown protocol {name!r}; choose plaintext, ckks or secagg")
