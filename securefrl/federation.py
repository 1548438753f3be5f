"""Horizontal federated RL: clients train locally, the server aggregates through a protocol.

One round (see DESIGN.md): sample clients (seeded) -> each sampled client loads the global
parameters, trains ``local_steps`` environment steps in its own environment, and computes
``delta = local - global`` -> its update pipeline (clipping, ...) -> ``protocol.protect`` ->
``protocol.combine`` on the server -> ``protocol.open`` by the key holder -> server optimizer
step -> every client is evaluated in its own environment with the new global model (and the
sampled ones also with their locally trained model). FedAvg is McMahan et al. 2017.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from protocols.base import AggregationProtocol, release
from protocols.errors import ProtocolError, RoundAbortedError
from securefrl.agents import make_agent
from securefrl.agents.base import Agent
from securefrl.behaviour import ServerView, make_behaviour, wrap_training_env
from securefrl.config import ExperimentConfig
from securefrl.envs import EnvSpec, draw_client_envs
from securefrl.errors import ConfigError, UpdateRejectedError
from securefrl.protocol_factory import make_protocol
from securefrl.seeding import derive_rng, derive_seed
from securefrl.server_opt import ServerOptimizer
from securefrl.transforms import UpdateTransform, chain, check_finite, clip_by_l2_norm, identity


@dataclass
class Client:
    """One federated client: its environment, its agent and its update-pipeline state."""

    client_id: int
    env_spec: EnvSpec
    agent: Agent
    eval_env: Any
    pipeline_state: Any = None
    env_steps: int = 0
    malicious: bool = False


@dataclass
class RoundRecord:
    """What one round produced: per-client rows and a round summary."""

    round: int
    clients: list[dict[str, Any]]
    summary: dict[str, Any]


@dataclass
class Federation:
    """A federation built from an :class:`ExperimentConfig`; drive it with :meth:`run_round`."""

    config: ExperimentConfig
    protocol: AggregationProtocol | None = None
    pipeline: UpdateTransform | None = None
    observers: list[Callable[[ServerView], None]] = field(default_factory=list)
    """Called with what the server saw each round (curious-server attacks, logging)."""
    clients: list[Client] = field(init=False)
    global_params: np.ndarray = field(init=False)
    round: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        cfg = self.config
        self.behaviour = make_behaviour(cfg.attack.name, **cfg.attack.params) if cfg.attack.name != "none" else None
        n_mal = cfg.attack.n_malicious if self.behaviour is not None else 0
        picked = derive_rng(cfg.seed, "malicious").choice(cfg.federation.n_clients, size=n_mal, replace=False)
        self.malicious_ids = sorted(int(i) for i in picked)
        self.rule = cfg.make_rule()
        self.rule_state: Any = None
        torch.set_num_threads(1)  # tiny networks: threading costs more than it buys
        specs = draw_client_envs(
            cfg.env.name,
            cfg.federation.n_clients,
            cfg.env.heterogeneity,
            derive_rng(cfg.seed, "env-draw"),
            overrides=cfg.env.overrides or None,
            ranges={k: (v[0], v[1]) for k, v in cfg.env.ranges.items()} or None,
        )
        agent_cfg = cfg.agent_config()
        self.clients = []
        for cid, spec in enumerate(specs):
            env_fn = spec.make
            if cid in self.malicious_ids:
                env_fn = self._poisoned_env_fn(spec, cid)
            agent = self._make_agent(cid, spec, env_fn, agent_cfg)
            self.clients.append(Client(cid, spec, agent, spec.make(), malicious=cid in self.malicious_ids))
        if cfg.privacy.dpsgd:  # record-level DP-SGD inside every client's local training
            from securefrl.agents.dp import DPSGDSettings, enable_dp_sgd  # deferred: pulls in opacus

            for c in self.clients:
                enable_dp_sgd(c.agent, DPSGDSettings.from_privacy(cfg.privacy),
                              derive_rng(cfg.seed, "dpsgd-noise", c.client_id))
        # Every client starts from one global initialisation, drawn from its own stream.
        self.global_params = self._initial_global_params(specs, agent_cfg)
        self.dim = self._update_dim()
        fed = cfg.federation
        self.dp = None
        if cfg.privacy.placement != "none":
            from securefrl.privacy.federated import ClientLevelDP  # deferred: pulls in opacus

            if fed.clip_norm > 0:
                raise ConfigError("federation.clip_norm", "with differential privacy the clip bound is "
                                  "privacy.clip_norm; leave federation.clip_norm at 0")
            self.dp = ClientLevelDP(cfg.privacy, cfg.protocol.name, fed.n_clients, len(self.sample_clients(0)),
                                    fed.rounds)
        if self.protocol is None:
            params = dict(cfg.protocol.params)
            if self.dp is not None and cfg.protocol.name == "secagg":  # room for the noise in SecAgg's clip
                params.setdefault("clip", self.dp.required_coordinate_clip())
            self.protocol = make_protocol(cfg.protocol.name, self._protocol_dim(), len(self.clients), params)
        if self.dp is not None:
            self.dp.check_protocol(self.protocol)
        if self.pipeline is None:
            if self.dp is not None:
                self.pipeline = self.dp.pipeline()
            else:
                self.pipeline = chain(clip_by_l2_norm(fed.clip_norm)) if fed.clip_norm > 0 else identity()
        for c in self.clients:
            c.pipeline_state = self.pipeline.init(self.dim)
            c.agent.set_flat(self._client_model(c))
        self.server_opt = ServerOptimizer(fed.server_optimizer, fed.server_lr, fed.server_momentum,
                                          fed.server_beta2, fed.server_eps)

    def _make_agent(self, cid: int, spec: EnvSpec, env_fn: Callable[[], Any], agent_cfg: Any) -> Agent:
        """Client ``cid``'s agent (a hook: :mod:`securefrl.vectorized` gives clients rows of one batched population)."""
        return make_agent(self.config.agent.name, env_fn, agent_cfg, seed=derive_seed(self.config.seed, "agent", cid))

    def _initial_global_params(self, specs: list[EnvSpec], agent_cfg: Any) -> np.ndarray:
        """The first global model, drawn from its own stream (a hook: personalization keeps more server state)."""
        init_agent = make_agent(self.config.agent.name, specs[0].make, agent_cfg,
                                seed=derive_seed(self.config.seed, "global-init"))
        return init_agent.get_flat()

    def _update_dim(self) -> int:
        """Length of a client's update, what the update pipeline sees (a hook: personal heads are not sent)."""
        return int(self.global_params.shape[0])

    def _protocol_dim(self) -> int:
        """Length of the vector a client protects (a hook: clustered aggregation protects k slots)."""
        return self.dim

    def _client_model(self, client: Client) -> np.ndarray:
        """The model ``client`` holds between rounds: the global one (a hook: personalization adds local parts)."""
        return self.global_params

    def _encode_update(self, client_id: int, update: np.ndarray) -> np.ndarray:
        """Client side, after the pipeline: the vector handed to ``protocol.protect`` (a hook; identity here)."""
        return update

    def _apply_mean(self, mean: np.ndarray) -> np.ndarray:
        """The next global model from the opened mean update: the server optimizer's step (a hook)."""
        return self.server_opt.step(self.global_params, mean)

    def _poisoned_env_fn(self, spec: EnvSpec, cid: int) -> Callable[[], Any]:
        """Training environments of a malicious client, wrapped by an environment attack if any."""
        counter = iter(range(1 << 30))

        def make() -> Any:
            return wrap_training_env(self.behaviour, spec.make(), derive_rng(self.config.seed, "attack-env", cid,
                                                                             next(counter)))

        return make

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
        n = len(self.clients)
        k = max(1, int(np.ceil(self.config.federation.client_fraction * n - 1e-9)))
        rng = derive_rng(self.config.seed, "sample", round_id)
        return sorted(int(i) for i in rng.choice(n, size=k, replace=False))

    def _evaluate(self, client: Client, round_id: int, tag: str) -> float:
        episodes = self.config.federation.eval_episodes
        seed = derive_seed(self.config.seed, "eval", tag, round_id, client.client_id) % (2**31)
        return float(np.mean(client.agent.evaluate(client.eval_env, episodes, seed)))

    def local_update(self, client: Client, round_id: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Train ``client`` from the global model; return its protected-ready update and stats."""
        fed = self.config.federation
        client.agent.set_flat(self.global_params)
        client.agent.reseed(derive_seed(self.config.seed, "train", round_id, client.client_id) % (2**31))
        stats = client.agent.learn(fed.local_steps)
        client.env_steps += fed.local_steps
        delta = client.agent.get_flat().astype(np.float64) - self.global_params.astype(np.float64)
        out = {"train_" + k: float(v) for k, v in stats.items()}
        if client.agent.dpsgd is not None:  # record-level epsilon so far (securefrl.agents.dp)
            out.update(client.agent.dpsgd.report())
        return delta, out

    def run_round(self) -> RoundRecord:
        """Run the next round and return its record."""
        assert self.protocol is not None and self.pipeline is not None
        r = self.round
        t_round = time.perf_counter()
        times = {"setup": 0.0, "train": 0.0, "protect": 0.0, "combine": 0.0, "open": 0.0, "eval": 0.0}
        sampled = self.sample_clients(r)
        if self.dp is not None and self.dp.clip_state is not None:
            self.pipeline = self.dp.pipeline()  # the adaptive clip bound moved
        aborted = None
        t0 = time.perf_counter()
        try:
            self.protocol.begin_round(r, sampled)
        except RoundAbortedError as err:
            aborted = str(err)
        times["setup"] = time.perf_counter() - t0
        payloads: dict[int, bytes] = {}
        rows: dict[int, dict[str, Any]] = {c.client_id: {"round": r, "client": c.client_id,
                                                          "sampled": c.client_id in sampled,
                                                          "malicious": c.malicious} for c in self.clients}
        deltas: dict[int, np.ndarray] = {}
        dp_metrics: dict[str, Any] = {}
        for cid in sampled:
            client = self.clients[cid]
            t0 = time.perf_counter()
            deltas[cid], stats = self.local_update(client, r)
            times["train"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            rows[cid]["return_local"] = self._evaluate(client, r, "local")
            times["eval"] += time.perf_counter() - t0
            rows[cid].update(stats)
        self._poison(r, deltas)
        weight = self._weight()
        bits = {c: (0.5 if np.linalg.norm(d) <= self.dp.clip_norm else -0.5) for c, d in deltas.items()} \
            if self.dp is not None else {}
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
            try:
                payloads[cid] = self.protocol.protect(cid, r, self._encode_update(cid, update), weight)
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
            return self._finish_round(r, sampled, rows, {}, times, t_round, payloads, aborted=aborted)
        for cid, reason in aggregate.rejected.items():
            rows[cid]["rejected"] = reason
        for cid, extra_bytes in self.protocol.extra_client_bytes().items():
            if cid in rows:
                rows[cid]["bytes_up"] = rows[cid].get("bytes_up", 0) + extra_bytes
        t0 = time.perf_counter()
        individual = None
        if self.protocol.reveals_individual_updates:
            individual = self.protocol.individual_updates(r, {c: payloads[c] for c in aggregate.included})
        mean = None
        if aggregate.included:
            if self.rule is not None and individual:
                ids = sorted(individual)
                result = self.rule(np.stack([individual[c] for c in ids]), np.full(len(ids), weight), self.rule_state)
                self.rule_state = result.state
                mean = result.aggregate
                for i, reason in result.dropped.items():
                    rows[ids[i]]["rejected"] = f"aggregator: {reason}"
            else:
                try:  # release: open, then refuse a non-finite or out-of-bound mean before any optimizer step
                    mean = release(self.protocol, aggregate).mean
                except ProtocolError as err:  # any failure to open is this round's abort, never the run's end
                    times["open"] = time.perf_counter() - t0
                    return self._finish_round(r, sampled, rows, {"n_included": 0}, times, t_round, payloads,
                                              aborted=f"open failed: {type(err).__name__}: {err}")
            if self.dp is not None:
                dp_bits = [bits[c] for c in aggregate.included]
                mean, dp_metrics = self.dp.finish_round(mean, len(aggregate.included), dp_bits,
                                                        derive_rng(self.config.seed, "central-noise", r))
            self.global_params = self._apply_mean(mean)
        times["open"] = time.perf_counter() - t0
        if self.observers:
            view = ServerView(r, self.protocol.name, dict(payloads), aggregate.payload, list(aggregate.included),
                              individual, mean if self.protocol.server_can_open else None)
            for observe in self.observers:
                observe(view)
        extra = {"n_included": len(aggregate.included), "bytes_down_aggregate": len(aggregate.payload), **dp_metrics}
        return self._finish_round(r, sampled, rows, extra, times, t_round, payloads)

    def _finish_round(self, r: int, sampled: list[int], rows: dict[int, dict[str, Any]], extra: dict[str, Any],
                      times: dict[str, float], t_round: float, payloads: dict[int, bytes],
                      aborted: str | None = None) -> RoundRecord:
        """Evaluate every client with the (new) global model and assemble the round record."""
        t0 = time.perf_counter()
        for client in self.clients:
            client.agent.set_flat(self._client_model(client))
            rows[client.client_id]["return_global"] = self._evaluate(client, r, "global")
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
        return {
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

    def load_state_dict(self, state: dict[str, Any]) -> None:
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
    """The federation ``config.federation.simulation`` / ``backend`` ask for (all share :class:`Federation`'s round).

    ``loop`` + ``local`` is :class:`Federation` itself, the reference; ``vectorized`` batches every
    sampled client (:mod:`securefrl.vectorized`); ``ray`` trains clients as Ray tasks (:mod:`securefrl.ray_backend`).
    """
    fed = config.federation
    method = getattr(getattr(config, "personalization", None), "method", "none")
    if method != "none":
        from securefrl.personalization import make_personalized_federation  # deferred: imports this module

        return make_personalized_federation(config, **kwargs)
    if getattr(fed, "simulation", "loop") == "vectorized":
        from securefrl.vectorized import VectorizedFederation  # deferred: imports this module

        return VectorizedFederation(config, **kwargs)
    if getattr(fed, "backend", "local") == "ray":
        from securefrl.ray_backend import RayFederation  # deferred: needs the optional ray package

        return RayFederation(config, **kwargs)
    return Federation(config, **kwargs)
