"""Several copies of a client's environment, stepped in a plain loop with automatic reset.

A minimal alternative to ``gymnasium.vector.SyncVectorEnv``: it returns the true final
observation of an ending episode alongside the reset one (needed to bootstrap truncated
episodes and to store correct replay transitions), seeds each copy explicitly, and keeps the
per-step overhead to one Python loop over the copies.

The pool is reset once, when its agent is built; afterwards episodes run on across ``learn`` calls
and federated rounds. :meth:`EnvPool.state_dict` captures what continuing an episode exactly needs
(see :func:`env_state`), so checkpoints, resumed runs and Ray tasks continue the same episodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch


class Step(NamedTuple):
    """Outcome of one vector step; ``next_obs`` holds the final observation where an episode ended."""

    next_obs: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray


#: Attributes that change while an episode runs, on whichever wrapper layer has them: the physics state
#: (classic control keeps it in ``state``; Pendulum also ``last_u``), CartPole's post-termination counter,
#: gymnasium's ``TimeLimit`` step counter and ``OrderEnforcing`` flag, and the env's last reset seed.
DYNAMIC_ATTRS = ("state", "steps_beyond_terminated", "last_u", "_elapsed_steps", "_has_reset", "_np_random_seed")


def _layers(env: gym.Env) -> Iterator[Any]:
    """``env`` and every environment it wraps, outermost first."""
    layer: Any = env
    while True:
        yield layer
        if not isinstance(layer, gym.Wrapper):
            return
        layer = layer.env


def _plain(value: Any) -> Any:
    """A checkpoint-safe copy (``torch.load(weights_only=True)``): arrays become tensors, numpy scalars numbers."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _is_plain(value: Any) -> bool:
    """Arrays, numbers, None and dicts of them: the kinds of attribute an environment keeps its episode in."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return value is None or isinstance(value, (np.ndarray, np.generic, bool, int, float))


def _unplain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy().copy()
    if isinstance(value, dict):
        return {k: _unplain(v) for k, v in value.items()}
    return value


MUJOCO_DATA = ("qpos", "qvel", "act", "ctrl", "qacc_warmstart")
"""``MjData`` arrays a MuJoCo environment continues from (with ``time``), restored then ``mj_forward``-ed."""


def env_state(env: gym.Env) -> list[dict[str, Any]]:
    """What continuing ``env``'s running episode exactly needs, one dict per wrapper layer.

    Per layer: the :data:`DYNAMIC_ATTRS` it has and, on the innermost environment, every attribute that
    is an array, a number or a dict of them (episode state such as a cache or a task queue; constants
    are restored to the same values); the state of every ``numpy.random.Generator`` a layer holds (the
    env's own ``np_random``, which draws the next reset; an attack wrapper's noise); a MuJoCo env's
    :data:`MUJOCO_DATA`; and, for a layer with state of its own kind, whatever its ``get_env_state()``
    returns (restored by ``set_env_state(state)``). Values are tensors, numbers and dicts/lists of them.
    """
    out = []
    for layer in _layers(env):
        attrs = vars(layer)
        entry: dict[str, Any] = {"type": type(layer).__name__}
        inner = not isinstance(layer, gym.Wrapper)
        entry["attrs"] = {k: _plain(v) for k, v in attrs.items()
                          if (k in DYNAMIC_ATTRS or (inner and not k.startswith("__") and _is_plain(v)))}
        data = attrs.get("data")
        if inner and data is not None and all(hasattr(data, k) for k in (*MUJOCO_DATA, "time")):
            entry["mujoco"] = {k: _plain(np.array(getattr(data, k))) for k in MUJOCO_DATA}
            entry["mujoco"]["time"] = float(data.time)
        entry["rngs"] = {k: v.bit_generator.state for k, v in attrs.items() if isinstance(v, np.random.Generator)}
        if callable(getattr(layer, "get_env_state", None)):
            entry["custom"] = layer.get_env_state()
        out.append(entry)
    return out


def load_env_state(env: gym.Env, state: list[dict[str, Any]]) -> None:
    """Restore what :func:`env_state` returned into an environment built the same way."""
    layers = list(_layers(env))
    if [type(layer).__name__ for layer in layers] != [e["type"] for e in state]:
        raise ValueError(f"checkpoint environment layers {[e['type'] for e in state]} differ from this "
                         f"environment's {[type(layer).__name__ for layer in layers]}")
    for layer, entry in zip(layers, state, strict=True):
        for k, v in entry["attrs"].items():
            setattr(layer, k, _unplain(v))
        if "mujoco" in entry:
            import mujoco

            data = layer.data
            for k in MUJOCO_DATA:
                getattr(data, k)[...] = entry["mujoco"][k].numpy()
            data.time = entry["mujoco"]["time"]
            mujoco.mj_forward(layer.model, data)
        for k, bit_state in entry["rngs"].items():
            rng = vars(layer).get(k)
            if not isinstance(rng, np.random.Generator):
                rng = np.random.Generator(getattr(np.random, bit_state["bit_generator"])())
                setattr(layer, k, rng)
            rng.bit_generator.state = bit_state
        if "custom" in entry:
            layer.set_env_state(entry["custom"])


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

    def state_dict(self) -> dict[str, Any]:
        """Every copy's running episode (:func:`env_state`), the current observations and episode statistics."""
        return {"envs": [env_state(env) for env in self.envs], "obs": torch.from_numpy(self.obs.copy()),
                "ep_returns": torch.from_numpy(self.ep_returns.copy()),
                "ep_lengths": torch.from_numpy(self.ep_lengths.copy()),
                "finished": [[float(r), int(n)] for r, n in self.finished]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the episodes :meth:`state_dict` captured (same environment, same number of copies)."""
        if len(state["envs"]) != self.n:
            raise ValueError(f"checkpoint has {len(state['envs'])} environment copies, this pool {self.n}")
        for env, es in zip(self.envs, state["envs"], strict=True):
            load_env_state(env, es)
        self.obs[:] = state["obs"].numpy()
        self.ep_returns[:] = state["ep_returns"].numpy()
        self.ep_lengths[:] = state["ep_lengths"].numpy()
        self.finished = [(float(r), int(n)) for r, n in state["finished"]]

    def drain(self) -> list[tuple[float, int]]:
        out, self.finished = self.finished, []
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()
