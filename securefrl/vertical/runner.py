"""Running vertical FRL end to end, and the single-agent baselines it is measured against.

:class:`VFRLSystem` wires the nodes of :mod:`securefrl.vertical.parties` together through a recorded
:class:`~securefrl.vertical.wire.Wire` and drives the DQN schedule (Mnih et al. 2015; split across
parties as in FedRL, Zhuo et al. 2019). :func:`run_vfrl` trains and evaluates it. The baselines answer
"is cooperation worth it?" (Qi et al. 2021, §3.2): :func:`run_partial_view_baseline` trains a
:class:`~securefrl.agents.DQNAgent` on one party's slice only (what that party could do alone), and
:func:`run_full_observation_baseline` one on the whole observation (the centralised upper reference,
which needs someone to see everything). All three share the DQN hyperparameters, step budget and
evaluation seeds.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from securefrl.agents.dqn import DQNAgent
from securefrl.errors import ConfigError
from securefrl.seeding import derive_rng, derive_seed
from securefrl.vertical.channel import Kind
from securefrl.vertical.config import VFRLConfig, check_partition
from securefrl.vertical.parties import ENV_NAME, Q_NAME, EncoderParty, QAgent, VerticalEnvironment
from securefrl.vertical.wire import MessageLog, Wire


@dataclass
class VFRLResult:
    """Outcome of one VFRL run or one baseline run (``method`` says which), JSON-able via ``asdict``."""

    method: str
    """``"vfrl"``, ``"partial:party<i>"`` or ``"full"``."""
    seed: int
    """Master seed of the run."""
    env_steps: int
    """Environment steps trained."""
    mean_return: float
    """Mean greedy return over the final evaluation episodes."""
    eval_returns: list[float]
    """Greedy return of every final evaluation episode."""
    curve: list[tuple[int, float]]
    """``(env_steps, mean greedy return)`` at every evaluation point, the final one included."""
    train_curve: list[tuple[int, float]]
    """``(env_steps, mean return of training episodes finished in the preceding chunk)`` (NaN if none)."""
    wall_time_s: float
    """Wall-clock time of training and evaluation."""
    param_digest: str
    """SHA-256 of every trainable parameter at the end (identical for identical runs)."""
    wire: dict[str, dict[str, int]] = field(default_factory=dict)
    """VFRL only: messages and bytes per ``sender->recipient:KIND``."""
    wire_bytes: int = 0
    """VFRL only: total bytes on the wire."""
    privacy: dict[str, Any] = field(default_factory=dict)
    """VFRL only: embedding clip, noise multiplier, noise source and release counts (no epsilon claimed)."""


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError("seed", f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def eval_seed(seed: int) -> int:
    """Base reset seed of evaluation episodes (episode ``k`` uses ``eval_seed + k``), shared by all methods."""
    return derive_seed(seed, "vertical", "eval") % (1 << 31)


def _digest(tensors: Sequence[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().numpy().astype(np.float32).tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run tiny networks on one intra-op thread (threads cost more than they buy here), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


class VFRLSystem:
    """Parties, Q-network agent and environments of one VFRL run, connected only through a :class:`Wire`.

    Attributes ``parties``, ``q_agent``, ``world`` and ``wire`` are exposed for tests and audits; the
    nodes themselves hold no reference to each other or to this object.
    """

    def __init__(self, config: VFRLConfig, seed: int, log: MessageLog | None = None) -> None:
        config.validate()
        self.config = config
        self.seed = _check_seed(seed)
        self.world = VerticalEnvironment(config.env_id, config.partition)
        self.partition = check_partition(config.partition, self.world.obs_dim, config.require_cover,
                                         "vfrl.partition")
        self.eval_world = VerticalEnvironment(config.env_id, self.partition)
        self.parties = [EncoderParty(i + 1, part, config, derive_seed(seed, "vertical", "party-init", i + 1),
                                     derive_rng(seed, "vertical", "noise", i + 1))
                        for i, part in enumerate(self.partition)]
        self.q_agent = QAgent([p.party for p in self.parties], self.world.n_actions, config,
                              derive_seed(seed, "vertical", "q-init"), derive_rng(seed, "vertical", "q"))
        self.wire = Wire(log)
        self._handshake()
        self.world.reset(derive_seed(seed, "vertical", "env") % (1 << 31))
        self._sense(self.world)
        self.act_step = 0
        """Index binding EMBED_ACT / ACTION / REWARD messages (training and evaluation share it)."""
        self.next_tid = 0
        self.since_train = 0

    def _handshake(self) -> None:
        for p in self.parties:
            q_hello = self.wire.send(Q_NAME, p.name, Kind.HELLO.name, 0, self.q_agent.hello(p.party))
            p_hello = self.wire.send(p.name, Q_NAME, Kind.HELLO.name, 0, p.hello())
            p.connect(q_hello)
            self.q_agent.connect(p.party, p_hello)

    def _sense(self, world: VerticalEnvironment) -> None:
        for i, p in enumerate(self.parties):
            p.sense(world.sensor(i))

    def _interact(self, world: VerticalEnvironment, explore: bool, record: bool) -> bool:
        """One environment step driven by the protocol; returns whether the episode ended."""
        step = self.act_step
        self.act_step += 1
        send = self.wire.send
        msgs = {p.party: send(p.name, Q_NAME, Kind.EMBED_ACT.name, step, *p.embed_for_action(step))
                for p in self.parties}
        action = send(Q_NAME, ENV_NAME, Kind.ACTION.name, step, self.q_agent.act(msgs, step, explore))
        reward_msg, parts, done = world.step(action, step, self.config.max_message_bytes)
        if record:
            tid = self.next_tid
            self.next_tid += 1
            for p, part in zip(self.parties, parts, strict=True):
                p.store(tid, part)
            self.q_agent.record(tid, step, send(ENV_NAME, Q_NAME, Kind.REWARD.name, step, reward_msg))
        self._sense(world)
        return done

    def _update(self) -> None:
        """One split TD step: ids to parties, embeddings to Q, gradients back to the parties."""
        u = self.q_agent.num_updates
        send = self.wire.send
        requests = self.q_agent.request_batch(u)
        answers = {}
        for p in self.parties:
            req = send(Q_NAME, p.name, Kind.BATCH_REQUEST.name, u, *requests[p.party])
            answers[p.party] = send(p.name, Q_NAME, Kind.EMBED_TRAIN.name, u, *p.answer_batch(req, u))
        grads = self.q_agent.learn(answers, u)
        for p in self.parties:
            p.apply_gradient(send(Q_NAME, p.name, Kind.GRADIENT.name, u, *grads[p.party]), u)

    def train(self, env_steps: int) -> dict[str, float]:
        """Collect ``env_steps`` transitions epsilon-greedily, training on the DQN schedule as it goes."""
        cfg = self.config.dqn
        start = len(self.world.finished)
        for _ in range(env_steps):
            self._interact(self.world, explore=True, record=True)
            self.since_train += 1
            if self.q_agent.num_timesteps >= cfg.learning_starts and self.since_train >= cfg.train_freq:
                self.since_train = 0
                for _ in range(cfg.gradient_steps):
                    self._update()
        finished = self.world.finished[start:]
        return {"episodes": float(len(finished)), "mean_return": _mean(finished),
                "epsilon": self.q_agent.epsilon(), "updates": float(self.q_agent.num_updates),
                "loss": self.q_agent.last_loss}

    def evaluate(self, episodes: int, seed: int) -> list[float]:
        """Greedy returns over ``episodes`` episodes reset with seeds ``seed + k``, through the same protocol."""
        returns = []
        for ep in range(episodes):
            self.eval_world.reset(seed + ep)
            self._sense(self.eval_world)
            while not self._interact(self.eval_world, explore=False, record=False):
                pass
            returns.append(self.eval_world.finished[-1])
        self._sense(self.world)  # parties go back to the training episode's current slice
        return returns

    def parameters(self) -> list[torch.Tensor]:
        """Every trainable tensor: each party's encoder, then the Q head."""
        params: list[torch.Tensor] = [t for p in self.parties for t in p.encoder.parameters()]
        return params + list(self.q_agent.head.parameters())

    def privacy_report(self) -> dict[str, Any]:
        """What protected the embeddings, and how often observations were released (no epsilon is claimed)."""
        cfg = self.config
        counts = [p.release_counts() for p in self.parties]
        return {
            "embedding_clip": cfg.embedding_clip,
            "noise_multiplier": cfg.noise_multiplier,
            "noise_source": "none" if cfg.noise_multiplier == 0 else ("os-csprng" if cfg.secure_noise else "seeded"),
            "privacy_unit": "one party's partial observation in one released embedding row",
            "per_release_noise_multiplier_replace_one": cfg.noise_multiplier / 2.0,
            "total_releases": sum(p.total_releases for p in self.parties),
            "max_releases_per_transition": int(max((int(c.max()) for c in counts if c.size), default=0)),
            "mean_releases_per_transition": (_mean(np.concatenate(counts).tolist())
                                             if any(c.size for c in counts) else 0.0),
            "epsilon": None,
        }

    def close(self) -> None:
        self.world.close()
        self.eval_world.close()


def _chunks(total: int, every: int) -> list[int]:
    if every <= 0 or every >= total:
        return [total]
    n = total // every
    out = [every] * n
    if total - n * every:
        out.append(total - n * every)
    return out


def run_vfrl(config: VFRLConfig, seed: int, log: MessageLog | None = None) -> VFRLResult:
    """Train VFRL for ``config.total_steps`` steps and evaluate greedily (same seed -> identical result).

    ``log`` (optional) receives every message that crosses the wire, for audits and tests.
    """
    t0 = time.perf_counter()
    system = VFRLSystem(config, seed, log)
    with contextlib.ExitStack() as stack:
        stack.callback(system.close)
        stack.enter_context(one_torch_thread())
        base = eval_seed(seed)
        curve: list[tuple[int, float]] = []
        train_curve: list[tuple[int, float]] = []
        done = 0
        final: list[float] = []
        for chunk in _chunks(config.total_steps, config.eval_every):
            stats = system.train(chunk)
            done += chunk
            train_curve.append((done, stats["mean_return"]))
            final = system.evaluate(config.eval_episodes, base)
            curve.append((done, _mean(final)))
        return VFRLResult(
            method="vfrl", seed=int(seed), env_steps=done, mean_return=_mean(final), eval_returns=final,
            curve=curve, train_curve=train_curve, wall_time_s=time.perf_counter() - t0,
            param_digest=_digest(system.parameters()), wire=system.wire.log.summary(),
            wire_bytes=system.wire.log.total_bytes(), privacy=system.privacy_report())


class ObservationFilter(gym.ObservationWrapper):
    """Show an agent only ``indices`` of a 1-D Box observation (the partial-view baseline's sensors)."""

    def __init__(self, env: gym.Env, indices: Sequence[int]) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ConfigError("vfrl.env_id", f"observation filter needs a 1-D Box space, got {space}")
        self._idx = np.asarray(check_partition([list(indices)], int(space.shape[0]))[0], dtype=np.intp)
        self.observation_space = gym.spaces.Box(low=space.low[self._idx], high=space.high[self._idx],
                                                dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation, dtype=np.float32)[self._idx]


def _run_dqn(config: VFRLConfig, seed: int, indices: Sequence[int], method: str) -> VFRLResult:
    t0 = time.perf_counter()
    config.validate()
    seed = _check_seed(seed)

    def env_fn() -> gym.Env:
        return ObservationFilter(gym.make(config.env_id), indices)

    agent = DQNAgent(env_fn, config.dqn, seed=seed)
    eval_env = env_fn()
    with contextlib.ExitStack() as stack:
        stack.callback(agent.pool.close)
        stack.callback(eval_env.close)
        stack.enter_context(one_torch_thread())
        base = eval_seed(seed)
        curve: list[tuple[int, float]] = []
        train_curve: list[tuple[int, float]] = []
        done = 0
        final: list[float] = []
        for chunk in _chunks(config.total_steps, config.eval_every):
            stats = agent.learn(chunk)
            done += chunk
            train_curve.append((done, float(stats["mean_return"])))
            final = agent.evaluate(eval_env, config.eval_episodes, base)
            curve.append((done, _mean(final)))
        return VFRLResult(method=method, seed=seed, env_steps=done, mean_return=_mean(final), eval_returns=final,
                          curve=curve, train_curve=train_curve, wall_time_s=time.perf_counter() - t0,
                          param_digest=_digest([p for _, p in agent.federated_parameters()]))


def run_partial_view_baseline(config: VFRLConfig, seed: int, party: int) -> VFRLResult:
    """A single DQN agent that sees only party ``party``'s slice (1-based): what that party achieves alone."""
    n = len(config.partition)
    if isinstance(party, bool) or not isinstance(party, int) or not 1 <= party <= n:
        raise ConfigError("party", f"party must be an integer in 1..{n}, got {party!r}")
    probe = gym.make(config.env_id)
    try:
        obs_dim = int(math.prod(probe.observation_space.shape or (0,)))
    finally:
        probe.close()
    partition = check_partition(config.partition, obs_dim, config.require_cover, "vfrl.partition")
    return _run_dqn(config, seed, partition[party - 1], f"partial:party{party}")


def run_full_observation_baseline(config: VFRLConfig, seed: int) -> VFRLResult:
    """A single DQN agent that sees the whole observation: the centralised reference VFRL approaches."""
    probe = gym.make(config.env_id)
    try:
        obs_dim = int(math.prod(probe.observation_space.shape or (0,)))
    finally:
        probe.close()
    return _run_dqn(config, seed, list(range(obs_dim)), "full")
