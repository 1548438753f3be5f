"""Dataclass configs from plain dicts: strict keys, typed values, field docs from docstrings.

Every config section is a dataclass whose fields carry a docstring (a string literal right
below the field). These helpers build sections from TOML/YAML dicts, refuse unknown keys and
mistyped values with a :class:`~securefrl.errors.ConfigError` naming the dotted field and the
allowed values (and a "did you mean" for near misses), and apply ``a.b=value`` command-line overrides.

Values on the command line are read as TOML first (``1e-6``, ``true``, ``[1, 2]``, inline tables
``{pole_length = 0.7}``, quoted strings), then as YAML (bare words such as ``dqn``, JSON/YAML mappings
``{"a": 1}``). YAML files are read with YAML 1.2 number rules, so ``1e-6`` is a float as in TOML and
JSON (PyYAML's YAML 1.1 reads it as a string).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import itertools
import re
import textwrap
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml

from securefrl.errors import ConfigError

T = TypeVar("T")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written below each field of a dataclass (read from its source)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


class YAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-6``, ``2E3``, ``.5`` are numbers."""


YAMLLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?(?:\d[\d_]*)?\.\d+$|^[-+]?\d[\d_]*\.\d*$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 floats (see :class:`YAMLLoader`)."""
    return yaml.load(text, Loader=YAMLLoader)  # a SafeLoader subclass: no arbitrary objects


def parse_value(raw: str) -> Any:
    """A command-line value: TOML if it parses as one (numbers, booleans, arrays, inline tables), else YAML."""
    text = raw.strip()
    if not text:
        return ""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def did_you_mean(name: str, allowed: Any) -> str:
    """`` (did you mean 'x'?)`` for a near miss among ``allowed`` (empty if nothing is close)."""
    close = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (with int -> float widening)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"value {value!r} matches none of {tp}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(path, f"{value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a table/mapping, got {type(value).__name__}")
        _key_t, val_t = typing.get_args(tp) or (str, Any)
        return {str(k): _coerce(v, val_t, f"{path}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {type(value).__name__}")
        (item_t, *_) = typing.get_args(tp) or (Any,)
        out = [_coerce(v, item_t, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a table/mapping, got {type(value).__name__}")
        return from_dict(tp, value, path)  # type: ignore[arg-type]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(path, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(path, f"expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and mistyped values."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = path or cls.__name__
        raise ConfigError(f"{where}.{unknown[0]}" if path else unknown[0],
                          f"unknown key in [{where}]{did_you_mean(unknown[0], fields)}; allowed keys: {sorted(fields)}")
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(path)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain (YAML/JSON-able) form of a config."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` to a nested dict; the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in assignment:
        raise ConfigError(assignment, "override must look like section.key=value, e.g. federation.rounds=5")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(assignment, "override has an empty key")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(key, f"{p!r} is not a section")
    node[parts[-1]] = parse_value(raw)


def describe(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted name, default, doc) for every field, recursively: the config reference."""
    rows: list[tuple[str, Any, str]] = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(describe(hints[f.name], name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rows.append((name, default, docs.get(f.name, "")))
    return rows


def check_range(path: str, value: float, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Refuse ``value`` outside [lo, hi] (or open ends) with a message naming the field and range."""
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        lo_s = "-inf" if lo is None else repr(lo)
        hi_s = "inf" if hi is None else repr(hi)
        rng = f"{'(' if lo_open or lo is None else '['}{lo_s}, {hi_s}{')' if hi_open or hi is None else ']'}"
        raise ConfigError(path, f"{value!r} is out of range; allowed: {rng}")


_PLAIN = (int, float, str, bool, list, tuple, dict, Mapping, Sequence, typing.Literal, type(None))


def _config_settable(tp: Any) -> bool:
    """True if a config file can hold a value of annotation ``tp`` (numbers, strings, lists, tables)."""
    if tp is Any or tp in _PLAIN:
        return True
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType) or origin in _PLAIN:  # a union or container of settable types
        return all(a is Ellipsis or _config_settable(a) for a in typing.get_args(tp))
    return False


def plugin_kwargs(target: Any, params: Mapping[str, Any], path: str, provided: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check ``params`` against the signature of ``target`` (a plug-in class or factory) and type them.

    ``provided`` names the arguments the library passes itself (e.g. ``dim``); they cannot be set.
    A parameter annotated with a dataclass (e.g. ``params: CKKSParams``) may be given as a mapping
    or flat, by the dataclass's own field names. Unknown names raise :class:`ConfigError` naming the
    dotted parameter, a near miss and the allowed names; mistyped values name the expected type.
    """
    fn = target.__init__ if inspect.isclass(target) else target
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    own = {n: p for n, p in sig.parameters.items()
           if n not in ("self", *provided) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    nested: dict[str, type] = {}
    for n in own:
        for tp in (hints.get(n), *typing.get_args(hints.get(n))):
            if dataclasses.is_dataclass(tp):
                nested[n] = tp  # type: ignore[assignment]
    flat = {f.name: n for n, tp in nested.items() for f in dataclasses.fields(tp) if f.init and f.name not in own}
    allowed = sorted({*(n for n in own if n in nested or _config_settable(hints.get(n, Any))), *flat})
    out: dict[str, Any] = {}
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        where = f"{path}.{key}"
        if key in flat:
            grouped.setdefault(flat[key], {})[key] = value
        elif key in nested and isinstance(value, Mapping):
            grouped.setdefault(key, {}).update(value)
        elif key in own:
            if not _config_settable(hints.get(key, Any)):
                raise ConfigError(where, f"{key} takes a Python object ({hints[key]}); it can be passed in the Python "
                                  "API only, not from a config")
            out[key] = _coerce(value, hints.get(key, Any), where)
        else:
            name = getattr(target, "__name__", str(target))
            raise ConfigError(where, f"{name} takes no parameter {key!r}{did_you_mean(key, allowed)}; "
                              f"allowed: {', '.join(allowed) or 'none'}")
    for key, values in grouped.items():
        out[key] = from_dict(nested[key], values, path)
    return out


def plugin_parameters(target: Any, prefix: str, provided: tuple[str, ...] = ()) -> list[tuple[str, Any, str]]:
    """(dotted name, default, annotation) of every parameter :func:`plugin_kwargs` accepts, for ``securefrl config``."""
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    rows: list[tuple[str, Any, str]] = []
    for n, p in inspect.signature(fn).parameters.items():
        if n in ("self", *provided) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        tp = hints.get(n, p.annotation)
        nested = next((t for t in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(t)), None)
        if nested is not None:  # settable flat by the dataclass's fields
            rows += [(f"{prefix}{f.name}", f.default, getattr(f.type, "__name__", str(f.type)))
                     for f in dataclasses.fields(nested) if f.init]
            continue
        if not _config_settable(tp):
            continue  # a Python object (a generator, a mapping of enums): API only
        default = None if p.default is inspect.Parameter.empty else p.default
        rows.append((f"{prefix}{n}", default, getattr(tp, "__name__", str(tp)).replace("typing.", "")))
    return rows
