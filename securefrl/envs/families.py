"""Environment families whose physics vary from client to client.

Federated RL clients rarely share one environment: robots differ in mass, length and motor
strength. Jin et al. (2022), "Federated Reinforcement Learning with Environment Heterogeneity"
(AISTATS), model this as clients whose transition dynamics differ through perturbed physical
parameters of one task. A family here names such a task (a gymnasium classic-control env), the
physical parameters that vary, their defaults and the range they span at the widest heterogeneity.

Ranges at heterogeneity 1 (multiples of the gymnasium default) were chosen so that every corner of
the box stays solvable: a hand-written controller still balances CartPole for 500 steps, swings
Acrobot up within its 500-step limit, drives MountainCar to the flag within 200 steps and swings
up and holds Pendulum at every corner (checked in ``tests/securefrl/test_envs.py``).

=============  ==========================================================  =============
family         parameters (default)                                        range at h=1
=============  ==========================================================  =============
cartpole       pole_length 1.0, pole_mass 0.1, cart_mass 1.0,              0.5–1.5 x
               gravity 9.8, force_mag 10.0
acrobot        link_length_1 1.0, link_length_2 1.0, link_mass_1 1.0,      0.5–1.5 x
               link_mass_2 1.0
mountaincar    force 0.001, gravity 0.0025                                 0.8–1.2 x
pendulum       mass 1.0, length 1.0, gravity 10.0                          0.75–1.25 x
=============  ==========================================================  =============

The ranges are symmetric around the default, so the average client is the standard task.

What these ranges do *not* do is make clients need different policies: for CartPole, Acrobot and
MountainCar the corner test above solves every corner with *one* controller that ignores the physics
(for Acrobot, each of its elbow-velocity controllers alone solves all 16 corners; Pendulum's controller
reads the physics), so one federated policy can be good for every client, and FedAvg pays
no heterogeneity penalty at its optimum (measured in issue 13: at h=1 FedAvg's worst client beat
local-only training's). Widening the physics ranges does not change that while the task stays
solvable; what does is an asymmetry the observation does not reveal (a constant wind or track slope,
reversed motors). Not even a per-client pole-angle calibration offset, the least contrived such asymmetry,
bites at a solvable size: checked once (session 3, gymnasium CartPole-v1, 5 seeds per bias), the
bias-unaware controller "push right iff theta + 0.5 theta_dot + 0.2 x_dot + 0.1 x > 0" balances 500 steps
at offsets 0, 0.03, 0.05, 0.08 and 0.1 rad (and, by the task's mirror symmetry, their negatives): position
feedback absorbs the offset as a cart displacement, while the
controller without position feedback drops to ~150 steps at 0.1 rad. So the physics families keep their
ranges (the reason for each is in its ``FamilyParam.reason``, printed by ``securefrl envs``), and no default
range of theirs is claimed to make FedAvg pay; where the penalty is wanted, use the application families
below, whose ranges are chosen for it.

Application families (``kind = "application"``) are the networking tasks of the survey (§4.1, §4.3), gymnasium
envs registered by this package under ``securefrl/...`` ids, each with a batched numpy implementation
(:mod:`securefrl.envs.batched`). Their ranges are chosen so that clients need *different* policies at h=1
(tested with hand-written per-client policies in ``tests/securefrl/test_envs_applications.py``):

==============  =================================================  ==========================
family          parameters (default)                               range at h=1
==============  =================================================  ==========================
edge_caching    popularity_centre 0.5 (circle of item types),      0–1 (any centre),
                zipf_exponent 1.0                                  0.6–1.4
mec_offloading  channel_gain_db 0, local_cpu_ghz 1.0,              -10–10 dB, 0.3–1.7,
                server_cpu_ghz 4.0, task_size_mbit 0.5,            0.5–7.5, 0.3–0.7,
                arrival_rate 1.0                                   0.5–1.5
ran_access      capacity_centre 0.5 (circle of 6 cells),           0–1 (any centre),
                capacity_contrast 1.0, mean_session 10.0           0.5–1.5, 6–14
==============  =================================================  ==========================

See :mod:`securefrl.envs.edge_caching`, :mod:`securefrl.envs.mec_offloading` and
:mod:`securefrl.envs.ran_access` for the models and why the ranges are what they are.

Every family can also be drawn in client *types* (``env.client_types``, :func:`securefrl.envs.spec.draw_client_envs`):
clients of one type (one kind of device, the cells of one kind of area) have nearly the same parameters and the
types differ in every parameter. Independent draws at h=1 give every client its own corner of the box, so no
client has a peer with the same optimal policy and clustered personalization can at best recover local-only
training; with types it can pool the data of a client's peers (measured in ``benchmarks/RESULTS.md``).

``hopper`` (:mod:`securefrl.envs.mujoco_hopper`, optional extra ``securefrl[mujoco]``) is continuous
control with an 11-dimensional state: MuJoCo's Hopper-v5 with per-client shin length (0.35-0.65 m, as
Jin et al. vary the leg), torso and thigh masses (0.5-1.5x) and foot friction (0.5-3.0, stock 2.0).
Whether these ranges make one policy worse than local training is not measured yet (a SAC run per
client is beyond the test budget).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.acrobot import AcrobotEnv
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.classic_control.mountain_car import MountainCarEnv
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from securefrl.envs.edge_caching import EdgeCachingEnv
from securefrl.envs.edge_caching import reference_policy as edge_caching_reference
from securefrl.envs.mec_offloading import MECOffloadingEnv, myopic_policy
from securefrl.envs.ran_access import RANAccessEnv, greedy_policy
from securefrl.errors import ConfigError

EDGE_CACHING_ID = "securefrl/EdgeCaching-v0"
MEC_OFFLOADING_ID = "securefrl/MECOffloading-v0"
RAN_ACCESS_ID = "securefrl/RANAccess-v0"
HOPPER_ID = "securefrl/Hopper-v5"

# The application envs are registered with gymnasium so an EnvSpec (and a Ray worker) rebuilds them by id.
for _id, _entry in ((EDGE_CACHING_ID, "securefrl.envs.edge_caching:EdgeCachingEnv"),
                    (MEC_OFFLOADING_ID, "securefrl.envs.mec_offloading:MECOffloadingEnv"),
                    (RAN_ACCESS_ID, "securefrl.envs.ran_access:RANAccessEnv"),
                    (HOPPER_ID, "securefrl.envs.mujoco_hopper:HeterogeneousHopperEnv")):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry)

__all__ = [
    "FAMILIES",
    "EnvFamily",
    "FamilyParam",
    "batched_families",
    "batched_target",
    "family_for_env",
    "family_names",
    "get_family",
]


@dataclass(frozen=True)
class FamilyParam:
    """One physical parameter of a family, in user units.

    ``attribute`` is the attribute of ``env.unwrapped`` it sets, to ``scale * value``
    (CartPole stores half the pole length, so ``pole_length`` has ``scale=0.5``).
    ``low``/``high`` bound the values drawn at heterogeneity 1.
    """

    name: str
    attribute: str
    default: float
    low: float
    high: float
    doc: str
    scale: float = 1.0
    positive: bool = True
    """Physical quantities (masses, lengths, rates) must be > 0; a position on a circle need not be."""
    reason: str = ""
    """Why the range at h=1 is what it is (shown by ``securefrl envs``)."""

    def __post_init__(self) -> None:
        if not self.low <= self.default <= self.high or (self.positive and self.low <= 0.0):
            raise ValueError(f"{self.name}: need low <= default <= high (and 0 < low for a positive quantity)")


def _spread(
    name: str, attribute: str, default: float, lo: float, hi: float, doc: str, scale: float = 1.0, reason: str = ""
) -> FamilyParam:
    """A parameter whose range at h=1 is ``[lo, hi] x default``."""
    return FamilyParam(name, attribute, default, lo * default, hi * default, doc, scale, reason=reason)


@dataclass(frozen=True)
class EnvFamily:
    """A gymnasium task whose physical parameters can differ per client.

    ``derive`` recomputes attributes that the env caches from the physical ones (CartPole's
    ``total_mass``); without it a changed mass or length would silently not take effect.
    """

    name: str
    env_id: str
    env_class: type[gym.Env] | str
    """The env class, or ``"module:Class"`` for a class behind an optional extra (imported on use)."""
    params: tuple[FamilyParam, ...]
    derive: Callable[[gym.Env], dict[str, float]]
    description: str
    kind: str = "physics"
    """physics (a classic-control task with perturbed physics) or application (a networking task of the
    survey, registered by this package: edge caching, MEC offloading, RAN access)."""
    batched: str = ""
    """``module:Class`` of the batched numpy implementation of the env (the vectorized simulation), if any."""
    requires: str = ""
    """Module the env needs that is not a core dependency (e.g. ``mujoco``), and so the optional extra."""
    extra: str = ""
    """The ``securefrl[...]`` extra that installs :attr:`requires`."""
    reference: Callable[[Any], Callable[[Any], Any]] | None = None
    """Hand-written policy that knows a client's parameters: ``reference(unwrapped env) -> (obs -> action)``,
    the yardstick of ``benchmarks/headroom.py`` (how much a learned policy leaves on the table); None: no such
    policy is known for the family."""

    def available(self) -> bool:
        """Whether the env can be built here (its optional dependency, if any, is installed)."""
        return not self.requires or importlib.util.find_spec(self.requires) is not None

    def check_available(self, field: str = "env.name") -> None:
        """ConfigError naming the extra to install if :meth:`available` is False."""
        if not self.available():
            raise ConfigError(field, f"family {self.name!r} needs the optional dependency {self.requires!r}; "
                              f"install it with: pip install 'securefrl[{self.extra}]'")

    def env_type(self) -> type[gym.Env]:
        """The env class (importing it if given as ``module:Class``)."""
        if isinstance(self.env_class, str):
            self.check_available()
            module, name = self.env_class.split(":")
            return getattr(importlib.import_module(module), name)
        return self.env_class

    def is_env(self, unwrapped: object) -> bool:
        """Whether ``unwrapped`` is this family's env, without importing an optional class that is not loaded."""
        if isinstance(self.env_class, str):
            module, name = self.env_class.split(":")
            return module in sys.modules and isinstance(unwrapped, getattr(sys.modules[module], name))
        return isinstance(unwrapped, self.env_class)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names accepted in overrides and ranges."""
        return tuple(p.name for p in self.params)

    def param(self, name: str, field: str = "params") -> FamilyParam:
        """The parameter called ``name``; ConfigError listing the allowed names otherwise."""
        for p in self.params:
            if p.name == name:
                return p
        raise ConfigError(
            f"{field}.{name}",
            f"unknown parameter {name!r} of family {self.name!r}; allowed: {', '.join(self.param_names)}",
        )

    def defaults(self) -> dict[str, float]:
        """The gymnasium defaults, i.e. every client's parameters at heterogeneity 0."""
        return {p.name: p.default for p in self.params}

    def ranges(self) -> dict[str, tuple[float, float]]:
        """The ``(low, high)`` range of each parameter at heterogeneity 1."""
        return {p.name: (p.low, p.high) for p in self.params}

    def describe(self) -> str:
        """Human-readable parameter table, for CLI help."""
        lines = [f"{self.name} ({self.env_id}): {self.description}"]
        for p in self.params:
            lines.append(f"  {p.name:<14} default {p.default:g}, range at h=1 [{p.low:g}, {p.high:g}]: {p.doc}"
                         + (f"\n  {'':<14} why this range: {p.reason}" if p.reason else ""))
        return "\n".join(lines)

    def apply(self, env: gym.Env, params: Mapping[str, float]) -> None:
        """Set ``params`` on ``env.unwrapped`` and recompute the attributes derived from them."""
        unwrapped = env.unwrapped
        if not isinstance(unwrapped, self.env_type()):
            raise ConfigError(
                "env_id",
                f"family {self.name!r} needs a {self.env_type().__name__} (e.g. {self.env_id!r}), "
                f"got {type(unwrapped).__name__}",
            )
        for name, value in params.items():
            p = self.param(name)
            setattr(unwrapped, p.attribute, p.scale * float(value))
        refresh_derived(unwrapped, self, explicit=())


def refresh_derived(unwrapped: gym.Env, family: EnvFamily, explicit: tuple[str, ...] | set[str]) -> None:
    """Recompute ``family``'s derived attributes on ``unwrapped``, except those set explicitly."""
    for attribute, value in family.derive(unwrapped).items():
        if attribute not in explicit:
            setattr(unwrapped, attribute, value)


def _cartpole_derived(env: gym.Env) -> dict[str, float]:
    # CartPoleEnv caches these in __init__ and uses them in step().
    return {
        "total_mass": env.masspole + env.masscart,  # type: ignore[attr-defined]
        "polemass_length": env.masspole * env.length,  # type: ignore[attr-defined]
    }


def _acrobot_derived(env: gym.Env) -> dict[str, float]:
    # The dynamics use the centres of mass, not the link lengths (LINK_LENGTH_2 only draws);
    # uniform links have their centre of mass in the middle.
    return {
        "LINK_COM_POS_1": 0.5 * env.LINK_LENGTH_1,  # type: ignore[attr-defined]
        "LINK_COM_POS_2": 0.5 * env.LINK_LENGTH_2,  # type: ignore[attr-defined]
    }


def _no_derived(env: gym.Env) -> dict[str, float]:
    return {}


# Stock Hopper-v5 body masses (MuJoCo computes them from the capsules' volumes at density 1000 kg/m^3).
_HOPPER_TORSO_MASS = 1000.0 * np.pi * 0.05**2 * (2 * 0.2 + 4 / 3 * 0.05)
_HOPPER_THIGH_MASS = 1000.0 * np.pi * 0.05**2 * (2 * 0.225 + 4 / 3 * 0.05)


_FAMILY_LIST = (
    EnvFamily(
        name="cartpole",
        env_id="CartPole-v1",
        env_class=CartPoleEnv,
        params=(
            _spread("pole_length", "length", 1.0, 0.5, 1.5, "full pole length [m] (gymnasium stores half)", 0.5,
                    reason="fall time ~ sqrt(length / g): 0.5x falls 1.4x faster; every corner is still balanced "
                    "(corner test)"),
            _spread("pole_mass", "masspole", 0.1, 0.5, 1.5, "pole mass [kg]",
                    reason="changes the cart-pole coupling; the corner test still balances every corner"),
            _spread("cart_mass", "masscart", 1.0, 0.5, 1.5, "cart mass [kg]",
                    reason="push acceleration F / (M + m) spans about 0.6-1.9x stock; every corner is still balanced"),
            _spread("gravity", "gravity", 9.8, 0.5, 1.5, "gravitational acceleration [m/s^2]",
                    reason="fall rate ~ sqrt(g / length), the same effect as the length from the other side"),
            _spread("force_mag", "force_mag", 10.0, 0.5, 1.5, "force of a push [N]",
                    reason="0.5x still balances every corner; a sign flip (reversed motor) would bite but is "
                    "contrived, so the range stays positive"),
        ),
        derive=_cartpole_derived,
        description="balance a pole on a cart (Barto, Sutton & Anderson 1983); discrete actions",
        batched="securefrl.vectorized.cartpole:CartPoleBatch",
    ),
    EnvFamily(
        name="acrobot",
        env_id="Acrobot-v1",
        env_class=AcrobotEnv,
        params=(
            _spread("link_length_1", "LINK_LENGTH_1", 1.0, 0.5, 1.5, "length of the upper link [m]",
                    reason="every corner still swings up within the 500-step limit (corner test)"),
            _spread("link_length_2", "LINK_LENGTH_2", 1.0, 0.5, 1.5, "length of the lower link [m]",
                    reason="as link_length_1; the energy-pumping controller solves all 16 corners"),
            _spread("link_mass_1", "LINK_MASS_1", 1.0, 0.5, 1.5, "mass of the upper link [kg]",
                    reason="inertia 0.5-1.5x; the 1 N m torque still swings every corner up (corner test)"),
            _spread("link_mass_2", "LINK_MASS_2", 1.0, 0.5, 1.5, "mass of the lower link [kg]",
                    reason="as link_mass_1"),
        ),
        derive=_acrobot_derived,
        description="swing a two-link pendulum up (Sutton 1996); discrete actions",
        batched="securefrl.vectorized.acrobot:AcrobotBatch",
    ),
    EnvFamily(
        name="mountaincar",
        env_id="MountainCar-v0",
        env_class=MountainCarEnv,
        params=(
            _spread("force", "force", 0.001, 0.8, 1.2, "engine force per step",
                    reason="narrow: the car is underpowered by design; every corner still reaches the flag "
                    "in 200 steps"),
            _spread("gravity", "gravity", 0.0025, 0.8, 1.2, "gravity along the slope",
                    reason="as force (wider ranges were not checked)"),
        ),
        derive=_no_derived,
        description="drive an underpowered car up a hill (Moore 1990); discrete actions",
    ),
    EnvFamily(
        name="pendulum",
        env_id="Pendulum-v1",
        env_class=PendulumEnv,
        params=(
            _spread("mass", "m", 1.0, 0.75, 1.25, "pendulum mass [kg]",
                    reason="the 2 N m torque must still swing up and hold every corner (corner test); narrower than "
                    "the others because gravity torque grows with m g l"),
            _spread("length", "l", 1.0, 0.75, 1.25, "pendulum length [m]",
                    reason="as mass (gravity torque m g l / 2)"),
            _spread("gravity", "g", 10.0, 0.75, 1.25, "gravitational acceleration [m/s^2]",
                    reason="as mass"),
        ),
        derive=_no_derived,
        description="swing up and hold an inverted pendulum; continuous torque",
    ),
    EnvFamily(
        name="edge_caching",
        env_id=EDGE_CACHING_ID,
        env_class=EdgeCachingEnv,
        params=(
            FamilyParam("popularity_centre", "popularity_centre", 0.5, 0.0, 1.0,
                        "centre of the station's popular content on the circle of item types (0 = 1)",
                        positive=False, reason="the whole circle: stations with opposite centres have disjoint "
                        "top items, so one admit/evict policy cannot serve both (the observation has no statistics)"),
            FamilyParam("zipf_exponent", "zipf_exponent", 1.0, 0.6, 1.4, "Zipf exponent of the request law",
                        reason="from flatter than the web-request laws Breslau et al. (1999) measured (0.64-0.83) to "
                        "concentrated ones: how much caching the top items pays differs per station"),
        ),
        derive=_no_derived,
        description="a base station caching 3 of 12 items under Zipf requests (Zhang et al.); discrete admit/evict",
        kind="application",
        batched="securefrl.envs.batched:EdgeCachingBatch",
        reference=edge_caching_reference,
    ),
    EnvFamily(
        name="mec_offloading",
        env_id=MEC_OFFLOADING_ID,
        env_class=MECOffloadingEnv,
        params=(
            FamilyParam("channel_gain_db", "channel_gain_db", 0.0, -10.0, 10.0,
                        "long-term uplink channel gain [dB] (path loss, shadowing)", positive=False,
                        reason="+-10 dB flips the better choice between offloading and local computing; with +-50% "
                        "linear the median client's policy was within 3% of every client's own"),
            FamilyParam("local_cpu_ghz", "local_cpu_ghz", 1.0, 0.3, 1.7, "device CPU frequency [GHz]",
                        reason="a fast device should compute locally what a slow one offloads"),
            FamilyParam("server_cpu_ghz", "server_cpu_ghz", 4.0, 0.5, 7.5, "the device's edge-server CPU share [GHz]",
                        reason="server load: a loaded server (0.5 GHz share) makes offloading a loss"),
            FamilyParam("task_size_mbit", "task_size_mbit", 0.5, 0.3, 0.7, "mean task input size [Mbit]",
                        reason="moves the size threshold of the offloading rule"),
            FamilyParam("arrival_rate", "arrival_rate", 1.0, 0.5, 1.5, "tasks per second (Poisson)",
                        reason="load: how fast the backlogs build and so how often the other choice pays"),
        ),
        derive=_no_derived,
        description="run each arriving task locally or offload it to an edge server (Mao et al. 2017); discrete",
        kind="application",
        batched="securefrl.envs.batched:MECOffloadingBatch",
        reference=myopic_policy,
    ),
    EnvFamily(
        name="ran_access",
        env_id=RAN_ACCESS_ID,
        env_class=RANAccessEnv,
        params=(
            FamilyParam("capacity_centre", "capacity_centre", 0.5, 0.0, 1.0,
                        "where the site's strong cells sit on the circle of its 6 cells (0 = 1; cell k at k/6)",
                        positive=False, reason="the whole circle: a site's strong cell is the weak cell of the site "
                        "opposite, so one attach rule cannot serve both (the bandwidths are not observed)"),
            FamilyParam("capacity_contrast", "capacity_contrast", 1.0, 0.5, 1.5,
                        "how unequal the cells' bandwidth shares are (strongest / weakest = exp(2 contrast))",
                        reason="from a 2.7:1 split (cells of similar size) to 20:1 (a macro cell with small cells): "
                        "how much knowing the strong cell is worth differs per site"),
            FamilyParam("mean_session", "mean_session", 10.0, 6.0, 14.0,
                        "mean number of arrivals a user stays for (geometric): the site's traffic load",
                        reason="+-40% load: how much balancing load is worth against a user's SINR; it does not "
                        "change the greedy rule, only the loads it meets"),
        ),
        derive=_no_derived,
        description="attach each arriving user to one of 6 cells of an O-RAN site (Cao et al.; Ye et al. 2013); "
        "discrete",
        kind="application",
        batched="securefrl.envs.batched:RANAccessBatch",
        reference=greedy_policy,
    ),
    EnvFamily(
        name="hopper",
        env_id=HOPPER_ID,
        env_class="securefrl.envs.mujoco_hopper:HeterogeneousHopperEnv",
        params=(
            FamilyParam("leg_length", "leg_length", 0.5, 0.35, 0.65, "shin length [m] (Jin et al. vary the leg)",
                        reason="Jin et al. vary the leg; +-30% around 0.5 m (whether it bites is not measured)"),
            _spread("torso_mass", "torso_mass", _HOPPER_TORSO_MASS, 0.5, 1.5, "torso mass [kg]",
                    reason="0.5-1.5x as for the classic-control masses"),
            _spread("thigh_mass", "thigh_mass", _HOPPER_THIGH_MASS, 0.5, 1.5, "thigh mass [kg]",
                    reason="as torso_mass"),
            FamilyParam("foot_friction", "foot_friction", 2.0, 0.5, 3.0, "sliding friction of the foot",
                        reason="slippery (0.5) to grippy (3.0) ground around the stock 2.0"),
        ),
        derive=_no_derived,
        description="MuJoCo Hopper-v5 (11-d state, 3 torques) with per-client leg, masses and friction; continuous",
        requires="mujoco",
        extra="mujoco",
    ),
)

FAMILIES: Mapping[str, EnvFamily] = MappingProxyType({f.name: f for f in _FAMILY_LIST})
"""Built-in families by name (read-only)."""


FAMILY_KINDS = ("physics", "application")


def family_names(kind: str | None = None) -> tuple[str, ...]:
    """Names of the built-in families, sorted (for config validation and CLI help); only ``kind`` if given."""
    if kind is not None and kind not in FAMILY_KINDS:
        raise ConfigError("kind", f"unknown family kind {kind!r}; allowed: {', '.join(FAMILY_KINDS)}")
    return tuple(sorted(n for n, f in FAMILIES.items() if kind is None or f.kind == kind))


def get_family(name: str, field: str = "family") -> EnvFamily:
    """The family called ``name``; ConfigError listing the known families otherwise."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ConfigError(field, f"unknown family {name!r}; allowed: {', '.join(family_names())}") from None


def batched_target(env: str) -> str:
    """``module:Class`` of the batched implementation serving config ``env.name`` (a family or a plain id), or "".

    A plain gymnasium id is served by the family whose ``env_id`` it is (``CartPole-v1`` -> cartpole). By name
    only (imports nothing), for :mod:`securefrl.compat`; :func:`securefrl.envs.batched.batch_class_for` finds the
    same class from a built environment.
    """
    if env in FAMILIES:
        return FAMILIES[env].batched
    return next((f.batched for f in _FAMILY_LIST if f.env_id == env and f.batched), "")


def batched_families() -> tuple[str, ...]:
    """Families with a batched implementation (what ``federation.simulation = "vectorized"`` runs)."""
    return tuple(sorted(f.name for f in _FAMILY_LIST if f.batched))


def family_for_env(unwrapped: gym.Env) -> EnvFamily | None:
    """The family whose env class ``unwrapped`` is, so plain-id overrides also refresh derived attributes."""
    for family in _FAMILY_LIST:
        if family.is_env(unwrapped):
            return family
    return None

