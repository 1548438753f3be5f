"""One registry type for every plug-in kind: protocols, agents, aggregation rules, server optimizers,
personalization methods, executors and attacks.

A :class:`Registry` maps a name to an object (a class or a factory). Entries can be registered as the
object itself or as a ``"module:attribute"`` string that is imported on first use, so a configuration is
validated against the registries without importing torch, TenSEAL or the federation. Each entry may carry
metadata (declared capabilities and requirements) readable without loading it. Third parties add entries
through the registry's Python entry-point group (``[project.entry-points."securefrl.protocols"]``, ...):
an entry point's name is the registry name and its value the ``"module:attribute"`` target; a target that
is itself a :class:`Registry` (or any object with ``names()`` and ``get(name)``) contributes all its entries
(built through its ``make(name, **params)`` when it has one).

Unknown names raise :class:`~securefrl.errors.ConfigError` naming the config field, the closest known
name ("did you mean") and every choice. This module imports nothing heavy (see ``docs/extending.md``).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar, cast, overload

from securefrl.errors import ConfigError

T = TypeVar("T")

__all__ = ["Entry", "Registry", "load_target"]


def load_target(target: str) -> Any:
    """Import ``"package.module:attr.sub"`` and return the attribute."""
    module, _, attr = target.partition(":")
    obj: Any = import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


@dataclass
class Entry(Generic[T]):
    """One registered name: its object (or the ``"module:attr"`` that yields it) and declared metadata."""

    name: str
    target: Any
    meta: dict[str, Any] = field(default_factory=dict)
    _loaded: bool = False

    def load(self) -> T:
        if not self._loaded:
            if isinstance(self.target, str):
                self.target = load_target(self.target)
            self._loaded = True
        return cast(T, self.target)


class Registry(Generic[T]):
    """Names -> plug-ins of one kind, with lazy loading, metadata and an entry-point group.

    Parameters
    ----------
    kind:
        What is registered, for messages ("protocol", "agent", ...).
    field:
        The config field that names an entry ("protocol.name"), used by :class:`ConfigError`.
    group:
        Entry-point group through which installed packages add entries (loaded on first look-up).
    """

    def __init__(self, kind: str, field: str, group: str | None = None) -> None:
        self.kind, self.field, self.group = kind, field, group
        self._entries: dict[str, Entry[T]] = {}
        self._group_loaded = group is None

    # --- registration --------------------------------------------------------------------------
    @overload
    def register(self, name: str, obj: None = None, *, replace: bool = ..., **meta: Any) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T | str, *, replace: bool = ..., **meta: Any) -> T | str: ...

    def register(self, name: str, obj: Any = None, *, replace: bool = False, **meta: Any) -> Any:
        """Register ``obj`` (or ``"module:attr"``) as ``name`` with metadata; without ``obj``, a decorator.

        Registering a different object under a taken name is an error unless ``replace=True``.
        """
        if obj is None:
            def decorator(target: T) -> T:
                self.register(name, target, replace=replace, **meta)
                return target

            return decorator
        if not isinstance(name, str) or not name:
            raise ConfigError(self.field, f"a {self.kind} needs a non-empty string name, got {name!r}")
        old = self._entries.get(name)
        if old is not None and not replace and old.target is not obj and old.target != obj:
            raise ConfigError(self.field, f"a {self.kind} named {name!r} is already registered ({old.target!r})")
        self._entries[name] = Entry(name, obj, dict(meta), _loaded=not isinstance(obj, str))
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and notebooks that register a temporary plug-in)."""
        self._entries.pop(name, None)

    # --- look-up -------------------------------------------------------------------------------
    def _load_group(self) -> None:
        if self._group_loaded:
            return
        self._group_loaded = True
        for ep in entry_points(group=cast(str, self.group)):
            target = ep.load()
            sub_names = getattr(target, "names", None)
            if callable(sub_names) and hasattr(target, "get"):  # a registry of several plug-ins
                for sub in sub_names():
                    if sub not in self._entries:
                        # a registry with make(name, **params) validates the parameters itself
                        obj = functools.partial(target.make, sub) if callable(getattr(target, "make", None)) \
                            else target.get(sub)
                        self._entries[sub] = Entry(sub, obj, dict(_meta_of(target, sub)), _loaded=True)
            elif ep.name not in self._entries:
                self._entries[ep.name] = Entry(ep.name, target, {}, _loaded=True)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load_group()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_group()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def entry(self, name: str) -> Entry[T]:
        self._load_group()
        found = self._entries.get(name)
        if found is None:
            raise self.unknown(name)
        return found

    def get(self, name: str) -> T:
        """The object registered as ``name`` (imported now if registered lazily)."""
        return self.entry(name).load()

    def meta(self, name: str) -> Mapping[str, Any]:
        """The metadata declared with ``name``, without loading it."""
        return self.entry(name).meta

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def keys(self) -> list[str]:
        return self.names()

    def items(self) -> list[tuple[str, T]]:
        return [(n, self.get(n)) for n in self.names()]

    def unknown(self, name: Any) -> ConfigError:
        """The error for an unknown ``name``: the field, the closest known name and every choice."""
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return ConfigError(self.field, f"unknown {self.kind} {name!r}{hint}; known: {', '.join(known) or 'none'}")

    def check(self, name: str) -> None:
        """Raise :meth:`unknown` unless ``name`` is registered."""
        if name not in self:
            raise self.unknown(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"


def _meta_of(registry: Any, name: str) -> Mapping[str, Any]:
    meta = getattr(registry, "meta", None)
    return meta(name) if callable(meta) else {}
