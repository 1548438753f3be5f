"""User access control in an O-RAN site: attach each arriving user to one of K cells (default 6).

The application of federated DRL user access control in Open RAN (survey §4.3: Cao et al. [31], "Federated
Deep Reinforcement Learning for User Access Control in Open Radio Access Networks", ICC 2021: per-site
agents learn which cell a user joins, to balance load). The system model is the standard one of user
association for load balancing (Ye et al. 2013, "User Association for Load Balancing in Heterogeneous
Cellular Networks", IEEE TWC): a user in cell ``k`` gets an equal share of the cell's bandwidth,

    rate_k = bandwidth_k / (load_k + 1) * log2(1 + sinr_k)    [Mbit/s: MHz x bit/s/Hz]

with ``load_k`` users already active in cell ``k``, and the site's objective is proportional fairness, the sum
of the users' log rates (Ye et al.'s utility). Each step one user arrives with an SINR per cell:
:data:`SINR_MEAN_DB` plus independent log-normal shadowing of :data:`SHADOWING_DB` dB per cell (Goldsmith 2005,
"Wireless Communications", ch. 2; 8 dB is the usual macro-cell figure, 3GPP TR 36.814), within the receiver's
range :data:`SINR_RANGE_DB`. The agent picks the cell (``Discrete(K)``); the reward is the user's log rate
``log10(rate / RATE_REF_MBPS)``, with the achieved rate off the predicted one by an unobserved log-normal
factor of :data:`FADING_DB` dB (fast fading). A user stays for a geometric number of arrivals of mean
``mean_session`` (memoryless sessions), so the loads rise and fall. Episodes are ``episode_length`` users
and start with an empty site (truncation only); returns are about 100 (a user at 2 Mbit/s earns 1).

Why the log rate and not the rate: with equal bandwidth shares the sum of the users' rates does not reward
balancing load. Whatever cells users join, a cell's users share its bandwidth, so the mean rate per user is
about ``total / (users + K)`` either way, and only the SINR a user gets counts. In a check with the linear
rate the greedy rule that knew the bandwidths scored *below* the rule that ignored them (it gives up SINR to
reach the big cells). The log rate (proportional fairness) penalises the unequal rates of an unbalanced site,
as Ye et al. argue, and then knowing the bandwidths pays (tested).

Observation: ``[sinr_db_0 .. sinr_db_{K-1}, load_0 .. load_{K-1}]`` (float32): the arriving user's SINR per
cell in dB (its measurement report) and the number of active users per cell, clipped to :data:`LOAD_MAX`.

Where sites differ (not observed): how the site's spectrum is split between its cells. The cells sit on a
circle (cell ``k`` at ``k / K``) and cell ``k`` gets a share of ``total_bandwidth_mhz`` proportional to
``exp(capacity_contrast * cos(2 pi (k / K - capacity_centre)))`` (:func:`cell_bandwidths`): the cells near the
site's ``capacity_centre`` are its macro / wide-carrier cells, the far ones small cells with little spectrum or
a thin backhaul. At heterogeneity 0 every site has centre 0.5 (cell 3 strongest, cell 0 weakest) and contrast
1 (shares 5/8/22/36/22/8% of 4 MHz); at 1 the centres spread over the whole circle and the contrasts over
[0.5, 1.5], so the strong cell of one site is the weak cell of another. The mean session length (the site's
traffic load, 6-14 arrivals) varies too: how much load balancing is worth against SINR.

Why one policy is penalised: the SINRs and the loads are observed, the bandwidths are not, so which cell pays
off rests on the capacities the policy has learned. The greedy rule that knows them (:func:`greedy_policy`:
the cell of highest rate for this user) sends most users to the site's strong cells; the same rule for a site
whose strong cell is another sends them to this site's weak cells (see the tests). The greedy rule is myopic
(it ignores what a user's load does to later users), so it is the natural per-site rule rather than the
optimum; in a check, adding a look-ahead penalty for the load a user adds did not beat it (equal or lower).

Why 6 cells and not 4: with 4 the default PPO agent learned the greedy rule's return to within 1% in 8,192
steps of one site (3 seeds), so pooling clients' data had nothing to add; with 6 it stays ~4% below at
8,192 steps and gets within ~2% at 32,768 (the data of 4 clients), measured on the default site.

Randomness: ``reset`` draws ``(episode_length + 1, K)`` normals twice (shadowing, fading) and
``episode_length + 1`` uniforms (session lengths) from the env's seeded ``np_random``;
:class:`securefrl.envs.batched.RANAccessBatch` makes the same draws per copy and steps with the same
:func:`access_step`, so the two agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "FADING_DB", "LOAD_MAX", "RATE_REF_MBPS", "SHADOWING_DB", "SINR_MEAN_DB", "SINR_RANGE_DB", "RANAccessEnv",
    "access_step", "cell_bandwidths", "check_session", "draw_episode", "greedy_policy", "log_shares", "observe",
]

SINR_MEAN_DB = 10.0
"""Mean SINR of an arriving user in every cell [dB] (the same for every cell and site: the SINR is observed)."""
SHADOWING_DB = 8.0
"""Standard deviation of the log-normal shadowing [dB], independent per user and cell."""
SINR_RANGE_DB = (-10.0, 30.0)
"""The receiver's SINR range [dB]: draws outside it are reported and served at the bound (2.5 sigma)."""
FADING_DB = 3.0
"""Standard deviation [dB] of the log-normal factor between the rate the report predicts and the rate achieved
(fast fading and interference the report does not capture), independent per user and cell; unobserved."""
RATE_REF_MBPS = 0.2
"""Reference rate of the reward ``log10(rate / RATE_REF_MBPS)``: a user served below 0.2 Mbit/s costs reward."""
LOAD_MAX = 30
"""Loads above this read as ``LOAD_MAX`` in the observation (about 3x the mean total load)."""

#: Client parameters read by :func:`draw_episode` and :func:`cell_bandwidths` (the drawn ones and a constant).
PARAMETERS = ("capacity_centre", "capacity_contrast", "mean_session", "total_bandwidth_mhz")


def cell_bandwidths(n_cells: int, centre: float, contrast: float, total: float) -> np.ndarray:
    """Bandwidth of each cell [MHz]: ``total`` split in proportion to ``exp(contrast * cos(2 pi (k/K - centre)))``."""
    weights = np.exp(contrast * np.cos(2.0 * np.pi * (np.arange(n_cells) / n_cells - centre)))
    return total * weights / weights.sum()


def draw_episode(rng: np.random.Generator, bandwidth: np.ndarray, mean_session: float,
                 length: int) -> dict[str, np.ndarray]:
    """The ``length + 1`` users of one episode: SINR [dB] and utility per cell, and session lengths.

    ``utility[t, k] = log10(bandwidth_k * log2(1 + sinr_tk) / RATE_REF_MBPS) + FADING_DB / 10 * z_tk`` (``z``
    standard normal: the unobserved fading) is user ``t``'s reward in cell ``k`` if it had the cell to itself;
    computed here, once per copy with the same code for the per-env and the batched implementation, so the step
    only subtracts a table entry (:func:`access_step`).
    """
    shadow = rng.standard_normal((length + 1, bandwidth.shape[0]))
    fading = rng.standard_normal((length + 1, bandwidth.shape[0]))
    u = rng.random(length + 1)
    sinr_db = np.clip(SINR_MEAN_DB + SHADOWING_DB * shadow, *SINR_RANGE_DB)
    efficiency = np.log2(1.0 + 10.0 ** (sinr_db / 10.0))  # bit/s/Hz
    utility = np.log10(bandwidth * efficiency / RATE_REF_MBPS) + FADING_DB / 10.0 * fading
    # geometric number of arrivals the user stays for (>= 1), mean ``mean_session``: inverse CDF of u
    session = np.maximum(1.0, np.ceil(np.log1p(-u) / np.log1p(-1.0 / mean_session)))
    return {"sinr_db": sinr_db, "utility": utility, "session": session.astype(np.int64)}


def log_shares(length: int) -> np.ndarray:
    """``log10(n + 1)`` for loads ``n = 0 .. length``: what sharing a cell with ``n`` users costs in reward."""
    return np.log10(np.arange(1, length + 2, dtype=np.float64))


def access_step(utility: np.ndarray, shares: np.ndarray, loads: np.ndarray, leaves: np.ndarray,
                session: np.ndarray, t: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reward of the user arriving at step ``t`` in ``cell``, and the loads and departure counts at step ``t + 1``.

    The reward is ``log10(rate / RATE_REF_MBPS) = utility[cell] - log10(load[cell] + 1)``. One env: ``utility``
    (the user's row of the episode) and ``loads`` of shape ``(K,)``, ``leaves`` ``(K, T + 1)`` (how many users
    of each cell leave before the arrival of step ``j``), ``session``, ``t``, ``cell`` scalars; ``shares`` is
    :func:`log_shares`. A batch: a leading copy axis on every argument but ``shares``. Returns new arrays.
    """
    single = loads.ndim == 1
    if single:
        utility, loads, leaves = utility[None], loads[None], leaves[None]
        session, t, cell = (np.reshape(x, (1,)) for x in (session, t, cell))
    rows = np.arange(loads.shape[0])
    reward = utility[rows, cell] - shares[loads[rows, cell]]
    leaves = leaves.copy()
    depart = t + session
    shows = depart < leaves.shape[-1]  # a departure after the episode's last arrival never shows
    leaves[rows[shows], cell[shows], depart[shows]] += 1
    loads = loads.copy()
    loads[rows, cell] += 1
    loads -= leaves[rows, :, t + 1]
    if single:
        return reward[0], loads[0], leaves[0]
    return reward, loads, leaves


def observe(sinr_db: np.ndarray, loads: np.ndarray) -> np.ndarray:
    """``[sinr_db per cell, load per cell]`` as float32, loads clipped to :data:`LOAD_MAX` (one env or a batch)."""
    return np.concatenate([sinr_db, np.minimum(loads, LOAD_MAX)], axis=-1).astype(np.float32)


def greedy_policy(env: RANAccessEnv) -> Callable[[np.ndarray], int]:
    """The rule that knows site ``env``'s cell bandwidths: attach the user where its rate is highest.

    Reads the SINR and the loads from the observation (float32, so the rate can differ from the env's in the
    last bits; a load above :data:`LOAD_MAX` reads as ``LOAD_MAX``; ties go to the lower cell). The fading is
    unobserved and zero-mean in the log, so this is the cell of highest expected reward. Myopic: it ignores the
    load a user adds for later users.
    """
    bandwidth = env.bandwidths()
    k = env.n_cells  # the rate's argmax is the reward's: log10 is increasing

    def act(obs: np.ndarray) -> int:
        sinr_db, loads = obs[:k].astype(np.float64), obs[k:].astype(np.float64)
        rate = bandwidth / (loads + 1) * np.log2(1.0 + 10.0 ** (sinr_db / 10.0))
        return int(np.argmax(rate))

    return act


class RANAccessEnv(gym.Env):
    """One O-RAN site attaching each arriving user to one of ``n_cells`` cells.

    Observation ``[sinr_db per cell, load per cell]`` (see the module docstring), action ``Discrete(n_cells)``
    (the cell), reward ``log10(rate / RATE_REF_MBPS)`` of the user. Never terminates; truncates after
    ``episode_length`` users. Class attributes are the site's parameters; the drawn ones are set per site by
    the ``ran_access`` family and take effect at the next reset.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - declared so by gymnasium.Env

    capacity_centre: float = 0.5
    """Where the site's capacity sits on the circle of cells [0, 1] (0 and 1 are the same point; cell k at k/K)."""
    capacity_contrast: float = 1.0
    """How unequal the cells' bandwidth shares are (0 = equal; the share of cell k ~ exp(contrast cos(...)))."""
    mean_session: float = 10.0
    """Mean number of arrivals a user stays for (geometric): the site's traffic load (> 1)."""
    total_bandwidth_mhz: float = 4.0
    """Spectrum of the site, split between its cells [MHz]."""

    def __init__(self, n_cells: int = 6, episode_length: int = 100, render_mode: str | None = None) -> None:
        if n_cells < 2:
            raise ValueError(f"need at least 2 cells, got n_cells={n_cells}")
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        self.n_cells, self.episode_length = int(n_cells), int(episode_length)
        self.render_mode = render_mode
        k, length = self.n_cells, self.episode_length
        low = np.array([SINR_RANGE_DB[0]] * k + [0.0] * k, dtype=np.float32)
        high = np.array([SINR_RANGE_DB[1]] * k + [float(LOAD_MAX)] * k, dtype=np.float32)
        self.observation_space = spaces.Box(low, high, (2 * k,), np.float32)
        self.action_space = spaces.Discrete(k)
        self.shares = log_shares(length)
        self.episode = {"sinr_db": np.zeros((length + 1, k)), "utility": np.zeros((length + 1, k)),
                        "session": np.ones(length + 1, dtype=np.int64)}
        self.loads = np.zeros(k, dtype=np.int64)
        self.leaves = np.zeros((k, length + 1), dtype=np.int64)
        self.t = 0

    def parameters(self) -> dict[str, float]:
        """The site's parameters as floats."""
        return {k: float(getattr(self, k)) for k in PARAMETERS}

    def bandwidths(self) -> np.ndarray:
        """Bandwidth of each cell [MHz] under the current parameters (:func:`cell_bandwidths`)."""
        return cell_bandwidths(self.n_cells, float(self.capacity_centre), float(self.capacity_contrast),
                               float(self.total_bandwidth_mhz))

    def _obs(self) -> np.ndarray:
        return observe(self.episode["sinr_db"][self.t], self.loads)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.episode = draw_episode(self.np_random, self.bandwidths(), check_session(self.mean_session),
                                    self.episode_length)
        self.loads = np.zeros(self.n_cells, dtype=np.int64)
        self.leaves = np.zeros((self.n_cells, self.episode_length + 1), dtype=np.int64)
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r} for {self.action_space}")
        cell = int(action)
        load = int(self.loads[cell])
        e = self.episode
        reward, self.loads, self.leaves = access_step(
            e["utility"][self.t], self.shares, self.loads, self.leaves, np.asarray(e["session"][self.t]),
            np.asarray(self.t), np.asarray(cell))
        self.t += 1
        return self._obs(), float(reward), False, self.t >= self.episode_length, {"cell": cell, "load": load}


def check_session(mean_session: float) -> float:
    """``mean_session`` as a float, ValueError unless > 1 (a geometric session of mean 1 ends at once)."""
    value = float(mean_session)
    if not value > 1.0:
        raise ValueError(f"mean_session must be > 1, got {mean_session!r}")
    return value
