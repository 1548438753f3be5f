"""Keep the observation- and action-space contract when an environment's attributes are overridden.

Gymnasium envs build their spaces once, in ``__init__``, from attributes such as Pendulum's
``max_speed``: overriding the attribute afterwards (what a plain-id ``EnvSpec`` does) left the old
space in place, so observations fell outside ``observation_space`` (Pendulum with ``max_speed=12``
reported angular velocities up to 12 in a space bounded by 8), and agents that scale by the space's
bounds (SAC's action scaling, observation normalisation) silently misbehaved.

Two remedies, by what is known about the env class:

* classes whose spaces are a known function of their attributes (the classic-control envs) get their
  spaces rebuilt from the new attributes, exactly as their ``__init__`` builds them;
* for any other class an override cannot be checked in advance, so the env is wrapped in
  :class:`SpaceContract`, which raises :class:`ObservationSpaceError` (naming the overridden
  attributes) at the first observation outside the declared space, rather than training on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.acrobot import AcrobotEnv
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.classic_control.continuous_mountain_car import Continuous_MountainCarEnv
from gymnasium.envs.classic_control.mountain_car import MountainCarEnv
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from securefrl.errors import SecureFRLError

__all__ = ["SPACE_BUILDERS", "ObservationSpaceError", "SpaceContract", "keep_space_contract"]


class ObservationSpaceError(SecureFRLError, ValueError):
    """An environment produced an observation outside its ``observation_space`` after attribute overrides."""


def _f32(values: Iterable[float]) -> np.ndarray:
    return np.array(list(values), dtype=np.float32)


def _pendulum(u: Any) -> dict[str, spaces.Space]:
    high = _f32([1.0, 1.0, u.max_speed])
    return {"observation_space": spaces.Box(low=-high, high=high, dtype=np.float32),
            "action_space": spaces.Box(low=-u.max_torque, high=u.max_torque, shape=(1,), dtype=np.float32)}


def _cartpole(u: Any) -> dict[str, spaces.Space]:
    high = _f32([u.x_threshold * 2, np.inf, u.theta_threshold_radians * 2, np.inf])
    return {"observation_space": spaces.Box(-high, high, dtype=np.float32)}


def _mountaincar(u: Any) -> dict[str, spaces.Space]:
    return {"observation_space": spaces.Box(_f32([u.min_position, -u.max_speed]),
                                            _f32([u.max_position, u.max_speed]), dtype=np.float32)}


def _acrobot(u: Any) -> dict[str, spaces.Space]:
    high = _f32([1.0, 1.0, 1.0, 1.0, u.MAX_VEL_1, u.MAX_VEL_2])
    return {"observation_space": spaces.Box(low=-high, high=high, dtype=np.float32)}


SPACE_BUILDERS: dict[type, Callable[[Any], dict[str, spaces.Space]]] = {
    PendulumEnv: _pendulum,
    CartPoleEnv: _cartpole,
    MountainCarEnv: _mountaincar,
    Continuous_MountainCarEnv: _mountaincar,
    AcrobotEnv: _acrobot,
}
"""Env classes whose spaces are rebuilt from their attributes, with the expression of their ``__init__``."""


class SpaceContract(gym.Wrapper):
    """Raise :class:`ObservationSpaceError` on an observation outside the declared space."""

    def __init__(self, env: gym.Env, overridden: Iterable[str]) -> None:
        super().__init__(env)
        self.overridden = sorted(overridden)

    def _check(self, obs: Any) -> Any:
        if not self.observation_space.contains(obs):
            raise ObservationSpaceError(
                f"{type(self.env.unwrapped).__name__} returned an observation outside its observation_space after "
                f"overriding {', '.join(self.overridden)}: {obs!r} not in {self.observation_space}. Its spaces are "
                f"not rebuilt for overrides (known classes: {', '.join(c.__name__ for c in SPACE_BUILDERS)}); "
                "keep these attributes at values inside the space, or use an environment family"
            )
        return obs

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return self._check(obs), info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._check(obs), reward, terminated, truncated, info


def keep_space_contract(env: gym.Env, overridden: Iterable[str], checked: bool = True) -> gym.Env:
    """``env`` with spaces that hold after ``overridden`` attributes changed.

    A known class gets its spaces rebuilt (and is returned as is); for another class with overrides the
    env is wrapped in :class:`SpaceContract` unless ``checked`` is False (families are vetted by their tests).
    """
    names = set(overridden)
    u = env.unwrapped
    for cls, build in SPACE_BUILDERS.items():
        if type(u) is cls:
            for attr, space in build(u).items():
                setattr(u, attr, space)
            return env
    if names and checked:
        return SpaceContract(env, names)
    return env
