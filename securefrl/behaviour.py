"""Plug-in points for adversaries: client behaviours and server-side observers.

:mod:`securefrl` defines these interfaces but never imports :mod:`attacks`: attack
implementations are found by name through the ``securefrl.attacks`` entry-point group (the
project registers its own ``attacks`` package there; users can register theirs). An entry point
resolves to a registry object with ``names() -> list[str]`` and ``make(name, **params)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from securefrl.errors import ConfigError

ENTRY_POINT_GROUP = "securefrl.attacks"


@runtime_checkable
class ClientBehaviour(Protocol):
    """What a malicious client does differently from an honest one.

    ``craft`` replaces the malicious clients' honest updates (rows of ``own``) with poisoned
    ones; omniscient behaviours also receive the honest clients' updates of the round.
    Environment attacks additionally implement ``wrap_env(env, rng) -> env`` for the malicious
    clients' training environments.
    """

    omniscient: bool

    def craft(self, own_updates: np.ndarray, honest_updates: np.ndarray | None,
              rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class ServerView:
    """Exactly what the server saw in one round, for curious-server inference attacks.

    ``individual_updates`` is filled only when the protocol reveals them (plaintext);
    ``revealed_mean`` only when the server itself can open the aggregate (plaintext, SecAgg).
    Under CKKS the server holds ciphertext bytes and nothing else.
    """

    round: int
    protocol: str
    payloads: Mapping[int, bytes]
    aggregate_payload: bytes
    included: list[int]
    individual_updates: Mapping[int, np.ndarray] | None
    revealed_mean: np.ndarray | None


def _registries() -> list[Any]:
    return [ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)]


def attack_names() -> list[str]:
    """Every attack name offered by the installed plug-ins."""
    return sorted({name for reg in _registries() for name in reg.names()})


def make_behaviour(name: str, **params: Any) -> Any:
    """Build the client behaviour registered as ``name`` by any installed plug-in."""
    for reg in _registries():
        if name in reg.names():
            return reg.make(name, **params)
    raise ConfigError("attack.name", f"unknown attack {name!r}; installed attacks: {attack_names() or 'none'}")


def wrap_training_env(behaviour: Any, env: gym.Env, rng: np.random.Generator) -> gym.Env:
    """Apply an environment attack's wrapper if the behaviour has one."""
    wrap = getattr(behaviour, "wrap_env", None)
    return wrap(env, rng) if callable(wrap) else env
