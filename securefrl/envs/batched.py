"""Many copies of an environment with per-copy parameters, stepped as one numpy computation.

:class:`BatchedEnv` is the one base of every batched environment (:class:`~securefrl.vectorized.cartpole.CartPoleBatch`,
:class:`EdgeCachingBatch`, :class:`MECOffloadingBatch`, :class:`RANAccessBatch`): copy ``i`` has its own seeded
generator (``gymnasium.utils.seeding.np_random``, as ``env.reset(seed=s)`` makes), its time-limit counter and running
episode statistics; autoreset follows gymnasium's ``AutoresetMode.SAME_STEP``, as
:class:`securefrl.agents.vecenv.EnvPool`: an ending copy returns its final observation in ``Step.next_obs`` and
is reset in the same call, so :attr:`BatchedEnv.obs` is always the one to act on. A subclass says what an
episode draws, how every copy advances and what it observes, and declares its per-copy attributes so copies
can be taken out of a batch and put back (:meth:`BatchedEnv.subset` / :meth:`BatchedEnv.assign`: a
population's clients continue their episodes across rounds) and checkpointed (:meth:`BatchedEnv.get_state`).

For the application families the draws of an episode are made at its reset by the same function the per-env
class calls, so the batch equals the per-env version step for step (tested).

Which batch simulates which environment is declared in the family registry (:attr:`EnvFamily.batched
<securefrl.envs.families.EnvFamily.batched>`), read by :func:`batch_class_for` and, by name only, by
:func:`securefrl.envs.families.batched_target` for config checks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils.seeding import np_random

from securefrl.agents.vecenv import Step
from securefrl.envs import edge_caching as ec
from securefrl.envs import mec_offloading as mec
from securefrl.envs import ran_access as ran
from securefrl.envs.families import family_for_env
from securefrl.envs.spec import EnvSpec
from securefrl.errors import ConfigError
from securefrl.registry import load_target

__all__ = ["BatchedEnv", "EdgeCachingBatch", "MECOffloadingBatch", "RANAccessBatch", "batch_class_for", "batch_for"]


def _take(value: Any, rows: np.ndarray) -> Any:
    if isinstance(value, np.ndarray):
        return value[rows]  # fancy indexing: a copy
    if isinstance(value, dict):
        return {k: _take(v, rows) for k, v in value.items()}
    return [value[int(r)] for r in rows]


def _put(dst: Any, rows: np.ndarray, src: Any) -> None:
    if isinstance(dst, np.ndarray):
        dst[rows] = src
    elif isinstance(dst, dict):
        for k, v in dst.items():
            _put(v, rows, src[k])
    else:
        for r, x in zip(rows, src, strict=True):
            dst[int(r)] = x


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


class BatchedEnv:
    """``n`` environment copies: seeds, time limit, episode returns, SAME_STEP autoreset, finished episodes.

    Subclasses call ``super().__init__`` and implement ``_new_episode(i)`` (draw copy ``i``'s episode from
    ``self.rngs[i]``), ``_advance(actions) -> (rewards float64, terminated)`` (step every copy) and
    ``_observe()`` (every copy's observation, a new array). They list in :attr:`PER_COPY` the attributes holding
    one entry per copy (arrays with a leading copy axis, dicts of them, lists), parameters and state alike, and in
    :attr:`STATE` those that change while an episode runs (what a checkpoint must keep).
    """

    PER_COPY: ClassVar[tuple[str, ...]] = ()
    STATE: ClassVar[tuple[str, ...]] = ()
    _COUNTERS = ("elapsed", "ep_returns", "ep_lengths")

    def __init__(self, n: int, max_episode_steps: int, observation_space: spaces.Box,
                 action_space: spaces.Discrete) -> None:
        if n < 1:
            raise ValueError("a batch needs at least one copy")
        self.n = int(n)
        self.max_episode_steps = int(max_episode_steps)
        self.observation_space, self.action_space = observation_space, action_space
        self.elapsed = np.zeros(self.n, dtype=np.int64)
        self.ep_returns = np.zeros(self.n, dtype=np.float64)
        self.ep_lengths = np.zeros(self.n, dtype=np.int64)
        self.rngs: list[np.random.Generator | None] = [None] * self.n
        self.obs = np.zeros((self.n, *observation_space.shape), dtype=np.float32)
        self.last_rewards = np.zeros(self.n, dtype=np.float64)
        """The float64 rewards of the last :meth:`step` (``Step.rewards`` is float32, as EnvPool's)."""
        self.finished: list[list[tuple[float, int]]] = [[] for _ in range(self.n)]
        """Per copy: (return, length) of the episodes completed since the last :meth:`reset`."""

    # --- subclass hooks -----------------------------------------------------------------
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
        self.last_rewards = rewards
        done = terminated | truncated
        for i in np.flatnonzero(done):
            self.finished[i].append((float(self.ep_returns[i]), int(self.ep_lengths[i])))
            self.ep_returns[i] = 0.0
            self.ep_lengths[i] = 0
            self._start(int(i))
        self.obs[:] = self._observe() if done.any() else next_obs
        return Step(next_obs, rewards.astype(np.float32), terminated, truncated)

    def drain(self, idx: Sequence[int]) -> list[tuple[float, int]]:
        """Episodes finished by copies ``idx`` (in copy order, then time), as ``EnvPool.drain`` lists them."""
        out: list[tuple[float, int]] = []
        for i in idx:
            out.extend(self.finished[int(i)])
            self.finished[int(i)] = []
        return out

    def greedy_returns(self, seeds: Sequence[int], act: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """One episode per copy from ``reset(seed)``, acting with ``act(obs of every copy) -> actions``; returns.

        :meth:`securefrl.agents.base.Agent.evaluate` for many episodes at once (rewards summed in float64 in the
        same order). Copies whose episode ended keep being stepped (autoreset) but no longer count.
        """
        self.reset(seeds)
        returns = np.zeros(self.n, dtype=np.float64)
        active = np.ones(self.n, dtype=bool)
        while active.any():
            step = self.step(np.asarray(act(self.obs.copy())))
            returns[active] += self.last_rewards[active]
            active &= ~(step.terminated | step.truncated)
        return returns

    # --- copies in and out: populations, checkpoints --------------------------------------
    def _per_copy(self) -> tuple[str, ...]:
        return (*self._COUNTERS, "obs", "rngs", *self.PER_COPY)

    def subset(self, rows: Sequence[int] | np.ndarray) -> BatchedEnv:
        """A batch of copies ``rows`` (repeats allowed) in their current state; generators are shared, not copied."""
        rows = np.asarray(rows, dtype=np.int64)
        new = copy.copy(self)
        new.n = len(rows)
        for name in self._per_copy():
            setattr(new, name, _take(getattr(self, name), rows))
        new.last_rewards = np.zeros(new.n, dtype=np.float64)
        new.finished = [[] for _ in range(new.n)]
        return new

    def assign(self, rows: Sequence[int] | np.ndarray, other: BatchedEnv) -> None:
        """Write ``other`` (a :meth:`subset` of ``rows``, stepped since) back into copies ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        if other.n != len(rows):
            raise ValueError(f"{len(rows)} rows, but the batch has {other.n} copies")
        for name in self._per_copy():
            _put(getattr(self, name), rows, _take(getattr(other, name), np.arange(other.n)))

    def get_state(self, rows: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Copies ``rows``' running episodes as tensors and generator states (loads with ``weights_only=True``)."""
        rows = np.asarray(rows, dtype=np.int64)

        def tensors(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: tensors(v) for k, v in value.items()}
            return torch.from_numpy(np.ascontiguousarray(value))

        out = {name: tensors(_take(getattr(self, name), rows)) for name in (*self.STATE, *self._COUNTERS)}
        out["rngs"] = [None if self.rngs[int(r)] is None else self.rngs[int(r)].bit_generator.state  # type: ignore[union-attr]
                       for r in rows]
        return out

    def set_state(self, rows: Sequence[int] | np.ndarray, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned into copies ``rows`` (observations follow from the state)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(state["rngs"]) != len(rows):
            raise ValueError(f"state has {len(state['rngs'])} environment copies, expected {len(rows)}")

        def arrays(value: Any) -> Any:
            return {k: arrays(v) for k, v in value.items()} if isinstance(value, dict) else value.numpy()

        for name in (*self.STATE, *self._COUNTERS):
            _put(getattr(self, name), rows, arrays(state[name]))
        for r, bit_state in zip(rows, state["rngs"], strict=True):
            rng = None
            if bit_state is not None:
                rng = np.random.Generator(getattr(np.random, bit_state["bit_generator"])())
                rng.bit_generator.state = bit_state
            self.rngs[int(r)] = rng
        self.obs[rows] = self._observe()[rows]

    def nbytes(self) -> int:
        """Bytes of the per-copy arrays (not the generators or finished-episode lists)."""
        return sum(_nbytes(getattr(self, name)) for name in self._per_copy())


class _EnvCopies(BatchedEnv):
    """A batch built from environment instances of one class (:attr:`env_class`), read once in ``_configure``."""

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
        super().__init__(len(envs), lengths.pop(), envs[0].observation_space, envs[0].action_space)
        self._configure(envs)

    @classmethod
    def from_specs(cls, specs: Sequence[EnvSpec], copies: int = 1) -> BatchedEnv:
        """``copies`` consecutive copies per spec (spec ``s`` owns copies ``s*copies .. s*copies+copies-1``)."""
        envs = []
        for spec in specs:
            env = spec.make()
            envs.extend([env.unwrapped] * copies)  # settings are only read, never written
            env.close()
        return cls(envs)

    def _configure(self, envs: Sequence[Any]) -> None:
        raise NotImplementedError


class EdgeCachingBatch(_EnvCopies):
    """Copies of :class:`~securefrl.envs.edge_caching.EdgeCachingEnv`, each with its own popularity law."""

    env_class = ec.EdgeCachingEnv
    PER_COPY = ("cdf", "cache", "requests")
    STATE = ("cache", "requests")

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


class MECOffloadingBatch(_EnvCopies):
    """Copies of :class:`~securefrl.envs.mec_offloading.MECOffloadingEnv`, each with its own device and channel."""

    env_class = mec.MECOffloadingEnv
    PER_COPY = ("params", "energy_weight", "episode", "b_loc", "b_tx")
    STATE = ("episode", "b_loc", "b_tx")

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
        cost, b_loc, b_tx = mec.offload_step(self.episode, self.elapsed, self.b_loc, self.b_tx, actions == 1,
                                             self.energy_weight)
        self.b_loc[:], self.b_tx[:] = b_loc, b_tx  # in place: subsets and checkpoints hold these arrays
        return -cost, np.zeros(self.n, dtype=bool)

    def _observe(self) -> np.ndarray:
        rows = np.arange(self.n)
        e = self.episode
        return mec.observe(e["size"][rows, self.elapsed], e["fading"][rows, self.elapsed], self.b_loc, self.b_tx)


class RANAccessBatch(_EnvCopies):
    """Copies of :class:`~securefrl.envs.ran_access.RANAccessEnv`, each with its own cell bandwidths and load."""

    env_class = ran.RANAccessEnv
    PER_COPY = ("bandwidth", "mean_session", "episode", "loads", "leaves")
    STATE = ("episode", "loads", "leaves")

    def _configure(self, envs: Sequence[Any]) -> None:
        cells = {int(u.n_cells) for u in envs}
        if len(cells) != 1:
            raise ConfigError("env", f"every copy needs the same n_cells, got {sorted(cells)}")
        self.n_cells = cells.pop()
        self.bandwidth = np.stack([u.bandwidths() for u in envs])
        self.mean_session = np.array([ran.check_session(u.mean_session) for u in envs])
        length, k = self.max_episode_steps, self.n_cells
        self.shares = ran.log_shares(length)
        self.episode = {"sinr_db": np.zeros((self.n, length + 1, k)), "utility": np.zeros((self.n, length + 1, k)),
                        "session": np.ones((self.n, length + 1), dtype=np.int64)}
        self.loads = np.zeros((self.n, k), dtype=np.int64)
        self.leaves = np.zeros((self.n, k, length + 1), dtype=np.int64)

    def _new_episode(self, i: int) -> None:
        rng = self.rngs[i]
        assert rng is not None
        drawn = ran.draw_episode(rng, self.bandwidth[i], float(self.mean_session[i]), self.max_episode_steps)
        for k, v in drawn.items():
            self.episode[k][i] = v
        self.loads[i] = 0
        self.leaves[i] = 0

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, e = np.arange(self.n), self.episode
        reward, loads, leaves = ran.access_step(e["utility"][rows, self.elapsed], self.shares, self.loads, self.leaves,
                                                e["session"][rows, self.elapsed], self.elapsed, actions)
        self.loads[:], self.leaves[:] = loads, leaves  # in place: subsets and checkpoints hold these arrays
        return reward, np.zeros(self.n, dtype=bool)

    def _observe(self) -> np.ndarray:
        rows = np.arange(self.n)
        return ran.observe(self.episode["sinr_db"][rows, self.elapsed], self.loads)


def batch_class_for(specs: Sequence[EnvSpec]) -> type[BatchedEnv]:
    """The batch class simulating ``specs``' environment, as its family declares (``EnvFamily.batched``).

    The environment is built once to find its family, so a plain gymnasium id (``CartPole-v1``) is served by
    the family of its class. ConfigError naming the batched families if there is none.
    """
    env = specs[0].make()
    family = family_for_env(env.unwrapped)
    kind = type(env.unwrapped).__name__
    env.close()
    if family is None or not family.batched:
        from securefrl.envs.families import FAMILIES

        batched = [f.name for f in FAMILIES.values() if f.batched]
        raise ConfigError("env.name", f"no batched implementation of {kind}; batched families: {', '.join(batched)}")
    return load_target(family.batched)


def batch_for(specs: Sequence[EnvSpec], copies: int = 1) -> BatchedEnv:
    """The batch simulating ``specs`` (``copies`` per spec); ConfigError if their env has no batched version."""
    return batch_class_for(specs).from_specs(specs, copies)  # type: ignore[attr-defined]
