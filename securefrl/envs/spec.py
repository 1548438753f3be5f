"""Per-client environment specs and reproducible heterogeneous draws.

An :class:`EnvSpec` is everything needed to rebuild one client's environment: a gymnasium id and
the physical attributes that differ from the default. It is JSON-able, so the physics every client
trained on goes into the results. :func:`draw_client_envs` draws the specs of a federation at a
heterogeneity level ``h`` in [0, 1], in the spirit of Jin et al. (2022), "Federated Reinforcement
Learning with Environment Heterogeneity" (AISTATS): ``h = 0`` gives identical clients at the
defaults, ``h = 1`` spreads them over the family's full range (see :mod:`securefrl.envs.families`).
"""

from __future__ import annotations

import difflib
import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from securefrl.envs.contract import keep_space_contract
from securefrl.envs.families import EnvFamily, family_for_env, family_names, get_family, refresh_derived
from securefrl.errors import ConfigError

if TYPE_CHECKING:
    from securefrl.config import ExperimentConfig

__all__ = ["EnvSpec", "draw_client_envs", "resolve_env"]

_RealTypes = (int, float, np.integer, np.floating)


@dataclass(frozen=True)
class EnvSpec:
    """One client's environment: a gymnasium id plus physical overrides.

    With ``family`` set, ``params`` uses the family's parameter names (e.g. ``pole_length``) and
    derived attributes are recomputed; otherwise ``params`` names attributes of ``env.unwrapped``
    directly (and only existing, public, numeric attributes are accepted when the env is made).
    """

    env_id: str
    params: dict[str, float] = field(default_factory=dict)
    family: str | None = None

    def __post_init__(self) -> None:
        _check_registered(self.env_id, "env_id")
        if not isinstance(self.params, Mapping):
            raise ConfigError("params", f"must be a mapping of name to number, got {type(self.params).__name__}")
        clean: dict[str, float] = {}
        if self.family is not None:
            family = get_family(self.family)
            for name, value in self.params.items():
                check = _check_positive if family.param(name).positive else _check_finite
                clean[name] = check(f"params.{name}", value)
        else:
            for name, value in self.params.items():
                _check_public_name(f"params.{name}", name)
                clean[name] = _check_finite(f"params.{name}", value)
        object.__setattr__(self, "params", clean)

    def make(self, render_mode: str | None = None) -> gym.Env:
        """Build the environment with this client's physics applied to ``env.unwrapped``.

        Spaces follow the overrides (:mod:`securefrl.envs.contract`): rebuilt for the classic-control
        classes, checked at every observation for other classes given plain-attribute overrides.
        """
        env = gym.make(self.env_id, render_mode=render_mode)
        try:
            if self.family is not None:
                get_family(self.family).apply(env, self.params)
            else:
                _apply_attributes(env.unwrapped, self.params)
        except BaseException:
            env.close()
            raise
        # Spaces built in __init__ from overridden attributes (Pendulum's max_speed) must follow them.
        return keep_space_contract(env, self.params, checked=self.family is None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record of this client's environment (inverse of :meth:`from_dict`)."""
        return {"env_id": self.env_id, "family": self.family, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnvSpec:
        """Rebuild a spec recorded by :meth:`to_dict`, e.g. to re-run a client from results."""
        if not isinstance(data, Mapping):
            raise ConfigError("env", f"must be a mapping with keys env_id, family, params, got {type(data).__name__}")
        allowed = ("env_id", "family", "params")
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ConfigError(unknown[0], f"unknown key; allowed: {', '.join(allowed)}")
        if "env_id" not in data:
            raise ConfigError("env_id", "missing; give a registered gymnasium id")
        return cls(env_id=data["env_id"], params=dict(data.get("params") or {}), family=data.get("family"))


def resolve_env(env: str, field: str = "env") -> EnvFamily | None:
    """The family named ``env``, or None if ``env`` is a registered gymnasium id.

    Anything else raises ConfigError naming the families, so configs fail at load time.
    """
    if not isinstance(env, str):
        raise ConfigError(field, f"must be a family name or gymnasium id string, got {type(env).__name__}")
    if env in family_names():
        family = get_family(env, field)
        family.check_available(field)
        return family
    if env in gym.registry:
        return None
    raise ConfigError(field, _unknown_env_message(env))


def draw_config_envs(cfg: ExperimentConfig) -> list[EnvSpec]:
    """Every client's environment as the config ``cfg`` draws it (one stream, shared by every engine)."""
    from securefrl.seeding import derive_rng

    return draw_client_envs(
        cfg.env.name,
        cfg.federation.n_clients,
        cfg.env.heterogeneity,
        derive_rng(cfg.seed, "env-draw"),
        overrides=cfg.env.overrides or None,
        ranges={k: (v[0], v[1]) for k, v in cfg.env.ranges.items()} or None,
        client_types=cfg.env.client_types,
        type_spread=cfg.env.type_spread,
    )


def draw_client_envs(
    env: str,
    n_clients: int,
    heterogeneity: float,
    rng: np.random.Generator,
    overrides: Mapping[str, float | Sequence[float]] | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    client_types: int = 0,
    type_spread: float = 0.1,
) -> list[EnvSpec]:
    """Draw each client's environment, reproducibly from ``rng``.

    Parameters
    ----------
    env
        A family name (``family_names()``) or a registered gymnasium id. For a plain id only the
        attributes named in ``ranges`` vary, so ``heterogeneity > 0`` requires ``ranges``.
    n_clients
        Number of clients (>= 1).
    heterogeneity
        ``h`` in [0, 1]. A parameter with default ``d`` and range ``[lo, hi]`` at h=1 is drawn
        uniformly from ``[(1-h) d + h lo, (1-h) d + h hi]``: the range shrinks linearly towards
        the default, and at ``h = 0`` every client has the defaults.
    rng
        Seeded generator; exactly one ``rng.random((n_clients, n_params))`` call is made, so one
        seed gives the same quantiles at every ``h`` (clients keep their rank as ``h`` grows).
    overrides
        Parameters fixed rather than drawn: a number for every client, or a sequence of
        ``n_clients`` numbers, one per client.
    ranges
        Replace the range at h=1 of the named parameters by ``(low, high)``.
    client_types
        0: every client's quantiles are independent uniforms. ``G >= 1``: client ``i`` is of type ``i mod G``
        and the clients of a type are alike, as devices of one kind or cells of one area are (the grouped
        aggregation of Nadiger et al. 2019 and the clusters of IFCA, Ghosh et al. 2020, assume such types).
        Each type's quantile of a parameter is drawn in its own stratum ``[k/G, (k+1)/G)`` of the range (a
        Latin hypercube, McKay et al. 1979: which stratum is a random permutation per parameter), so the
        types differ in every parameter; a client's quantile is its type's plus a uniform offset in
        ``±type_spread / 2``, clipped to [0, 1]. Draws: ``rng.permuted`` of the strata, then
        ``rng.random((G, n_params))`` and ``rng.random((n_clients, n_params))``, independent of ``h``.
    type_spread
        Width of a type's quantile interval (fraction of the range at level ``h``); with ``client_types``.

    Returns
    -------
    list[EnvSpec]
        One spec per client; ``[s.to_dict() for s in specs]`` records the draw.
    """
    family = resolve_env(env)
    n = _check_int("n_clients", n_clients, 1)
    h = _check_unit("heterogeneity", heterogeneity, "0 = identical clients, 1 = widest spread")
    if not isinstance(rng, np.random.Generator):
        raise ConfigError("rng", f"must be a seeded numpy.random.Generator, got {type(rng).__name__}")
    overrides = _check_mapping("overrides", overrides)
    ranges = _check_mapping("ranges", ranges)
    for name in sorted(set(overrides) & set(ranges)):
        raise ConfigError(f"overrides.{name}", "is also given in ranges; either fix a parameter or vary it, not both")

    def positive(name: str) -> bool:
        return family is not None and family.param(name).positive

    if family is not None:
        env_id = family.env_id
        for name in overrides:
            family.param(name, "overrides")
        for name in ranges:
            family.param(name, "ranges")
        defaults = family.defaults()
        box = family.ranges()
    else:
        env_id = env
        if h > 0.0 and not ranges:  # runs, with identical clients: the default h must not refuse "any gymnasium id"
            warnings.warn(NothingVariesWarning(_plain_id_without_ranges_message(env_id, h)), stacklevel=2)
        defaults = _read_defaults(env_id, overrides, ranges)
        box = {}
    for name, value in ranges.items():
        box[name] = _check_range(f"ranges.{name}", value, positive(name))
    fixed = {name: _override_values(f"overrides.{name}", value, n, positive(name))
             for name, value in overrides.items()}

    names = list(defaults)
    draws = _quantiles(rng, n, len(names), _check_int("client_types", client_types, 0, " (0 = no types)"),
                       _check_unit("type_spread", type_spread, "a fraction of the range"))
    specs = []
    for i in range(n):
        params: dict[str, float] = {}
        for j, name in enumerate(names):
            if name in fixed:
                params[name] = fixed[name][i]
            elif name in box:
                lo, hi = _interval(defaults[name], box[name], h)
                params[name] = min(max(lo + float(draws[i, j]) * (hi - lo), lo), hi)
            else:
                params[name] = defaults[name]
        specs.append(EnvSpec(env_id, params, family.name if family is not None else None))
    return specs


def _quantiles(rng: np.random.Generator, n: int, n_params: int, types: int, spread: float) -> np.ndarray:
    """``(n, n_params)`` quantiles in [0, 1]: independent, or around stratified type quantiles."""
    if types == 0:
        return rng.random((n, n_params))
    strata = rng.permuted(np.tile(np.arange(types), (n_params, 1)), axis=1).T  # (types, n_params)
    centre = (strata + rng.random((types, n_params))) / types
    offset = spread * (rng.random((n, n_params)) - 0.5)
    return np.clip(centre[np.arange(n) % types] + offset, 0.0, 1.0)


def _interval(default: float, box: tuple[float, float], h: float) -> tuple[float, float]:
    """The range at level ``h``; written as a convex combination so h=0 and h=1 are exact."""
    lo, hi = box
    return (1.0 - h) * default + h * lo, (1.0 - h) * default + h * hi


def _read_defaults(
    env_id: str, overrides: Mapping[str, object], ranges: Mapping[str, object]
) -> dict[str, float]:
    """Current values of the named attributes of a freshly made ``env_id`` (checked to exist)."""
    wanted = [(f"overrides.{n}", n) for n in overrides] + [(f"ranges.{n}", n) for n in ranges]
    if not wanted:
        return {}
    probe = gym.make(env_id)
    try:
        return {name: _read_attribute(probe.unwrapped, name, fld) for fld, name in sorted(wanted, key=lambda w: w[1])}
    finally:
        probe.close()


def _apply_attributes(unwrapped: gym.Env, params: Mapping[str, float]) -> None:
    """Set plain attribute overrides; refresh derived attributes if the env belongs to a family."""
    for name, value in params.items():
        _read_attribute(unwrapped, name, f"params.{name}")
        setattr(unwrapped, name, float(value))
    family = family_for_env(unwrapped)
    if family is not None and params:
        refresh_derived(unwrapped, family, explicit=set(params))


def _read_attribute(unwrapped: gym.Env, name: str, fld: str) -> float:
    """The numeric value of public attribute ``name``; ConfigError listing the numeric ones otherwise.

    ``inspect.getattr_static`` avoids running properties (``np_random`` would seed itself).
    """
    _check_public_name(fld, name)
    sentinel = object()
    value = inspect.getattr_static(unwrapped, name, sentinel)
    if value is sentinel or isinstance(value, (bool, np.bool_)) or not isinstance(value, _RealTypes):
        what = "has no attribute" if value is sentinel else "has no plain numeric attribute"
        allowed = ", ".join(_numeric_attributes(unwrapped))
        raise ConfigError(fld, f"{type(unwrapped).__name__} {what} {name!r}; numeric attributes: {allowed}")
    return float(value)


def _numeric_attributes(unwrapped: gym.Env) -> list[str]:
    names = []
    for name in dir(unwrapped):
        if name.startswith("_"):
            continue
        value = inspect.getattr_static(unwrapped, name, None)
        if isinstance(value, _RealTypes) and not isinstance(value, (bool, np.bool_)):
            names.append(name)
    return names


def _check_public_name(fld: str, name: object) -> None:
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ConfigError(fld, f"must name a public attribute (an identifier not starting with '_'), got {name!r}")


def _check_registered(env_id: object, fld: str) -> None:
    if not isinstance(env_id, str) or env_id not in gym.registry:
        raise ConfigError(fld, _unknown_env_message(env_id))


def _unknown_env_message(env: object) -> str:
    msg = f"unknown environment {env!r}; allowed: a family ({', '.join(family_names())}) or a registered gymnasium id"
    if isinstance(env, str):
        close = difflib.get_close_matches(env, [*family_names(), *gym.registry], n=3)
        if close:
            msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
    return msg


class NothingVariesWarning(UserWarning):
    """A plain gymnasium id at heterogeneity > 0 without ``env.ranges``: every client gets the same environment."""


def _plain_id_without_ranges_message(env_id: str, h: float) -> str:
    msg = (f"env.heterogeneity is {h} but {env_id!r} is a plain gymnasium id and no env.ranges were given, so every "
           "client gets the same environment")
    try:
        probe = gym.make(env_id)
    except Exception:  # the id is registered but cannot be built here; the hint is optional
        probe = None
    if probe is not None:
        family = family_for_env(probe.unwrapped)
        probe.close()
        if family is not None:
            return msg + f"; to vary its physics use env.name={family.name!r} or give env.ranges"
    return msg + f"; to vary it give env.ranges, or use a family ({', '.join(family_names())})"


def _check_mapping(fld: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(fld, f"must be a mapping of parameter name to value, got {type(value).__name__}")
    return dict(value)


def _check_int(fld: str, value: object, low: int, note: str = "") -> int:
    """An integer >= ``low`` (bools refused), as ``int``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(fld, f"must be an integer >= {low}{note}, got {value!r}")
    return int(value)


def _check_unit(fld: str, value: object, note: str) -> float:
    """A finite number in [0, 1]."""
    x = _check_finite(fld, value)
    if not 0.0 <= x <= 1.0:
        raise ConfigError(fld, f"must be in [0, 1] ({note}), got {x!r}")
    return x


def _check_range(fld: str, value: object, positive: bool) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)) or len(value) != 2:
        raise ConfigError(fld, f"must be a (low, high) pair of numbers, got {value!r}")
    check = _check_positive if positive else _check_finite
    lo, hi = check(fld, value[0]), check(fld, value[1])
    if lo > hi:
        raise ConfigError(fld, f"needs low <= high, got ({lo!r}, {hi!r})")
    return lo, hi


def _override_values(fld: str, value: object, n: int, positive: bool) -> list[float]:
    check = _check_positive if positive else _check_finite
    if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)):
        if len(value) != n:
            raise ConfigError(fld, f"needs one number for all clients or a sequence of n_clients={n}, got {len(value)}")
        return [check(fld, v) for v in value]
    return [check(fld, value)] * n


def _check_positive(fld: str, value: object) -> float:
    """``value`` as a finite float > 0 (physical quantities such as masses and lengths are positive)."""
    number = _check_finite(fld, value)
    if number <= 0.0:
        raise ConfigError(fld, f"must be a positive physical value (> 0), got {number!r}")
    return number


def _check_finite(fld: str, value: object) -> float:
    """``value`` as a finite float; bools are refused although Python treats them as ints."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, _RealTypes):
        raise ConfigError(fld, f"must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(fld, f"must be finite, got {number!r}")
    return number
