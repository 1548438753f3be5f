"""Several copies of a client's environment, stepped in a plain loop with automatic reset.

A minimal alternative to ``gymnasium.vector.SyncVectorEnv``: it returns the true final
observation of an ending episode alongside the reset one (needed to bootstrap truncated
episodes and to store correct replay transitions), seeds each copy explicitly, and keeps the
per-step overhead to one Python loop over the copies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import gymnasium as gym
import numpy as np


class Step(NamedTuple):
    """Outcome of one vector step; ``next_obs`` holds the final observation where an episode ended."""

    next_obs: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray


class EnvPool:
    """``n`` copies of one environment; :attr:`obs` is always the observation to act on."""

    def __init__(self, env_fn: Callable[[], gym.Env], n: int) -> None:
        self.envs = [env_fn() for _ in range(n)]
        self.n = n
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self._discrete = isinstance(self.action_space, gym.spaces.Discrete)
        self.obs = np.zeros((n, *self.observation_space.shape), dtype=np.float32)
        self.ep_returns = np.zeros(n, dtype=np.float64)
        self.ep_lengths = np.zeros(n, dtype=np.int64)
        self.finished: list[tuple[float, int]] = []
        """(return, length) of episodes completed since the last :meth:`drain`."""

    def reset(self, seeds: list[int]) -> None:
        """Reset every copy with its own seed; ongoing episodes are dropped from the statistics."""
        for i, (env, s) in enumerate(zip(self.envs, seeds, strict=True)):
            obs, _ = env.reset(seed=s)
            self.obs[i] = obs
        self.ep_returns[:] = 0.0
        self.ep_lengths[:] = 0
        self.finished = []

    def step(self, actions: np.ndarray) -> Step:
        next_obs = np.empty_like(self.obs)
        rewards = np.empty(self.n, dtype=np.float32)
        terminated = np.zeros(self.n, dtype=bool)
        truncated = np.zeros(self.n, dtype=bool)
        for i, env in enumerate(self.envs):
            a = int(actions[i]) if self._discrete else actions[i]
            obs, r, term, trunc, _ = env.step(a)
            next_obs[i] = obs
            rewards[i] = r
            self.ep_returns[i] += float(r)
            self.ep_lengths[i] += 1
            if term or trunc:
                terminated[i], truncated[i] = term, trunc
                self.finished.append((float(self.ep_returns[i]), int(self.ep_lengths[i])))
                self.ep_returns[i] = 0.0
                self.ep_lengths[i] = 0
                obs, _ = env.reset()
            self.obs[i] = obs
        return Step(next_obs, rewards, terminated, truncated)

    def drain(self) -> list[tuple[float, int]]:
        out, self.finished = self.finished, []
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()
