"""The registry the ``securefrl.attacks`` entry point exposes: every client behaviour in this package by name.

Update attacks (:mod:`attacks.poisoning`: sign_flip, scaling, gaussian, alie, ipm, min_max) replace the
malicious clients' updates; environment attacks (:mod:`attacks.environment`: reward_flip, random_actions,
backdoor) poison their training environments and submit honest updates computed on them.
"""

from __future__ import annotations

from typing import Any

from attacks import environment, poisoning
from securefrl.errors import ConfigError


class _Registry:
    """``names()`` and ``make(name, **params)`` over the update attacks and the environment attacks."""

    def names(self) -> list[str]:
        return sorted({*poisoning.ATTACKS, *environment.ENV_ATTACKS})

    def kind(self, name: str) -> str:
        """``"update"`` or ``"environment"``: what the attack tampers with."""
        if name in environment.ENV_ATTACKS:
            return "environment"
        if name in poisoning.ATTACKS:
            return "update"
        raise ConfigError("attack", f"unknown attack {name!r}; known attacks: {', '.join(self.names())}")

    def make(self, name: str, **params: Any) -> Any:
        if self.kind(name) == "environment":
            return environment.make_env_attack(name, **params)
        return poisoning.make_attack(name, **params)


REGISTRY = _Registry()
