"""Attacks on the aggregation protocol itself: a curious or malicious server, colluding clients.

Each plug-in evaluates the central node against one adversary. It runs against two targets:

- ``weakened=True``: the configuration it is meant to break (reachable only through an explicit unsafe
  option of the protocol, never a default), where it must succeed;
- ``weakened=False``: the library's default, where it must fail, with the reason shown.

A plug-in is a class with ``name``, ``threat_model`` (plain words: who the adversary is, what it sees
and does, what is not covered) and ``run(weakened, seed) -> ProtocolAttackOutcome``. Register it in
:data:`PROTOCOL_ATTACKS` with :func:`register`; ``securefrl attack-matrix`` runs them in its protocol
section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from securefrl.registry import Registry


@dataclass
class ProtocolAttackOutcome:
    """What one run of a protocol attack achieved."""

    attack: str
    target: str
    """Which configuration was attacked, e.g. ``"ckks shared-key, exact release"``."""
    succeeded: bool
    metric: float
    """The attack's own figure of success (e.g. max error of a recovered update; smaller is better)."""
    metric_name: str
    reason: str
    """Why it succeeded or failed, in plain words (the defence that stopped it, if any)."""
    details: dict[str, Any] = field(default_factory=dict)


class ProtocolAttack(Protocol):
    name: str
    threat_model: str

    def run(self, weakened: bool, seed: int) -> ProtocolAttackOutcome: ...


PROTOCOL_ATTACKS: Registry[type[ProtocolAttack]] = Registry("protocol attack", "protocol_attacks",
                                                            group="securefrl.protocol_attacks")
"""Protocol-attack classes by name (one :class:`securefrl.registry.Registry`, like every plug-in kind)."""


def register(cls: type[ProtocolAttack]) -> type[ProtocolAttack]:
    """Class decorator: add a protocol attack to :data:`PROTOCOL_ATTACKS` under its ``name``."""
    PROTOCOL_ATTACKS.register(cls.name, cls)
    return cls


def load_all() -> Registry[type[ProtocolAttack]]:
    """Import the built-in protocol attacks (each module registers itself) and return the registry."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    return PROTOCOL_ATTACKS
