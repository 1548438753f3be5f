"""Federations whose clients keep something personal: the round loop of :class:`Federation` plus hooks.

Every class here is a :class:`~securefrl.federation.Federation`: same sampling, update pipeline,
protocols, server optimizer, metrics and checkpoints. They override the hooks that say what a client
holds between rounds (``_client_model``), what it sends (``local_update``, ``_encode_update``,
``_update_dim``, ``_protocol_dim``) and how the opened mean becomes the server's next state
(``_apply_mean``). Every client row gains ``return_personal``: the return, in the client's own
environment, of the model the client would actually use; rounds gain its mean and minimum.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from securefrl.agents import make_agent
from securefrl.agents.base import Agent
from securefrl.agents.common import init_generator
from securefrl.config import ExperimentConfig
from securefrl.envs import EnvSpec
from securefrl.federation import Client, Federation, RoundRecord
from securefrl.personalization.grouping import assign_groups, n_groups
from securefrl.personalization.parts import (
    attach_env_embedding,
    embedding_parameter_names,
    frozen,
    head_parameter_names,
)
from securefrl.personalization.slots import decode_slots, encode_slots, slot_length
from securefrl.seeding import derive_seed


def _seed31(seed: int, *keys: int | str) -> int:
    return derive_seed(seed, *keys) % (2**31)


class PersonalizedFederation(Federation):
    """Base of the personalized federations: evaluates personal models and checkpoints personal state."""

    #: True when the personal model differs from ``_client_model`` and needs its own evaluation (Ditto).
    personal_differs: bool = False

    def __post_init__(self) -> None:
        self.settings = self.config.personalization
        self.method = self.settings.method
        super().__post_init__()

    # --- hooks of subclasses -------------------------------------------------------------
    def personal_model(self, client: Client) -> np.ndarray:
        """The flat model ``client`` would deploy in its own environment."""
        return self._client_model(client)

    def _client_extras(self, client: Client) -> dict[str, Any]:
        """Extra per-client columns of the round rows (e.g. the cluster a client holds)."""
        return {}

    def _personal_state(self) -> dict[str, Any]:
        return {}

    def _load_personal_state(self, state: dict[str, Any]) -> None:
        return None

    # --- metrics and checkpoints ---------------------------------------------------------
    def _finish_round(self, r: int, sampled: list[int], rows: dict[int, dict[str, Any]], extra: dict[str, Any],
                      times: dict[str, float], t_round: float, payloads: dict[int, bytes],
                      aborted: str | None = None) -> RoundRecord:
        """The base record (``return_global``: the released model plus the client's local parts), then
        ``return_personal`` per client and its mean / minimum in the summary."""
        record = super()._finish_round(r, sampled, rows, extra, times, t_round, payloads, aborted)
        t0 = time.perf_counter()
        for client in self.clients:
            row = rows[client.client_id]
            if self.personal_differs:
                client.agent.set_flat(self.personal_model(client))
                row["return_personal"] = self._evaluate(client, r, "personal")
            else:
                row["return_personal"] = row["return_global"]
            row.update(self._client_extras(client))
        personal = [rows[c.client_id]["return_personal"] for c in self.clients]
        record.summary["time_eval"] += time.perf_counter() - t0
        record.summary.update(method=self.method, mean_personal_return=float(np.mean(personal)),
                              min_personal_return=float(np.min(personal)),
                              round_time=time.perf_counter() - t_round)
        return record

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["personalization"] = {"method": self.method, **self._personal_state()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        extra = state.get("personalization") or {}
        if extra.get("method") != self.method:
            raise ValueError(f"checkpoint is for personalization {extra.get('method')!r}, this run is {self.method!r}")
        super().load_state_dict(state)
        self._load_personal_state(extra)


class LocalOnlyFederation(PersonalizedFederation):
    """Baseline: every client trains alone from the common initialisation and never sends anything.

    Same clients, seeds, step budget and evaluation as the federated methods, so the comparison
    isolates what federation buys (and, under heterogeneity, what it costs).
    """

    def _initial_global_params(self, specs: list[EnvSpec], agent_cfg: Any) -> np.ndarray:
        init = super()._initial_global_params(specs, agent_cfg)
        self.own = [init.copy() for _ in self.clients]
        return init

    def _client_model(self, client: Client) -> np.ndarray:
        return self.own[client.client_id]

    def local_update(self, client: Client, round_id: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Continue the client's own model (its agent already holds it)."""
        client.agent.reseed(_seed31(self.config.seed, "train", round_id, client.client_id))
        stats = client.agent.learn(self.config.federation.local_steps)
        client.env_steps += self.config.federation.local_steps
        self.own[client.client_id] = client.agent.get_flat()
        return np.zeros(0), {"train_" + k: float(v) for k, v in stats.items()}

    def run_round(self) -> RoundRecord:
        """Local training and evaluation only: no protection, no aggregation, nothing on the wire."""
        r = self.round
        t_round = time.perf_counter()
        times = {"setup": 0.0, "train": 0.0, "protect": 0.0, "combine": 0.0, "open": 0.0, "eval": 0.0}
        sampled = self.sample_clients(r)
        rows: dict[int, dict[str, Any]] = {c.client_id: {"round": r, "client": c.client_id,
                                                          "sampled": c.client_id in sampled,
                                                          "malicious": c.malicious} for c in self.clients}
        for cid in sampled:
            client = self.clients[cid]
            t0 = time.perf_counter()
            _, stats = self.local_update(client, r)
            times["train"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            rows[cid]["return_local"] = self._evaluate(client, r, "local")
            times["eval"] += time.perf_counter() - t0
            rows[cid].update(stats)
        return self._finish_round(r, sampled, rows, {}, times, t_round, {})

    def _personal_state(self) -> dict[str, Any]:
        return {"own": [torch.from_numpy(v.copy()) for v in self.own]}

    def _load_personal_state(self, state: dict[str, Any]) -> None:
        self.own = [t.numpy().astype(np.float32) for t in state["own"]]


class FineTuneFederation(PersonalizedFederation):
    """FedAvg plus local fine-tuning: the global model is trained exactly as with plain FedAvg (same seeds, same
    updates), and each client deploys the global model it received after the round's local training on its own
    environment (Wang et al. 2019, "Federated Evaluation of On-device Personalization"; Yu et al. 2020,
    "Salvaging Federated Learning by Local Adaptation"). No extra environment steps: the fine-tuning is the
    local training every FedAvg client does anyway. A client not sampled yet deploys the initial model; one
    not sampled this round its most recent fine-tuned model.
    """

    personal_differs = True

    def _initial_global_params(self, specs: list[EnvSpec], agent_cfg: Any) -> np.ndarray:
        init = super()._initial_global_params(specs, agent_cfg)
        self.tuned = [init.copy() for _ in self.clients]
        return init

    def personal_model(self, client: Client) -> np.ndarray:
        return self.tuned[client.client_id]

    def local_update(self, client: Client, round_id: int) -> tuple[np.ndarray, dict[str, Any]]:
        delta, stats = super().local_update(client, round_id)
        self.tuned[client.client_id] = client.agent.get_flat()
        return delta, stats

    def _personal_state(self) -> dict[str, Any]:
        return {"tuned": [torch.from_numpy(v.copy()) for v in self.tuned]}

    def _load_personal_state(self, state: dict[str, Any]) -> None:
        self.tuned = [t.numpy().astype(np.float32) for t in state["tuned"]]


class FedProxFederation(PersonalizedFederation):
    """FedAvg whose local training adds ``mu/2 ||w - w_global||^2`` (Li et al. 2020, "Federated Optimization in
    Heterogeneous Networks"): heterogeneous clients drift less far from the global model in one round."""

    def local_update(self, client: Client, round_id: int) -> tuple[np.ndarray, dict[str, Any]]:
        client.agent.set_proximal(self.global_params, self.settings.fedprox_mu)
        try:
            return super().local_update(client, round_id)
        finally:
            client.agent.set_proximal(None)


class PartialFederation(PersonalizedFederation):
    """Shared body, personal rest: FedPer, FedRep and environment embeddings.

    The federated vector splits by a mask into a shared part, which is all a client sends (the
    protocol's ``dim`` is the shared size: under CKKS or SecAgg only the shared part travels, still
    protected), and a local part that never leaves the client:

    * ``fedper`` (Arivazhagan et al. 2019): the last ``head_layers`` layers of every network stay local;
      local training updates body and head together.
    * ``fedrep`` (Collins et al. 2021): same split; local training first trains the head with the body
      frozen (``fedrep_head_fraction`` of the steps), then the body with the head frozen.
    * ``embedding`` (Jin et al. 2022): every network gets a personal input embedding; the whole network,
      including how it reads the embedding, is shared.

    The server's vector keeps the common initial values in the local coordinates (it never receives
    heads or embeddings); each client's local part starts there too.
    """

    def _make_agent(self, cid: int, spec: EnvSpec, env_fn: Callable[[], Any], agent_cfg: Any) -> Agent:
        agent = super()._make_agent(cid, spec, env_fn, agent_cfg)
        if self.method == "embedding":
            attach_env_embedding(agent, self.settings.embedding_dim, self.settings.embedding_scale,
                                 init_generator(derive_seed(self.config.seed, "embedding", cid)))
        return agent

    def _initial_global_params(self, specs: list[EnvSpec], agent_cfg: Any) -> np.ndarray:
        init_agent = make_agent(self.config.agent.name, specs[0].make, agent_cfg,
                                seed=derive_seed(self.config.seed, "global-init"))
        if self.method == "embedding":
            attach_env_embedding(init_agent, self.settings.embedding_dim, self.settings.embedding_scale,
                                 init_generator(derive_seed(self.config.seed, "global-init", "embedding")))
        spec = init_agent.parameter_spec()
        if self.method == "embedding":
            self.local_names = embedding_parameter_names(spec.names)
        else:
            self.local_names = head_parameter_names(spec.names, self.settings.head_layers)
        self.shared_names = [n for n in spec.names if n not in set(self.local_names)]
        self.local_mask = spec.mask(self.local_names)
        self.shared_mask = ~self.local_mask
        init = init_agent.get_flat()
        self.local_parts = [init[self.local_mask].copy() for _ in self.clients]
        return init

    def _update_dim(self) -> int:
        return int(self.shared_mask.sum())

    def _client_model(self, client: Client) -> np.ndarray:
        full = self.global_params.copy()
        full[self.local_mask] = self.local_parts[client.client_id]
        return full

    def local_update(self, client: Client, round_id: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Train the client's model (global body + its local part); keep the local part, send the body's delta."""
        steps = self.config.federation.local_steps
        agent = client.agent
        agent.set_flat(self._client_model(client))
        agent.reseed(_seed31(self.config.seed, "train", round_id, client.client_id))
        if self.method == "fedrep":
            head_steps = min(steps - 1, max(1, round(self.settings.fedrep_head_fraction * steps)))
            with frozen(agent, self.shared_names):
                head_stats = agent.learn(head_steps)
            with frozen(agent, self.local_names):
                stats = agent.learn(steps - head_steps)
            stats = {**{"head_" + k: v for k, v in head_stats.items()}, **stats}
        else:
            stats = agent.learn(steps)
        client.env_steps += steps
        new = agent.get_flat()
        self.local_parts[client.client_id] = new[self.local_mask].copy()
        delta = new[self.shared_mask].astype(np.float64) - self.global_params[self.shared_mask].astype(np.float64)
        return delta, {"train_" + k: float(v) for k, v in stats.items()}

    def _apply_mean(self, mean: np.ndarray) -> np.ndarray:
        new = self.global_params.copy()
        new[self.shared_mask] = self.server_opt.step(self.global_params[self.shared_mask], mean)
        return new

    def _personal_state(self) -> dict[str, Any]:
        return {"local_parts": [torch.from_numpy(v.copy()) for v in self.local_parts]}

    def _load_personal_state(self, state: dict[str, Any]) -> None:
        self.local_parts = [t.numpy().astype(np.float32) for t in state["local_parts"]]


class ClusteredFederation(PersonalizedFederation):
    """k models on the server, each client trains and feeds one: grouped aggregation and IFCA.

    * ``group`` (Nadiger et al. 2019): a client's group is fixed by its environment type
      (:mod:`securefrl.personalization.grouping`); every group model starts from the common initialisation.
    * ``ifca`` (Ghosh et al. 2020): k cluster models from k independent initialisations; at the start of
      each round a sampled client runs ``selection_episodes`` greedy episodes in its own environment with
      every cluster model (the same episode seeds for all, a paired comparison) and picks the best return
      (ties: the lowest index). The choice is made and kept on the client.

    Either way the client protects the k-slot vector of :mod:`securefrl.personalization.slots` (its update
    and a count of 1 in its cluster's slot, zeros elsewhere; protocol ``dim = k * (dim + 1)``), so one
    protected sum yields every cluster's mean and, under CKKS or SecAgg, the server cannot tell which
    cluster a client chose. The server's vector is the k models concatenated; the server optimizer steps
    all of them at once (an unchosen cluster gets a zero update).
    """

    def _initial_global_params(self, specs: list[EnvSpec], agent_cfg: Any) -> np.ndarray:
        init = super()._initial_global_params(specs, agent_cfg)
        self.model_dim = int(init.shape[0])
        if self.method == "group":
            self.k = n_groups(self.config)
            self.choice: list[int | None] = list(assign_groups(self.config, specs))
            models = [init] * self.k
        else:
            self.k = self.settings.n_clusters
            self.choice = [None] * len(self.clients)
            models = [init] + [make_agent(self.config.agent.name, specs[0].make, agent_cfg,
                                          seed=derive_seed(self.config.seed, "cluster-init", j)).get_flat()
                               for j in range(1, self.k)]
        self._slot: dict[int, int] = {}
        self.last_shares = np.zeros(self.k)
        return np.concatenate(models).astype(np.float32)

    def _update_dim(self) -> int:
        return self.model_dim

    def _protocol_dim(self) -> int:
        return slot_length(self.model_dim, self.k)

    def cluster_model(self, j: int) -> np.ndarray:
        """Cluster (or group) ``j``'s flat model."""
        return self.global_params[j * self.model_dim:(j + 1) * self.model_dim]

    def _client_model(self, client: Client) -> np.ndarray:
        j = self.choice[client.client_id]
        return self.cluster_model(0 if j is None else j).copy()

    def select_cluster(self, client: Client, round_id: int) -> tuple[int, list[float]]:
        """Client side (IFCA): the cluster whose model earns the best greedy return in the client's environment."""
        episodes = self.settings.selection_episodes
        seed = _seed31(self.config.seed, "ifca-select", round_id, client.client_id)
        scores = []
        for j in range(self.k):
            client.agent.set_flat(self.cluster_model(j))
            scores.append(float(np.mean(client.agent.evaluate(client.eval_env, episodes, seed))))
        return int(np.argmax(scores)), scores

    def local_update(self, client: Client, round_id: int) -> tuple[np.ndarray, dict[str, Any]]:
        cid = client.client_id
        extra: dict[str, Any] = {}
        if self.method == "ifca":
            j, scores = self.select_cluster(client, round_id)
            self.choice[cid] = j
            extra = {f"selection_return_{i}": s for i, s in enumerate(scores)}
        j = self.choice[cid]
        assert j is not None
        model = self.cluster_model(j).copy()
        client.agent.set_flat(model)
        client.agent.reseed(_seed31(self.config.seed, "train", round_id, cid))
        stats = client.agent.learn(self.config.federation.local_steps)
        client.env_steps += self.config.federation.local_steps
        self._slot[cid] = j
        delta = client.agent.get_flat().astype(np.float64) - model.astype(np.float64)
        return delta, {**{"train_" + k: float(v) for k, v in stats.items()}, **extra}

    def _encode_update(self, client_id: int, update: np.ndarray) -> np.ndarray:
        return encode_slots(update, self._slot[client_id], self.k)

    def _apply_mean(self, mean: np.ndarray) -> np.ndarray:
        deltas, self.last_shares = decode_slots(mean, self.k, self.model_dim)
        return self.server_opt.step(self.global_params, deltas.reshape(-1))

    def _finish_round(self, r: int, sampled: list[int], rows: dict[int, dict[str, Any]], extra: dict[str, Any],
                      times: dict[str, float], t_round: float, payloads: dict[int, bytes],
                      aborted: str | None = None) -> RoundRecord:
        """Clients that never chose yet (not sampled so far) pick their cluster now, client-side, to be evaluated."""
        for client in self.clients:
            if self.choice[client.client_id] is None:
                self.choice[client.client_id] = self.select_cluster(client, r)[0]
        record = super()._finish_round(r, sampled, rows, extra, times, t_round, payloads, aborted)
        record.summary["cluster_shares"] = [float(s) for s in self.last_shares]
        return record

    def _client_extras(self, client: Client) -> dict[str, Any]:
        return {"cluster": self.choice[client.client_id]}

    def _personal_state(self) -> dict[str, Any]:
        return {"choice": [-1 if j is None else int(j) for j in self.choice]}

    def _load_personal_state(self, state: dict[str, Any]) -> None:
        self.choice = [None if int(j) < 0 else int(j) for j in state["choice"]]


class DittoFederation(PersonalizedFederation):
    """Ditto (Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through Personalization").

    The global model w is trained exactly as in FedAvg. Besides, each client keeps a personal model v,
    trained each round it is sampled for ``ditto_steps`` environment steps on its own environment with
    ``lambda/2 ||v - w||^2`` added to every gradient step (w: the global model received that round). v
    never leaves the client. A second agent per client trains v, so the personal model has its own
    optimizer state, environments and (DQN) replay buffer. The client's env_steps count both trainings.
    """

    personal_differs = True

    def __post_init__(self) -> None:
        self.personal_agents: dict[int, Agent] = {}
        super().__post_init__()

    def _make_agent(self, cid: int, spec: EnvSpec, env_fn: Callable[[], Any], agent_cfg: Any) -> Agent:
        self.personal_agents[cid] = make_agent(self.config.agent.name, env_fn, agent_cfg,
                                               seed=derive_seed(self.config.seed, "ditto-agent", cid))
        return super()._make_agent(cid, spec, env_fn, agent_cfg)

    def _initial_global_params(self, specs: list[EnvSpec], agent_cfg: Any) -> np.ndarray:
        init = super()._initial_global_params(specs, agent_cfg)
        self.personal = [init.copy() for _ in self.clients]
        return init

    def personal_model(self, client: Client) -> np.ndarray:
        return self.personal[client.client_id]

    def local_update(self, client: Client, round_id: int) -> tuple[np.ndarray, dict[str, Any]]:
        delta, stats = super().local_update(client, round_id)
        cid = client.client_id
        steps = self.settings.ditto_steps or self.config.federation.local_steps
        agent = self.personal_agents[cid]
        agent.set_flat(self.personal[cid])
        agent.reseed(_seed31(self.config.seed, "ditto-train", round_id, cid))
        agent.set_proximal(self.global_params, self.settings.ditto_lambda)
        try:
            pstats = agent.learn(steps)
        finally:
            agent.set_proximal(None)
        client.env_steps += steps
        self.personal[cid] = agent.get_flat()
        return delta, {**stats, **{"train_personal_" + k: float(v) for k, v in pstats.items()}}

    def _personal_state(self) -> dict[str, Any]:
        return {"personal": [torch.from_numpy(v.copy()) for v in self.personal],
                "personal_agents": [self.personal_agents[c.client_id].state_dict() for c in self.clients]}

    def _load_personal_state(self, state: dict[str, Any]) -> None:
        self.personal = [t.numpy().astype(np.float32) for t in state["personal"]]
        for c, s in zip(self.clients, state["personal_agents"], strict=True):
            self.personal_agents[c.client_id].load_state_dict(s)


FEDERATIONS: dict[str, type[PersonalizedFederation]] = {
    "local": LocalOnlyFederation,
    "finetune": FineTuneFederation,
    "fedprox": FedProxFederation,
    "fedper": PartialFederation,
    "fedrep": PartialFederation,
    "embedding": PartialFederation,
    "group": ClusteredFederation,
    "ifca": ClusteredFederation,
    "ditto": DittoFederation,
}
"""Federation class of each personalization method (``none`` is the plain :class:`Federation`)."""


def make_personalized_federation(config: ExperimentConfig, **kwargs: Any) -> Federation:
    """The federation ``config.personalization.method`` asks for (plain :class:`Federation` for ``none``)."""
    method = config.personalization.method
    if method == "none":
        return Federation(config, **kwargs)
    return FEDERATIONS[method](config, **kwargs)
