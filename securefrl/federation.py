"""Horizontal federated RL: clients train locally, the server aggregates through a protocol.

The round (:meth:`Federation.run_round`) is one function over three plug-in axes: the client algorithm
(:mod:`securefrl.algorithm`, what a client trains and sends), the executor (:mod:`securefrl.executors`,
where tasks run) and the server aggregation (:mod:`securefrl.server`, protocol open or robust rule, DP
around it). Registries: :mod:`securefrl.axes`; compatibility: :mod:`securefrl.compat`.

One round (see DESIGN.md): sample clients (seeded) -> each sampled client loads the global
parameters, trains ``local_steps`` environment steps in its own environment, and computes
``delta = local - global`` -> its update pipeline (clipping, ...) -> ``protocol.protect`` ->
``protocol.combine`` on the server -> ``protocol.open`` by the key holder -> server optimizer
step -> every client is evaluated in its own environment with the new global model (and the
sampled ones also with their locally trained model). FedAvg is McMahan et al. 2017.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from protocols.base import AggregationProtocol
from protocols.errors import ProtocolError, RoundAbortedError
from securefrl.agents.base import Agent
from securefrl.algorithm import ClientAlgorithm
from securefrl.behaviour import ServerView, make_behaviour, wrap_training_env
from securefrl.config import ExperimentConfig
from securefrl.envs import EnvSpec, draw_config_envs
from securefrl.errors import CoordinateClipWarning, UpdateRejectedError
from securefrl.executors import Executor
from securefrl.protocol_factory import PROTOCOLS, make_protocol
from securefrl.seeding import derive_rng, sample_clients
from securefrl.server import make_aggregation
from securefrl.server_opt import ServerOptimizer
from securefrl.tasks import EvalTask
from securefrl.transforms import UpdateTransform, chain, check_finite, clip_by_l2_norm, clipped_coordinates, identity


@dataclass
class Client:
    """One federated client: its environment, its agent(s) and its update-pipeline state."""

    client_id: int
    env_spec: EnvSpec
    agent: Agent
    eval_env: Any
    pipeline_state: Any = None
    env_steps: int = 0
    malicious: bool = False
    extra_agents: dict[str, Agent] = field(default_factory=dict)
    """Further agents of this client by slot (Ditto's ``"personal"`` model)."""

    def agent_for(self, slot: str) -> Agent:
        return self.agent if slot == "main" else self.extra_agents[slot]


@dataclass
class RoundRecord:
    """What one round produced: per-client rows and a round summary."""

    round: int
    clients: list[dict[str, Any]]
    summary: dict[str, Any]


@dataclass
class Federation:
    """A federation built from an :class:`ExperimentConfig`; drive it with :meth:`run_round`.

    The round is one function over three plug-in axes, all chosen by the config: the client algorithm
    (``personalization.method``, :attr:`algorithm`), the executor (``federation.simulation`` x ``backend``,
    :attr:`executor`) and the server aggregation (protocol open or robust rule, DP around it,
    :attr:`aggregation`). ``Federation(config)`` and :func:`make_federation` build the same thing.
    """

    config: ExperimentConfig
    protocol: AggregationProtocol | None = None
    pipeline: UpdateTransform | None = None
    observers: list[Callable[[ServerView], None]] = field(default_factory=list)
    """Called with what the server saw each round (curious-server attacks, logging)."""
    clients: list[Client] = field(init=False)
    global_params: np.ndarray = field(init=False)
    round: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        from securefrl.axes import ALGORITHMS, EXECUTORS
        from securefrl.compat import algorithm_name, executor_name

        cfg = self.config
        self.behaviour = make_behaviour(cfg.attack.name, **cfg.attack.params) if cfg.attack.name != "none" else None
        n_mal = cfg.attack.n_malicious if self.behaviour is not None else 0
        picked = derive_rng(cfg.seed, "malicious").choice(cfg.federation.n_clients, size=n_mal, replace=False)
        self.malicious_ids = sorted(int(i) for i in picked)
        self.rule = cfg.make_rule()
        torch.set_num_threads(1)  # tiny networks: threading costs more than it buys
        specs = draw_config_envs(cfg)
        agent_cfg = cfg.agent_config()
        self.executor: Executor = EXECUTORS.get(executor_name(cfg))(self)
        self.algorithm: ClientAlgorithm = ALGORITHMS.get(algorithm_name(cfg))(self)
        self.clients = []
        for cid, spec in enumerate(specs):
            env_fn: Callable[[], Any] = spec.make
            if cid in self.malicious_ids:
                env_fn = self._poisoned_env_fn(spec, cid)
            client = Client(cid, spec, None, spec.make(), malicious=cid in self.malicious_ids)  # type: ignore[arg-type]
            self.clients.append(client)
            client.agent = self.algorithm.make_agent(cid, spec, env_fn, agent_cfg)
        if cfg.privacy.dpsgd:  # record-level DP-SGD inside every client's local training
            from securefrl.agents.dp import DPSGDSettings, enable_dp_sgd  # deferred: pulls in opacus

            for c in self.clients:
                enable_dp_sgd(c.agent, DPSGDSettings.from_privacy(cfg.privacy),
                              derive_rng(cfg.seed, "dpsgd-noise", c.client_id))
        # Every client starts from one global initialisation, drawn from its own stream.
        self.global_params = self.algorithm.initial_global(specs, agent_cfg)
        self.dim = self.algorithm.update_dim()
        fed = cfg.federation
        self._clip_warned = False  # CoordinateClipWarning: once per run
        self.dp = None
        if cfg.privacy.placement != "none":
            from securefrl.privacy.federated import ClientLevelDP  # deferred: pulls in opacus

            self.dp = ClientLevelDP(cfg.privacy, cfg.protocol.name, fed.n_clients, len(self.sample_clients(0)),
                                    fed.rounds)
        self.aggregation = make_aggregation(self.rule, self.dp, cfg.seed)
        if self.protocol is None:
            params = dict(cfg.protocol.params)
            clip_param = PROTOCOLS.get(cfg.protocol.name).coordinate_clip_param
            if self.dp is not None and clip_param is not None:  # room for the noise in the coordinate clip
                params.setdefault(clip_param, self.dp.required_coordinate_clip())
            self.protocol = make_protocol(cfg.protocol.name, self.algorithm.protocol_dim(), len(self.clients),
                                          params)
        if self.dp is not None:
            self.dp.check_protocol(self.protocol)
        if self.pipeline is None:
            if self.dp is not None:
                self.pipeline = self.dp.pipeline()
            else:
                self.pipeline = chain(clip_by_l2_norm(fed.clip_norm)) if fed.clip_norm > 0 else identity()
        for c in self.clients:
            c.pipeline_state = self.pipeline.init(self.dim)
            c.agent.set_flat(self.algorithm.client_model(c))
        self.server_opt = ServerOptimizer(fed.server_optimizer, fed.server_lr, fed.server_momentum,
                                          fed.server_beta2, fed.server_eps)
        self.executor.start()

    def __getattr__(self, name: str) -> Any:
        """The algorithm's and the executor's state read through the facade (``fed.choice``, ``fed.population``)."""
        if name.startswith("__") or name in ("algorithm", "executor"):
            raise AttributeError(name)
        for part in ("algorithm", "executor"):
            obj = self.__dict__.get(part)
            if obj is not None and hasattr(obj, name):
                return getattr(obj, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def rule_state(self) -> Any:
        """The robust rule's state across rounds (checkpointed)."""
        return self.aggregation.rule_state

    @rule_state.setter
    def rule_state(self, value: Any) -> None:
        self.aggregation.rule_state = value

    def close(self) -> None:
        """Release the executor's resources (a local Ray instance this federation started)."""
        self.executor.close()

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _poisoned_env_fn(self, spec: EnvSpec, cid: int) -> Callable[[], Any]:
        """Training environments of a malicious client, wrapped by an environment attack if any."""
        counter = iter(range(1 << 30))

        def make() -> Any:
            return wrap_training_env(self.behaviour, spec.make(), derive_rng(self.config.seed, "attack-env", cid,
                                                                             next(counter)))

        return make

    def _count_clipped(self, row: dict[str, Any], encoded: np.ndarray) -> None:
        """Record (and warn once of) coordinates beyond the protocol's per-coordinate range, which it clips."""
        protocol = self.protocol
        bound = protocol.mean_bound if protocol is not None else None
        n = clipped_coordinates(encoded, bound)
        if protocol is None or bound is None or n == 0:
            return
        row["clipped_coordinates"] = n
        if not self._clip_warned:
            self._clip_warned = True
            param = protocol.coordinate_clip_param or "its range"
            warnings.warn(f"protocol {self.config.protocol.name!r} clipped {n} of {encoded.size} coordinates of an "
                          f"update to +-{bound:g} (protocol.params.{param}), so the opened mean is not the mean of "
                          "the updates: bound them with federation.clip_norm <= that range, or widen it "
                          "(rows record clipped_coordinates)", CoordinateClipWarning, stacklevel=2)

    def _weight(self) -> float:
        """Aggregation weight: environment steps trained, in units of the configured budget (FedAvg).

        Every client trains ``local_steps`` steps, so "samples" weights are all 1; expressing them in
        budget units keeps them small, which CKKS's value bound and SecAgg's fixed-point range need.
        Uniform weighting, and DP (sensitivity per client), use 1 by definition.
        """
        return 1.0

    def budget_exhausted(self) -> bool:
        """True when the next round would take epsilon past ``privacy.epsilon_budget``."""
        return self.dp is not None and self.dp.would_exceed_budget()

    # ------------------------------------------------------------------------------------
    def sample_clients(self, round_id: int) -> list[int]:
        """Seeded sampling of ``ceil(fraction * n)`` clients (at least one) for ``round_id``."""
        return sample_clients(self.config.seed, round_id, len(self.clients), self.config.federation.client_fraction)

    def local_update(self, client: Client, round_id: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Train ``client`` as the algorithm says, through the executor; return its update and row statistics."""
        tasks = self.algorithm.train_tasks(client, round_id)
        results = self.executor.train(tasks)
        client.env_steps += sum(t.steps for t in tasks)
        return self.algorithm.update(client, round_id, results)

    def run_round(self) -> RoundRecord:
        """Run the next round and return its record: train (algorithm x executor), aggregate, evaluate."""
        assert self.protocol is not None and self.pipeline is not None
        r = self.round
        t_round = time.perf_counter()
        times = {"setup": 0.0, "train": 0.0, "protect": 0.0, "combine": 0.0, "open": 0.0, "eval": 0.0}
        sampled = self.sample_clients(r)
        rows: dict[int, dict[str, Any]] = {c.client_id: {"round": r, "client": c.client_id,
                                                          "sampled": c.client_id in sampled,
                                                          "malicious": c.malicious} for c in self.clients}
        sends = self.algorithm.sends
        if sends and self.dp is not None and self.dp.clip_state is not None:
            self.pipeline = self.dp.pipeline()  # the adaptive clip bound moved
        aborted = None
        t0 = time.perf_counter()
        if sends:
            try:
                self.protocol.begin_round(r, sampled)
            except RoundAbortedError as err:
                aborted = str(err)
        times["setup"] = time.perf_counter() - t0
        # --- clients: train through the executor, then evaluate the trained models -------------------------
        t0 = time.perf_counter()
        chosen = self.algorithm.select(sampled, r)
        tasks = {cid: self.algorithm.train_tasks(self.clients[cid], r) for cid in sampled}
        results = self.executor.train([t for cid in sampled for t in tasks[cid]])
        deltas: dict[int, np.ndarray] = {}
        stats: dict[int, dict[str, Any]] = {}
        for cid in sampled:
            client = self.clients[cid]
            client.env_steps += sum(t.steps for t in tasks[cid])
            deltas[cid], stats[cid] = self.algorithm.update(client, r, [res for res in results if res.client_id == cid])
            stats[cid].update(chosen.get(cid, {}))
        times["train"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        local = self.executor.evaluate([EvalTask(cid, r, "local") for cid in sampled])
        times["eval"] = time.perf_counter() - t0
        for cid, ret in zip(sampled, local, strict=True):
            rows[cid]["return_local"] = ret
            rows[cid].update(stats[cid])
        if not sends:  # nothing protected, aggregated or on the wire
            return self._finish_round(r, sampled, rows, {}, times, t_round, {})
        # --- server: protect, combine, open (or a robust rule), DP around it -------------------------------
        payloads, extra, aborted = self._aggregate(r, deltas, rows, times, aborted)
        return self._finish_round(r, sampled, rows, extra, times, t_round, payloads, aborted=aborted)

    def _aggregate(self, r: int, deltas: dict[int, np.ndarray], rows: dict[int, dict[str, Any]],
                   times: dict[str, float], aborted: str | None) -> tuple[dict[int, bytes], dict[str, Any], str | None]:
        """Client pipelines and ``protect``, the server's ``combine`` and :attr:`aggregation`; the model steps."""
        assert self.protocol is not None and self.pipeline is not None
        payloads: dict[int, bytes] = {}
        self._poison(r, deltas)
        weight = self._weight()
        self.aggregation.observe(deltas)
        for cid, delta in deltas.items():
            if aborted:
                break
            client = self.clients[cid]
            t0 = time.perf_counter()
            pipe_rng = derive_rng(self.config.seed, "pipeline", r, cid)
            try:
                update, client.pipeline_state = self.pipeline.update(check_finite(delta), client.pipeline_state,
                                                                     pipe_rng)
            except UpdateRejectedError as err:
                rows[cid]["rejected"] = str(err)
                continue
            encoded = self.algorithm.encode(cid, update)
            self._count_clipped(rows[cid], encoded)
            try:
                payloads[cid] = self.protocol.protect(cid, r, encoded, weight)
            except (ValueError, ProtocolError) as err:  # e.g. an update too large for CKKS: drop this client only
                rows[cid]["rejected"] = f"protect: {type(err).__name__}: {err}"
                continue
            times["protect"] += time.perf_counter() - t0
            rows[cid]["update_norm"] = float(np.linalg.norm(update))
            rows[cid]["bytes_up"] = len(payloads[cid])
        t0 = time.perf_counter()
        try:
            aggregate = self.protocol.combine(r, payloads) if not aborted else None
        except RoundAbortedError as err:
            aborted, aggregate = str(err), None
        times["combine"] = time.perf_counter() - t0
        if aggregate is None:  # below the protocol's threshold: nothing is released, the model stays
            return payloads, {}, aborted
        for cid, reason in aggregate.rejected.items():
            rows[cid]["rejected"] = reason
        for cid, extra_bytes in self.protocol.extra_client_bytes().items():
            if cid in rows:
                rows[cid]["bytes_up"] = rows[cid].get("bytes_up", 0) + extra_bytes
        t0 = time.perf_counter()
        try:
            opened = self.aggregation.open(r, self.protocol, aggregate, payloads, weight)
        except ProtocolError as err:  # any failure to open is this round's abort, never the run's end
            times["open"] = time.perf_counter() - t0
            return payloads, {"n_included": 0}, f"open failed: {type(err).__name__}: {err}"
        for cid, reason in opened.dropped.items():
            rows[cid]["rejected"] = f"aggregator: {reason}"
        if opened.mean is not None:
            self.global_params = self.algorithm.apply_mean(opened.mean)
        times["open"] = time.perf_counter() - t0
        if self.observers:
            view = ServerView(r, self.protocol.name, dict(payloads), aggregate.payload, list(aggregate.included),
                              opened.individual, opened.mean if self.protocol.server_can_open else None)
            for observe in self.observers:
                observe(view)
        extra = {"n_included": len(aggregate.included), "bytes_down_aggregate": len(aggregate.payload),
                 **opened.metrics}
        return payloads, extra, aborted

    def _finish_round(self, r: int, sampled: list[int], rows: dict[int, dict[str, Any]], extra: dict[str, Any],
                      times: dict[str, float], t_round: float, payloads: dict[int, bytes],
                      aborted: str | None = None) -> RoundRecord:
        """Evaluate every client with the model it now holds (and its personal model) and assemble the record."""
        alg = self.algorithm
        t0 = time.perf_counter()
        alg.before_eval(r)
        for client, ret in zip(self.clients, self.executor.evaluate(alg.eval_tasks(r)), strict=True):
            rows[client.client_id]["return_global"] = ret
            rows[client.client_id]["env_steps"] = client.env_steps
        times["eval"] += time.perf_counter() - t0
        returns = [rows[c.client_id]["return_global"] for c in self.clients]
        local = [rows[c]["return_local"] for c in sampled if "return_local" in rows[c]]
        summary = {
            "round": r,
            "mean_return": float(np.mean(returns)),
            "min_return": float(np.min(returns)),
            "max_return": float(np.max(returns)),
            "mean_local_return": float(np.mean(local)) if local else None,
            "n_sampled": len(sampled),
            "n_included": 0,
            "bytes_up": int(sum(rows[c].get("bytes_up", 0) for c in sampled)),
            "aborted": aborted,
            **extra,
            "env_steps_per_client": int(np.mean([c.env_steps for c in self.clients])),
            "round_time": time.perf_counter() - t_round,
            **{f"time_{k}": v for k, v in times.items()},
        }
        if alg.personalized:
            t0 = time.perf_counter()
            if alg.personal_differs:
                tasks = [EvalTask(c.client_id, r, "personal", alg.personal_model(c)) for c in self.clients]
                personal_returns = self.executor.evaluate(tasks)
            else:
                personal_returns = [rows[c.client_id]["return_global"] for c in self.clients]
            for client, ret in zip(self.clients, personal_returns, strict=True):
                rows[client.client_id]["return_personal"] = ret
                rows[client.client_id].update(alg.client_extras(client))
            personal = [rows[c.client_id]["return_personal"] for c in self.clients]
            summary["time_eval"] += time.perf_counter() - t0
            summary.update(method=alg.method, mean_personal_return=float(np.mean(personal)),
                           min_personal_return=float(np.min(personal)), round_time=time.perf_counter() - t_round)
        summary.update(alg.summary_extras())
        self.round += 1
        return RoundRecord(r, [rows[c.client_id] for c in self.clients], summary)

    def _poison(self, round_id: int, deltas: dict[int, np.ndarray]) -> None:
        """Malicious sampled clients replace their updates with crafted ones (in place)."""
        bad = [c for c in deltas if self.clients[c].malicious]
        if self.behaviour is None or not bad:
            return
        honest_ids = [c for c in deltas if not self.clients[c].malicious]
        honest = np.stack([deltas[c] for c in honest_ids]) if honest_ids else None
        if getattr(self.behaviour, "omniscient", False) and honest is None:
            return  # nothing to be omniscient about: every sampled client is malicious
        crafted = self.behaviour.craft(np.stack([deltas[c] for c in bad]), honest,
                                       derive_rng(self.config.seed, "attack", round_id))
        for c, row in zip(bad, crafted, strict=True):
            deltas[c] = np.asarray(row, dtype=np.float64)

    # ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (loads with ``torch.load(weights_only=True)``)."""
        state = {
            "round": self.round,
            "global_params": torch.from_numpy(self.global_params.copy()),
            "server_opt": {k: torch.from_numpy(v.copy()) for k, v in self.server_opt.state.items()},
            "rule_state": _to_torch(self.rule_state),
            "dp": self.dp.state_dict() if self.dp is not None else None,
            "clients": [
                {"agent": c.agent.state_dict(), "env_steps": c.env_steps, "pipeline": _to_torch(c.pipeline_state)}
                for c in self.clients
            ],
        }
        if self.algorithm.personalized:
            state["personalization"] = {"method": self.algorithm.method, **self.algorithm.state_dict()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.algorithm.personalized:
            extra = state.get("personalization") or {}
            if extra.get("method") != self.algorithm.method:
                raise ValueError(f"checkpoint is for personalization {extra.get('method')!r}, this run is "
                                 f"{self.algorithm.method!r}")
        self.round = int(state["round"])
        self.global_params = state["global_params"].numpy().astype(np.float32)
        self.server_opt.state = {k: v.numpy() for k, v in state["server_opt"].items()}
        self.rule_state = _to_numpy(state["rule_state"])
        if self.dp is not None:
            self.dp.load_state_dict(state["dp"])
        for c, cs in zip(self.clients, state["clients"], strict=True):
            c.agent.load_state_dict(cs["agent"])
            c.env_steps = int(cs["env_steps"])
            c.pipeline_state = _to_numpy(cs["pipeline"])
        if self.algorithm.personalized:
            self.algorithm.load_state_dict(state["personalization"])


def _to_torch(obj: Any) -> Any:
    """numpy arrays -> tensors, recursively (checkpoints load with weights_only=True)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_torch(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _to_torch(v) for k, v in obj.items()}
    return obj


def _to_numpy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    return obj


def make_federation(config: ExperimentConfig, **kwargs: Any) -> Federation:
    """The federation ``config`` asks for (its personalization method, simulation and backend): a :class:`Federation`.

    Kept as the long-standing entry point; ``Federation(config)`` builds the same thing. Which
    combinations run is decided by :mod:`securefrl.compat` when the config is validated.
    """
    return Federation(config, **kwargs)
