"""Agents: registry, flat-vector round trip, determinism, exact checkpoint continuation, learning smoke tests.

Budgets are tiny so the file runs in seconds; long learning runs live in benchmarks/agents_cartpole.py.
Learning smoke tests use fixed seeds and thresholds far from the random-policy baseline.
"""

from __future__ import annotations

import io
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from securefrl.agents import (
    AGENT_CONFIGS,
    Agent,
    DQNAgent,
    DQNConfig,
    PPOAgent,
    PPOConfig,
    SACAgent,
    SACConfig,
    make_agent,
)
from securefrl.errors import ConfigError


class TargetEnv(gym.Env):
    """One-step continuous bandit: observe x ~ U(-1, 1), reward -(a - x)^2. A uniform policy scores ~ -1.67."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-2.0, 2.0, (1,), dtype=np.float32)
        self._x = np.zeros(1, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._x = self.np_random.uniform(-1.0, 1.0, size=1).astype(np.float32)
        return self._x.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = -float((np.asarray(action)[0] - self._x[0]) ** 2)
        return self._x.copy(), reward, True, False, {}


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    """Tiny networks: threads cost more than they buy, and oversubscribed cores make timing erratic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def pendulum() -> gym.Env:
    return gym.make("Pendulum-v1")


# Tiny configs that still exercise every code path (updates, target syncs, short rollouts).
SMALL: dict[str, tuple[Any, Any, int]] = {
    "dqn": (cartpole, DQNConfig(hidden=(16, 16), learning_starts=40, train_freq=16, gradient_steps=4, batch_size=16,
                                target_update_interval=6, buffer_size=500, exploration_steps=200), 150),
    "ppo": (cartpole, PPOConfig(hidden=(16, 16), n_envs=2, n_steps=16, n_epochs=2, n_minibatches=2), 90),
    "sac": (pendulum, SACConfig(hidden=(16, 16), learning_starts=40, batch_size=16, buffer_size=500), 90),
}


def small_agent(name: str, seed: int = 0) -> Agent:
    env_fn, cfg, _ = SMALL[name]
    return make_agent(name, env_fn, cfg, seed=seed)


def flat_state(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested state dict flattened to path -> leaf, for exact comparison."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flat_state(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flat_state(v, f"{prefix}/{i}"))
    else:
        out[prefix] = obj
    return out


def assert_states_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    fa, fb = flat_state(a), flat_state(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        va, vb = fa[key], fb[key]
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), key
        else:
            assert va == vb, key


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# --- registry and configs -----------------------------------------------------------------
def test_registry_builds_each_agent_from_dataclass_dict_or_none() -> None:
    assert set(AGENT_CONFIGS) == {"dqn", "ppo", "sac"}
    assert isinstance(make_agent("dqn", cartpole), DQNAgent)
    ppo = make_agent("ppo", cartpole, {"n_envs": 2, "hidden": [8, 8]}, seed=3)
    assert isinstance(ppo, PPOAgent)
    assert ppo.config.n_envs == 2 and ppo.config.hidden == (8, 8)
    assert isinstance(make_agent("sac", pendulum, SACConfig(hidden=(8,))), SACAgent)


@pytest.mark.parametrize(
    ("name", "config", "field"),
    [
        ("a2c", None, "agent.name"),
        ("dqn", {"learning_rate": 1e-3}, "agent.params.learning_rate"),
        ("dqn", {"gamma": 1.5}, "agent.params.gamma"),
        ("ppo", {"n_minibatches": 10_000}, "agent.params.n_minibatches"),
        ("sac", {"hidden": []}, "agent.params.hidden"),
    ],
)
def test_bad_configs_raise_config_error_naming_the_field(name: str, config: Any, field: str) -> None:
    env_fn = pendulum if name == "sac" else cartpole
    with pytest.raises(ConfigError) as err:
        make_agent(name, env_fn, config)
    assert err.value.field == field


@pytest.mark.parametrize(("name", "env_fn"), [("dqn", pendulum), ("ppo", pendulum), ("sac", cartpole)])
def test_wrong_action_space_is_refused(name: str, env_fn: Any) -> None:
    with pytest.raises(ConfigError, match="action space"):
        make_agent(name, env_fn)


def test_negative_seed_is_refused() -> None:
    with pytest.raises(ConfigError, match="seed"):
        make_agent("dqn", cartpole, seed=-1)


# --- flat parameter vectors -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dqn", "ppo", "sac"])
def test_flat_round_trip_is_exact_and_covers_all_federated_tensors(name: str) -> None:
    agent = small_agent(name)
    named = agent.federated_parameters()
    spec = agent.parameter_spec()
    assert spec.dim == sum(p.numel() for _, p in named)
    assert all(p.requires_grad for _, p in named)

    flat = agent.get_flat()
    new = flat + np.random.default_rng(0).normal(size=flat.shape).astype(np.float32)
    agent.set_flat(new)
    np.testing.assert_array_equal(agent.get_flat(), new)
    agent.set_flat(flat)
    np.testing.assert_array_equal(agent.get_flat(), flat)


def test_expected_federated_tensors() -> None:
    assert {n.split(".")[0] for n, _ in small_agent("dqn").federated_parameters()} == {"q"}
    assert {n.split(".")[0] for n, _ in small_agent("ppo").federated_parameters()} == {"actor", "critic"}
    assert {n.split(".")[0] for n, _ in small_agent("sac").federated_parameters()} == {"actor", "q1", "q2"}


def test_set_flat_syncs_target_networks() -> None:
    dqn = small_agent("dqn")
    dqn.set_flat(dqn.get_flat() + 0.5)
    for t, s in zip(dqn.target_net.parameters(), dqn.q_net.parameters(), strict=True):
        assert torch.equal(t, s)
    sac = small_agent("sac")
    sac.set_flat(sac.get_flat() - 0.25)
    for target, online in ((sac.q1_target, sac.q1), (sac.q2_target, sac.q2)):
        for t, s in zip(target.parameters(), online.parameters(), strict=True):
            assert torch.equal(t, s)


# --- determinism and checkpoints --------------------------------------------------------------
@pytest.mark.parametrize("name", ["dqn", "ppo", "sac"])
def test_same_seed_same_run_different_seed_different_run(name: str) -> None:
    steps = SMALL[name][2]
    a, b, c = small_agent(name, seed=7), small_agent(name, seed=7), small_agent(name, seed=8)
    before = a.get_flat()
    sa, sb = a.learn(steps), b.learn(steps)
    c.learn(steps)
    assert not np.array_equal(a.get_flat(), before), "learning must change the parameters"
    np.testing.assert_array_equal(a.get_flat(), b.get_flat())
    assert sa == pytest.approx(sb, nan_ok=True)
    assert not np.array_equal(a.get_flat(), c.get_flat())


@pytest.mark.parametrize("name", ["dqn", "ppo", "sac"])
def test_checkpoint_then_reseed_continues_bit_identically(name: str) -> None:
    steps = SMALL[name][2]
    a = small_agent(name, seed=1)
    a.learn(steps)
    state = roundtrip(a.state_dict())  # must load with weights_only=True

    b = small_agent(name, seed=99)  # different init and streams, overwritten by the checkpoint
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.get_flat(), a.get_flat())
    for agent in (a, b):
        agent.reseed(5)
        agent.learn(steps)
    np.testing.assert_array_equal(a.get_flat(), b.get_flat())
    assert_states_equal(a.state_dict(), b.state_dict())

    # Control: without the checkpoint the continuation differs, so the check above has teeth.
    c = small_agent(name, seed=99)
    c.reseed(5)
    c.learn(steps)
    assert not np.array_equal(c.get_flat(), a.get_flat())


def test_checkpoint_of_other_agent_or_config_is_refused() -> None:
    state = small_agent("dqn").state_dict()
    with pytest.raises(ValueError, match="agent"):
        small_agent("ppo").load_state_dict(state)
    other = make_agent("dqn", cartpole, DQNConfig(hidden=(16, 16), lr=1e-4))
    with pytest.raises(ValueError, match="config differs"):
        other.load_state_dict(state)


def test_learn_continues_counters_and_schedules_across_calls() -> None:
    agent = small_agent("dqn")
    assert isinstance(agent, DQNAgent)
    s1 = agent.learn(100)
    s2 = agent.learn(100)
    assert s1["env_steps"] == 100 and s2["total_env_steps"] == 200
    assert s2["epsilon"] < s1["epsilon"] < 1.0
    assert s2["updates"] > s1["updates"] > 0

    ppo = small_agent("ppo")
    assert isinstance(ppo, PPOAgent)
    out = ppo.learn(33)  # rounded up to whole vector steps (2 envs)
    assert out["env_steps"] == 34 and ppo.num_timesteps == 34


def test_construction_resets_episodes_reproducibly_and_reseed_keeps_them() -> None:
    agent, twin = small_agent("ppo", seed=11), small_agent("ppo", seed=11)
    assert isinstance(agent, PPOAgent) and isinstance(twin, PPOAgent)
    first = agent.pool.obs.copy()
    np.testing.assert_array_equal(twin.pool.obs, first)
    assert not np.array_equal(first[0], first[1]), "env copies get distinct seeds"
    agent.learn(40)
    during = agent.pool.obs.copy()
    agent.reseed(11)  # new random streams only: the episodes run on (tests/securefrl/test_env_persistence.py)
    np.testing.assert_array_equal(agent.pool.obs, during)


# --- learning smoke tests ---------------------------------------------------------------------
def test_dqn_learns_cartpole_smoke() -> None:
    cfg = DQNConfig(hidden=(64, 64), exploration_steps=3_000, train_freq=64, gradient_steps=32)
    agent = DQNAgent(cartpole, cfg, seed=0)
    baseline = np.mean(agent.evaluate(cartpole(), 5, seed=1000))
    agent.learn(6_000)
    score = np.mean(agent.evaluate(cartpole(), 5, seed=1000))
    assert score >= 100 and score > 2 * baseline, (baseline, score)


def test_ppo_learns_cartpole_smoke() -> None:
    agent = PPOAgent(cartpole, PPOConfig(), seed=0)
    baseline = np.mean(agent.evaluate(cartpole(), 5, seed=1000))
    agent.learn(8_192)
    score = np.mean(agent.evaluate(cartpole(), 5, seed=1000))
    assert score >= 150 and score > 2 * baseline, (baseline, score)


def test_sac_learns_continuous_bandit_smoke() -> None:
    agent = SACAgent(TargetEnv, SACConfig(hidden=(32, 32), learning_starts=100, batch_size=64), seed=0)
    baseline = np.mean(agent.evaluate(TargetEnv(), 50, seed=1000))
    agent.learn(700)
    score = np.mean(agent.evaluate(TargetEnv(), 50, seed=1000))
    assert score > -0.15 and baseline < -0.5, (baseline, score)
