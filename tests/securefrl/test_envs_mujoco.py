"""The MuJoCo Hopper family (optional extra securefrl[mujoco]); skipped only when mujoco is not installed."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the hopper family needs the optional extra securefrl[mujoco]")

import mujoco
from gymnasium.utils.env_checker import check_env

from securefrl.config import load_config
from securefrl.envs import EnvSpec, draw_client_envs, get_family
from securefrl.federation import make_federation


def checker_warnings(env: gym.Env) -> set[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    return {str(w.message) for w in caught}


def hopper(**params: float) -> gym.Env:
    return EnvSpec(get_family("hopper").env_id, params, "hopper").make()


@pytest.mark.parametrize("h", [0.0, 1.0])
def test_env_checker_adds_no_warning_to_stock_hoppers(h: float) -> None:
    stock = gym.make("Hopper-v5")
    baseline = checker_warnings(stock.unwrapped)  # stock Hopper's own remarks (unbounded observation box)
    for spec in draw_client_envs("hopper", 2, h, np.random.default_rng(1)):
        env = spec.make()
        assert checker_warnings(env.unwrapped) <= baseline
        env.close()


def test_defaults_reproduce_stock_hopper() -> None:
    ours, stock = hopper(), gym.make("Hopper-v5")
    a, b = ours.reset(seed=3)[0], stock.reset(seed=3)[0]
    rng = np.random.default_rng(0)
    for _ in range(60):
        np.testing.assert_allclose(a, b, atol=1e-9)
        act = rng.uniform(-1, 1, 3).astype(np.float32)
        a, b = ours.step(act)[0], stock.step(act)[0]


def _foot_bottom_z(env: gym.Env) -> float:
    """Height of the lowest point of the foot capsule at the initial pose (torso at its stock height)."""
    u = env.unwrapped
    u.set_state(u.init_qpos, u.init_qvel)  # the noise-free initial pose (set_state runs mj_forward)
    gid = mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_GEOM, "foot_geom")
    return float(u.data.geom_xpos[gid, 2] - u.model.geom_size[gid, 0])


def test_leg_length_moves_the_foot_and_keeps_the_joints_attached() -> None:
    short, stock, long = hopper(leg_length=0.4), hopper(), hopper(leg_length=0.6)
    z = [_foot_bottom_z(e) for e in (short, stock, long)]
    assert z[0] - z[1] == pytest.approx(0.1, abs=1e-9) and z[1] - z[2] == pytest.approx(0.1, abs=1e-9)
    for env, length in ((short, 0.4), (long, 0.6)):
        u = env.unwrapped
        leg = mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_BODY, "leg")
        knee = mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_JOINT, "leg_joint")
        ankle = mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_JOINT, "foot_joint")
        thigh_bottom = u.data.xpos[mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_BODY, "thigh"), 2] - 0.45
        assert u.data.xanchor[knee, 2] == pytest.approx(thigh_bottom)  # knee at the bottom of the thigh
        assert u.data.xanchor[knee, 2] - u.data.xanchor[ankle, 2] == pytest.approx(length)  # ankle at the shin end
        stock_mass = stock.unwrapped.model.body_mass[leg]
        # the shin's mass follows its capsule volume (density kept): pi r^2 (L + 4/3 r)
        r = 0.04
        assert u.model.body_mass[leg] / stock_mass == pytest.approx((length + 4 / 3 * r) / (0.5 + 4 / 3 * r))


def test_masses_and_friction_are_applied_whatever_the_order() -> None:
    a = hopper(torso_mass=5.0, thigh_mass=2.0, foot_friction=0.7, leg_length=0.6)
    u = a.unwrapped
    ids = {n: mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_BODY, n) for n in ("torso", "thigh")}
    assert u.model.body_mass[ids["torso"]] == pytest.approx(5.0)
    assert u.model.body_mass[ids["thigh"]] == pytest.approx(2.0)
    assert u.model.geom_friction[mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_GEOM, "foot_geom"), 0] == 0.7
    b = gym.make(get_family("hopper").env_id).unwrapped
    for name, value in (("leg_length", 0.6), ("foot_friction", 0.7), ("thigh_mass", 2.0), ("torso_mass", 5.0)):
        setattr(b, name, value)
    np.testing.assert_array_equal(b.model.body_mass, u.model.body_mass)
    np.testing.assert_array_equal(b.model.body_inertia, u.model.body_inertia)
    with pytest.raises(ValueError, match="positive"):
        b.leg_length = -1.0


def test_tiny_sac_federation_on_heterogeneous_hoppers() -> None:
    cfg = load_config(overrides=[
        "env.name=hopper", "env.heterogeneity=1.0", "agent.name=sac", "federation.n_clients=2", "federation.rounds=1",
        "federation.local_steps=64", "federation.eval_episodes=1", "agent.params.hidden=[16,16]",
        "agent.params.learning_starts=32", "agent.params.batch_size=16",
    ])
    fed = make_federation(cfg)
    record = fed.run_round()
    assert all(np.isfinite(row["return_global"]) for row in record.clients)
    assert fed.clients[0].env_spec.params != fed.clients[1].env_spec.params
