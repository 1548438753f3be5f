"""Personalized client algorithms: what each client keeps, what it trains and what it sends.

Each class is a :class:`~securefrl.algorithm.ClientAlgorithm` (registered in :data:`securefrl.axes.ALGORITHMS`
under its method names): it turns the server state into train tasks, their results into the vector a
client protects, and the opened mean into the next server state. They run on any executor that offers the
task features they declare (local loop, vectorized batch, Ray). Every client row gains ``return_personal``:
the return, in the client's own environment, of the model the client would actually use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from securefrl.algorithm import ClientAlgorithm, train_stats
from securefrl.seeding import derive_seed, seed31, train_seed
from securefrl.tasks import EvalTask, TrainResult, TrainTask

if TYPE_CHECKING:
    from securefrl.agents.base import Agent
    from securefrl.envs import EnvSpec
    from securefrl.federation import Client

__all__ = ["Clustered", "Ditto", "FedProx", "FineTune", "LocalOnly", "Partial", "Personalized"]


def _tensors(vectors: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(v.copy()) for v in vectors]


def _arrays(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    return [t.numpy().astype(np.float32) for t in tensors]


class Personalized(ClientAlgorithm):
    """Base of the personalized algorithms: rows gain ``return_personal``, checkpoints the personal state."""

    personalized = True


class LocalOnly(Personalized):
    """Baseline: every client trains alone from the common initialisation and never sends anything.

    Same clients, seeds, step budget and evaluation as the federated methods, so the comparison
    isolates what federation buys (and, under heterogeneity, what it costs).
    """

    sends = False

    def initial_global(self, specs: list[EnvSpec], agent_cfg: Any) -> np.ndarray:
        init = super().initial_global(specs, agent_cfg)
        self.own = [init.copy() for _ in specs]
        return init

    def client_model(self, client: Client) -> np.ndarray:
        return self.own[client.client_id]

    def train_tasks(self, client: Client, round_id: int) -> list[TrainTask]:
        """Continue the client's own model (its agent already holds it)."""
        return [TrainTask(client.client_id, round_id, self.config.federation.local_steps,
                          train_seed(self.config.seed, round_id, client.client_id), params=None)]

    def update(self, client: Client, round_id: int, results: list[TrainResult]) -> tuple[np.ndarray, dict[str, Any]]:
        self.own[client.client_id] = results[0].params
        return np.zeros(0), train_stats(results[0])

    def state_dict(self) -> dict[str, Any]:
        return {"own": _tensors(self.own)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.own = _arrays(state["own"])


class FineTune(Personalized):
    """FedAvg plus local fine-tuning: the global model is trained exactly as with plain FedAvg (same seeds, same
    updates), and each client deploys the global model it received after the round's local training on its own
    environment (Wang et al. 2019, "Federated Evaluation of On-device Personalization"; Yu et al. 2020,
    "Salvaging Federated Learning by Local Adaptation"). No extra environment steps: the fine-tuning is the
    local training every FedAvg client does anyway. A client not sampled yet deploys the initial model; one
    not sampled this round its most recent fine-tuned model.
    """

    personal_differs = True

    def initial_global(self, specs: list[EnvSpec], agent_cfg: Any) -> np.ndarray:
        init = super().initial_global(specs, agent_cfg)
        self.tuned = [init.copy() for _ in specs]
        return init

    def personal_model(self, client: Client) -> np.ndarray:
        return self.tuned[client.client_id]

    def update(self, client: Client, round_id: int, results: list[TrainResult]) -> tuple[np.ndarray, dict[str, Any]]:
        self.tuned[client.client_id] = results[0].params
        return super().update(client, round_id, results)

    def state_dict(self) -> dict[str, Any]:
        return {"tuned": _tensors(self.tuned)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tuned = _arrays(state["tuned"])


class FedProx(Personalized):
    """FedAvg whose local training adds ``mu/2 ||w - w_global||^2`` (Li et al. 2020, "Federated Optimization in
    Heterogeneous Networks"): heterogeneous clients drift less far from the global model in one round."""

    def train_tasks(self, client: Client, round_id: int) -> list[TrainTask]:
        (task,) = super().train_tasks(client, round_id)
        task.proximal = (self.fed.global_params, self.settings.fedprox_mu)
        return [task]


class Partial(Personalized):
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

    def make_agent(self, cid: int, spec: EnvSpec, env_fn: Callable[[], Any], agent_cfg: Any) -> Agent:
        agent = super().make_agent(cid, spec, env_fn, agent_cfg)
        if self.method == "embedding":
            from securefrl.agents.common import init_generator
            from securefrl.personalization.parts import attach_env_embedding

            attach_env_embedding(agent, self.settings.embedding_dim, self.settings.embedding_scale,
                                 init_generator(derive_seed(self.config.seed, "embedding", cid)))
        return agent

    def initial_global(self, specs: list[EnvSpec], agent_cfg: Any) -> np.ndarray:
        from securefrl.agents import make_agent
        from securefrl.agents.common import init_generator
        from securefrl.personalization.parts import (
            attach_env_embedding,
            embedding_parameter_names,
            head_parameter_names,
        )

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
        self.local_parts = [init[self.local_mask].copy() for _ in specs]
        return init

    def update_dim(self) -> int:
        return int(self.shared_mask.sum())

    def client_model(self, client: Client) -> np.ndarray:
        full = self.fed.global_params.copy()
        full[self.local_mask] = self.local_parts[client.client_id]
        return full

    def train_tasks(self, client: Client, round_id: int) -> list[TrainTask]:
        """Train the client's model (global body + its local part); FedRep in two phases."""
        steps = self.config.federation.local_steps
        task = TrainTask(client.client_id, round_id, steps, train_seed(self.config.seed, round_id, client.client_id),
                         params=self.client_model(client))
        if self.method == "fedrep":
            head_steps = min(steps - 1, max(1, round(self.settings.fedrep_head_fraction * steps)))
            task.phases = [(list(self.shared_names), head_steps, "head_"),
                           (list(self.local_names), steps - head_steps, "")]
        return [task]

    def update(self, client: Client, round_id: int, results: list[TrainResult]) -> tuple[np.ndarray, dict[str, Any]]:
        """Keep the local part, send the body's delta."""
        new = results[0].params
        self.local_parts[client.client_id] = new[self.local_mask].copy()
        g = self.fed.global_params
        return new[self.shared_mask].astype(np.float64) - g[self.shared_mask].astype(np.float64), \
            train_stats(results[0])

    def apply_mean(self, mean: np.ndarray) -> np.ndarray:
        new = self.fed.global_params.copy()
        new[self.shared_mask] = self.fed.server_opt.step(self.fed.global_params[self.shared_mask], mean)
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"local_parts": _tensors(self.local_parts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.local_parts = _arrays(state["local_parts"])


class Clustered(Personalized):
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

    def initial_global(self, specs: list[EnvSpec], agent_cfg: Any) -> np.ndarray:
        from securefrl.agents import make_agent
        from securefrl.personalization.grouping import assign_groups, n_groups

        init = super().initial_global(specs, agent_cfg)
        self.model_dim = int(init.shape[0])
        if self.method == "group":
            self.k = n_groups(self.config)
            self.choice: list[int | None] = list(assign_groups(self.config, specs))
            models = [init] * self.k
        else:
            self.k = self.settings.n_clusters
            self.choice = [None] * len(specs)
            models = [init] + [make_agent(self.config.agent.name, specs[0].make, agent_cfg,
                                          seed=derive_seed(self.config.seed, "cluster-init", j)).get_flat()
                               for j in range(1, self.k)]
        self._slot: dict[int, int] = {}
        self.last_shares = np.zeros(self.k)
        return np.concatenate(models).astype(np.float32)

    def update_dim(self) -> int:
        return self.model_dim

    def protocol_dim(self) -> int:
        from securefrl.personalization.slots import slot_length

        return slot_length(self.model_dim, self.k)

    def cluster_model(self, j: int) -> np.ndarray:
        """Cluster (or group) ``j``'s flat model."""
        return self.fed.global_params[j * self.model_dim:(j + 1) * self.model_dim]

    def client_model(self, client: Client) -> np.ndarray:
        j = self.choice[client.client_id]
        return self.cluster_model(0 if j is None else j).copy()

    def select_clusters(self, ids: list[int], round_id: int) -> dict[int, tuple[int, list[float]]]:
        """Client side (IFCA): each client's cluster whose model earns the best greedy return in its environment."""
        episodes = self.settings.selection_episodes
        tasks = [EvalTask(cid, round_id, "ifca-select", self.cluster_model(j), episodes,
                          seed31(self.config.seed, "ifca-select", round_id, cid)) for cid in ids for j in range(self.k)]
        scores = np.asarray(self.fed.executor.evaluate(tasks), dtype=np.float64).reshape(len(ids), self.k)
        return {cid: (int(np.argmax(scores[i])), [float(s) for s in scores[i]]) for i, cid in enumerate(ids)}

    def select_cluster(self, client: Client, round_id: int) -> tuple[int, list[float]]:
        """One client's IFCA choice (see :meth:`select_clusters`)."""
        return self.select_clusters([client.client_id], round_id)[client.client_id]

    def select(self, sampled: list[int], round_id: int) -> dict[int, dict[str, Any]]:
        if self.method != "ifca":
            return {}
        out = {}
        for cid, (j, scores) in self.select_clusters(sampled, round_id).items():
            self.choice[cid] = j
            out[cid] = {f"selection_return_{i}": s for i, s in enumerate(scores)}
        return out

    def train_tasks(self, client: Client, round_id: int) -> list[TrainTask]:
        j = self.choice[client.client_id]
        assert j is not None
        self._slot[client.client_id] = j
        seed = train_seed(self.config.seed, round_id, client.client_id)
        return [TrainTask(client.client_id, round_id, self.config.federation.local_steps, seed,
                          params=self.cluster_model(j).copy())]

    def update(self, client: Client, round_id: int, results: list[TrainResult]) -> tuple[np.ndarray, dict[str, Any]]:
        model = self.cluster_model(self._slot[client.client_id])
        return results[0].params.astype(np.float64) - model.astype(np.float64), train_stats(results[0])

    def encode(self, client_id: int, update: np.ndarray) -> np.ndarray:
        from securefrl.personalization.slots import encode_slots

        return encode_slots(update, self._slot[client_id], self.k)

    def apply_mean(self, mean: np.ndarray) -> np.ndarray:
        from securefrl.personalization.slots import decode_slots

        deltas, self.last_shares = decode_slots(mean, self.k, self.model_dim)
        return self.fed.server_opt.step(self.fed.global_params, deltas.reshape(-1))

    def before_eval(self, round_id: int) -> None:
        """Clients that never chose yet (not sampled so far) pick their cluster now, client-side, to be evaluated."""
        todo = [c.client_id for c in self.fed.clients if self.choice[c.client_id] is None]
        if todo:
            for cid, (j, _) in self.select_clusters(todo, round_id).items():
                self.choice[cid] = j

    def client_extras(self, client: Client) -> dict[str, Any]:
        return {"cluster": self.choice[client.client_id]}

    def summary_extras(self) -> dict[str, Any]:
        return {"cluster_shares": [float(s) for s in self.last_shares]}

    def state_dict(self) -> dict[str, Any]:
        return {"choice": [-1 if j is None else int(j) for j in self.choice]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.choice = [None if int(j) < 0 else int(j) for j in state["choice"]]


class Ditto(Personalized):
    """Ditto (Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through Personalization").

    The global model w is trained exactly as in FedAvg. Besides, each client keeps a personal model v,
    trained each round it is sampled for ``ditto_steps`` environment steps on its own environment with
    ``lambda/2 ||v - w||^2`` added to every gradient step (w: the global model received that round). v
    never leaves the client. A second agent per client (slot ``"personal"``) trains v, so the personal model
    has its own optimizer state, environments and (DQN) replay buffer. The client's env_steps count both.
    """

    personal_differs = True

    def make_agent(self, cid: int, spec: EnvSpec, env_fn: Callable[[], Any], agent_cfg: Any) -> Agent:
        personal = self.fed.executor.make_agent(cid, spec, env_fn, agent_cfg,
                                                derive_seed(self.config.seed, "ditto-agent", cid), slot="personal")
        self.fed.clients[cid].extra_agents["personal"] = personal
        return super().make_agent(cid, spec, env_fn, agent_cfg)

    @property
    def personal_agents(self) -> dict[int, Agent]:
        return {c.client_id: c.extra_agents["personal"] for c in self.fed.clients}

    def initial_global(self, specs: list[EnvSpec], agent_cfg: Any) -> np.ndarray:
        init = super().initial_global(specs, agent_cfg)
        self.personal = [init.copy() for _ in specs]
        return init

    def personal_model(self, client: Client) -> np.ndarray:
        return self.personal[client.client_id]

    def train_tasks(self, client: Client, round_id: int) -> list[TrainTask]:
        cid = client.client_id
        steps = self.settings.ditto_steps or self.config.federation.local_steps
        return [*super().train_tasks(client, round_id),
                TrainTask(cid, round_id, steps, seed31(self.config.seed, "ditto-train", round_id, cid),
                          params=self.personal[cid], slot="personal",
                          proximal=(self.fed.global_params, self.settings.ditto_lambda))]

    def update(self, client: Client, round_id: int, results: list[TrainResult]) -> tuple[np.ndarray, dict[str, Any]]:
        main = [r for r in results if r.slot == "main"]
        (personal,) = [r for r in results if r.slot == "personal"]
        delta, stats = super().update(client, round_id, main)
        self.personal[client.client_id] = personal.params
        return delta, {**stats, **{"train_personal_" + k: float(v) for k, v in personal.stats.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {"personal": _tensors(self.personal),
                "personal_agents": [c.extra_agents["personal"].state_dict() for c in self.fed.clients]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.personal = _arrays(state["personal"])
        for c, s in zip(self.fed.clients, state["personal_agents"], strict=True):
            c.extra_agents["personal"].load_state_dict(s)
