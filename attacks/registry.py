"""The registry the ``securefrl.attacks`` entry point exposes: every client behaviour in this package by name.

Update attacks (:mod:`attacks.poisoning`: sign_flip, scaling, gaussian, alie, ipm, min_max) replace the
malicious clients' updates; environment attacks (:mod:`attacks.environment`: reward_flip, random_actions,
backdoor) poison their training environments and submit honest updates computed on them. Each kind is a
:class:`securefrl.registry.Registry` (metadata ``kind``); :data:`REGISTRY` is their live union, which
:data:`securefrl.behaviour.ATTACKS` merges in through the entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attacks import environment, poisoning
from securefrl.errors import ConfigError
from securefrl.registry import Registry


class _ClientAttacks:
    """``names()``, ``get``, ``meta``, ``kind`` and ``make(name, **params)`` over the update and environment attacks."""

    kinds: tuple[Registry[Any], ...] = (poisoning.ATTACKS, environment.ENV_ATTACKS)

    def names(self) -> list[str]:
        return sorted({n for reg in self.kinds for n in reg.names()})

    def _registry(self, name: str) -> Registry[Any]:
        for reg in self.kinds:
            if name in reg:
                return reg
        raise ConfigError("attack", f"unknown attack {name!r}; known attacks: {', '.join(self.names())}")

    def get(self, name: str) -> Any:
        return self._registry(name).get(name)

    def meta(self, name: str) -> Mapping[str, Any]:
        return self._registry(name).meta(name)

    def kind(self, name: str) -> str:
        """``"update"`` or ``"environment"``: what the attack tampers with."""
        return str(self.meta(name)["kind"])

    def make(self, name: str, **params: Any) -> Any:
        if self.kind(name) == "environment":
            return environment.make_env_attack(name, **params)
        return poisoning.make_attack(name, **params)


REGISTRY = _ClientAttacks()
