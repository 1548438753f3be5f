"""Returns of a hand-written policy on seeded episodes of one environment (references, tests, headroom)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["policy_returns"]


def policy_returns(env: gym.Env, act: Callable[[Any], Any], seeds: Iterable[int]) -> np.ndarray:
    """The return of ``act`` (observation -> action) on one episode of ``env`` per seed, in order."""
    out = []
    for s in seeds:
        obs, _ = env.reset(seed=int(s))
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        out.append(total)
    return np.asarray(out)
