"""Many Acrobot copies with per-copy link lengths and masses, stepped as one numpy computation.

The equations (Sutton 1996, "Generalization in Reinforcement Learning: Successful Examples Using Sparse
Coarse Coding"; the "book" dynamics of Sutton & Barto), the 4th-order Runge-Kutta step of ``dt = 0.2``, the
angle wrapping, velocity bounds, termination test, reward, 500-step truncation and seeding (a PCG64 per copy
drawing the initial state ``uniform(-0.1, 0.1, 4)`` cast to float32) are those of gymnasium's ``Acrobot-v1``,
written element-wise over arrays in gymnasium's order of operations, so the batch equals the per-env version
step for step (tested). One detail matters for that: right after a reset gymnasium's state is float32, so the
first observation's cosines and sines are float32 computations; the batch keeps that per copy (``fresh``).
Bookkeeping and autoreset are :class:`securefrl.envs.batched.BatchedEnv`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.acrobot import AcrobotEnv

from securefrl.envs import EnvSpec
from securefrl.envs.batched import BatchedEnv
from securefrl.errors import ConfigError

#: Attributes of ``AcrobotEnv`` a copy carries (the centres of mass are derived from the lengths by the family).
LINKS = ("LINK_LENGTH_1", "LINK_LENGTH_2", "LINK_MASS_1", "LINK_MASS_2", "LINK_COM_POS_1", "LINK_COM_POS_2",
         "LINK_MOI")

_TORQUE = np.array(AcrobotEnv.AVAIL_TORQUE, dtype=np.float64)


def _sq(x: np.ndarray) -> np.ndarray:
    """``x**2`` as gymnasium's scalar code computes it: C ``pow(x, 2)``, which differs from ``x * x`` (what numpy's
    array ``**2`` and ``np.power(x, 2.0)`` compute) in the last bit for about 1 value in 1,000."""
    return np.float_power(x, 2.0)


def _wrap(x: np.ndarray, m: float, big_m: float) -> np.ndarray:
    """gymnasium's ``wrap`` element-wise: subtract / add the period until ``m <= x <= M``."""
    diff = big_m - m
    x = x.copy()
    while np.any(x > big_m):
        x = np.where(x > big_m, x - diff, x)
    while np.any(x < m):
        x = np.where(x < m, x + diff, x)
    return x


class AcrobotBatch(BatchedEnv):
    """``n`` Acrobot-v1 copies, copy ``i`` with link parameters ``links[k][i]``."""

    PER_COPY = ("p", "state", "fresh")
    STATE = ("state", "fresh")

    def __init__(self, links: dict[str, np.ndarray], max_episode_steps: int = 500) -> None:
        missing = [k for k in LINKS if k not in links]
        if missing:
            raise ValueError(f"links lack {missing}")
        high = np.array([1.0, 1.0, 1.0, 1.0, AcrobotEnv.MAX_VEL_1, AcrobotEnv.MAX_VEL_2], dtype=np.float32)
        super().__init__(len(links["LINK_MASS_1"]), max_episode_steps, spaces.Box(-high, high, dtype=np.float32),
                         spaces.Discrete(3))  # AcrobotEnv's spaces
        self.p = {k: np.ascontiguousarray(links[k], dtype=np.float64) for k in LINKS}
        if any(v.shape != (self.n,) for v in self.p.values()):
            raise ValueError(f"every link array must have shape ({self.n},)")
        self.state = np.zeros((self.n, 4), dtype=np.float64)
        self.fresh = np.zeros(self.n, dtype=bool)
        """Copies reset since their last step: gymnasium's state is float32 there."""

    @classmethod
    def from_specs(cls, specs: Sequence[EnvSpec], copies: int = 1) -> AcrobotBatch:
        """``copies`` consecutive copies per spec (spec ``s`` owns copies ``s*copies .. s*copies+copies-1``)."""
        values: dict[str, list[float]] = {k: [] for k in LINKS}
        limit = None
        for i, spec in enumerate(specs):
            env = spec.make()
            try:
                u = env.unwrapped
                if type(u) is not AcrobotEnv:
                    raise ConfigError("env.name", f"AcrobotBatch batches Acrobot only; client {i} has "
                                      f"{type(u).__name__} ({spec.env_id})")
                if u.book_or_nips != "book" or u.torque_noise_max != 0.0 or u.dt != 0.2:
                    raise ConfigError("env", "the batched Acrobot implements the default book dynamics, dt = 0.2 "
                                      "and no torque noise only")
                if (u.MAX_VEL_1, u.MAX_VEL_2) != (AcrobotEnv.MAX_VEL_1, AcrobotEnv.MAX_VEL_2):
                    raise ConfigError("env", "the batched Acrobot uses the default velocity bounds only")
                steps = env.spec.max_episode_steps if env.spec is not None else None
                if steps is None or (limit is not None and steps != limit):
                    raise ConfigError("env", "every client's Acrobot needs the same TimeLimit (max_episode_steps)")
                limit = int(steps)
                for k in LINKS:
                    values[k].extend([float(getattr(u, k))] * copies)
            finally:
                env.close()
        assert limit is not None
        return cls({k: np.asarray(v) for k, v in values.items()}, limit)

    def _new_episode(self, i: int) -> None:
        rng = self.rngs[i]
        assert rng is not None
        self.state[i] = rng.uniform(low=-0.1, high=0.1, size=(4,)).astype(np.float32)
        self.fresh[i] = True

    def _dsdt(self, y: np.ndarray) -> np.ndarray:
        """``AcrobotEnv._dsdt`` (book dynamics) for every copy; ``y`` is ``(n, 5)``: state and torque."""
        p = self.p
        m1, m2, l1 = p["LINK_MASS_1"], p["LINK_MASS_2"], p["LINK_LENGTH_1"]
        lc1, lc2, i1, i2 = p["LINK_COM_POS_1"], p["LINK_COM_POS_2"], p["LINK_MOI"], p["LINK_MOI"]
        g = 9.8
        a = y[:, 4]
        theta1, theta2, dtheta1, dtheta2 = y[:, 0], y[:, 1], y[:, 2], y[:, 3]
        d1 = m1 * _sq(lc1) + m2 * (_sq(l1) + _sq(lc2) + 2 * l1 * lc2 * np.cos(theta2)) + i1 + i2
        d2 = m2 * (_sq(lc2) + l1 * lc2 * np.cos(theta2)) + i2
        phi2 = m2 * lc2 * g * np.cos(theta1 + theta2 - np.pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * _sq(dtheta2) * np.sin(theta2)
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * np.sin(theta2)
            + (m1 * lc1 + m2 * l1) * g * np.cos(theta1 - np.pi / 2)
            + phi2
        )
        ddtheta2 = (
            a + d2 / d1 * phi1 - m2 * l1 * lc2 * _sq(dtheta1) * np.sin(theta2) - phi2
        ) / (m2 * _sq(lc2) + i2 - _sq(d2) / d1)
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return np.stack([dtheta1, dtheta2, ddtheta1, ddtheta2, np.zeros(self.n)], axis=1)

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y0 = np.concatenate([self.state, _TORQUE[actions][:, None]], axis=1)
        dt = 0.2 - 0  # gymnasium's rk4 over t = [0, dt]
        dt2 = dt / 2.0
        k1 = self._dsdt(y0)
        k2 = self._dsdt(y0 + dt2 * k1)
        k3 = self._dsdt(y0 + dt2 * k2)
        k4 = self._dsdt(y0 + dt * k3)
        ns = (y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))[:, :4]
        ns[:, 0] = _wrap(ns[:, 0], -np.pi, np.pi)
        ns[:, 1] = _wrap(ns[:, 1], -np.pi, np.pi)
        ns[:, 2] = np.minimum(np.maximum(ns[:, 2], -AcrobotEnv.MAX_VEL_1), AcrobotEnv.MAX_VEL_1)
        ns[:, 3] = np.minimum(np.maximum(ns[:, 3], -AcrobotEnv.MAX_VEL_2), AcrobotEnv.MAX_VEL_2)
        self.state[:] = ns
        self.fresh[:] = False
        terminated = -np.cos(ns[:, 0]) - np.cos(ns[:, 1] + ns[:, 0]) > 1.0
        return np.where(terminated, 0.0, -1.0), terminated

    def _observe(self) -> np.ndarray:
        s = self.state
        obs = np.stack([np.cos(s[:, 0]), np.sin(s[:, 0]), np.cos(s[:, 1]), np.sin(s[:, 1]), s[:, 2], s[:, 3]],
                       axis=1).astype(np.float32)
        if self.fresh.any():  # gymnasium's float32 state right after reset: float32 cos / sin
            f = s[self.fresh].astype(np.float32)
            obs[self.fresh] = np.stack([np.cos(f[:, 0]), np.sin(f[:, 0]), np.cos(f[:, 1]), np.sin(f[:, 1]),
                                        f[:, 2], f[:, 3]], axis=1)
        return obs
