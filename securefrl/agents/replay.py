"""Uniform experience replay in preallocated numpy arrays (Lin 1992; Mnih et al. 2015).

Stored as numpy for cheap per-step writes; sampled batches are converted to torch once. The
filled part of the buffer checkpoints as tensors, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class ReplayBuffer:
    """Ring buffer of transitions ``(obs, action, reward, next_obs, terminated)``.

    Only *termination* stops bootstrapping; a time-limit truncation stores the true final
    observation and keeps ``terminated = 0`` (Pardo et al. 2018, "Time Limits in RL").
    """

    def __init__(self, capacity: int, obs_dim: int, action_shape: tuple[int, ...], action_dtype: type) -> None:
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions: np.ndarray = np.zeros((capacity, *action_shape), dtype=action_dtype)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.pos = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray) -> None:
        """Add a batch of ``n`` transitions (one per environment copy)."""
        n = len(obs)
        idx = (self.pos + np.arange(n)) % self.capacity
        self.obs[idx] = obs
        self.actions[idx] = actions
        self.rewards[idx] = rewards
        self.next_obs[idx] = next_obs
        self.terminated[idx] = terminated
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Uniform minibatch (with replacement), drawn from the agent's numpy generator."""
        idx = rng.integers(0, self.size, size=batch_size)
        return {
            "obs": torch.from_numpy(self.obs[idx]),
            "actions": torch.from_numpy(self.actions[idx]),
            "rewards": torch.from_numpy(self.rewards[idx]),
            "next_obs": torch.from_numpy(self.next_obs[idx]),
            "terminated": torch.from_numpy(self.terminated[idx]),
        }

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return {
            "capacity": self.capacity, "pos": self.pos, "size": n,
            "obs": torch.from_numpy(self.obs[:n].copy()), "actions": torch.from_numpy(self.actions[:n].copy()),
            "rewards": torch.from_numpy(self.rewards[:n].copy()),
            "next_obs": torch.from_numpy(self.next_obs[:n].copy()),
            "terminated": torch.from_numpy(self.terminated[:n].copy()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"replay capacity mismatch: checkpoint {state['capacity']}, agent {self.capacity}")
        n = int(state["size"])
        for key in ("obs", "actions", "rewards", "next_obs", "terminated"):
            arr = getattr(self, key)
            arr[:n] = state[key].numpy()
            arr[n:] = 0
        self.size, self.pos = n, int(state["pos"])
