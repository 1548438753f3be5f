"""The Flower ServerApp: sampling, the protocol's server role, the server optimizer and the results folder.

One round mirrors :meth:`securefrl.federation.Federation.run_round` over Flower messages:

1. sample clients with the same seeded stream (``derive_rng(seed, "sample", round)``);
2. ``train`` message to each sampled client's node (global model + round) -> reply with its protocol
   payload (the project's versioned bytes) and its local statistics;
3. ``protocol.combine`` on the payloads that arrived (a missing reply is a dropout, a malformed one is
   rejected with its reason: only that client is dropped), ``release`` (finite, bounded mean), the
   server optimizer's step -- or a robust rule where the protocol reveals individual updates;
4. ``evaluate`` message to every client with the new global model -> ``return_global``;
5. the same ``rounds.jsonl`` / ``clients.jsonl`` rows as ``securefrl run`` (plus Flower message bytes).

The server holds the public initial model and its own optimizer state, never a client's agent or data:
it learns only what the protocol's payloads reveal to it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from protocols.base import release
from protocols.errors import ProtocolError, RoundAbortedError
from securefrl.config import ExperimentConfig
from securefrl.flower import common
from securefrl.flower.client_app import client_specs, initial_global_params
from securefrl.protocol_factory import make_protocol
from securefrl.results import ResultsDir
from securefrl.seeding import derive_rng
from securefrl.server_opt import ServerOptimizer

#: Per-client row fields a client reports after training (everything else in its reply is ignored).
_TRAIN_FIELDS = ("return_local", "update_norm", "rejected")


def sample_clients(cfg: ExperimentConfig, round_id: int) -> list[int]:
    """Seeded sampling of ``ceil(fraction * n)`` clients, the stream of :meth:`Federation.sample_clients`."""
    n = cfg.federation.n_clients
    k = max(1, int(np.ceil(cfg.federation.client_fraction * n - 1e-9)))
    rng = derive_rng(cfg.seed, "sample", round_id)
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False))


def message_bytes(message: Any) -> int:
    """Bytes of every object Flower transfers for ``message`` (metadata, records, array chunks; protobuf)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


class FlowerServer:
    """The server of one securefrl run over a Flower ``Grid`` (deployment or simulation engine)."""

    def __init__(self, grid: Any, cfg: ExperimentConfig, results_dir: str | Path, connect_timeout: float = 120.0,
                 round_timeout: float = 600.0) -> None:
        self.grid, self.cfg = grid, cfg
        self.connect_timeout, self.round_timeout = connect_timeout, round_timeout
        fed = cfg.federation
        self.specs = client_specs(cfg)
        self.global_params = initial_global_params(cfg, self.specs)
        self.dim = int(self.global_params.shape[0])
        self.protocol = make_protocol(cfg.protocol.name, self.dim, fed.n_clients, cfg.protocol.params)
        self.rule = cfg.make_rule()
        self.rule_state: Any = None
        self.server_opt = ServerOptimizer(fed.server_optimizer, fed.server_lr, fed.server_momentum, fed.server_beta2,
                                          fed.server_eps)
        self.out = ResultsDir(Path(results_dir) / cfg.name)
        self.nodes: dict[int, int] = {}  # client id -> Flower node id
        self.env_steps = dict.fromkeys(range(fed.n_clients), 0)
        self.round = 0

    # -- messaging ----------------------------------------------------------------------------------
    def _message(self, kind: str, node: int, round_id: int, with_model: bool) -> Any:
        from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

        records: dict[str, Any] = {common.META: ConfigRecord({"round": round_id})}
        if with_model:
            records[common.GLOBAL] = ArrayRecord([self.global_params.astype(np.float32)])
        return Message(RecordDict(records), dst_node_id=node, message_type=kind, group_id=str(round_id))

    def _exchange(self, kind: str, clients: list[int], round_id: int, with_model: bool,
                  traffic: dict[str, int]) -> dict[int, Any]:
        """Send ``kind`` to each client's node; the content of each reply that came back without error."""
        messages = {c: self._message(kind, self.nodes[c], round_id, with_model) for c in clients if c in self.nodes}
        by_node = {m.metadata.dst_node_id: c for c, m in messages.items()}
        traffic["down"] += sum(message_bytes(m) for m in messages.values())
        replies = self.grid.send_and_receive(list(messages.values()), timeout=self.round_timeout)
        out: dict[int, Any] = {}
        for reply in replies:
            cid = by_node.get(reply.metadata.src_node_id)
            if cid is None or reply.has_error():
                continue  # a client whose ClientApp failed is a dropout for this stage
            traffic["up"] += message_bytes(reply)
            out[cid] = reply.content
        return out

    def connect(self) -> None:
        """Wait for every client's SuperNode and learn which node is which client (``hello`` round-trip)."""
        n = self.cfg.federation.n_clients
        deadline = time.monotonic() + self.connect_timeout
        while len(self.nodes) < n:
            known = set(self.nodes.values())
            fresh = [nid for nid in self.grid.get_node_ids() if nid not in known]
            if fresh:
                from flwr.app import ConfigRecord, Message, RecordDict

                msgs = [Message(RecordDict({common.META: ConfigRecord({"round": -1})}), dst_node_id=nid,
                                message_type=common.HELLO, group_id="hello") for nid in fresh]
                for reply in self.grid.send_and_receive(msgs, timeout=self.connect_timeout):
                    if reply.has_error():
                        continue
                    try:
                        cid = common.reply_field(reply.content, "client", int)
                    except common.MalformedReplyError:
                        continue
                    if 0 <= cid < n and cid not in self.nodes:
                        self.nodes[cid] = reply.metadata.src_node_id
            if len(self.nodes) >= n:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only clients {sorted(self.nodes)} of {n} connected within "
                                   f"{self.connect_timeout:.0f} s")
            time.sleep(0.5)

    # -- one round ----------------------------------------------------------------------------------
    def run_round(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        cfg, r = self.cfg, self.round
        t_round = time.perf_counter()
        times = dict.fromkeys(("setup", "train", "protect", "combine", "open", "eval"), 0.0)
        traffic = {"up": 0, "down": 0}
        sampled = sample_clients(cfg, r)
        rows: dict[int, dict[str, Any]] = {c: {"round": r, "client": c, "sampled": c in sampled, "malicious": False}
                                           for c in range(cfg.federation.n_clients)}
        aborted: str | None = None
        t0 = time.perf_counter()
        replies = self._exchange(common.TRAIN, sampled, r, True, traffic)
        times["train"] = time.perf_counter() - t0
        payloads: dict[int, bytes] = {}
        for cid in sampled:
            if cid not in replies:
                rows[cid]["rejected"] = "dropped out: no reply to the train message"
                continue
            self.env_steps[cid] += cfg.federation.local_steps
            try:
                if common.reply_field(replies[cid], "client", int) != cid:
                    raise common.MalformedReplyError("reply names another client than the node it came from")
                row = {k: v for k, v in replies[cid].config_records[common.REPLY].items()
                       if k in _TRAIN_FIELDS or k.startswith("train_")}
                if "rejected" not in row:
                    payloads[cid] = common.reply_field(replies[cid], "payload", bytes)
                    rows[cid]["bytes_up"] = len(payloads[cid])
                row["return_local"] = common.reply_field(replies[cid], "return_local", float)
            except common.MalformedReplyError as err:
                rows[cid]["rejected"] = f"malformed reply: {err}"
                payloads.pop(cid, None)
                continue
            rows[cid].update(row)
        t0 = time.perf_counter()
        try:
            aggregate = self.protocol.combine(r, payloads)
        except RoundAbortedError as err:
            aborted, aggregate = str(err), None
        times["combine"] = time.perf_counter() - t0
        extra: dict[str, Any] = {}
        if aggregate is not None:
            for cid, reason in aggregate.rejected.items():
                rows[cid]["rejected"] = reason
            t0 = time.perf_counter()
            aborted = self._apply(aggregate, payloads, rows)
            times["open"] = time.perf_counter() - t0
            extra = {"n_included": 0 if aborted else len(aggregate.included)}
            if not aborted:
                extra["bytes_down_aggregate"] = len(aggregate.payload)
        t0 = time.perf_counter()
        evals = self._exchange(common.EVALUATE, list(range(cfg.federation.n_clients)), r, True, traffic)
        for cid, content in evals.items():
            try:
                if common.reply_field(content, "client", int) != cid:
                    raise common.MalformedReplyError("reply names another client than the node it came from")
                rows[cid]["return_global"] = common.reply_field(content, "return_global", float)
                self.env_steps[cid] = common.reply_field(content, "env_steps", int)
            except common.MalformedReplyError:
                continue
        for cid, row in rows.items():
            row["env_steps"] = self.env_steps[cid]
        times["eval"] = time.perf_counter() - t0
        returns = [row["return_global"] for row in rows.values() if "return_global" in row]
        local = [rows[c]["return_local"] for c in sampled if "return_local" in rows[c]]
        summary = {
            "round": r,
            "mean_return": float(np.mean(returns)) if returns else None,
            "min_return": float(np.min(returns)) if returns else None,
            "max_return": float(np.max(returns)) if returns else None,
            "mean_local_return": float(np.mean(local)) if local else None,
            "n_sampled": len(sampled),
            "n_included": 0,
            "bytes_up": int(sum(rows[c].get("bytes_up", 0) for c in sampled)),
            "aborted": aborted,
            **extra,
            "env_steps_per_client": int(np.mean(list(self.env_steps.values()))),
            "round_time": time.perf_counter() - t_round,
            **{f"time_{k}": v for k, v in times.items()},
            "flower_bytes_up": traffic["up"],
            "flower_bytes_down": traffic["down"],
            "n_evaluated": len(returns),
        }
        self.round += 1
        return [rows[c] for c in sorted(rows)], summary

    def _apply(self, aggregate: Any, payloads: dict[int, bytes], rows: dict[int, dict[str, Any]]) -> str | None:
        """Open (or robustly combine) and take the server optimizer's step; the abort reason, if any."""
        if not aggregate.included:
            return None
        if self.rule is not None and self.protocol.reveals_individual_updates:
            individual = self.protocol.individual_updates(aggregate.round_id,
                                                          {c: payloads[c] for c in aggregate.included})
            ids = sorted(individual)
            result = self.rule(np.stack([individual[c] for c in ids]), np.full(len(ids), 1.0), self.rule_state)
            self.rule_state = result.state
            for i, reason in result.dropped.items():
                rows[ids[i]]["rejected"] = f"aggregator: {reason}"
            mean = result.aggregate
        else:
            try:
                mean = release(self.protocol, aggregate).mean
            except ProtocolError as err:
                return f"open failed: {type(err).__name__}: {err}"
        self.global_params = self.server_opt.step(self.global_params, mean)
        return None

    # -- the whole run --------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        self.out.write_config(self.cfg.to_dict())
        self.out.write_json("environments.json", [{"client": c, **s.to_dict()} for c, s in enumerate(self.specs)])
        self.out.reset_rows([], [])
        self.connect()
        summaries = []
        t_start = time.perf_counter()
        while self.round < self.cfg.federation.rounds:
            clients, summary = self.run_round()
            self.out.append_rows(clients, summary)
            summaries.append(summary)
        self.out.write_json("summary.json", {
            "name": self.cfg.name, "engine": "flower", "rounds_completed": len(summaries),
            "final_mean_return": summaries[-1]["mean_return"] if summaries else None,
            "parameters": self.dim, "protocol": self.cfg.protocol.name,
            "bytes_up_total": sum(s["bytes_up"] for s in summaries),
            "flower_bytes_total": sum(s["flower_bytes_up"] + s["flower_bytes_down"] for s in summaries),
            "wall_seconds": time.perf_counter() - t_start,
        })
        return summaries


def build_server_app(cfg: ExperimentConfig | None = None, results_dir: str | Path | None = None) -> Any:
    """A Flower ``ServerApp``; without arguments it reads the experiment from the run config."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        run_config = dict(context.run_config)
        config = cfg if cfg is not None else common.config_from_run_config(run_config)
        common.check_supported(config)
        out = results_dir if results_dir is not None else run_config.get(common.RESULTS_KEY, "results")
        FlowerServer(grid, config, str(out), float(run_config.get(common.CONNECT_TIMEOUT_KEY, 120)),
                     float(run_config.get(common.ROUND_TIMEOUT_KEY, 600))).run()

    return app


app = build_server_app()
