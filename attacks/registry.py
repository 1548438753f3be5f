"""The registry the ``securefrl.attacks`` entry point exposes: every attack in this package by name."""

from __future__ import annotations

from typing import Any

from attacks import poisoning


class _Registry:
    """``names()`` and ``make(name, **params)`` over the update attacks (and environment attacks)."""

    def names(self) -> list[str]:
        return sorted(poisoning.ATTACKS)

    def make(self, name: str, **params: Any) -> Any:
        return poisoning.make_attack(name, **params)


REGISTRY = _Registry()
