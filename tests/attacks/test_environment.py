"""Environment-poisoning attacks: each wrapper transforms exactly what it should, and the federation applies it
to the malicious clients' training environments only."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from attacks.environment import (
    ENV_ATTACKS,
    ObservationBackdoor,
    RandomActions,
    RewardFlip,
    backdoor_success_rate,
    make_env_attack,
)
from attacks.registry import REGISTRY
from securefrl.config import load_config
from securefrl.errors import ConfigError
from securefrl.federation import Federation


class _Recorder(gym.Wrapper):
    """Records the actions that reach the real environment."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.actions: list[int] = []

    def step(self, action):  # type: ignore[no-untyped-def]
        self.actions.append(int(action))
        return self.env.step(action)


def _rollout(env: gym.Env, actions: list[int], seed: int = 0) -> list[tuple[np.ndarray, float, dict]]:
    out = []
    env.reset(seed=seed)
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((obs, float(r), info))
        if term or trunc:
            env.reset(seed=seed + 1)
    return out


def test_reward_flip_negates_every_reward_and_keeps_dynamics() -> None:
    clean, flipped = gym.make("CartPole-v1"), RewardFlip(scale=2.0).wrap_env(gym.make("CartPole-v1"),
                                                                            np.random.default_rng(0))
    acts = [0, 1] * 30
    a, b = _rollout(clean, acts), _rollout(flipped, acts)
    for (o1, r1, _), (o2, r2, _) in zip(a, b, strict=True):
        np.testing.assert_array_equal(o1, o2)  # observations untouched
        assert r2 == -2.0 * r1 and r1 == 1.0


def test_random_actions_replaces_at_rate_p_with_uniform_actions() -> None:
    inner = _Recorder(gym.make("CartPole-v1"))
    env = RandomActions(p=0.3).wrap_env(inner, np.random.default_rng(7))
    env.reset(seed=0)
    n = 4000
    for _ in range(n):
        _, _, term, trunc, _ = env.step(0)  # the agent always asks for action 0
        if term or trunc:
            env.reset()
    # Binomial(4000, 0.3): std 0.0072 of the rate; 0.03 is a 4-sigma tolerance (seed 7 fixed).
    assert env.steps == n
    assert abs(env.replaced / n - 0.3) < 0.03
    # A replacement draws uniformly over {0, 1}, so action 1 reaches the env at rate p/2.
    assert abs(np.mean(inner.actions) - 0.15) < 0.03
    # Same seed, same replacements.
    again = RandomActions(p=0.3).wrap_env(gym.make("CartPole-v1"), np.random.default_rng(7))
    again.reset(seed=0)
    for _ in range(200):
        _, _, term, trunc, _ = again.step(0)
        if term or trunc:
            again.reset()
    first = RandomActions(p=0.3).wrap_env(gym.make("CartPole-v1"), np.random.default_rng(7))
    first.reset(seed=0)
    for _ in range(200):
        _, _, term, trunc, _ = first.step(0)
        if term or trunc:
            first.reset()
    assert again.replaced == first.replaced


def test_random_actions_p_zero_and_one() -> None:
    never = RandomActions(p=0.0).wrap_env(gym.make("CartPole-v1"), np.random.default_rng(0))
    always = RandomActions(p=1.0).wrap_env(gym.make("CartPole-v1"), np.random.default_rng(0))
    for env in (never, always):
        env.reset(seed=0)
        for _ in range(50):
            _, _, term, trunc, _ = env.step(1)
            if term or trunc:
                env.reset()
    assert never.replaced == 0 and always.replaced == 50


def test_backdoor_stamps_trigger_and_rewrites_reward_of_triggered_steps() -> None:
    attack = ObservationBackdoor(p=0.5, dims=(1, 3), value=3.0, target_action=1, reward_hit=1.0, reward_miss=-1.0)
    clean = gym.make("CartPole-v1")
    env = attack.wrap_env(gym.make("CartPole-v1"), np.random.default_rng(3))
    obs_b, _ = env.reset(seed=11)
    obs_c, _ = clean.reset(seed=11)
    triggered = not np.allclose(obs_b, obs_c)
    stamped = rewritten = hits = 0
    for t in range(300):
        a = t % 2
        nb, rb, term, trunc, info = env.step(a)
        nc, rc, term_c, trunc_c, _ = clean.step(a)
        assert term == term_c and trunc == trunc_c  # the true state evolves identically
        if triggered:  # the agent acted on a stamped observation: reward says whether it hit the target
            assert rb == (1.0 if a == 1 else -1.0) and info.get("backdoor_triggered")
            rewritten += 1
            hits += int(a == 1)
        else:
            assert rb == rc == 1.0
        diff = nb - nc
        if np.allclose(diff, 0.0):
            triggered = False
        else:  # only the trigger coordinates moved, by exactly the trigger value
            np.testing.assert_allclose(diff[[1, 3]], 3.0, atol=1e-5)
            np.testing.assert_array_equal(diff[[0, 2]], 0.0)
            triggered = True
            stamped += 1
        if term or trunc:
            obs_b, _ = env.reset(seed=100 + t)
            obs_c, _ = clean.reset(seed=100 + t)
            triggered = not np.allclose(obs_b, obs_c)
            stamped += int(triggered)
    # 300+ observations at p=0.5: std of the rate ~0.029; 0.12 is a 4-sigma tolerance.
    assert abs(env.stamped / env.observations - 0.5) < 0.12
    assert env.triggered_steps == rewritten > 0
    assert env.hits == hits


def test_backdoor_stamp_modes_and_validation() -> None:
    obs = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    np.testing.assert_allclose(ObservationBackdoor(dims=(0,), value=5.0).stamp(obs), [5.1, 0.2, 0.3, 0.4], rtol=1e-6)
    np.testing.assert_allclose(ObservationBackdoor(dims=(0, 2), value=5.0, mode="set").stamp(obs), [5, 0.2, 5, 0.4])
    batch = np.zeros((3, 4), dtype=np.float32)
    assert ObservationBackdoor(dims=(3,), value=1.0).stamp(batch)[:, 3].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="dims"):
        ObservationBackdoor(dims=(7,)).wrap_env(gym.make("CartPole-v1"), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="target_action"):
        ObservationBackdoor(target_action=2).wrap_env(gym.make("CartPole-v1"), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="probability"):
        ObservationBackdoor(p=1.5)
    with pytest.raises(ConfigError, match="reward_hit"):
        ObservationBackdoor(reward_hit=-1.0, reward_miss=0.0)
    with pytest.raises(ConfigError, match="mode"):
        ObservationBackdoor(mode="xor")


def test_backdoor_success_rate_counts_target_actions_on_triggered_states() -> None:
    attack = ObservationBackdoor(dims=(1,), value=10.0, target_action=0)

    def backdoored(obs: np.ndarray) -> int:  # a policy with a planted backdoor: clean it pushes towards the pole
        return 0 if obs[1] > 5.0 else int(obs[2] > 0)

    def clean(obs: np.ndarray) -> int:
        return int(obs[2] > 0)

    envs = [gym.make("CartPole-v1"), gym.make("CartPole-v1")]
    hit = backdoor_success_rate(backdoored, envs, attack, episodes=2, seed=0)
    miss = backdoor_success_rate(clean, envs, attack, episodes=2, seed=0)
    assert hit.success_rate == 1.0 and miss.success_rate == miss.clean_target_rate
    assert hit.clean_return == miss.clean_return > 20  # same clean behaviour, same episodes
    assert 0.0 < hit.clean_target_rate < 1.0 and hit.lift > 0.0 and miss.lift == 0.0


def test_env_attacks_are_registered_and_craft_is_identity() -> None:
    for name in ENV_ATTACKS:
        assert name in REGISTRY.names() and REGISTRY.kind(name) == "environment"
        attack = REGISTRY.make(name)
        own = np.arange(6.0).reshape(2, 3)
        out = attack.craft(own, None, np.random.default_rng(0))
        np.testing.assert_array_equal(out, own)
        assert out is not own and attack.omniscient is False
        assert "training environment" in attack.threat_model.describe()
    assert REGISTRY.kind("sign_flip") == "update"
    with pytest.raises(ConfigError, match="does not take"):
        make_env_attack("reward_flip", p=0.1)
    with pytest.raises(ConfigError, match="unknown attack"):
        REGISTRY.kind("nope")


def test_federation_wraps_only_malicious_training_envs() -> None:
    cfg = load_config(overrides=["federation.n_clients=4", "federation.rounds=1", "federation.local_steps=64",
                                 "federation.eval_episodes=1", "attack.name=reward_flip", "attack.n_malicious=1",
                                 "agent.params.n_envs=2", "agent.params.n_steps=32", "agent.params.hidden=[16]"])
    fed = Federation(cfg)
    for c in fed.clients:
        wrapped = [isinstance(e, gym.RewardWrapper) for e in c.agent.pool.envs]
        assert all(wrapped) if c.malicious else not any(wrapped)
        assert not isinstance(c.eval_env, gym.RewardWrapper)  # evaluation stays clean
    record = fed.run_round()
    bad = [r for r in record.clients if r["malicious"]]
    assert len(bad) == 1 and bad[0]["train_mean_return"] < 0  # the malicious agent saw negative rewards
    assert all(r["train_mean_return"] > 0 for r in record.clients if not r["malicious"])
