"""Many copies of an application environment with per-copy parameters, stepped as one numpy computation.

The pattern of :class:`securefrl.vectorized.cartpole.CartPoleBatch`, for the application families:
copy ``i`` is the environment ``specs[i].make()`` builds, with its own seeded generator
(``gymnasium.utils.seeding.np_random``, as ``env.reset(seed=s)`` makes); the draws of an episode are made
at its reset by the same function the per-env class calls, so the batch equals the per-env version step
for step (tested). Autoreset follows gymnasium's ``AutoresetMode.SAME_STEP``, as
:class:`securefrl.agents.vecenv.EnvPool`: an ending copy returns its final observation in
``Step.next_obs`` and is reset in the same call, so :attr:`EpisodeBatch.obs` is always the one to act on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from gymnasium.utils.seeding import np_random

from securefrl.agents.vecenv import Step
from securefrl.envs import edge_caching as ec
from securefrl.envs import mec_offloading as mec
from securefrl.envs.spec import EnvSpec
from securefrl.errors import ConfigError

__all__ = ["EdgeCachingBatch", "EpisodeBatch", "MECOffloadingBatch", "batch_for"]


class EpisodeBatch:
    """Bookkeeping shared by the batches: seeds, episode returns, autoreset, finished episodes.

    Subclasses set :attr:`env_class`, read each copy's settings in ``_configure`` and implement
    ``_new_episode(i)`` (draw copy ``i``'s episode from ``self.rngs[i]``), ``_advance(actions)``
    (step every copy: rewards, terminated) and ``_observe()`` (every copy's observation).
    """

    env_class: ClassVar[type]

    def __init__(self, envs: Sequence[Any]) -> None:
        if not envs:
            raise ValueError("a batch needs at least one copy")
        for i, u in enumerate(envs):
            if type(u) is not self.env_class:
                raise ConfigError("env.name", f"{type(self).__name__} batches {self.env_class.__name__} only; copy {i} "
                                  f"is {type(u).__name__}")
        lengths = {int(u.episode_length) for u in envs}
        if len(lengths) != 1:
            raise ConfigError("env", f"every copy needs the same episode_length, got {sorted(lengths)}")
        self.n = len(envs)
        self.max_episode_steps = lengths.pop()
        self.observation_space, self.action_space = envs[0].observation_space, envs[0].action_space
        self._configure(envs)
        self.elapsed = np.zeros(self.n, dtype=np.int64)
        self.ep_returns = np.zeros(self.n, dtype=np.float64)
        self.ep_lengths = np.zeros(self.n, dtype=np.int64)
        self.rngs: list[np.random.Generator | None] = [None] * self.n
        self.obs = np.zeros((self.n, *self.observation_space.shape), dtype=np.float32)
        self.finished: list[list[tuple[float, int]]] = [[] for _ in range(self.n)]
        """Per copy: (return, length) of the episodes completed since the last :meth:`reset`."""

    @classmethod
    def from_specs(cls, specs: Sequence[EnvSpec], copies: int = 1) -> EpisodeBatch:
        """``copies`` consecutive copies per spec (spec ``s`` owns copies ``s*copies .. s*copies+copies-1``)."""
        envs = []
        for spec in specs:
            env = spec.make()
            envs.extend([env.unwrapped] * copies)  # settings are only read, never written
            env.close()
        return cls(envs)

    # --- subclass hooks -----------------------------------------------------------------
    def _configure(self, envs: Sequence[Any]) -> None:
        raise NotImplementedError

    def _new_episode(self, i: int) -> None:
        raise NotImplementedError

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _observe(self) -> np.ndarray:
        raise NotImplementedError

    # --- vector-env interface ----------------------------------------------------------
    def _start(self, i: int) -> None:
        assert self.rngs[i] is not None, "reset before step"
        self._new_episode(i)
        self.elapsed[i] = 0

    def reset(self, seeds: Sequence[int], idx: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Reset copies ``idx`` (all by default) with one seed each, as ``env.reset(seed=s)`` does."""
        ids = range(self.n) if idx is None else [int(i) for i in idx]
        if len(ids) != len(seeds):
            raise ValueError(f"need one seed per copy reset ({len(ids)}), got {len(seeds)}")
        for i, s in zip(ids, seeds, strict=True):
            self.rngs[i] = np_random(int(s))[0]
            self._start(i)
            self.ep_returns[i] = 0.0
            self.ep_lengths[i] = 0
            self.finished[i] = []
        self.obs[:] = self._observe()
        return self.obs

    def step(self, actions: np.ndarray) -> Step:
        """Step every copy; ended episodes are recorded and reset in the same call (SAME_STEP autoreset)."""
        actions = np.asarray(actions)
        if actions.shape != (self.n,):
            raise ValueError(f"need one action per copy, shape ({self.n},), got {actions.shape}")
        if not np.all((actions >= 0) & (actions < self.action_space.n)):
            raise ValueError(f"actions must lie in [0, {self.action_space.n}), got {actions}")
        rewards, terminated = self._advance(actions.astype(np.int64))
        self.elapsed += 1
        truncated = self.elapsed >= self.max_episode_steps
        next_obs = self._observe()
        self.ep_returns += rewards
        self.ep_lengths += 1
        done = terminated | truncated
        for i in np.flatnonzero(done):
            self.finished[i].append((float(self.ep_returns[i]), int(self.ep_lengths[i])))
            self.ep_returns[i] = 0.0
            self.ep_lengths[i] = 0
            self._start(int(i))
        self.obs[:] = self._observe() if done.any() else next_obs
        return Step(next_obs, rewards.astype(np.float32), terminated, truncated)

    def drain(self, idx: Sequence[int]) -> list[tuple[float, int]]:
        """Episodes finished by copies ``idx`` (in copy order, then time)."""
        out: list[tuple[float, int]] = []
        for i in idx:
            out.extend(self.finished[int(i)])
            self.finished[int(i)] = []
        return out


class EdgeCachingBatch(EpisodeBatch):
    """Copies of :class:`~securefrl.envs.edge_caching.EdgeCachingEnv`, each with its own popularity law."""

    env_class = ec.EdgeCachingEnv

    def _configure(self, envs: Sequence[Any]) -> None:
        shapes = {(u.n_items, u.cache_size) for u in envs}
        if len(shapes) != 1:
            raise ConfigError("env", f"every copy needs the same (n_items, cache_size), got {sorted(shapes)}")
        self.n_items, self.cache_size = shapes.pop()
        self.cdf = np.stack([np.cumsum(ec.popularity(self.n_items, u.popularity_centre, u.zipf_exponent))
                             for u in envs])
        self.cache = np.zeros((self.n, self.cache_size), dtype=np.int64)
        self.requests = np.zeros((self.n, self.max_episode_steps + 1), dtype=np.int64)

    def _new_episode(self, i: int) -> None:
        rng = self.rngs[i]
        assert rng is not None
        self.cache[i], self.requests[i] = ec.draw_episode(rng, self.cdf[i], self.cache_size, self.max_episode_steps)

    def _current(self) -> np.ndarray:
        return self.requests[np.arange(self.n), self.elapsed]

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        request = self._current()
        hit = np.any(self.cache == request[:, None], axis=1)
        admit = np.flatnonzero(~hit & (actions > 0))
        self.cache[admit, actions[admit] - 1] = request[admit]
        return hit.astype(np.float64), np.zeros(self.n, dtype=bool)

    def _observe(self) -> np.ndarray:
        return ec.observe(self.cache, self._current(), self.n_items)


class MECOffloadingBatch(EpisodeBatch):
    """Copies of :class:`~securefrl.envs.mec_offloading.MECOffloadingEnv`, each with its own device and channel."""

    env_class = mec.MECOffloadingEnv

    def _configure(self, envs: Sequence[Any]) -> None:
        self.params = [u.parameters() for u in envs]
        self.energy_weight = np.array([p["energy_weight"] for p in self.params])
        self.episode = {k: np.zeros((self.n, self.max_episode_steps + 1)) for k in mec.EPISODE_FIELDS}
        self.b_loc = np.zeros(self.n)
        self.b_tx = np.zeros(self.n)

    def _new_episode(self, i: int) -> None:
        rng = self.rngs[i]
        assert rng is not None
        for k, v in mec.draw_episode(rng, self.params[i], self.max_episode_steps).items():
            self.episode[k][i] = v
        self.b_loc[i] = 0.0
        self.b_tx[i] = 0.0

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cost, self.b_loc, self.b_tx = mec.offload_step(self.episode, self.elapsed, self.b_loc, self.b_tx,
                                                       actions == 1, self.energy_weight)
        return -cost, np.zeros(self.n, dtype=bool)

    def _observe(self) -> np.ndarray:
        rows = np.arange(self.n)
        e = self.episode
        return mec.observe(e["size"][rows, self.elapsed], e["fading"][rows, self.elapsed], self.b_loc, self.b_tx)


_BATCHES: dict[type, type[EpisodeBatch]] = {
    ec.EdgeCachingEnv: EdgeCachingBatch,
    mec.MECOffloadingEnv: MECOffloadingBatch,
}


def batch_for(specs: Sequence[EnvSpec], copies: int = 1) -> EpisodeBatch:
    """The batch simulating ``specs`` (``copies`` per spec); ConfigError if their env has no batched version."""
    env = specs[0].make()
    kind = type(env.unwrapped)
    env.close()
    if kind not in _BATCHES:
        raise ConfigError("env.name", f"no batched implementation of {kind.__name__}; batched: "
                          f"{', '.join(c.__name__ for c in _BATCHES)} (CartPole: securefrl.vectorized.cartpole)")
    return _BATCHES[kind].from_specs(specs, copies)
