"""The aggregation protocols by name (:data:`PROTOCOLS`) and how the federation builds one.

Entries are ``"module:Class"`` strings imported on first use (CKKS pulls in TenSEAL). A protocol
declares its capabilities as class attributes of :class:`~protocols.base.AggregationProtocol`
(``reveals_individual_updates``, ``server_can_open``); compatibility rules read those, never names
(:mod:`securefrl.compat`). Third parties register through the ``securefrl.protocols`` entry-point group.
"""

from __future__ import annotations

import inspect
from typing import Any

from protocols.base import AggregationProtocol
from protocols.errors import ProtocolConfigError
from securefrl.configtools import plugin_kwargs
from securefrl.errors import ConfigError
from securefrl.registry import Registry

PROTOCOLS: Registry[type[AggregationProtocol]] = Registry("protocol", "protocol.name", group="securefrl.protocols")
"""Protocol classes by name; each is built as ``cls(dim, [n_clients=...,] **protocol.params)``."""
# ``flower_role``: which message flow of the Flower apps runs the protocol (securefrl.flower.common.flower_role):
# "one-shot" (protect / combine / open, any such protocol), "secagg+" (the SecAgg+ stages over
# protocols.secagg), "threshold-ckks" (enrolment and partial decryptions over protocols.ckks). None: in-process only.
PROTOCOLS.register("plaintext", "protocols.plaintext:PlaintextProtocol", flower_role="one-shot")
PROTOCOLS.register("ckks", "protocols.ckks:CKKSProtocol", flower_role="threshold-ckks")
PROTOCOLS.register("secagg", "protocols.secagg:SecAggProtocol", flower_role="secagg+")


def make_protocol(name: str, dim: int, n_clients: int, params: dict[str, Any] | None = None) -> AggregationProtocol:
    """The protocol ``name`` for flat vectors of length ``dim`` among ``n_clients`` clients.

    ``n_clients`` is passed to protocols whose constructor takes it (SecAgg's and CKKS's key set-up).
    ``params`` (``protocol.params``) are checked against the protocol's own constructor: an unknown or
    mistyped parameter raises :class:`ConfigError` naming it and the allowed ones. A parameter that is
    a parameter dataclass (CKKS's ``params: CKKSParams``) may be given flat by its fields
    (``protocol.params.poly_modulus_degree = 4096``) or nested (``protocol.params.params = {...}``).
    """
    cls: Any = PROTOCOLS.get(name)  # constructors differ beyond ``dim`` (SecAgg and CKKS take n_clients)
    provided = ("dim", "n_clients")
    try:
        kwargs = plugin_kwargs(cls, dict(params or {}), "protocol.params", provided)
        if "n_clients" in inspect.signature(cls.__init__).parameters:
            return cls(dim, n_clients=n_clients, **kwargs)
        return cls(dim, **kwargs)
    except ProtocolConfigError as err:
        raise ConfigError("protocol.params", str(err)) from None


def _protocol_class(name: str) -> Any:
    """The protocol class registered as ``name`` (imported on demand; kept for ``securefrl config --protocol``)."""
    return PROTOCOLS.get(name)
