"""What the Flower ServerApp and ClientApp share: the experiment config, message kinds, record codecs.

Everything a peer sends travels as the project's own versioned protocol bytes (:mod:`protocols.wire`
envelopes) inside a Flower ``ConfigRecord`` value, or as one float32 ``ArrayRecord`` (the public global
model). Nothing is pickled: Flower serialises records with protobuf, and every field a peer sent is
type- and size-checked here before use (:class:`MalformedReplyError` names what was wrong).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from securefrl.config import ExperimentConfig
from securefrl.configtools import from_dict
from securefrl.errors import ConfigError, SecureFRLError
from securefrl.seeding import derive_rng, sample_clients

#: Run-config key holding the experiment config (JSON of ``ExperimentConfig.to_dict()``).
RUN_CONFIG_KEY = "experiment"
#: Run-config key naming the folder the ServerApp writes ``<name>/rounds.jsonl`` etc. into.
RESULTS_KEY = "results-dir"
#: Run-config keys of the ServerApp's waiting times (seconds).
CONNECT_TIMEOUT_KEY = "connect-timeout"
ROUND_TIMEOUT_KEY = "round-timeout"
#: Node-config key naming which securefrl client a SuperNode is (Flower's own convention).
PARTITION_KEY = "partition-id"
#: SecAgg enrolment: node-config keys of a client's own identity key file and of the registry it trusts, and
#: the run-config key of the enrolment folder (``client-<i>.key`` + ``registry.json``; simulation, server).
IDENTITY_KEY = "identity-key"
REGISTRY_KEY = "registry"
ENROLMENT_KEY = "enrolment-dir"

#: Message types (Flower ``category.action``); the ClientApp registers one handler per type.
HELLO = "query.hello"
TRAIN = "train"
EVALUATE = "evaluate"
SECAGG_ADVERTISE = "query.secagg_advertise"
SECAGG_SHARE = "query.secagg_share"
SECAGG_CONSISTENCY = "query.secagg_consistency"
SECAGG_UNMASK = "query.secagg_unmask"
CKKS_ENROL = "query.ckks_enrol"
CKKS_SHARES = "query.ckks_shares"
CKKS_FINISH = "query.ckks_finish"
CKKS_INCLUDE = "query.ckks_include"
CKKS_PARTIAL = "query.ckks_partial"

#: Names of the records inside a message's RecordDict.
GLOBAL = "global"
META = "meta"
REPLY = "reply"
STATE = "securefrl"
SECAGG_STATE = "securefrl-secagg"

#: Largest reply payload accepted from one client before it is parsed (the protocol checks exactly).
MAX_PAYLOAD_BYTES = 1 << 28

#: What the Flower apps run of an experiment config (anything else is refused up front, naming the field).
SUPPORTED = ("protocol plaintext, secagg or threshold ckks; aggregator fedavg or a robust rule; client-level DP "
             "(placement local, distributed or central, fixed clip); update attacks that need no other client's "
             "update; personalization none or finetune; simulation loop")
#: Personalization methods a ClientApp runs: none needs nothing, finetune only the client's own trained model.
FLOWER_PERSONALIZATION = ("none", "finetune")


#: The Flower message flows a protocol can declare as its ``flower_role`` in the protocol registry.
ONE_SHOT, SECAGG_PLUS, THRESHOLD_CKKS = "one-shot", "secagg+", "threshold-ckks"
FLOWER_ROLES = (ONE_SHOT, SECAGG_PLUS, THRESHOLD_CKKS)


def flower_role(cfg: ExperimentConfig) -> str:
    """The message flow that runs ``cfg``'s protocol on Flower, as the protocol registry declares it.

    ``one-shot``: each client sends ``protect``'s payload, the server ``combine``s and ``open``s (plaintext and
    any protocol of that shape); ``secagg+``: the SecAgg+ stages (advertise, share, masked input, unmask);
    ``threshold-ckks``: enrolment of the clients' key shares, then partial decryptions by the decryptors.
    """
    from securefrl.protocol_factory import PROTOCOLS

    role = PROTOCOLS.meta(cfg.protocol.name).get("flower_role")
    if role not in FLOWER_ROLES:
        runs = [n for n in PROTOCOLS.names() if PROTOCOLS.meta(n).get("flower_role") in FLOWER_ROLES]
        raise UnsupportedOnFlowerError("protocol.name", f"protocol {cfg.protocol.name!r} declares no Flower role "
                                       f"(flower_role one of {list(FLOWER_ROLES)} in its registration); protocols "
                                       f"that run on Flower: {', '.join(runs)}")
    return str(role)


class MalformedReplyError(SecureFRLError, ValueError):
    """A client's reply is not what the stage expects (missing record, wrong type, oversized, wrong sender)."""


class UnsupportedOnFlowerError(ConfigError):
    """The experiment asks for something the Flower apps do not run (``field`` names it); it runs in-process."""

    def __init__(self, field: str, what: str) -> None:
        super().__init__(field, f"{what}; the Flower apps run {SUPPORTED}. Run this config in-process "
                                "(securefrl run) instead")


def config_to_json(cfg: ExperimentConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


def config_from_run_config(run_config: dict[str, Any]) -> ExperimentConfig:
    """The experiment config embedded in a Flower run config (``[tool.flwr.app.config] experiment``)."""
    raw = run_config.get(RUN_CONFIG_KEY)
    if not isinstance(raw, str):
        raise ConfigError(RUN_CONFIG_KEY, "the Flower run config holds no securefrl experiment; generate the app "
                          "with `securefrl flower-app CONFIG --out DIR`")
    cfg = from_dict(ExperimentConfig, json.loads(raw))
    check_supported(cfg)
    return cfg


def check_supported(cfg: ExperimentConfig) -> None:
    """Refuse configs the Flower apps do not (yet) run, naming the field, instead of silently diverging.

    Honoured: client-level DP with a fixed clip (the noise is added where the placement says -- by each
    ClientApp for local/distributed, by the ServerApp for central -- and the ServerApp keeps the accountant);
    update attacks that are not omniscient (a malicious ClientApp crafts its own update from its own update
    alone); ``finetune``. Refused, with why: whatever needs state the ClientApp cannot keep per message, or
    another client's update.
    """
    flower_role(cfg)
    if cfg.federation.simulation != "loop":
        raise UnsupportedOnFlowerError("federation.simulation", "each ClientApp trains one agent (simulation=loop), "
                                       f"not {cfg.federation.simulation!r}")
    p = cfg.privacy
    if p.dpsgd:
        raise UnsupportedOnFlowerError("privacy.dpsgd", "record-level DP-SGD keeps its noise stream and accountant "
                                       "in each client's agent across rounds, which a ClientApp rebuilt per message "
                                       "does not")
    if p.placement != "none" and p.adaptive_clipping:
        raise UnsupportedOnFlowerError("privacy.adaptive_clipping", "adaptive clipping needs every client's noisy "
                                       "clip bit at the server, which the Flower messages do not carry")
    if cfg.attack.name != "none":
        from securefrl.behaviour import attack_kind, make_behaviour

        if attack_kind(cfg.attack.name) != "update":
            raise UnsupportedOnFlowerError("attack.name", f"attack {cfg.attack.name!r} poisons the training "
                                           "environment, whose random state a ClientApp does not keep across rounds")
        if getattr(make_behaviour(cfg.attack.name, **cfg.attack.params), "omniscient", False):
            raise UnsupportedOnFlowerError("attack.name", f"attack {cfg.attack.name!r} is omniscient (it needs the "
                                           "honest clients' updates of the round), which no Flower client sees")
    if cfg.personalization.method not in FLOWER_PERSONALIZATION:
        raise UnsupportedOnFlowerError("personalization.method", f"personalization {cfg.personalization.method!r} "
                                       "keeps per-client server state or sends part of the model")


def malicious_ids(cfg: ExperimentConfig) -> list[int]:
    """The attack's malicious clients, drawn as :class:`~securefrl.federation.Federation` draws them."""
    if cfg.attack.name == "none":
        return []
    picked = derive_rng(cfg.seed, "malicious").choice(cfg.federation.n_clients, size=cfg.attack.n_malicious,
                                                      replace=False)
    return sorted(int(i) for i in picked)


def make_dp(cfg: ExperimentConfig) -> Any:
    """The run's client-level DP (:class:`~securefrl.privacy.federated.ClientLevelDP`), or None without DP."""
    if cfg.privacy.placement == "none":
        return None
    from securefrl.privacy.federated import ClientLevelDP  # deferred: pulls in the accountant

    fed = cfg.federation
    per_round = len(sample_clients(cfg.seed, 0, fed.n_clients, fed.client_fraction))
    return ClientLevelDP(cfg.privacy, cfg.protocol.name, fed.n_clients, per_round, fed.rounds)


def protocol_params(cfg: ExperimentConfig, dp: Any) -> dict[str, Any]:
    """The protocol's parameters, as in-process: under DP, a coordinate clip (SecAgg's) leaves room for the noise."""
    params = dict(cfg.protocol.params)
    if dp is not None:
        from securefrl.protocol_factory import PROTOCOLS

        clip_param = PROTOCOLS.get(cfg.protocol.name).coordinate_clip_param
        if clip_param is not None:
            params.setdefault(clip_param, dp.required_coordinate_clip())
    return params


def reply_field(content: Any, name: str, kind: type, max_bytes: int = MAX_PAYLOAD_BYTES) -> Any:
    """Field ``name`` of a reply's ``reply`` ConfigRecord, checked to be of type ``kind``."""
    records = getattr(content, "config_records", None)
    if records is None or REPLY not in records:
        raise MalformedReplyError(f"reply holds no {REPLY!r} config record")
    record = records[REPLY]
    if name not in record:
        raise MalformedReplyError(f"reply record lacks field {name!r}")
    value = record[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedReplyError(f"reply field {name!r} is {type(value).__name__}, expected {kind.__name__}")
    if isinstance(value, bytes) and len(value) > max_bytes:
        raise MalformedReplyError(f"reply field {name!r} holds {len(value)} bytes, limit {max_bytes}")
    if isinstance(value, float) and not np.isfinite(value):
        raise MalformedReplyError(f"reply field {name!r} is not finite")
    return value


def global_params_from(content: Any, dim: int | None = None) -> np.ndarray:
    """The global model sent by the server (one float32 array in the ``global`` ArrayRecord)."""
    arrays = content.array_records.get(GLOBAL) if hasattr(content, "array_records") else None
    if arrays is None:
        raise MalformedReplyError(f"message holds no {GLOBAL!r} array record")
    (vec,) = arrays.to_numpy_ndarrays()
    vec = np.asarray(vec, dtype=np.float32).reshape(-1)
    if dim is not None and vec.shape[0] != dim:
        raise MalformedReplyError(f"global model has {vec.shape[0]} values, expected {dim}")
    return vec


def registry_path(config: Any) -> str | None:
    """The identity registry a run or node config names (``registry``, else ``enrolment-dir``/registry.json)."""
    if config.get(REGISTRY_KEY):
        return str(config[REGISTRY_KEY])
    if config.get(ENROLMENT_KEY):
        return str(Path(str(config[ENROLMENT_KEY])) / "registry.json")
    return None


def identity_path(node_config: Any, run_config: Any, cid: int) -> str | None:
    """A client's identity key file: its node config's ``identity-key``, else the run's enrolment folder."""
    if node_config.get(IDENTITY_KEY):
        return str(node_config[IDENTITY_KEY])
    if run_config.get(ENROLMENT_KEY):
        return str(Path(str(run_config[ENROLMENT_KEY])) / f"client-{cid}.key")
    return None
