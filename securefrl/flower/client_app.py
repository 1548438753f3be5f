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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from securefrl.agents import make_agent
from securefrl.agents.base import Agent
from securefrl.config import ExperimentConfig
from securefrl.envs import EnvSpec, draw_client_envs
from securefrl.errors import ConfigError, UpdateRejectedError
from securefrl.federation import _to_numpy, _to_torch
from securefrl.flower import common
from securefrl.protocol_factory import make_protocol
from securefrl.seeding import derive_rng, derive_seed
from securefrl.transforms import UpdateTransform, chain, check_finite, clip_by_l2_norm, identity


def client_specs(cfg: ExperimentConfig) -> list[EnvSpec]:
    """Every client's environment, drawn as :class:`~securefrl.federation.Federation` draws them."""
    return draw_client_envs(
        cfg.env.name,
        cfg.federation.n_clients,
        cfg.env.heterogeneity,
        derive_rng(cfg.seed, "env-draw"),
        overrides=cfg.env.overrides or None,
        ranges={k: (v[0], v[1]) for k, v in cfg.env.ranges.items()} or None,
    )


def initial_global_params(cfg: ExperimentConfig, specs: list[EnvSpec]) -> np.ndarray:
    """The first global model, drawn from the same stream as the in-process federation's."""
    agent = make_agent(cfg.agent.name, specs[0].make, cfg.agent_config(), seed=derive_seed(cfg.seed, "global-init"))
    return agent.get_flat()


def make_pipeline(cfg: ExperimentConfig) -> UpdateTransform:
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

    @classmethod
    def build(cls, cfg: ExperimentConfig, cid: int, saved: bytes | None) -> LocalClient:
        if not 0 <= cid < cfg.federation.n_clients:
            raise ConfigError(common.PARTITION_KEY, f"client id {cid} is not in [0, {cfg.federation.n_clients})")
        torch.set_num_threads(1)  # as the in-process federation: tiny networks
        specs = client_specs(cfg)
        spec = specs[cid]
        agent = make_agent(cfg.agent.name, spec.make, cfg.agent_config(), seed=derive_seed(cfg.seed, "agent", cid))
        pipeline = make_pipeline(cfg)
        client = cls(cfg, cid, spec, agent, spec.make(), pipeline, None, 0)
        if saved is None:  # first contact: the state the in-process federation starts every client in
            dim = agent.get_flat().shape[0]
            client.pipeline_state = pipeline.init(dim)
            agent.set_flat(initial_global_params(cfg, specs))
        else:
            state = torch.load(io.BytesIO(saved), weights_only=True)
            agent.load_state_dict(state["agent"])
            client.env_steps = int(state["env_steps"])
            client.pipeline_state = _to_numpy(state["pipeline"])
        return client

    def dump(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"agent": self.agent.state_dict(), "env_steps": self.env_steps,
                    "pipeline": _to_torch(self.pipeline_state)}, buf)
        return buf.getvalue()

    def evaluate(self, round_id: int, tag: str) -> float:
        """Greedy return in the client's own environment, seeded as in :meth:`Federation._evaluate`."""
        episodes = self.cfg.federation.eval_episodes
        seed = derive_seed(self.cfg.seed, "eval", tag, round_id, self.cid) % (2**31)
        return float(np.mean(self.agent.evaluate(self.eval_env, episodes, seed)))

    def train(self, round_id: int, global_params: np.ndarray) -> tuple[bytes | None, dict[str, Any]]:
        """Local training, local evaluation, update pipeline and the protocol's client role (``protect``)."""
        cfg = self.cfg
        fed = cfg.federation
        self.agent.set_flat(global_params)
        self.agent.reseed(derive_seed(cfg.seed, "train", round_id, self.cid) % (2**31))
        stats = self.agent.learn(fed.local_steps)
        self.env_steps += fed.local_steps
        delta = self.agent.get_flat().astype(np.float64) - global_params.astype(np.float64)
        row: dict[str, Any] = {"train_" + k: float(v) for k, v in stats.items()}
        row["return_local"] = self.evaluate(round_id, "local")
        try:
            update, self.pipeline_state = self.pipeline.update(check_finite(delta), self.pipeline_state,
                                                               derive_rng(cfg.seed, "pipeline", round_id, self.cid))
        except UpdateRejectedError as err:
            row["rejected"] = str(err)
            return None, row
        protocol = make_protocol(cfg.protocol.name, update.shape[0], fed.n_clients, cfg.protocol.params)
        payload = protocol.protect(self.cid, round_id, update, 1.0)
        row["update_norm"] = float(np.linalg.norm(update))
        return payload, row


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


def build_client_app(cfg: ExperimentConfig | None = None, mods: list[Any] | None = None) -> Any:
    """A Flower ``ClientApp`` with securefrl's handlers (``hello``, ``train``, ``evaluate``).

    Without ``cfg`` the experiment comes from the run config (``flwr run``); with it (``run_simulation``)
    every virtual client runs that config. ``mods`` are Flower client mods wrapped around every handler.
    """
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
        payload, row = client.train(round_id, global_params)
        context.state.config_records[common.STATE] = ConfigRecord({"client": client.dump()})
        return _reply(message, {"client": client.cid, "payload": payload, **row})

    @app.evaluate()
    def evaluate(message: Any, context: Any) -> Any:
        _, client = _load(context, cfg)
        round_id = _round_of(message)
        client.agent.set_flat(common.global_params_from(message.content, client.agent.get_flat().shape[0]))
        return _reply(message, {"client": client.cid, "return_global": client.evaluate(round_id, "global"),
                                "env_steps": client.env_steps})

    return app


app = build_client_app()
