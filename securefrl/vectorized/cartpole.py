"""Many CartPole copies with per-copy physics, stepped as one numpy computation.

The equations, constants, float64 state, float32 observations, termination test, 500-step
truncation (gymnasium's ``TimeLimit``) and seeding (``gymnasium.utils.seeding.np_random``, a
PCG64 per copy drawing the initial state ``uniform(-0.05, 0.05, 4)``) are those of gymnasium's
``CartPole-v1`` (Barto, Sutton & Anderson 1983; Florian 2007 for the corrected dynamics), written
element-wise over arrays so one call steps every client's environments. Physics parameters are
arrays of one value per copy, which is what lets heterogeneous clients share a batch (gymnasium's
own ``CartPoleVectorEnv`` shares one set of physics across its copies).

Seeding, autoreset (gymnasium's ``AutoresetMode.SAME_STEP``, as :class:`securefrl.agents.vecenv.EnvPool`)
and episode bookkeeping are those of every batched environment, :class:`securefrl.envs.batched.BatchedEnv`;
this module adds the CartPole physics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from securefrl.envs import EnvSpec
from securefrl.envs.batched import BatchedEnv
from securefrl.errors import ConfigError

#: Physical attributes of ``CartPoleEnv`` a copy carries (derived ones included, as the env caches them).
PHYSICS = ("gravity", "masscart", "masspole", "total_mass", "length", "polemass_length", "force_mag", "tau")


def physics_of(specs: Sequence[EnvSpec]) -> tuple[dict[str, np.ndarray], int]:
    """Per-spec physics arrays and the episode limit, read from environments built by the specs.

    Reading them off ``spec.make().unwrapped`` (rather than re-deriving them) keeps one source of
    truth: whatever a family or plain-attribute override sets is what the batch simulates.
    """
    values: dict[str, list[float]] = {k: [] for k in PHYSICS}
    limit = None
    for i, spec in enumerate(specs):
        env = spec.make()
        try:
            u = env.unwrapped
            if type(u) is not CartPoleEnv:
                raise ConfigError("env.name", f"the vectorized simulation runs CartPole only; client {i} has "
                                  f"{type(u).__name__} ({spec.env_id}); use federation.simulation=loop")
            if u.kinematics_integrator != "euler" or getattr(u, "_sutton_barto_reward", False):
                raise ConfigError("env", "the vectorized CartPole implements the default euler integrator and "
                                  "+1 reward only")
            if (u.theta_threshold_radians, u.x_threshold) != (12 * 2 * np.pi / 360, 2.4):
                raise ConfigError("env", "the vectorized CartPole uses the default failure thresholds only")
            steps = env.spec.max_episode_steps if env.spec is not None else None
            if steps is None or (limit is not None and steps != limit):
                raise ConfigError("env", "every client's CartPole needs the same TimeLimit (max_episode_steps)")
            limit = int(steps)
            for k in PHYSICS:
                values[k].append(float(getattr(u, k)))
        finally:
            env.close()
    assert limit is not None
    return {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}, limit


class CartPoleBatch(BatchedEnv):
    """``n`` CartPole-v1 copies, copy ``i`` with physics ``physics[k][i]``.

    Parameters
    ----------
    physics
        One float64 array of length ``n`` per name in :data:`PHYSICS`.
    max_episode_steps
        Truncation limit (500 for CartPole-v1).
    """

    X_THRESHOLD = 2.4
    THETA_THRESHOLD = 12 * 2 * np.pi / 360  # the same expression gymnasium evaluates, hence the same float
    PER_COPY = ("p", "state")
    STATE = ("state",)

    def __init__(self, physics: dict[str, np.ndarray], max_episode_steps: int = 500) -> None:
        missing = [k for k in PHYSICS if k not in physics]
        if missing:
            raise ValueError(f"physics lacks {missing}")
        n = len(physics["gravity"])
        high = np.array([self.X_THRESHOLD * 2, np.inf, self.THETA_THRESHOLD * 2, np.inf], dtype=np.float32)
        super().__init__(n, max_episode_steps, spaces.Box(-high, high, dtype=np.float32), spaces.Discrete(2))
        self.p = {k: np.ascontiguousarray(physics[k], dtype=np.float64) for k in PHYSICS}
        if any(v.shape != (self.n,) for v in self.p.values()):
            raise ValueError(f"every physics array must have shape ({self.n},)")
        self.state = np.zeros((self.n, 4), dtype=np.float64)

    @classmethod
    def from_specs(cls, specs: Sequence[EnvSpec], copies: int = 1) -> CartPoleBatch:
        """``copies`` consecutive copies per spec (spec ``s`` owns copies ``s*copies .. s*copies+copies-1``)."""
        physics, limit = physics_of(specs)
        return cls({k: np.repeat(v, copies) for k, v in physics.items()}, limit)

    def _new_episode(self, i: int) -> None:
        rng = self.rngs[i]
        assert rng is not None
        self.state[i] = rng.uniform(low=-0.05, high=0.05, size=(4,))

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, terminated = self.physics_step(slice(None), actions)
        return np.ones(self.n, dtype=np.float64), terminated

    def _observe(self) -> np.ndarray:
        return self.state.astype(np.float32)  # CartPole observes its float64 state as float32

    def physics_step(self, idx: np.ndarray | slice, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance copies ``idx`` by one euler step; return (new state, terminated) for them.

        The order of operations is gymnasium's, so results agree to the last bit.
        """
        p = {k: v[idx] for k, v in self.p.items()}
        x, x_dot, theta, theta_dot = self.state[idx].T
        force = np.where(np.asarray(actions) == 1, p["force_mag"], -p["force_mag"])
        costheta = np.cos(theta)
        sintheta = np.sin(theta)
        temp = (force + p["polemass_length"] * np.square(theta_dot) * sintheta) / p["total_mass"]
        thetaacc = (p["gravity"] * sintheta - costheta * temp) / (
            p["length"] * (4.0 / 3.0 - p["masspole"] * np.square(costheta) / p["total_mass"])
        )
        xacc = temp - p["polemass_length"] * thetaacc * costheta / p["total_mass"]
        tau = p["tau"]
        x = x + tau * x_dot
        x_dot = x_dot + tau * xacc
        theta = theta + tau * theta_dot
        theta_dot = theta_dot + tau * thetaacc
        state = np.stack([x, x_dot, theta, theta_dot], axis=1)
        self.state[idx] = state
        terminated = ((x < -self.X_THRESHOLD) | (x > self.X_THRESHOLD)
                      | (theta < -self.THETA_THRESHOLD) | (theta > self.THETA_THRESHOLD))
        return state, terminated

    def greedy_returns(self, seeds: Sequence[int], act: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """:meth:`BatchedEnv.greedy_returns`, stepping only the copies whose episode still runs."""
        self.reset(seeds)
        active = np.arange(self.n)
        returns = np.zeros(self.n, dtype=np.float64)
        obs = self.obs.copy()
        while active.size:
            actions = np.asarray(act(obs))[active]
            state, terminated = self.physics_step(active, actions)
            self.elapsed[active] += 1
            returns[active] += 1.0
            obs[active] = state.astype(np.float32)
            keep = ~(terminated | (self.elapsed[active] >= self.max_episode_steps))
            active = active[keep]
        return returns


def greedy_returns(batch: BatchedEnv, seeds: Sequence[int], act: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """One episode per copy from ``reset(seed)``, acting with ``act(obs of every copy) -> actions``; returns.

    This is :meth:`securefrl.agents.base.Agent.evaluate` for many episodes at once (``batch.greedy_returns``).
    """
    return batch.greedy_returns(seeds, act)
