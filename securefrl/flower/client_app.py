"""The Flower ClientApp: one securefrl client -- its environment, agent, update pipeline and protocol role.

Flower runs a ClientApp in a fresh process for every message (deployment engine) or in a Ray actor shared
by many virtual clients (simulation engine), so nothing may live in module globals between messages. The
client is rebuilt from the experiment config on every message exactly as the in-process
:class:`securefrl.federation.Federation` builds client ``cid`` (same env draw, same agent seed, same
global initialisation), and what it learned so far (agent state incl. optimizer and buffers, env-step
count, pipeline state) is restored from ``context.state``, where Flower keeps it on this node between
messages. That state is written with ``torch.save`` and read with ``torch.load(weights_only=True)`` -- it
never leaves the node.

Threat model: the client trusts only its own node; from the server it accepts the public global model
and round number. What it sends is its protocol payload (here plaintext: the server sees the update, as
in-process) and its evaluation returns. Not covered: a malicious SuperLink withholding messages (a
dropout from this client's point of view).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from securefrl.config import ExperimentConfig
from securefrl.envs import EnvSpec, draw_config_envs
from securefrl.errors import ConfigError, UpdateRejectedError
from securefrl.flower import common
from securefrl.protocol_factory import make_protocol
from securefrl.seeding import derive_rng, derive_seed
from securefrl.transforms import UpdateTransform, chain, check_finite, clip_by_l2_norm, clipped_coordinates, identity

if TYPE_CHECKING:
    from securefrl.agents.base import Agent

# torch, the agents and the DP accountant are imported inside the functions that need them: Flower starts a
# ClientApp process per message, and the protocol-stage messages (hello, SecAgg+ and CKKS round-trips) then
# start in a few seconds instead of paying torch's import.

#: context.state record caching what a node derives from the config once (model length, protocol parameters).
STATIC = "securefrl-static"


def initial_global_params(cfg: ExperimentConfig, specs: list[EnvSpec]) -> np.ndarray:
    """The first global model, drawn from the same stream as the in-process federation's."""
    from securefrl.agents import make_agent

    agent = make_agent(cfg.agent.name, specs[0].make, cfg.agent_config(), seed=derive_seed(cfg.seed, "global-init"))
    return agent.get_flat()


def make_pipeline(cfg: ExperimentConfig) -> UpdateTransform:
    """The client's update pipeline, as in-process: the DP clip-and-noise chain under DP, else the plain clip."""
    dp = common.make_dp(cfg)
    if dp is not None:
        return dp.pipeline()
    fed = cfg.federation
    return chain(clip_by_l2_norm(fed.clip_norm)) if fed.clip_norm > 0 else identity()


@dataclass
class LocalClient:
    """Client ``cid`` rebuilt in this process, with the state it had after its last message."""

    cfg: ExperimentConfig
    cid: int
    spec: EnvSpec
    agent: Agent
    eval_env: Any
    pipeline: UpdateTransform
    pipeline_state: Any
    env_steps: int
    tuned: np.ndarray | None = None
    """``finetune``: the model this client deploys (its last locally trained one; the initial model before)."""

    @classmethod
    def build(cls, cfg: ExperimentConfig, cid: int, saved: bytes | None) -> LocalClient:
        import torch

        from securefrl.agents import make_agent
        from securefrl.federation import _to_numpy

        if not 0 <= cid < cfg.federation.n_clients:
            raise ConfigError(common.PARTITION_KEY, f"client id {cid} is not in [0, {cfg.federation.n_clients})")
        torch.set_num_threads(1)  # as the in-process federation: tiny networks
        specs = draw_config_envs(cfg)
        spec = specs[cid]
        agent = make_agent(cfg.agent.name, spec.make, cfg.agent_config(), seed=derive_seed(cfg.seed, "agent", cid))
        pipeline = make_pipeline(cfg)
        client = cls(cfg, cid, spec, agent, spec.make(), pipeline, None, 0)
        if saved is None:  # first contact: the state the in-process federation starts every client in
            dim = agent.get_flat().shape[0]
            client.pipeline_state = pipeline.init(dim)
            agent.set_flat(initial_global_params(cfg, specs))
            if cfg.personalization.method == "finetune":
                client.tuned = agent.get_flat().copy()
        else:
            state = torch.load(io.BytesIO(saved), weights_only=True)
            agent.load_state_dict(state["agent"])
            client.env_steps = int(state["env_steps"])
            client.pipeline_state = _to_numpy(state["pipeline"])
            client.tuned = state["tuned"].numpy() if state.get("tuned") is not None else None
        return client

    @property
    def malicious(self) -> bool:
        return self.cid in common.malicious_ids(self.cfg)

    def dump(self) -> bytes:
        import torch

        from securefrl.federation import _to_torch

        buf = io.BytesIO()
        torch.save({"agent": self.agent.state_dict(), "env_steps": self.env_steps,
                    "pipeline": _to_torch(self.pipeline_state),
                    "tuned": torch.from_numpy(self.tuned.copy()) if self.tuned is not None else None}, buf)
        return buf.getvalue()

    def evaluate(self, round_id: int, tag: str) -> float:
        """Greedy return in the client's own environment, seeded as in :meth:`Federation._evaluate`."""
        episodes = self.cfg.federation.eval_episodes
        seed = derive_seed(self.cfg.seed, "eval", tag, round_id, self.cid) % (2**31)
        return float(np.mean(self.agent.evaluate(self.eval_env, episodes, seed)))

    def craft(self, round_id: int, delta: np.ndarray) -> np.ndarray:
        """A malicious client's poisoned update, crafted from its own update alone (no other client's).

        In-process the malicious clients of a round craft jointly with one stream; here each crafts alone, so a
        randomised attack equals the in-process run when one malicious client is sampled (a Flower client has
        no channel to its accomplices).
        """
        from securefrl.behaviour import make_behaviour

        behaviour = make_behaviour(self.cfg.attack.name, **self.cfg.attack.params)
        crafted = behaviour.craft(delta[None, :], None, derive_rng(self.cfg.seed, "attack", round_id))
        return np.asarray(crafted[0], dtype=np.float64)

    def train(self, round_id: int, global_params: np.ndarray) -> tuple[np.ndarray | None, dict[str, Any]]:
        """Local training, local evaluation and the update pipeline; the update to protect (None if rejected)."""
        cfg = self.cfg
        fed = cfg.federation
        self.agent.set_flat(global_params)
        self.agent.reseed(derive_seed(cfg.seed, "train", round_id, self.cid) % (2**31))
        stats = self.agent.learn(fed.local_steps)
        self.env_steps += fed.local_steps
        trained = self.agent.get_flat()
        if self.tuned is not None:  # finetune: the client deploys what it just trained
            self.tuned = trained.copy()
        delta = trained.astype(np.float64) - global_params.astype(np.float64)
        row: dict[str, Any] = {"train_" + k: float(v) for k, v in stats.items()}
        row["return_local"] = self.evaluate(round_id, "local")
        if self.malicious:  # as in-process: the attack replaces the update before the pipeline
            delta = self.craft(round_id, delta)
        try:
            update, self.pipeline_state = self.pipeline.update(check_finite(delta), self.pipeline_state,
                                                               derive_rng(cfg.seed, "pipeline", round_id, self.cid))
        except UpdateRejectedError as err:
            row["rejected"] = str(err)
            return None, row
        row["update_norm"] = float(np.linalg.norm(update))
        return update, row

    def protect_plain(self, round_id: int, update: np.ndarray) -> bytes:
        """The protocol's client role for one-shot protocols (plaintext): ``protect`` with the public weight 1."""
        fed = self.cfg.federation
        protocol = make_protocol(self.cfg.protocol.name, update.shape[0], fed.n_clients,
                                 common.protocol_params(self.cfg, None))
        return protocol.protect(self.cid, round_id, update, 1.0)


def _client_id(context: Any) -> int:
    raw = context.node_config.get(common.PARTITION_KEY)
    if raw is None:
        raise ConfigError(common.PARTITION_KEY, "start the SuperNode with --node-config 'partition-id=N' naming "
                          "which securefrl client it is")
    return int(raw)


def _load(context: Any, cfg: ExperimentConfig | None) -> tuple[ExperimentConfig, LocalClient]:
    if cfg is None:
        cfg = common.config_from_run_config(dict(context.run_config))
    saved = None
    if common.STATE in context.state.config_records:
        saved = context.state.config_records[common.STATE]["client"]
    return cfg, LocalClient.build(cfg, _client_id(context), saved)


def _reply(message: Any, fields: dict[str, Any]) -> Any:
    from flwr.app import ConfigRecord, Message, RecordDict

    clean = {k: v for k, v in fields.items() if v is not None}
    return Message(RecordDict({common.REPLY: ConfigRecord(clean)}), reply_to=message)


def _round_of(message: Any) -> int:
    meta = message.content.config_records.get(common.META)
    if meta is None or not isinstance(meta.get("round"), int):
        raise common.MalformedReplyError("message holds no round number")
    return int(meta["round"])


def _meta_bytes(message: Any, name: str) -> bytes:
    meta = message.content.config_records.get(common.META)
    value = meta.get(name) if meta is not None else None
    if not isinstance(value, bytes):
        raise common.MalformedReplyError(f"message holds no {name!r} bytes")
    return value


def _meta_ids(message: Any, name: str) -> list[int]:
    meta = message.content.config_records.get(common.META)
    value = meta.get(name) if meta is not None else None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise common.MalformedReplyError(f"message holds no {name!r} id list")
    return [int(v) for v in value]


class _SecAggRole:
    """This client's SecAgg+ role for the current round, kept in ``context.state`` between stage messages."""

    def __init__(self, client: Any, roster: list[int], book: Any, params: Any, identity: Any, registry: Any) -> None:
        self.client, self.roster, self.book = client, roster, book
        self.params, self.identity, self.registry = params, identity, registry

    @staticmethod
    def _enrolment(context: Any, cfg: ExperimentConfig, cid: int) -> tuple[Any, Any, Any]:
        from protocols.secagg import SecAggProtocol
        from securefrl.flower import secagg_state

        key = common.identity_path(context.node_config, context.run_config, cid)
        reg = common.registry_path(context.node_config) or common.registry_path(context.run_config)
        if key is None or reg is None:
            raise ConfigError(common.IDENTITY_KEY, "secagg clients need their identity key and the registry: start "
                              "the SuperNode with --node-config \"identity-key='...' registry='...'\"")
        identity, registry = secagg_state.read_identity(key), secagg_state.read_registry(reg)
        dim, protocol_params = _static(context, cfg, cid)
        params = SecAggProtocol(dim, cfg.federation.n_clients, registry=registry, identities={cid: identity},
                                **protocol_params).params
        return params, identity, registry

    @classmethod
    def begin(cls, context: Any, cfg: ExperimentConfig, cid: int, round_id: int, roster: list[int]) -> _SecAggRole:
        from protocols.secagg import SecAggClient

        params, identity, registry = cls._enrolment(context, cfg, cid)
        return cls(SecAggClient(params, round_id, cid, roster, identity, registry), roster, None, params, identity,
                   registry)

    @classmethod
    def restore(cls, context: Any, client: LocalClient | None, cfg: ExperimentConfig | None = None,
                cid: int | None = None) -> _SecAggRole:
        from securefrl.flower import secagg_state

        if client is not None:
            cfg, cid = client.cfg, client.cid
        assert cfg is not None and cid is not None
        record = context.state.config_records.get(common.SECAGG_STATE)
        if record is None:
            raise common.MalformedReplyError("no SecAgg round under way on this client (advertise stage missing)")
        params, identity, registry = cls._enrolment(context, cfg, cid)
        sa, roster, book = secagg_state.load(record["client"], params, identity, registry)
        return cls(sa, roster, book, params, identity, registry)

    def record_book(self, key_list: bytes) -> None:
        from protocols.secagg.client import book_digest

        book = self.client.codec.decode_key_list(key_list, self.client.round_id)
        self.book = (sorted(e.client_id for e in book.entries), book_digest(book))

    def save(self, context: Any) -> None:
        from flwr.app import ConfigRecord

        from securefrl.flower import secagg_state

        context.state.config_records[common.SECAGG_STATE] = ConfigRecord(
            {"client": secagg_state.dump(self.client, self.roster, self.book)})


def _static(context: Any, cfg: ExperimentConfig, cid: int) -> tuple[int, dict[str, Any]]:
    """Length of the flat model (the protocols' vector length) and the protocol's parameters.

    Derived from the config once per node and run (it needs torch, and under DP the accountant), then kept
    in ``context.state`` so later protocol-stage messages skip those imports.
    """
    from flwr.app import ConfigRecord

    record = context.state.config_records.get(STATIC)
    if record is not None:
        return int(record["dim"]), dict(json.loads(str(record["params"])))
    from securefrl.agents import make_agent

    spec = draw_config_envs(cfg)[cid]
    dim = int(make_agent(cfg.agent.name, spec.make, cfg.agent_config(), seed=0).get_flat().shape[0])
    params = common.protocol_params(cfg, common.make_dp(cfg))
    context.state.config_records[STATIC] = ConfigRecord({"dim": dim, "params": json.dumps(params)})
    return dim, params


def _dim(context: Any, cfg: ExperimentConfig, cid: int) -> int:
    return _static(context, cfg, cid)[0]


def _ckks_load(context: Any, cfg: ExperimentConfig, cid: int, round_id: int | None) -> tuple[Any, Any]:
    """This client's CKKS role from ``context.state``; entering ``round_id`` if it is a new round."""
    from securefrl.flower import ckks_roles

    arrays = context.state.array_records.get(ckks_roles.STATE_ARRAYS)
    config = context.state.config_records.get(ckks_roles.STATE_CONFIG)
    if arrays is None or config is None:
        raise common.MalformedReplyError("this client holds no CKKS keys (enrolment did not run)")
    setup = ckks_roles.CKKSSetup(cfg, _dim(context, cfg, cid))
    client, _ = ckks_roles.load_client(setup, cid, arrays, config)
    if round_id is not None and round_id > client._round:  # as CKKSProtocol.begin_round for every client
        client.begin_round(round_id)
    return setup, client


def _ckks_roster(context: Any, setup: Any) -> Any:
    from securefrl.flower import ckks_roles

    config = context.state.config_records[ckks_roles.STATE_CONFIG]
    return ckks_roles.decode_roster(bytes(config["roster"]), setup.params.max_clients) if "roster" in config else None


def _ckks_save(context: Any, client: Any, roster: Any) -> None:
    from securefrl.flower import ckks_roles

    arrays, config = ckks_roles.save_client(client, roster)
    context.state.array_records[ckks_roles.STATE_ARRAYS] = arrays  # one RecordDict: names must differ by type
    context.state.config_records[ckks_roles.STATE_CONFIG] = config


def build_client_app(cfg: ExperimentConfig | None = None, mods: list[Any] | None = None,
                     enrolment_dir: str | None = None) -> Any:
    """A Flower ``ClientApp`` with securefrl's handlers (``hello``, ``train``, ``evaluate``).

    Without ``cfg`` the experiment comes from the run config (``flwr run``); with it (``run_simulation``)
    every virtual client runs that config. ``mods`` are Flower client mods wrapped around every handler.
    ``enrolment_dir`` stands in for the run config's SecAgg enrolment folder (``run_simulation``).
    """
    if enrolment_dir is not None:
        def with_enrolment(message: Any, context: Any, call_next: Any) -> Any:
            context.run_config.setdefault(common.ENROLMENT_KEY, str(enrolment_dir))
            return call_next(message, context)

        mods = [with_enrolment, *(mods or [])]
    if cfg is not None:
        common.check_supported(cfg)
    from flwr.app import ConfigRecord
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=mods)

    @app.query("hello")
    def hello(message: Any, context: Any) -> Any:
        return _reply(message, {"client": _client_id(context)})

    @app.train()
    def train(message: Any, context: Any) -> Any:
        _, client = _load(context, cfg)
        round_id = _round_of(message)
        global_params = common.global_params_from(message.content, client.agent.get_flat().shape[0])
        update, row = client.train(round_id, global_params)
        payload = None
        if update is not None:
            flow = common.flower_role(client.cfg)
            if flow == common.SECAGG_PLUS:
                role = _SecAggRole.restore(context, client)
                if n_clipped := clipped_coordinates(update, role.params.clip):  # the fixed-point range clips them
                    row["clipped_coordinates"] = n_clipped
                payload = role.client.masked_input(_meta_bytes(message, "forwarded"), update, 1.0, None)
                role.save(context)
            elif flow == common.THRESHOLD_CKKS:
                _, ckks = _ckks_load(context, client.cfg, client.cid, round_id)
                payload = ckks.protect(round_id, update, 1.0)
                _ckks_save(context, ckks, None)
            else:
                payload = client.protect_plain(round_id, update)
        context.state.config_records[common.STATE] = ConfigRecord({"client": client.dump()})
        return _reply(message, {"client": client.cid, "payload": payload, **row})

    def secagg_stage(step: str) -> Any:
        def handler(message: Any, context: Any) -> Any:
            config = cfg if cfg is not None else common.config_from_run_config(dict(context.run_config))
            cid = _client_id(context)
            round_id = _round_of(message)
            if step == "advertise":
                role = _SecAggRole.begin(context, config, cid, round_id, _meta_ids(message, "roster"))
                out = role.client.advertise_keys()
            else:
                role = _SecAggRole.restore(context, None, config, cid)
                data = _meta_bytes(message, "payload")
                if step == "share":
                    role.record_book(data)
                    out = role.client.share_keys(data)
                elif step == "consistency":
                    out = role.client.sign_survivors(data)
                else:
                    out = role.client.unmask(data)
            role.save(context)
            return _reply(message, {"client": cid, "payload": out})

        return handler

    for step in ("advertise", "share", "consistency", "unmask"):
        app.query(f"secagg_{step}")(secagg_stage(step))

    def ckks_stage(step: str) -> Any:
        def handler(message: Any, context: Any) -> Any:
            from protocols.ckks import CKKSClient
            from securefrl.flower import ckks_roles

            config = cfg if cfg is not None else common.config_from_run_config(dict(context.run_config))
            cid = _client_id(context)
            round_id = _round_of(message)
            if step == "enrol":
                setup = ckks_roles.CKKSSetup(config, _dim(context, config, cid))
                ckks = CKKSClient(cid, setup.params, setup.dim, setup.client_rng(cid))
                _ckks_save(context, ckks, None)
                return _reply(message, {"client": cid, "payload": ckks_roles.encode_roster({cid: ckks.enrolment})[4:]})
            setup, ckks = _ckks_load(context, config, cid, round_id if step in ("include", "partial") else None)
            roster = _ckks_roster(context, setup)
            out = b""
            if step == "shares":
                roster = ckks_roles.decode_roster(_meta_bytes(message, "payload"), setup.params.max_clients)
                out = ckks_roles.encode_blobs(ckks.make_shares(roster, setup.threshold))
            elif step == "finish":
                if roster is None:
                    raise common.MalformedReplyError("no roster: the shares stage did not run on this client")
                blobs = ckks_roles.decode_blobs(_meta_bytes(message, "payload"), setup.params.max_clients, 1 << 24)
                for sender, blob in sorted(blobs.items()):
                    ckks.receive_share(sender, blob, roster)
                ckks.finish_enrolment(setup.suite(roster), setup.threshold, setup.min_clients)
                roster = None
            elif step == "include":
                out = ckks.sign_inclusion(round_id, _meta_ids(message, "included"))
            else:
                sigs = ckks_roles.decode_signatures(_meta_bytes(message, "sigs"), setup.params.max_clients)
                out = ckks.partial_decrypt(round_id, _meta_ids(message, "included"), sigs,
                                           _meta_ids(message, "decryptors"))
            _ckks_save(context, ckks, roster)
            return _reply(message, {"client": cid, "payload": out})

        return handler

    for step in ("enrol", "shares", "finish", "include", "partial"):
        app.query(f"ckks_{step}")(ckks_stage(step))

    @app.evaluate()
    def evaluate(message: Any, context: Any) -> Any:
        _, client = _load(context, cfg)
        round_id = _round_of(message)
        client.agent.set_flat(common.global_params_from(message.content, client.agent.get_flat().shape[0]))
        fields: dict[str, Any] = {"client": client.cid, "return_global": client.evaluate(round_id, "global"),
                                  "env_steps": client.env_steps}
        if client.tuned is not None:  # finetune: the model this client deploys, evaluated as in-process
            client.agent.set_flat(client.tuned)
            fields["return_personal"] = client.evaluate(round_id, "personal")
        return _reply(message, fields)

    return app


app = build_client_app()
