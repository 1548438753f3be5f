"""Task offloading in mobile edge computing: run each task on the device or send it to an edge server.

The application of DRL/FRL offloading in MEC (survey §4.1: Wang et al. [22], Zhu et al. [24]; the
system model is the standard one of Mao et al. 2017, "A Survey on Mobile Edge Computing: The
Communication Perspective", and Chen et al. 2019, "Optimized Computation Offloading Performance in
Virtual Edge Computing Systems via Deep Reinforcement Learning"). Tasks arrive at a device as a Poisson
process of rate ``arrival_rate``; task ``t`` has ``D_t`` Mbit of input and needs ``cycles_per_bit * D_t``
CPU cycles. Each step the agent decides for the arriving task:

* action 0, **local**: it queues behind the device CPU's backlog ``b_loc`` and runs at ``local_cpu_ghz``:
  latency ``b_loc + cycles / f_loc``, energy ``chip_coeff * f_loc^2 * cycles`` (dynamic CMOS power);
* action 1, **offload**: it queues behind the radio's backlog ``b_tx``, is uploaded at the Shannon rate
  ``bandwidth * log2(1 + snr_ref * 10^(channel_gain_db / 10) * fading_t)`` and runs on the server at
  ``server_cpu_ghz`` (the client's share of the edge server): latency ``b_tx + D / rate + cycles / f_srv``,
  energy ``tx_power * D / rate``.

Reward: ``-(latency + energy_weight * energy)`` of the task (seconds + joules). Then the backlogs drain
by the time until the next task arrives. Episodes are ``episode_length`` tasks (truncation only).

Observation: ``[D_t, fading_t, b_loc, b_tx]``, clipped to :data:`OBS_HIGH`: the task, the normalised
small-scale fading of the channel (uniform in [0.5, 1.5], mean 1: what a channel-quality report gives
relative to the long-term level) and the two backlogs in seconds. The client's *long-term* channel gain,
CPU speeds and arrival rate are not observed: they are the environment. Heterogeneity draws them per
client (see :mod:`securefrl.envs.families`), so the best offloading threshold differs between clients: a
device with a weak channel and a fast CPU should compute locally what a device with a good channel and a
slow CPU should offload (:func:`myopic_policy` and the tests show it). At heterogeneity 0 the defaults
make both choices comparable (the myopic rule offloads about 70% of the tasks), so the decision depends
on the task, the fading and the backlogs.

Design note: the backlogs are observed, and they correct a wrong threshold (a policy that offloads too
much sees ``b_tx`` grow and switches to local), which is why the ranges are wide: the channel gain spans
-10..+10 dB and the CPU speeds 0.3-1.7 GHz (device) and 0.5-7.5 GHz (server share); with narrower ranges
(e.g. +-50% linear) the best policy of a median client was within 3% of every client's own.

Randomness: ``reset`` draws ``(episode_length + 1, 3)`` uniforms (task size, fading, inter-arrival time)
from the env's seeded ``np_random``; :class:`securefrl.envs.batched.MECOffloadingBatch` makes the same draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "EPISODE_FIELDS", "OBS_HIGH", "MECOffloadingEnv", "draw_episode", "myopic_policy", "observe", "offload_step",
]

#: Per-task arrays of an episode, computed once at reset (see :func:`draw_episode`).
EPISODE_FIELDS = ("size", "fading", "gap", "local_time", "local_energy", "tx_time", "server_time", "tx_energy")

#: Upper bounds of the observation ``[D_t, fading_t, b_loc, b_tx]``: larger values are reported clipped (a task
#: above 4 Mbit reads as 4 Mbit, a backlog above 30 s as 30 s), so observations stay in the space whatever
#: parameters a client is given. The family's ranges never reach the size bound.
OBS_HIGH = np.array([4.0, 1.8, 30.0, 30.0], dtype=np.float32)

FADING_LOW, FADING_HIGH = 0.5, 1.5
"""Range of the normalised small-scale fading (uniform, mean 1)."""

#: Client parameters read by :func:`draw_episode` (the family's drawn ones plus fixed constants).
PARAMETERS = ("channel_gain_db", "local_cpu_ghz", "server_cpu_ghz", "task_size_mbit", "arrival_rate",
              "bandwidth_mhz", "snr_ref", "tx_power_w", "cycles_per_bit", "chip_coeff", "energy_weight")


def draw_episode(rng: np.random.Generator, p: dict[str, float], length: int) -> dict[str, np.ndarray]:
    """Every task of one episode and what each choice would cost it, from ``(length + 1, 3)`` uniforms.

    Computing the costs here, with the same code for the per-env and the batched implementation, keeps
    the two identical to the last bit (the step itself only adds, multiplies and takes maxima).
    """
    u = rng.random((length + 1, 3))
    size = p["task_size_mbit"] * (0.5 + u[:, 0])  # Mbit, uniform in [0.5, 1.5] x the client's mean
    fading = FADING_LOW + (FADING_HIGH - FADING_LOW) * u[:, 1]
    gap = -np.log1p(-u[:, 2]) / p["arrival_rate"]  # exponential inter-arrival time [s]
    cycles = size * 1e6 * p["cycles_per_bit"]
    f_loc = p["local_cpu_ghz"] * 1e9
    snr = p["snr_ref"] * 10.0 ** (p["channel_gain_db"] / 10.0) * fading
    rate = p["bandwidth_mhz"] * 1e6 * np.log2(1.0 + snr)  # bit/s
    tx_time = size * 1e6 / rate
    return {
        "size": size, "fading": fading, "gap": gap,
        "local_time": cycles / f_loc, "local_energy": p["chip_coeff"] * f_loc**2 * cycles,
        "tx_time": tx_time, "server_time": cycles / (p["server_cpu_ghz"] * 1e9), "tx_energy": p["tx_power_w"] * tx_time,
    }


def offload_step(ep: dict[str, np.ndarray], t: np.ndarray | int, b_loc: np.ndarray, b_tx: np.ndarray,
                 offload: np.ndarray, energy_weight: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cost of serving task ``t`` as chosen and the backlogs when task ``t + 1`` arrives.

    Works element-wise on one env (``ep`` arrays of shape ``(T + 1,)``) or a batch (``(n, T + 1)`` with
    ``t`` one index per row).
    """
    def at(name: str) -> np.ndarray:
        arr = ep[name]
        return arr[t] if arr.ndim == 1 else arr[np.arange(arr.shape[0]), t]

    local_latency = b_loc + at("local_time")
    remote_latency = b_tx + at("tx_time") + at("server_time")
    cost = np.where(offload, remote_latency + energy_weight * at("tx_energy"),
                    local_latency + energy_weight * at("local_energy"))
    new_loc = np.where(offload, b_loc, local_latency)
    new_tx = np.where(offload, b_tx + at("tx_time"), b_tx)
    gap = at("gap")
    return cost, np.maximum(new_loc - gap, 0.0), np.maximum(new_tx - gap, 0.0)


def observe(size: np.ndarray, fading: np.ndarray, b_loc: np.ndarray, b_tx: np.ndarray) -> np.ndarray:
    """``[D, fading, b_loc, b_tx]`` as float32, clipped to :data:`OBS_HIGH` (one env or ``(n, 4)`` for a batch)."""
    obs = np.stack(np.broadcast_arrays(size, fading, b_loc, b_tx), axis=-1).astype(np.float32)
    return np.minimum(obs, OBS_HIGH)


def myopic_policy(env: MECOffloadingEnv) -> Callable[[np.ndarray], int]:
    """The policy that knows client ``env``'s parameters and picks the cheaper choice for each task.

    Greedy in the task's own cost (it ignores what the backlog does to later tasks), so not optimal,
    but it is the natural per-client threshold rule: which threshold it applies depends on the client.
    """
    p = {k: float(getattr(env, k)) for k in PARAMETERS}

    def act(obs: np.ndarray) -> int:
        size, fading, b_loc, b_tx = (float(x) for x in obs)
        cycles = size * 1e6 * p["cycles_per_bit"]
        f_loc = p["local_cpu_ghz"] * 1e9
        snr = p["snr_ref"] * 10.0 ** (p["channel_gain_db"] / 10.0) * fading
        tx = size * 1e6 / (p["bandwidth_mhz"] * 1e6 * np.log2(1.0 + snr))
        local = b_loc + cycles / f_loc + p["energy_weight"] * p["chip_coeff"] * f_loc**2 * cycles
        remote = b_tx + tx + cycles / (p["server_cpu_ghz"] * 1e9) + p["energy_weight"] * p["tx_power_w"] * tx
        return int(remote < local)

    return act


class MECOffloadingEnv(gym.Env):
    """One device deciding, task by task, between local execution (0) and offloading (1).

    Class attributes are the client's parameters (SI-friendly units in the names); the drawn ones are
    set per client by the ``mec_offloading`` family and take effect at the next reset.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - declared so by gymnasium.Env

    channel_gain_db: float = 0.0
    """Long-term channel gain [dB] on top of ``snr_ref`` (path loss and shadowing of this device's position)."""
    local_cpu_ghz: float = 1.0
    """Device CPU frequency [GHz]."""
    server_cpu_ghz: float = 4.0
    """The device's share of the edge server's CPU [GHz] (server load)."""
    task_size_mbit: float = 0.5
    """Mean task input size [Mbit]; each task is uniform in [0.5, 1.5] x this."""
    arrival_rate: float = 1.0
    """Tasks per second (Poisson arrivals)."""
    bandwidth_mhz: float = 1.0
    """Uplink bandwidth [MHz]."""
    snr_ref: float = 5.0
    """Uplink SNR at channel gain 1 and fading 1 (linear)."""
    tx_power_w: float = 0.5
    """Transmit power [W]."""
    cycles_per_bit: float = 500.0
    """CPU cycles per input bit."""
    chip_coeff: float = 0.5e-27
    """Effective switched capacitance: local energy = chip_coeff * f^2 * cycles (Mao et al. 2017)."""
    energy_weight: float = 2.0
    """Seconds of latency one joule is worth in the cost."""

    def __init__(self, episode_length: int = 100, render_mode: str | None = None) -> None:
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        self.episode_length = int(episode_length)
        self.render_mode = render_mode
        self.observation_space = spaces.Box(np.zeros(4, dtype=np.float32), OBS_HIGH, (4,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.episode = {k: np.zeros(self.episode_length + 1) for k in EPISODE_FIELDS}
        self.b_loc = np.zeros(())
        self.b_tx = np.zeros(())
        self.t = 0

    def parameters(self) -> dict[str, float]:
        """The client's parameters as floats (what :func:`draw_episode` reads)."""
        return {k: float(getattr(self, k)) for k in PARAMETERS}

    def _obs(self) -> np.ndarray:
        e = self.episode
        return observe(e["size"][self.t], e["fading"][self.t], self.b_loc, self.b_tx)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.episode = draw_episode(self.np_random, self.parameters(), self.episode_length)
        self.b_loc, self.b_tx, self.t = np.zeros(()), np.zeros(()), 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r} for {self.action_space}")
        offload = np.asarray(int(action) == 1)
        cost, self.b_loc, self.b_tx = offload_step(self.episode, self.t, self.b_loc, self.b_tx, offload,
                                                   float(self.energy_weight))
        self.t += 1
        return self._obs(), -float(cost), False, self.t >= self.episode_length, {"cost": float(cost)}
