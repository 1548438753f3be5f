"""The agent interface the federation is written against.

An agent owns its environment(s), networks, optimizers and (for off-policy methods) replay
buffer. The federation only needs to: read and write the trainable parameters as one flat
float32 vector, train for a budget of environment steps, evaluate, reseed at the start of a
round, and checkpoint everything needed to continue exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from securefrl.params import ParamSpec, set_flat

EnvFn = Callable[[], gym.Env]


class Agent(ABC):
    """Base class of DQN, PPO and SAC agents.

    Subclasses implement :meth:`federated_parameters` (the tensors that travel),
    :meth:`learn`, :meth:`act`, :meth:`state_dict` and :meth:`load_state_dict`.
    """

    name: str = "abstract"

    @abstractmethod
    def federated_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Named trainable tensors, in a fixed order, that make up the flat vector."""

    @abstractmethod
    def learn(self, env_steps: int) -> dict[str, float]:
        """Train for ``env_steps`` environment steps (summed over vectorized envs); return stats."""

    @abstractmethod
    def act(self, obs: np.ndarray, deterministic: bool = True) -> Any:
        """Action for a single (unbatched) observation."""

    @abstractmethod
    def reseed(self, seed: int) -> None:
        """Reset environments (ending current episodes) and every RNG stream from ``seed``."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly (nets, optimizers, buffers, counters).

        Values are tensors, numpy arrays, numbers, strings or nested dicts/lists of them, so a
        checkpoint loads with ``torch.load(weights_only=True)``.
        """

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def after_set_parameters(self) -> None:  # noqa: B027
        """Hook run after new federated parameters are loaded (e.g. sync a target network)."""

    # --- flat vector API, shared by every agent -------------------------------------------
    def parameter_spec(self) -> ParamSpec:
        return ParamSpec.from_named(self.federated_parameters())

    def get_flat(self) -> np.ndarray:
        return self.parameter_spec().flatten([p for _, p in self.federated_parameters()])

    def set_flat(self, flat: np.ndarray) -> None:
        set_flat([p for _, p in self.federated_parameters()], self.parameter_spec(), flat)
        self.after_set_parameters()

    def evaluate(self, env: gym.Env, episodes: int, seed: int) -> list[float]:
        """Greedy returns over ``episodes`` episodes of ``env`` (seeded, reproducible)."""
        returns = []
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            done, total = False, 0.0
            while not done:
                obs, reward, terminated, truncated, _ = env.step(self.act(obs, deterministic=True))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        return returns
