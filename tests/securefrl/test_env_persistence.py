"""Environments persist across rounds: episodes continue where they stopped, in every execution path.

Only the action and minibatch random streams are re-derived per round (``Agent.reseed``); the
environments are reset once, when the agent is built, and their state (physics state, the env's own
generator, the time-limit counter, the running episode's return and length) travels in the agent's
checkpoint, so a resumed run, a Ray task and the vectorized population all continue the same episodes.
"""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch

from securefrl.agents import DQNConfig, PPOConfig, SACConfig, make_agent
from securefrl.config import load_config
from securefrl.envs import draw_client_envs
from securefrl.federation import Federation, make_federation

SMALL = {
    "dqn": (lambda: gym.make("CartPole-v1"), DQNConfig(hidden=(16, 16), learning_starts=20, train_freq=8,
                                                        gradient_steps=2, batch_size=8, buffer_size=300), 30),
    "ppo": (lambda: gym.make("CartPole-v1"), PPOConfig(hidden=(16, 16), n_envs=2, n_steps=8, n_epochs=1), 16),
    "sac": (lambda: gym.make("Pendulum-v1"), SACConfig(hidden=(16, 16), learning_starts=20, batch_size=8,
                                                        buffer_size=300), 30),
}


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_reseed_keeps_running_episodes(name: str) -> None:
    # Arrange: train a little, so every env copy is in the middle of an episode.
    env_fn, cfg, steps = SMALL[name]
    agent = make_agent(name, env_fn, cfg, seed=3)
    agent.learn(steps)
    pool = agent.pool  # type: ignore[attr-defined]
    obs, lengths = pool.obs.copy(), pool.ep_lengths.copy()
    assert lengths.min() > 0
    # Act: the federation reseeds at the start of every round.
    agent.reseed(12345)
    # Assert: nothing about the environments changed; the next step continues the same episode.
    np.testing.assert_array_equal(pool.obs, obs)
    np.testing.assert_array_equal(pool.ep_lengths, lengths)
    agent.learn(pool.n)  # one vector step
    assert np.all((pool.ep_lengths == lengths + 1) | (pool.ep_lengths == 0)), (lengths, pool.ep_lengths)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_checkpoint_restores_the_running_episodes(name: str) -> None:
    # Arrange: an agent mid-episode and a copy built from another seed, loaded from its checkpoint.
    env_fn, cfg, steps = SMALL[name]
    a = make_agent(name, env_fn, cfg, seed=1)
    a.learn(steps)
    b = make_agent(name, env_fn, cfg, seed=77)
    b.load_state_dict(_roundtrip(a.state_dict()))
    np.testing.assert_array_equal(b.pool.obs, a.pool.obs)  # type: ignore[attr-defined]
    # Act: both continue with the same round seed, over an episode end (the env's own generator resets it).
    for agent in (a, b):
        agent.reseed(9)
        agent.learn(4 * steps)
    # Assert: the same trajectory, bit for bit.
    np.testing.assert_array_equal(a.get_flat(), b.get_flat())
    np.testing.assert_array_equal(a.pool.obs, b.pool.obs)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(a.pool.ep_lengths, b.pool.ep_lengths)  # type: ignore[attr-defined]


@pytest.mark.parametrize("family", ["edge_caching", "mec_offloading", "ran_access", "acrobot"])
def test_checkpoint_restores_episodes_of_environments_with_their_own_state(family: str) -> None:
    # Arrange: environments whose episode lives in attributes of their own (a cache and request trace, a task queue).
    spec = draw_client_envs(family, 1, 0.5, np.random.default_rng(0))[0]
    cfg = PPOConfig(hidden=(8,), n_envs=2, n_steps=8, n_epochs=1)
    a = make_agent("ppo", spec.make, cfg, seed=1)
    a.learn(24)
    b = make_agent("ppo", spec.make, cfg, seed=2)
    b.load_state_dict(_roundtrip(a.state_dict()))
    # Act
    for agent in (a, b):
        agent.reseed(4)
        agent.learn(48)
    # Assert
    np.testing.assert_array_equal(a.get_flat(), b.get_flat())
    np.testing.assert_array_equal(a.pool.obs, b.pool.obs)  # type: ignore[attr-defined]


# 2 envs x 8 steps per round: with a reset every round, no training episode could last more than 8 steps.
ROUNDS = ["federation.n_clients=2", "federation.rounds=4", "federation.local_steps=16", "federation.eval_episodes=1",
          "env.heterogeneity=0.5", "agent.params={n_envs: 2, n_steps: 8, n_epochs: 1, hidden: [16, 16]}"]


def _train_lengths(fed: Federation, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        for row in fed.run_round().clients:
            if row["sampled"] and row["train_episodes"] > 0:
                out.append(row["train_mean_length"])
    return out


@pytest.mark.parametrize("simulation", ["loop", "vectorized"])
def test_an_episode_spans_a_round_boundary(simulation: str) -> None:
    # Arrange
    fed = make_federation(load_config(overrides=[*ROUNDS, f"federation.simulation={simulation}"]))
    # Act
    lengths = _train_lengths(fed, 4)
    # Assert: episodes finished that began in an earlier round (longer than one round's 8 steps per env).
    assert lengths and max(lengths) > 8, lengths
