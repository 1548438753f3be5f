"""Plug-in points for adversaries: client behaviours and server-side observers.

:mod:`securefrl` defines these interfaces but never imports :mod:`attacks`: attack
implementations are found by name in :data:`ATTACKS`, filled from the ``securefrl.attacks`` entry-point
group (the project registers its own ``attacks`` package there; users can register theirs). An entry
point resolves to one behaviour factory, or to a registry object with ``names()``, ``get``/``make``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from securefrl.registry import Registry

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


ATTACKS: Registry[Callable[..., Any]] = Registry("attack", "attack.name", group=ENTRY_POINT_GROUP)
"""Client behaviours (update and environment attacks) by name: factories ``(**params) -> behaviour``, with
metadata ``kind`` ("update" or "environment"). Filled from the ``securefrl.attacks`` entry points."""


def attack_names() -> list[str]:
    """Every attack name offered by the installed plug-ins."""
    return ATTACKS.names()


def attack_kind(name: str) -> str:
    """What attack ``name`` tampers with: ``"update"`` or ``"environment"`` (the malicious clients' environments)."""
    return str(ATTACKS.meta(name).get("kind", "update"))


def make_behaviour(name: str, **params: Any) -> Any:
    """Build the client behaviour registered as ``name`` by any installed plug-in."""
    return ATTACKS.get(name)(**params)


def wrap_training_env(behaviour: Any, env: gym.Env, rng: np.random.Generator) -> gym.Env:
    """Apply an environment attack's wrapper if the behaviour has one."""
    wrap = getattr(behaviour, "wrap_env", None)
    return wrap(env, rng) if callable(wrap) else env
