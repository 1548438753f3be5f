"""Tests of heterogeneous client environments (securefrl.envs)."""

from __future__ import annotations

import json
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from securefrl.envs import FAMILIES, EnvSpec, draw_client_envs, family_names, get_family, resolve_env
from securefrl.errors import ConfigError

PHYSICS = family_names("physics")
AVAILABLE = tuple(n for n in family_names() if get_family(n).available())  # hopper needs securefrl[mujoco]
CLASSIC = tuple(n for n in PHYSICS if not get_family(n).requires)  # the classic-control families
FAMILY_PARAMS = [(f, p.name) for f in AVAILABLE for p in FAMILIES[f].params]


def rollout(spec: EnvSpec, steps: int = 30, seed: int = 0, with_rewards: bool = False) -> np.ndarray:
    """Observations (with the rewards appended if asked) under a fixed seeded action sequence (same actions for
    every spec of a family). Rewards matter where a parameter only changes costs (the MEC server's speed)."""
    env = spec.make()
    try:
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        out = [np.append(obs, 0.0) if with_rewards else obs]
        for _ in range(steps):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            out.append(np.append(obs, reward) if with_rewards else obs)
            if terminated or truncated:
                break
        return np.asarray(out)
    finally:
        env.close()


def checker_warnings(env: gym.Env) -> set[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    return {str(w.message) for w in caught}


# --- families -----------------------------------------------------------------------------


def test_family_names_sorted_and_complete() -> None:
    assert family_names() == ("acrobot", "cartpole", "edge_caching", "hopper", "mec_offloading", "mountaincar",
                              "pendulum", "ran_access")
    assert PHYSICS == ("acrobot", "cartpole", "hopper", "mountaincar", "pendulum")
    assert CLASSIC == ("acrobot", "cartpole", "mountaincar", "pendulum")
    assert family_names("application") == ("edge_caching", "mec_offloading", "ran_access")


@pytest.mark.parametrize("name", AVAILABLE)
def test_family_defaults_are_gymnasium_defaults(name: str) -> None:
    # Arrange: a fresh, untouched gymnasium env
    family = get_family(name)
    env = gym.make(family.env_id)
    # Act / Assert: each parameter's default is what gymnasium uses, so h=0 means "the standard task"
    for p in family.params:
        assert getattr(env.unwrapped, p.attribute) == pytest.approx(p.scale * p.default)
        lo, hi = family.ranges()[p.name]
        assert lo < p.default < hi
        assert lo > 0 or not p.positive
    for attribute, value in family.derive(env.unwrapped).items():
        assert getattr(env.unwrapped, attribute) == pytest.approx(value)
    env.close()


def test_describe_lists_every_parameter() -> None:
    for name in family_names():
        text = get_family(name).describe()
        assert all(p in text for p in get_family(name).param_names)


# --- draws --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", AVAILABLE)
def test_draw_reproducible_with_seed_and_differs_with_another(name: str) -> None:
    a = draw_client_envs(name, 5, 0.7, np.random.default_rng(42))
    b = draw_client_envs(name, 5, 0.7, np.random.default_rng(42))
    c = draw_client_envs(name, 5, 0.7, np.random.default_rng(43))
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    assert [s.to_dict() for s in a] != [s.to_dict() for s in c]
    # clients differ from each other too
    assert len({tuple(s.params.values()) for s in a}) == 5


@pytest.mark.parametrize("name", AVAILABLE)
def test_h0_gives_identical_clients_at_defaults(name: str) -> None:
    specs = draw_client_envs(name, 4, 0.0, np.random.default_rng(0))
    family = get_family(name)
    for s in specs:
        assert s.params == family.defaults()
        assert s.family == name and s.env_id == family.env_id


@pytest.mark.parametrize("name", AVAILABLE)
def test_h1_draws_span_the_documented_ranges(name: str) -> None:
    # 300 uniform draws: P(min or max further than 10% of the width from an end) < 1e-12 per parameter
    specs = draw_client_envs(name, 300, 1.0, np.random.default_rng(7))
    for pname, (lo, hi) in get_family(name).ranges().items():
        values = np.array([s.params[pname] for s in specs])
        assert values.min() >= lo and values.max() <= hi
        assert values.min() < lo + 0.1 * (hi - lo) and values.max() > hi - 0.1 * (hi - lo)


def test_range_shrinks_linearly_towards_default() -> None:
    full = draw_client_envs("cartpole", 50, 1.0, np.random.default_rng(3))
    half = draw_client_envs("cartpole", 50, 0.5, np.random.default_rng(3))
    defaults = get_family("cartpole").defaults()
    for f, h in zip(full, half, strict=True):
        for name, d in defaults.items():
            assert h.params[name] - d == pytest.approx(0.5 * (f.params[name] - d), rel=1e-9, abs=1e-12)


def test_user_ranges_are_respected_and_shrink() -> None:
    ranges = {"pole_length": (1.8, 2.0)}
    full = draw_client_envs("cartpole", 100, 1.0, np.random.default_rng(1), ranges=ranges)
    values = np.array([s.params["pole_length"] for s in full])
    assert values.min() >= 1.8 and values.max() <= 2.0
    # at h = 0.5 the interval is halfway between the default 1.0 and (1.8, 2.0)
    half = draw_client_envs("cartpole", 100, 0.5, np.random.default_rng(1), ranges=ranges)
    values = np.array([s.params["pole_length"] for s in half])
    assert values.min() >= 1.4 and values.max() <= 1.5
    # the other parameters keep the family ranges
    assert len({s.params["gravity"] for s in half}) == 100


def test_overrides_scalar_and_per_client() -> None:
    specs = draw_client_envs(
        "pendulum", 3, 1.0, np.random.default_rng(0), overrides={"mass": 2.0, "gravity": [9.0, 9.5, 10.0]}
    )
    assert [s.params["mass"] for s in specs] == [2.0, 2.0, 2.0]
    assert [s.params["gravity"] for s in specs] == [9.0, 9.5, 10.0]
    assert len({s.params["length"] for s in specs}) == 3
    env = specs[1].make()
    assert (env.unwrapped.m, env.unwrapped.g) == (2.0, 9.5)
    env.close()


def test_overrides_do_not_change_the_other_draws() -> None:
    plain = draw_client_envs("acrobot", 4, 1.0, np.random.default_rng(5))
    fixed = draw_client_envs("acrobot", 4, 1.0, np.random.default_rng(5), overrides={"link_mass_1": 1.2})
    for p, f in zip(plain, fixed, strict=True):
        assert f.params["link_mass_1"] == 1.2
        assert f.params["link_length_2"] == p.params["link_length_2"]


def test_plain_gymnasium_id_with_ranges_and_overrides() -> None:
    specs = draw_client_envs(
        "CartPole-v1", 3, 1.0, np.random.default_rng(0), overrides={"tau": 0.01}, ranges={"masspole": (0.2, 0.3)}
    )
    for s in specs:
        assert s.family is None and s.env_id == "CartPole-v1"
        assert set(s.params) == {"masspole", "tau"}
        assert 0.2 <= s.params["masspole"] <= 0.3
        env = s.make()
        u = env.unwrapped
        assert u.tau == 0.01 and u.masspole == s.params["masspole"]
        # derived attributes are refreshed for plain ids of a known family too
        assert u.total_mass == pytest.approx(u.masscart + u.masspole)
        assert u.polemass_length == pytest.approx(u.masspole * u.length)
        env.close()


def test_plain_id_at_h0_without_ranges_gives_unmodified_env() -> None:
    specs = draw_client_envs("MountainCarContinuous-v0", 2, 0.0, np.random.default_rng(0))
    assert [s.params for s in specs] == [{}, {}]
    np.testing.assert_array_equal(rollout(specs[0]), rollout(EnvSpec("MountainCarContinuous-v0")))


def test_to_dict_is_json_and_round_trips() -> None:
    specs = draw_client_envs("acrobot", 2, 1.0, np.random.default_rng(0))
    record = json.loads(json.dumps([s.to_dict() for s in specs]))
    assert [EnvSpec.from_dict(r) for r in record] == specs
    assert all(type(v) is float for r in record for v in r["params"].values())


# --- the physics really changes -----------------------------------------------------------


def test_longer_pole_changes_trajectory_under_same_actions_and_seed() -> None:
    short = EnvSpec("CartPole-v1", {"pole_length": 1.0}, "cartpole")
    again = EnvSpec("CartPole-v1", {"pole_length": 1.0}, "cartpole")
    long = EnvSpec("CartPole-v1", {"pole_length": 1.5}, "cartpole")
    a, b, c = rollout(short), rollout(again), rollout(long)
    np.testing.assert_array_equal(a, b)  # control: same physics, same trajectory
    n = min(len(a), len(c))
    assert not np.allclose(a[1:n], c[1:n])
    # a longer pole falls more slowly: the angular velocity grows less in the first step
    assert abs(c[1, 3] - c[0, 3]) < abs(a[1, 3] - a[0, 3])


@pytest.mark.parametrize(("name", "param"), FAMILY_PARAMS)
def test_every_parameter_changes_the_dynamics(name: str, param: str) -> None:
    family = get_family(name)
    default = EnvSpec(family.env_id, family.defaults(), name)
    changed = EnvSpec(family.env_id, {**family.defaults(), param: family.ranges()[param][1]}, name)
    a, b = rollout(default, with_rewards=True), rollout(changed, with_rewards=True)
    n = min(len(a), len(b))
    assert not np.allclose(a[:n], b[:n]), f"{name}.{param} had no effect on the trajectory"


def test_cartpole_derived_attributes_follow_masses_and_length() -> None:
    env = EnvSpec("CartPole-v1", {"pole_length": 2.0, "pole_mass": 0.3, "cart_mass": 1.5}, "cartpole").make()
    u = env.unwrapped
    assert u.length == 1.0  # gymnasium stores half the pole length
    assert u.total_mass == pytest.approx(1.8)
    assert u.polemass_length == pytest.approx(0.3)
    env.close()


def test_acrobot_centre_of_mass_follows_link_length() -> None:
    env = EnvSpec("Acrobot-v1", {"link_length_1": 0.6, "link_length_2": 1.4}, "acrobot").make()
    assert (env.unwrapped.LINK_COM_POS_1, env.unwrapped.LINK_COM_POS_2) == pytest.approx((0.3, 0.7))
    env.close()


def test_plain_attribute_overrides_match_family_parameters() -> None:
    by_family = EnvSpec("CartPole-v1", {"pole_length": 1.5, "pole_mass": 0.15}, "cartpole")
    by_attribute = EnvSpec("CartPole-v1", {"length": 0.75, "masspole": 0.15})
    np.testing.assert_allclose(rollout(by_family), rollout(by_attribute))


def test_cartpole_step_matches_the_equations_of_motion_with_new_physics() -> None:
    # Barto, Sutton & Anderson (1983) dynamics as written in gymnasium, evaluated independently.
    g, mc, mp, half, f, tau = 12.0, 1.3, 0.07, 0.4, 7.0, 0.02
    env = EnvSpec("CartPole-v1", {"gravity": g, "cart_mass": mc, "pole_mass": mp, "pole_length": 2 * half,
                                  "force_mag": f}, "cartpole").make()
    (x, xd, th, thd), _ = env.reset(seed=11)
    x, xd, th, thd = map(float, env.unwrapped.state)
    obs, *_ = env.step(1)
    env.close()
    total = mc + mp
    temp = (f + mp * half * thd**2 * math.sin(th)) / total
    thacc = (g * math.sin(th) - math.cos(th) * temp) / (half * (4 / 3 - mp * math.cos(th) ** 2 / total))
    xacc = temp - mp * half * thacc * math.cos(th) / total
    expected = [x + tau * xd, xd + tau * xacc, th + tau * thd, thd + tau * thacc]
    np.testing.assert_allclose(obs, expected, rtol=1e-5)


# --- gymnasium API ------------------------------------------------------------------------


@pytest.mark.parametrize("name", AVAILABLE)
def test_env_checker_passes_at_full_heterogeneity(name: str) -> None:
    family = get_family(name)
    reference = gym.make(family.env_id)
    baseline = checker_warnings(reference.unwrapped)  # gymnasium's own remarks on the stock env
    reference.close()
    for spec in draw_client_envs(name, 3, 1.0, np.random.default_rng(9)):
        env = spec.make()
        assert checker_warnings(env.unwrapped) <= baseline  # raises on failure; adds no new warnings
        env.close()


def test_rgb_render_reflects_pole_length() -> None:
    frames = []
    for length in (0.5, 1.5):
        env = EnvSpec("CartPole-v1", {"pole_length": length}, "cartpole").make(render_mode="rgb_array")
        env.reset(seed=0)
        frames.append(env.render())
        env.close()
    assert frames[0].shape == (400, 600, 3)
    assert not np.array_equal(frames[0], frames[1])


# --- errors -------------------------------------------------------------------------------


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"env": "cartpol"}, "env", "did you mean 'cartpole'"),
        ({"env": "NoSuchEnv-v9"}, "env", "acrobot, cartpole, edge_caching, hopper, mec_offloading, mountaincar"),
        ({"heterogeneity": 1.5}, "heterogeneity", "[0, 1]"),
        ({"heterogeneity": -0.1}, "heterogeneity", "[0, 1]"),
        ({"heterogeneity": float("nan")}, "heterogeneity", "finite"),
        ({"heterogeneity": True}, "heterogeneity", "real number"),
        ({"n_clients": 0}, "n_clients", ">= 1"),
        ({"n_clients": 2.5}, "n_clients", ">= 1"),
        ({"rng": 0}, "rng", "Generator"),
        ({"overrides": {"pole_len": 1.0}}, "overrides.pole_len", "allowed: pole_length, pole_mass"),
        ({"ranges": {"mass": (1, 2)}}, "ranges.mass", "allowed: pole_length"),
        ({"overrides": {"gravity": 0.0}}, "overrides.gravity", "positive"),
        ({"overrides": {"gravity": "9.8"}}, "overrides.gravity", "real number"),
        ({"overrides": {"gravity": [9.8, 9.9]}}, "overrides.gravity", "n_clients=3"),
        ({"ranges": {"gravity": (-1.0, 5.0)}}, "ranges.gravity", "positive"),
        ({"ranges": {"gravity": (12.0, 5.0)}}, "ranges.gravity", "low <= high"),
        ({"ranges": {"gravity": 5.0}}, "ranges.gravity", "(low, high)"),
        ({"overrides": {"gravity": 9.0}, "ranges": {"gravity": (8.0, 9.0)}}, "overrides.gravity", "not both"),
        ({"env": "CartPole-v1", "ranges": {"pole_length": (1, 2)}}, "ranges.pole_length", "masspole"),
        ({"env": "CartPole-v1", "ranges": {"_sutton_barto_reward": (0, 1)}}, "ranges._sutton_barto_reward", "'_'"),
        ({"env": "CartPole-v1", "overrides": {"kinematics_integrator": 1.0}, "heterogeneity": 0.0},
         "overrides.kinematics_integrator", "no plain numeric attribute"),
        ({"client_types": -1}, "client_types", ">= 0"),
        ({"client_types": 1.5}, "client_types", ">= 0"),
        ({"client_types": 2, "type_spread": 1.5}, "type_spread", "[0, 1]"),
    ],
)
def test_bad_draw_arguments_raise_config_error(kwargs: dict, field: str, fragment: str) -> None:
    args = {"env": "cartpole", "n_clients": 3, "heterogeneity": 0.5, "rng": rng(), **kwargs}
    with pytest.raises(ConfigError) as info:
        draw_client_envs(**args)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_spec_errors() -> None:
    with pytest.raises(ConfigError, match="allowed: acrobot, cartpole"):
        EnvSpec("CartPole-v1", {}, "cartpoles")
    with pytest.raises(ConfigError, match="unknown environment"):
        EnvSpec("CartPole-v99")
    with pytest.raises(ConfigError, match=r"params\.pole_mass: must be a positive"):
        EnvSpec("CartPole-v1", {"pole_mass": -0.1}, "cartpole")
    with pytest.raises(ConfigError, match="no attribute 'not_there'"):
        EnvSpec("Pendulum-v1", {"not_there": 1.0}).make()
    with pytest.raises(ConfigError, match="needs a CartPoleEnv"):
        EnvSpec("Pendulum-v1", {"pole_mass": 0.2}, "cartpole").make()
    with pytest.raises(ConfigError, match="allowed: env_id, family, params"):
        EnvSpec.from_dict({"env_id": "CartPole-v1", "seed": 3})


def test_resolve_env() -> None:
    assert resolve_env("pendulum") is FAMILIES["pendulum"]
    assert resolve_env("LunarLander-v3" if "LunarLander-v3" in gym.registry else "Pendulum-v1") is None
    with pytest.raises(ConfigError, match="family"):
        resolve_env("pendulums")


# --- the ranges at h=1 keep the task solvable ---------------------------------------------


def _corners(name: str) -> list[dict[str, float]]:
    box = get_family(name).ranges()
    grid = np.array(np.meshgrid(*[[0, 1]] * len(box))).reshape(len(box), -1).T
    return [{p: box[p][i] for p, i in zip(box, row, strict=True)} for row in grid]


def _solve(name: str, params: dict[str, float], seed: int, variant: int) -> bool:
    """Whether hand-written controller ``variant`` solves one episode (the families' documented criterion)."""
    env = EnvSpec(get_family(name).env_id, params, name).make()
    obs, _ = env.reset(seed=seed)
    u, upright = env.unwrapped, 0
    for t in range(500):
        if name == "cartpole":  # linear state feedback
            action = int(obs[2] + 0.3 * obs[3] + 0.02 * obs[0] + 0.1 * obs[1] > 0)
        elif name == "acrobot":  # pump energy with the elbow, following one of three velocity signals
            signal = (obs[4] + obs[5], obs[5], -obs[4])[variant]
            action = 2 if signal > 0 else 0
        elif name == "mountaincar":  # back up first, then push along the velocity
            action = 0 if t < 20 or obs[1] < 0 else 2
        else:  # pendulum: energy pumping, then a PD controller near the top
            th, thd = math.atan2(obs[1], obs[0]), obs[2]
            inertia = u.m * u.l**2 / 3
            energy = 0.5 * inertia * thd**2 + u.m * u.g * u.l / 2 * (math.cos(th) - 1)
            if math.cos(th) > 0.9 and abs(thd) < 5:
                torque = -inertia * (1.5 * u.g / u.l * th + 15 * th + 6 * thd)
            else:
                torque = 2.0 * (1 if thd >= 0 else -1) * (1 if energy < 0 else -1)
            action = np.array([np.clip(torque, -2, 2)], dtype=np.float32)
        obs, _, terminated, truncated, _ = env.step(action)
        upright = upright + 1 if name == "pendulum" and obs[0] > 0.98 else 0
        if terminated or truncated:
            break
    env.close()
    if name == "cartpole":
        return truncated and not terminated
    if name == "pendulum":
        return upright >= 50  # held upright for the last 50 of 200 steps
    return terminated


@pytest.mark.parametrize("name", CLASSIC)
def test_every_corner_of_the_h1_box_is_solvable(name: str) -> None:
    # Guards the "task stays learnable" claim of the documented ranges (a solvable task, not a learning run).
    variants = range(3) if name == "acrobot" else range(1)
    failures = [
        (c, s) for c in _corners(name) for s in range(3) if not any(_solve(name, c, s, v) for v in variants)
    ]
    assert not failures, f"{name}: unsolved corners {failures[:3]}"


# --- overrides keep the observation/action-space contract ---------------------------------


def _max_abs_obs(spec: EnvSpec, action: object, steps: int = 200) -> tuple[gym.Env, np.ndarray]:
    env = spec.make()
    env.reset(seed=0)
    seen = []
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(action)
        assert env.observation_space.contains(obs), f"{obs} outside {env.observation_space}"
        seen.append(np.abs(obs))
        if terminated or truncated:
            env.reset()
    return env, np.max(seen, axis=0)


def test_pendulum_max_speed_override_widens_the_observation_space() -> None:
    # full torque on a light, long pendulum spins it up to the new speed limit of 12 (> the stock 8)
    spec = EnvSpec("Pendulum-v1", {"max_speed": 12.0, "m": 0.3})
    env, peak = _max_abs_obs(spec, np.array([2.0], dtype=np.float32))
    assert peak[2] > 8.0
    assert env.observation_space.high[2] == 12.0


def test_pendulum_max_torque_override_rebuilds_the_action_space() -> None:
    env = EnvSpec("Pendulum-v1", {"max_torque": 3.0}).make()
    assert env.action_space.high[0] == 3.0 and env.action_space.low[0] == -3.0


@pytest.mark.parametrize(
    ("env_id", "params", "index", "bound"),
    [
        ("MountainCar-v0", {"max_speed": 0.1, "force": 0.004}, 1, 0.1),
        ("Acrobot-v1", {"MAX_VEL_1": 20.0}, 4, 20.0),
        ("CartPole-v1", {"x_threshold": 4.0}, 0, 8.0),
    ],
)
def test_space_bounds_follow_overridden_attributes(env_id: str, params: dict, index: int, bound: float) -> None:
    env = EnvSpec(env_id, params).make()
    assert env.observation_space.high[index] == pytest.approx(bound)
    assert env.observation_space.low[index] == pytest.approx(-bound)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1", "MountainCar-v0", "MountainCarContinuous-v0",
                                    "Acrobot-v1"])
def test_rebuilt_spaces_at_default_attributes_equal_gymnasiums(env_id: str) -> None:
    from securefrl.envs.contract import SPACE_BUILDERS

    u = gym.make(env_id).unwrapped
    for attr, space in SPACE_BUILDERS[type(u)](u).items():
        assert space == getattr(u, attr)


class _ScaledObsEnv(gym.Env):
    """An env the contract module does not know: its declared space ignores ``scale``."""

    scale = 1.0

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.array([0.5 * self.scale], dtype=np.float32), {}

    def step(self, action: object) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.array([0.5 * self.scale], dtype=np.float32), 0.0, False, False, {}


def test_unknown_class_with_overrides_refuses_observations_outside_the_space() -> None:
    from securefrl.envs.contract import ObservationSpaceError

    if "securefrl-test/ScaledObs-v0" not in gym.registry:
        gym.register(id="securefrl-test/ScaledObs-v0", entry_point=_ScaledObsEnv)
    EnvSpec("securefrl-test/ScaledObs-v0", {"scale": 1.5}).make().reset(seed=0)  # control: 0.75 is inside
    env = EnvSpec("securefrl-test/ScaledObs-v0", {"scale": 4.0}).make()
    with pytest.raises(ObservationSpaceError, match="after overriding scale"), \
            pytest.warns(UserWarning, match="not within the observation space"):  # gymnasium's checker agrees
        env.reset(seed=0)


def test_a_family_behind_a_missing_extra_is_refused_naming_the_extra() -> None:
    import dataclasses

    missing = dataclasses.replace(get_family("hopper"), requires="securefrl_no_such_module", extra="mujoco")
    assert not missing.available()
    with pytest.raises(ConfigError, match=r"pip install 'securefrl\[mujoco\]'") as info:
        missing.check_available("env.name")
    assert info.value.field == "env.name"
    with pytest.raises(ConfigError, match="securefrl_no_such_module"):
        missing.env_type()


def test_a_plain_gymnasium_id_runs_at_the_default_heterogeneity_with_identical_clients() -> None:
    from securefrl.envs.spec import NothingVariesWarning

    with pytest.warns(NothingVariesWarning, match="env.ranges"):
        specs = draw_client_envs("MountainCarContinuous-v0", 3, 0.5, np.random.default_rng(0))
    assert len(specs) == 3 and all(s == specs[0] for s in specs)
    with pytest.warns(NothingVariesWarning, match="env.name='cartpole'"):  # a known family is named as the way out
        draw_client_envs("CartPole-v1", 2, 0.5, np.random.default_rng(0))


# --- client types ----------------------------------------------------------------------------
def quantiles(specs: list[EnvSpec], family: str, h: float = 1.0) -> np.ndarray:
    """Each client's position in its parameter ranges at level ``h`` (0 = low end, 1 = high end)."""
    fam = get_family(family)
    out = []
    for s in specs:
        row = []
        for p in fam.params:
            lo, hi = (1 - h) * p.default + h * p.low, (1 - h) * p.default + h * p.high
            row.append((s.params[p.name] - lo) / (hi - lo))
        out.append(row)
    return np.asarray(out)


@pytest.mark.parametrize("family", ["edge_caching", "mec_offloading", "cartpole"])
def test_client_types_put_each_type_in_its_own_stratum_and_its_clients_close_together(family: str) -> None:
    for seed in range(5):
        exact = quantiles(draw_client_envs(family, 9, 1.0, np.random.default_rng(seed), client_types=3,
                                           type_spread=0.0), family)
        for t in range(3):  # spread 0: a type's clients are identical
            np.testing.assert_allclose(exact[t::3], np.broadcast_to(exact[t], exact[t::3].shape), atol=1e-12)
        strata = np.floor(exact[:3] * 3).astype(int)  # (type, parameter): a Latin hypercube over the types
        assert all(sorted(strata[:, j]) == [0, 1, 2] for j in range(strata.shape[1]))
        near = quantiles(draw_client_envs(family, 9, 1.0, np.random.default_rng(seed), client_types=3,
                                          type_spread=0.1), family)
        for t in range(3):
            assert np.ptp(near[t::3], axis=0).max() <= 0.1 + 1e-9
            assert np.abs(near[t::3] - exact[t]).max() <= 0.05 + 1e-9


def test_client_types_are_reproducible_keep_their_quantiles_across_h_and_vanish_at_h0() -> None:
    draws = {h: draw_client_envs("edge_caching", 6, h, np.random.default_rng(3), client_types=3)
             for h in (0.0, 0.5, 1.0)}
    assert draws[1.0] == draw_client_envs("edge_caching", 6, 1.0, np.random.default_rng(3), client_types=3)
    assert draws[1.0] != draw_client_envs("edge_caching", 6, 1.0, np.random.default_rng(4), client_types=3)
    np.testing.assert_allclose(quantiles(draws[0.5], "edge_caching", 0.5), quantiles(draws[1.0], "edge_caching"))
    assert all(s.params == get_family("edge_caching").defaults() for s in draws[0.0])
    untyped = draw_client_envs("edge_caching", 6, 1.0, np.random.default_rng(3))
    assert untyped == draw_client_envs("edge_caching", 6, 1.0, np.random.default_rng(3), client_types=0)


def test_client_types_reach_the_federation_from_the_config() -> None:
    from securefrl.config import load_config
    from securefrl.envs.spec import draw_config_envs

    cfg = load_config(overrides=["env.name=edge_caching", "env.heterogeneity=1", "federation.n_clients=4",
                                 "env.client_types=2", "env.type_spread=0"])
    specs = draw_config_envs(cfg)
    assert specs[0] == EnvSpec(specs[2].env_id, specs[2].params, specs[2].family) and specs[0] != specs[1]
    with pytest.raises(ConfigError, match=r"env\.client_types"):
        load_config(overrides=["env.client_types=-2"])
