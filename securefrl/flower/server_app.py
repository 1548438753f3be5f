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
from typing import Any, cast

import numpy as np

from protocols.base import AggregationProtocol, release
from protocols.errors import PayloadError, ProtocolError, RoundAbortedError
from securefrl.config import ExperimentConfig
from securefrl.envs import draw_config_envs
from securefrl.errors import ConfigError
from securefrl.flower import common
from securefrl.flower.client_app import initial_global_params
from securefrl.protocol_factory import make_protocol
from securefrl.results import ResultsDir, new_run_dir, plot_returns
from securefrl.seeding import derive_rng
from securefrl.seeding import sample_clients as seeded_sample
from securefrl.server_opt import ServerOptimizer

#: Per-client row fields a client reports after training (everything else in its reply is ignored).
_TRAIN_FIELDS = ("return_local", "update_norm", "rejected", "clipped_coordinates")


def sample_clients(cfg: ExperimentConfig, round_id: int) -> list[int]:
    """Seeded sampling of ``ceil(fraction * n)`` clients, the stream of :meth:`Federation.sample_clients`."""
    return seeded_sample(cfg.seed, round_id, cfg.federation.n_clients, cfg.federation.client_fraction)


def message_bytes(message: Any) -> int:
    """Bytes of every object Flower transfers for ``message`` (metadata, records, array chunks; protobuf)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


class FlowerServer:
    """The server of one securefrl run over a Flower ``Grid`` (deployment or simulation engine)."""

    def __init__(self, grid: Any, cfg: ExperimentConfig, results_dir: str | Path, connect_timeout: float = 120.0,
                 round_timeout: float = 600.0, registry: str | Path | None = None) -> None:
        self.grid, self.cfg = grid, cfg
        self.connect_timeout, self.round_timeout = connect_timeout, round_timeout
        fed = cfg.federation
        self.specs = draw_config_envs(cfg)
        self.global_params = initial_global_params(cfg, self.specs)
        self.dim = int(self.global_params.shape[0])
        self.dp = common.make_dp(cfg)  # the accountant (and central noise) live here, as in-process
        params = common.protocol_params(cfg, self.dp)
        self.malicious = common.malicious_ids(cfg)
        self.role = common.flower_role(cfg)
        if self.role == common.SECAGG_PLUS:  # the server role, with the registry the clients were enrolled with
            from protocols.secagg import SecAggProtocol
            from securefrl.flower.secagg_state import read_registry

            if registry is None:
                raise ConfigError(common.REGISTRY_KEY, "secagg needs the identity registry of the enrolment "
                                  "(`securefrl flower-app` writes one)")
            self.protocol: Any = SecAggProtocol(self.dim, fed.n_clients, registry=read_registry(registry),
                                                identities={}, **params)
        elif self.role == common.THRESHOLD_CKKS:  # the server role is built at enrolment (it needs the clients' keys)
            from securefrl.flower.ckks_roles import CKKSSetup

            self.ckks = CKKSSetup(cfg, self.dim)
            self.protocol = None
        else:
            self.protocol = make_protocol(cfg.protocol.name, self.dim, fed.n_clients, params)
        if self.dp is not None and self.protocol is not None:
            self.dp.check_protocol(self.protocol)
        self.rule = cfg.make_rule()
        self.rule_state: Any = None
        self.server_opt = ServerOptimizer(fed.server_optimizer, fed.server_lr, fed.server_momentum, fed.server_beta2,
                                          fed.server_eps)
        # the layout of `securefrl run`: <results>/<name>/<YYYYmmdd-HHMMSS>/ (a new folder per run)
        self.path = new_run_dir(Path(results_dir) / cfg.name)
        self.out = ResultsDir(self.path)
        self.nodes: dict[int, int] = {}  # client id -> Flower node id
        self.env_steps = dict.fromkeys(range(fed.n_clients), 0)
        self.errors: dict[int, str] = {}  # the last error reply of each client (why it dropped out)
        self.round = 0

    # -- messaging ----------------------------------------------------------------------------------
    def _message(self, kind: str, node: int, round_id: int, with_model: bool, extra: dict[str, Any] | None) -> Any:
        from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

        records: dict[str, Any] = {common.META: ConfigRecord({"round": round_id, **(extra or {})})}
        if with_model:
            records[common.GLOBAL] = ArrayRecord([self.global_params.astype(np.float32)])
        return Message(RecordDict(records), dst_node_id=node, message_type=kind, group_id=str(round_id))

    def _exchange(self, kind: str, clients: list[int], round_id: int, with_model: bool, traffic: dict[str, int],
                  extra: dict[int, dict[str, Any]] | None = None) -> dict[int, Any]:
        """Send ``kind`` to each client's node; the content of each reply that came back without error."""
        messages = {c: self._message(kind, self.nodes[c], round_id, with_model, (extra or {}).get(c))
                    for c in clients if c in self.nodes}
        by_node = {m.metadata.dst_node_id: c for c, m in messages.items()}
        traffic["down"] += sum(message_bytes(m) for m in messages.values())
        replies = self.grid.send_and_receive(list(messages.values()), timeout=self.round_timeout)
        out: dict[int, Any] = {}
        for reply in replies:
            cid = by_node.get(reply.metadata.src_node_id)
            if cid is None:
                continue
            if reply.has_error():  # a client whose ClientApp failed is a dropout for this stage
                self.errors[cid] = f"{kind}: {reply.error.reason}"[:500]
                continue
            traffic["up"] += message_bytes(reply)
            out[cid] = reply.content
        return out

    def _stage(self, kind: str, inbox: dict[int, bytes], round_id: int, traffic: dict[str, int],
               sent: dict[int, int], meta: dict[str, Any] | None = None) -> dict[int, bytes]:
        """One protocol stage as a message round-trip: each addressed client gets its bytes, answers with bytes.

        A client that does not answer, fails, or answers with something that is not bytes of bounded size is
        left out (the protocol's dropout path decides what that means for the round).
        """
        replies = self._exchange(kind, sorted(inbox), round_id, False, traffic,
                                 {c: {"payload": data, **(meta or {})} for c, data in inbox.items()})
        out: dict[int, bytes] = {}
        for cid, content in replies.items():
            try:
                if common.reply_field(content, "client", int) != cid:
                    continue
                out[cid] = common.reply_field(content, "payload", bytes)
            except common.MalformedReplyError:
                continue
            sent[cid] = sent.get(cid, 0) + len(out[cid])
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
        rows: dict[int, dict[str, Any]] = {c: {"round": r, "client": c, "sampled": c in sampled,
                                               "malicious": c in self.malicious}
                                           for c in range(cfg.federation.n_clients)}
        aborted: str | None = None
        sent: dict[int, int] = {}  # bytes each client sent this round, every stage
        secagg = self._secagg_round(r, sampled) if self.role == common.SECAGG_PLUS else None
        forwarded: dict[int, bytes] = {}
        if secagg is not None:
            t0 = time.perf_counter()
            try:
                forwarded = self._secagg_setup(secagg, sampled, traffic, sent)
            except RoundAbortedError as err:
                aborted = str(err)
            times["setup"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        train_to = [c for c in sampled if secagg is None or c in forwarded] if not aborted else []
        replies = self._exchange(common.TRAIN, train_to, r, True, traffic,
                                 {c: {"forwarded": forwarded[c]} for c in forwarded})
        times["train"] = time.perf_counter() - t0
        payloads: dict[int, bytes] = {}
        for cid in sampled:
            if cid not in replies:
                rows[cid]["rejected"] = "dropped out: no reply to the train message" if not aborted else aborted
                continue
            self.env_steps[cid] += cfg.federation.local_steps
            try:
                if common.reply_field(replies[cid], "client", int) != cid:
                    raise common.MalformedReplyError("reply names another client than the node it came from")
                row = {k: v for k, v in replies[cid].config_records[common.REPLY].items()
                       if k in _TRAIN_FIELDS or k.startswith("train_")}
                if "rejected" not in row:
                    payloads[cid] = common.reply_field(replies[cid], "payload", bytes)
                    sent[cid] = sent.get(cid, 0) + len(payloads[cid])
                row["return_local"] = common.reply_field(replies[cid], "return_local", float)
            except common.MalformedReplyError as err:
                rows[cid]["rejected"] = f"malformed reply: {err}"
                payloads.pop(cid, None)
                continue
            rows[cid].update(row)
        t0 = time.perf_counter()
        aggregate, opened = None, None
        if not aborted:
            try:
                if secagg is not None:
                    aggregate = self._secagg_combine(secagg, payloads, traffic, sent)
                elif self.role == common.THRESHOLD_CKKS:
                    aggregate = self.ckks_server.combine(r, payloads)
                else:
                    aggregate = self.protocol.combine(r, payloads)
            except RoundAbortedError as err:
                aborted = str(err)
        if aggregate is not None and self.role == common.THRESHOLD_CKKS and aggregate.included:
            t1 = time.perf_counter()
            try:
                opened = self._ckks_open(aggregate, traffic, sent)
            except ProtocolError as err:
                aborted = f"open failed: {type(err).__name__}: {err}"
                aggregate = None
            times["open"] = time.perf_counter() - t1
        for cid, n_bytes in sent.items():  # as in-process: key set-up bytes count only for a combined round
            rows[cid]["bytes_up"] = n_bytes if aggregate is not None else len(payloads.get(cid, b""))
        times["combine"] = time.perf_counter() - t0
        extra: dict[str, Any] = {}
        if aggregate is not None:
            for cid, reason in aggregate.rejected.items():
                rows[cid]["rejected"] = reason
            t0 = time.perf_counter()
            aborted, dp_metrics = self._apply(aggregate, payloads, rows, opened)
            times["open"] += time.perf_counter() - t0
            extra = {"n_included": 0 if aborted else len(aggregate.included)}
            if not aborted:
                extra["bytes_down_aggregate"] = len(aggregate.payload)
                extra.update(dp_metrics)
        t0 = time.perf_counter()
        evals = self._exchange(common.EVALUATE, list(range(cfg.federation.n_clients)), r, True, traffic)
        for cid, content in evals.items():
            try:
                if common.reply_field(content, "client", int) != cid:
                    raise common.MalformedReplyError("reply names another client than the node it came from")
                rows[cid]["return_global"] = common.reply_field(content, "return_global", float)
                self.env_steps[cid] = common.reply_field(content, "env_steps", int)
                if self.personalized:
                    rows[cid]["return_personal"] = common.reply_field(content, "return_personal", float)
            except common.MalformedReplyError:
                continue
        for cid, row in rows.items():
            row["env_steps"] = self.env_steps[cid]
            if cid in self.errors:
                row["error"] = self.errors.pop(cid)
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
        if self.personalized:  # the same summary entries as in-process personalization
            personal = [row["return_personal"] for row in rows.values() if "return_personal" in row]
            summary.update(method=cfg.personalization.method,
                           mean_personal_return=float(np.mean(personal)) if personal else None,
                           min_personal_return=float(np.min(personal)) if personal else None)
        self.round += 1
        return [rows[c] for c in sorted(rows)], summary

    # -- SecAgg+: each stage is one message round-trip --------------------------------------------------
    def _secagg_round(self, round_id: int, sampled: list[int]) -> Any:
        from protocols.secagg import SecAggServer

        return SecAggServer(self.protocol.params, round_id, sampled, self.protocol.registry)

    def _secagg_setup(self, server: Any, sampled: list[int], traffic: dict[str, int],
                      sent: dict[int, int]) -> dict[int, bytes]:
        """Advertise keys and share keys; the forwarded shares of every client still in (they get ``train``)."""
        r = server.round_id
        adverts = self._stage(common.SECAGG_ADVERTISE, dict.fromkeys(sampled, b""), r, traffic, sent,
                              {"roster": list(sampled)})
        self._deliver(server, adverts)
        shares = self._stage(common.SECAGG_SHARE, server.broadcast_keys(), r, traffic, sent)
        self._deliver(server, shares)
        return server.forward_shares()

    def _secagg_combine(self, server: Any, payloads: dict[int, bytes], traffic: dict[str, int],
                        sent: dict[int, int]) -> Any:
        """Masked inputs in, consistency check and unmasking as round-trips, the mask-free sum out."""
        from protocols.base import Aggregate

        r = server.round_id
        rejected: dict[int, str] = {}
        for cid in sorted(payloads):
            try:
                server.receive(cid, payloads[cid])
            except ProtocolError as err:
                rejected[cid] = f"{type(err).__name__}: {err}"
        if self.protocol.params.authenticated:
            self._deliver(server, self._stage(common.SECAGG_CONSISTENCY, server.request_consistency(), r, traffic,
                                              sent))
        self._deliver(server, self._stage(common.SECAGG_UNMASK, server.request_unmask(), r, traffic, sent))
        result = server.finalize()
        for cid, reason in result.rejected.items():
            rejected.setdefault(cid, reason)
        payload = self.protocol.codec.encode_aggregate(r, len(result.included), result.total)
        return Aggregate(r, payload, result.included, rejected)

    # -- threshold CKKS: key generation and decryption as round-trips ------------------------------------
    def _ckks_enrol(self) -> None:
        import struct

        from protocols.ckks import CKKSServer
        from securefrl.flower import ckks_roles

        setup, traffic = self.ckks, {"up": 0, "down": 0}
        sent: dict[int, int] = {}
        everyone = dict.fromkeys(sorted(self.nodes), b"")
        roster = {}
        for cid, data in self._stage(common.CKKS_ENROL, everyone, 0, traffic, sent).items():
            try:
                entry = ckks_roles.decode_roster(struct.pack("<I", cid) + data, 1)[cid]
                entry.verify(cid)
            except (PayloadError, KeyError):
                continue  # a malformed or unsigned enrolment record: that client is not enrolled
            roster[cid] = entry
        packed = ckks_roles.encode_roster(roster)
        inbox: dict[int, dict[int, bytes]] = {c: {} for c in roster}
        replies = self._stage(common.CKKS_SHARES, dict.fromkeys(roster, packed), 0, traffic, sent)
        for sender, data in replies.items():
            try:
                blobs = ckks_roles.decode_blobs(data, len(roster), 1 << 24)
            except PayloadError:
                continue
            for rid, blob in blobs.items():
                if rid in inbox:
                    inbox[rid][sender] = blob
        done = self._stage(common.CKKS_FINISH, {c: ckks_roles.encode_blobs(inbox[c]) for c in roster}, 0, traffic,
                           sent)
        self.ckks_enrolled = sorted(done)
        self.ckks_server = CKKSServer(setup.suite(roster), setup.threshold, setup.min_clients)

    def _ckks_open(self, aggregate: Any, traffic: dict[str, int], sent: dict[int, int]) -> Any:
        """Inclusion signatures from the included clients, then flooded partials from the first t enrolled."""
        from securefrl.flower import ckks_roles

        r, setup = aggregate.round_id, self.ckks
        included = sorted(aggregate.included)
        if len(included) < setup.min_clients:
            raise RoundAbortedError(f"{len(included)} included clients, min_clients={setup.min_clients}")
        sigs = {c: s for c, s in self._stage(common.CKKS_INCLUDE, dict.fromkeys(included, b""), r, traffic, sent,
                                             {"included": included}).items() if len(s) == 64}
        signers = sorted(sigs)
        decryptors = self.ckks_enrolled[: setup.threshold]
        if len(decryptors) < setup.threshold:
            raise RoundAbortedError(f"{len(decryptors)} decryptors enrolled, t={setup.threshold}")
        partials = self._stage(common.CKKS_PARTIAL, dict.fromkeys(decryptors, b""), r, traffic, sent,
                               {"included": signers, "decryptors": decryptors,
                                "sigs": ckks_roles.encode_signatures(sigs)})
        return self.ckks_server.finish(aggregate, signers, decryptors, partials)

    @staticmethod
    def _deliver(server: Any, messages: dict[int, bytes]) -> None:
        for cid, data in messages.items():
            try:
                server.receive(cid, data)
            except ProtocolError:
                continue  # recorded in server.rejected; the client is a dropout

    @property
    def personalized(self) -> bool:
        return self.cfg.personalization.method != "none"

    def _apply(self, aggregate: Any, payloads: dict[int, bytes], rows: dict[int, dict[str, Any]],
               opened: Any = None) -> tuple[str | None, dict[str, Any]]:
        """Open (or robustly combine), DP's central noise and accounting, the server optimizer's step.

        Returns the abort reason (if any) and the DP metrics of the round (epsilon etc., empty without DP).
        """
        if not aggregate.included:
            return None, {}
        if opened is not None:  # CKKS: opened by the decryptors; the same gate as protocols.base.release
            try:
                mean = release(cast(AggregationProtocol, _Opened(opened)), aggregate).mean
            except ProtocolError as err:
                return f"open failed: {type(err).__name__}: {err}", {}
        elif self.rule is not None and self.protocol.reveals_individual_updates:
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
                return f"open failed: {type(err).__name__}: {err}", {}
        metrics: dict[str, Any] = {}
        if self.dp is not None:  # fixed clip: no clip bits needed (adaptive clipping is refused up front)
            mean, metrics = self.dp.finish_round(mean, len(aggregate.included), [],
                                                 derive_rng(self.cfg.seed, "central-noise", aggregate.round_id))
        self.global_params = self.server_opt.step(self.global_params, mean)
        return None, metrics

    # -- the whole run --------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        self.out.write_config(self.cfg.to_dict())
        self.out.write_json("environments.json", [{"client": c, **s.to_dict()} for c, s in enumerate(self.specs)])
        self.out.reset_rows([], [])
        self.connect()
        if self.role == common.THRESHOLD_CKKS:
            self._ckks_enrol()
        summaries: list[dict[str, Any]] = []
        client_rows: list[dict[str, Any]] = []
        stopped = None
        t_start = time.perf_counter()
        try:
            while self.round < self.cfg.federation.rounds:
                if self.dp is not None and self.dp.would_exceed_budget():
                    stopped = (f"privacy budget: round {self.round} would take epsilon past "
                               f"{self.cfg.privacy.epsilon_budget} at delta {self.cfg.privacy.delta}")
                    break
                clients, summary = self.run_round()
                self.out.append_rows(clients, summary)
                summaries.append(summary)
                client_rows.extend(clients)
        finally:
            self.out.close()
        self.out.write_json("summary.json", self.summary(summaries, time.perf_counter() - t_start, stopped))
        if summaries and all("return_global" in c for c in client_rows):  # a client that never answered: no plot
            plot_returns(client_rows, summaries, self.path / "returns.png", config=self.cfg, run=self.path)
        return summaries

    def summary(self, rounds: list[dict[str, Any]], seconds: float, stopped: str | None) -> dict[str, Any]:
        """``summary.json``: the keys of :func:`securefrl.experiment.summarize`, plus the Flower byte count."""
        cfg = self.cfg
        out: dict[str, Any] = {"name": cfg.name, "engine": "flower", "rounds_completed": len(rounds),
                               "finished": len(rounds) == cfg.federation.rounds, "stopped_reason": stopped}
        if not rounds:
            return out
        means = [r["mean_return"] for r in rounds if r["mean_return"] is not None]
        out.update({
            "first_mean_return": rounds[0]["mean_return"],
            "final_mean_return": rounds[-1]["mean_return"],
            "final_min_return": rounds[-1]["min_return"],
            "best_mean_return": max(means) if means else None,
            "env_steps_per_client": rounds[-1]["env_steps_per_client"],
            "parameters": self.dim,
            "protocol": cfg.protocol.name,
            "protocol_mode": getattr(self.protocol, "label", None),
            "bytes_up_total": sum(r["bytes_up"] for r in rounds),
            "flower_bytes_total": sum(r["flower_bytes_up"] + r["flower_bytes_down"] for r in rounds),
            "epsilon": rounds[-1].get("epsilon"),
            "epsilon_server": rounds[-1].get("epsilon_server"),
            "epsilon_outsiders": rounds[-1].get("epsilon_outsiders"),
            "dp_noise": self.dp.noise_label if self.dp is not None else None,
            "dp_calibrated_against": cfg.privacy.calibrate_against if self.dp is not None else None,
            "delta": cfg.privacy.delta if self.dp is not None else None,
            "malicious_clients": self.malicious,
            "wall_seconds": seconds,
            "time_per_phase": {k: sum(r[f"time_{k}"] for r in rounds)
                               for k in ("setup", "train", "protect", "combine", "open", "eval")},
        })
        return out


class _Opened:
    """An already opened aggregate behind the two attributes :func:`protocols.base.release` reads."""

    mean_bound = None

    def __init__(self, opened: Any) -> None:
        self.opened = opened

    def open(self, aggregate: Any) -> Any:
        return self.opened


def build_server_app(cfg: ExperimentConfig | None = None, results_dir: str | Path | None = None,
                     registry: str | Path | None = None) -> Any:
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
                     float(run_config.get(common.ROUND_TIMEOUT_KEY, 600)),
                     registry if registry is not None else common.registry_path(run_config)).run()

    return app


app = build_server_app()
