"""Build the aggregation protocol named in the config (imports are lazy: CKKS pulls TenSEAL)."""

from __future__ import annotations

import inspect
from typing import Any

from protocols.base import AggregationProtocol
from protocols.errors import ProtocolConfigError
from securefrl.configtools import plugin_kwargs
from securefrl.errors import ConfigError


def _protocol_class(name: str) -> Any:
    """The protocol class registered as ``name`` (imported on demand)."""
    if name == "plaintext":
        from protocols.plaintext import PlaintextProtocol

        return PlaintextProtocol
    if name == "ckks":
        from protocols.ckks import CKKSProtocol

        return CKKSProtocol
    if name == "secagg":
        from protocols.secagg import SecAggProtocol

        return SecAggProtocol
    raise ConfigError("protocol.name", f"unknown protocol {name!r}; choose plaintext, ckks or secagg")


def make_protocol(name: str, dim: int, n_clients: int, params: dict[str, Any] | None = None) -> AggregationProtocol:
    """The protocol ``name`` for flat vectors of length ``dim`` among ``n_clients`` clients.

    ``params`` (``protocol.params``) are checked against the protocol's own constructor: an unknown or
    mistyped parameter raises :class:`ConfigError` naming it and the allowed ones. A parameter that is
    a parameter dataclass (CKKS's ``params: CKKSParams``) may be given flat by its fields
    (``protocol.params.poly_modulus_degree = 4096``) or nested (``protocol.params.params = {...}``).
    """
    cls = _protocol_class(name)
    provided = ("dim", "n_clients")
    try:
        kwargs = plugin_kwargs(cls, dict(params or {}), "protocol.params", provided)
        if "n_clients" in inspect.signature(cls.__init__).parameters:  # secagg, ckks (threshold keys)
            return cls(dim, n_clients=n_clients, **kwargs)  # type: ignore[no-any-return]
        return cls(dim, **kwargs)  # type: ignore[no-any-return]
    except ProtocolConfigError as err:
        raise ConfigError("protocol.params", str(err)) from None
