"""Client training and evaluation as Ray tasks (Moritz et al. 2018, "Ray: A Distributed Framework
for Emerging AI Applications"), on a local Ray instance or an existing cluster.

:class:`RayExecutor` is the executor (``federation.backend = "ray"``) that runs every train task of a
round as one Ray task (the main agent's local evaluation rides along) and evaluations as Ray tasks over
chunks of clients sharing a model. It runs any client algorithm whose tasks need only features it
declares (proximal terms, frozen phases, environment-embedding networks, a second agent per client).
The driver keeps the authoritative state (agents, protocol, server optimizer, accountant), so checkpoints,
protocols and metrics are those of the local run, and the same seed gives the same metrics: a task
rebuilds the client's agent, loads its exact state, runs the task and hands the new state back.

Only bytes and primitives cross Ray: the agent's name and hyperparameters as a plain dict (no config
validation, no entry-point look-up in the worker), the ``(dim, scale)`` of its environment embedding if
it has one (``Agent.env_embedding``: the worker rebuilds the same networks), the client's ``EnvSpec`` as
a dict, parameters as float32 bytes, agent state as ``torch.save`` bytes that the other side
reads with ``torch.load(weights_only=True)``, statistics as floats. No agent, protocol or model
object is pickled. Protocol payloads (``protect``/``combine``/``open``) stay in the driver, which
simulates every party of the protocol.

:class:`VectorizedRayExecutor` (``simulation = "vectorized"`` with ``backend = "ray"``) is the vectorized
executor whose batched training runs in Ray tasks, one per chunk of the round's clients (with the same task
features: proximal terms, frozen phases, embedded networks, a second population).

Workers must be able to ``import securefrl`` (a local Ray inherits this interpreter; on a cluster
install the same version of the package on every node).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from securefrl.agents.base import Agent
from securefrl.errors import ConfigError
from securefrl.seeding import eval_seed
from securefrl.tasks import EvalTask, TrainResult, TrainTask
from securefrl.vectorized.executor import Phases, VectorizedExecutor

if TYPE_CHECKING:
    from securefrl.config import ExperimentConfig
    from securefrl.envs import EnvSpec
    from securefrl.federation import Federation


def _state_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _load_state(data: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(data), weights_only=True)


def _params_from_bytes(data: bytes) -> np.ndarray:
    if len(data) % 4:
        raise ValueError(f"parameter bytes of length {len(data)} are not float32")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _bytes(flat: np.ndarray) -> bytes:
    return np.ascontiguousarray(flat, dtype="<f4").tobytes()


def _embedding(value: tuple[int, float] | None) -> list[Any] | None:
    return None if value is None else [int(value[0]), float(value[1])]


def _rebuild(agent: Agent, embedding: list[Any] | None) -> Agent:
    """``agent`` with the environment-embedding networks the driver's agent has (None: plain)."""
    if embedding is not None:
        from securefrl.personalization.parts import attach_env_embedding

        # the values drawn here are overwritten by the state or parameters loaded next
        attach_env_embedding(agent, int(embedding[0]), float(embedding[1]), torch.Generator().manual_seed(0))
    return agent


def task_payload(task: TrainTask, agent_seed: int, eval_seed_local: int | None,
                 embedding: tuple[int, float] | None = None) -> dict[str, Any]:
    """A train task as primitives and bytes (what crosses Ray); ``eval_seed_local`` asks for the local evaluation,
    ``embedding`` is the agent's ``env_embedding``."""
    return {"client_id": task.client_id, "round_id": task.round_id, "steps": task.steps, "seed": task.seed,
            "slot": task.slot, "agent_seed": int(agent_seed), "embedding": _embedding(embedding),
            "params": None if task.params is None else _bytes(task.params),
            "proximal": None if task.proximal is None else (_bytes(task.proximal[0]), float(task.proximal[1])),
            "phases": None if task.phases is None else [(list(n), int(k), str(p)) for n, k, p in task.phases],
            "eval_seed": eval_seed_local}


def agent_payload(config: ExperimentConfig) -> dict[str, Any]:
    """What a worker needs to rebuild an agent: its name, hyperparameters and the evaluation budget (no validation)."""
    return {"agent": config.agent.name, "params": dict(config.agent.params),
            "eval_episodes": config.federation.eval_episodes}


def train_client(agent_cfg: dict[str, Any], spec: dict[str, Any], task: dict[str, Any], state: bytes) -> dict[str, Any]:
    """One train task (and the trained model's local evaluation), as the local executor would run it.

    Runs in a Ray worker (or anywhere): every argument and the result are bytes or primitives. The
    agent is rebuilt from its name and hyperparameters and loads its exact state; nothing is validated
    again or looked up through entry points.
    """
    from securefrl.agents import make_agent
    from securefrl.envs import EnvSpec
    from securefrl.executors import run_eval, run_train

    torch.set_num_threads(1)  # as the local executor: tiny networks
    env_spec = EnvSpec.from_dict(spec)
    agent = _rebuild(make_agent(agent_cfg["agent"], env_spec.make, agent_cfg["params"], seed=task["agent_seed"]),
                     task.get("embedding"))
    agent.load_state_dict(_load_state(state))
    prox = task["proximal"]
    job = TrainTask(task["client_id"], task["round_id"], task["steps"], task["seed"],
                    params=None if task["params"] is None else _params_from_bytes(task["params"]), slot=task["slot"],
                    proximal=None if prox is None else (_params_from_bytes(prox[0]), prox[1]),
                    phases=task["phases"])
    stats, _ = run_train(agent, job)
    ret = None
    if task["eval_seed"] is not None:
        env = env_spec.make()
        try:
            ret = run_eval(agent, env, EvalTask(job.client_id, job.round_id, "local", seed=task["eval_seed"]), 0,
                           agent_cfg["eval_episodes"])
        finally:
            env.close()
    return {"state": _state_bytes(agent.state_dict()), "stats": {k: float(v) for k, v in stats.items()},
            "return_local": ret}


def evaluate_clients(agent_cfg: dict[str, Any], specs: list[dict[str, Any]], seeds: list[int], episodes: int,
                     params: bytes) -> list[float]:
    """Mean greedy return of ``params`` in each listed environment, episode seeds starting at ``seeds``."""
    from securefrl.agents import make_agent
    from securefrl.envs import EnvSpec

    torch.set_num_threads(1)
    env_specs = [EnvSpec.from_dict(s) for s in specs]
    agent = _rebuild(make_agent(agent_cfg["agent"], env_specs[0].make, agent_cfg["params"], seed=0),  # acts with
                     agent_cfg.get("embedding"))  # `params` only
    agent.set_flat(_params_from_bytes(params))
    out = []
    for spec, seed in zip(env_specs, seeds, strict=True):
        env = spec.make()
        try:
            out.append(float(np.mean(agent.evaluate(env, episodes, seed))))
        finally:
            env.close()
    return out


def _attach_envs(population: Any, specs: list[Any]) -> None:
    """The chunk's environments in ``population``, as :meth:`VectorizedExecutor.start` attaches the driver's."""
    from securefrl.envs.batched import batch_for

    population.set_envs(batch_for(specs))


def train_population(agent_cfg: dict[str, Any], specs: list[dict[str, Any]], clients: list[dict[str, Any]],
                     steps: int, phases: list[Any] | None = None, embedding: list[Any] | None = None
                     ) -> list[dict[str, Any]]:
    """Clients' train tasks as one batched :class:`~securefrl.vectorized.ppo.PPOPopulation` call.

    Runs in a Ray worker: ``clients[k]`` carries client ``k`` of the chunk's exact population state
    (``PPOPopulation.client_state`` as ``torch.save`` bytes), the agent seed its environments were first
    reset from, the round's train seed and its proximal term (``(reference bytes, mu)`` or None); ``specs[k]``
    its environment; ``phases`` FedRep's ``(frozen names, steps, prefix)`` list and ``embedding`` the
    population's ``(dim, scale)``. Returns each client's new state and ``learn`` statistics (bytes and floats),
    what the driver's population would hold after the same call.
    """
    from securefrl.agents import make_agent
    from securefrl.envs import EnvSpec
    from securefrl.vectorized.ppo import PPOPopulation

    torch.set_num_threads(1)
    env_specs = [EnvSpec.from_dict(s) for s in specs]
    template = _rebuild(make_agent(agent_cfg["agent"], env_specs[0].make, agent_cfg["params"], seed=0),
                        embedding)  # names and shapes
    pop = PPOPopulation(template.config, template.parameter_spec(), len(clients),
                        embedding=None if embedding is None else (int(embedding[0]), float(embedding[1])))
    _attach_envs(pop, env_specs)
    for k, c in enumerate(clients):
        pop.env_seeds[k] = int(c["env_seed"])
        pop.load_client_state(k, _load_state(c["state"]))
    proximal = None
    if any(c.get("proximal") is not None for c in clients):
        zero = np.zeros(pop.spec.dim, np.float32)
        refs = [zero if c["proximal"] is None else _params_from_bytes(c["proximal"][0]) for c in clients]
        proximal = (np.stack(refs),
                    np.array([0.0 if c["proximal"] is None else float(c["proximal"][1]) for c in clients]))
    stats = pop.learn(list(range(len(clients))), int(steps), [int(c["seed"]) for c in clients], proximal,
                      None if phases is None else [(list(n), int(k), str(p)) for n, k, p in phases])
    return [{"state": _state_bytes(pop.client_state(k)), "stats": {key: float(v) for key, v in stats[k].items()}}
            for k in range(len(clients))]


def connect(address: str = "", num_cpus: int = 2) -> bool:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start a local one; True if started here."""
    try:
        import ray
    except ImportError:
        raise ConfigError("federation.backend", "backend=ray needs the ray package: pip install 'ray[default]'") \
            from None
    if ray.is_initialized():
        return False
    # A Ray cluster is one trust domain: its workers' results are unpickled in this driver, so whoever runs
    # the cluster runs code here. A config file may come from anyone; the address must come from the operator.
    trusted = os.environ.get("RAY_ADDRESS", "")
    if address and address != trusted:
        raise ConfigError("federation.ray_address", "a Ray cluster address is only taken from the RAY_ADDRESS "
                          "environment variable of the operator, not from a config file (a cluster can run code in "
                          "this process); export RAY_ADDRESS=... instead, or leave ray_address empty")
    address = trusted
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return False
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    return True


class RayExecutor:
    """Runs train tasks and evaluations as Ray tasks; the driver keeps the authoritative agents."""

    def __init__(self, federation: Federation) -> None:
        self.fed = federation
        self._seeds: dict[tuple[int, str], int] = {}
        self._local: dict[tuple[int, int], float] = {}
        self.started_ray = False

    def make_agent(self, cid: int, spec: EnvSpec, env_fn: Callable[[], Any], agent_cfg: Any, seed: int,
                   slot: str = "main") -> Agent:
        from securefrl.agents import make_agent

        self._seeds[(cid, slot)] = seed
        return make_agent(self.fed.config.agent.name, env_fn, agent_cfg, seed=seed)

    def start(self) -> None:
        fed = self.fed.config.federation
        self.started_ray = connect(fed.ray_address, fed.ray_num_cpus)
        import ray

        self._ray = ray
        self._train = ray.remote(train_client)
        self._eval = ray.remote(evaluate_clients)
        self._agent_cfg = agent_payload(self.fed.config)
        # evaluations act with the main agents' networks (every client's have the same layout)
        self._agent_cfg["embedding"] = _embedding(self.fed.clients[0].agent.env_embedding)
        self._specs = [c.env_spec.to_dict() for c in self.fed.clients]

    def close(self) -> None:
        """Shut down the local Ray instance this federation started (a joined cluster stays up)."""
        if self.started_ray and self._ray.is_initialized():
            self._ray.shutdown()
        self.started_ray = False

    def train(self, tasks: list[TrainTask]) -> list[TrainResult]:
        """Every task as one Ray task; the main slot's local evaluation comes back with it."""
        fed = self.fed
        self._local = {}
        cfg_ref = self._ray.put(self._agent_cfg)
        futures = []
        for t in tasks:
            if t.run is not None:
                raise ConfigError("federation.backend", "custom training steps run in this process only; use "
                                  "federation.backend=local")
            client = fed.clients[t.client_id]
            local_seed = eval_seed(fed.config.seed, "local", t.round_id, t.client_id) if t.slot == "main" else None
            agent = client.agent_for(t.slot)
            futures.append(self._train.remote(cfg_ref, self._specs[t.client_id],
                                              task_payload(t, self._seeds[(t.client_id, t.slot)], local_seed,
                                                           agent.env_embedding),
                                              _state_bytes(agent.state_dict())))
        out = []
        for t, res in zip(tasks, self._ray.get(futures), strict=True):
            agent = fed.clients[t.client_id].agent_for(t.slot)
            agent.load_state_dict(_load_state(res["state"]))
            if res["return_local"] is not None:
                self._local[(t.round_id, t.client_id)] = res["return_local"]
            out.append(TrainResult(t.client_id, t.slot, agent.get_flat(), res["stats"]))
        return out

    def evaluate(self, tasks: list[EvalTask]) -> list[float]:
        """Local returns came back with training; others run as Ray tasks (chunks of clients sharing a model)."""
        fed = self.fed
        results: dict[int, float] = {}
        groups: dict[tuple[int, int], list[EvalTask]] = {}
        effective: dict[int, EvalTask] = {}
        for task in tasks:
            t = task
            if t.params is None:
                key = (t.round_id, t.client_id)
                if t.tag == "local" and key in self._local:
                    results[id(t)] = self._local.pop(key)
                    continue
                t = EvalTask(t.client_id, t.round_id, t.tag, fed.clients[t.client_id].agent.get_flat(), t.episodes,
                             t.seed)
            else:
                fed.clients[t.client_id].agent.set_flat(t.params)  # the driver's agent holds what it was evaluated with
            effective[id(task)] = t
            groups.setdefault((t.episodes or fed.config.federation.eval_episodes, id(t.params)), []).append(t)
        cfg_ref = self._ray.put(self._agent_cfg)
        n_cpu = int(self._ray.cluster_resources().get("CPU", 1) or 1)
        pending = []
        for (episodes, _), group in groups.items():
            ref = self._ray.put(_bytes(group[0].params))  # type: ignore[arg-type]
            n_chunks = max(1, min(len(group), 4 * n_cpu))
            for chunk in np.array_split(np.arange(len(group)), n_chunks):
                batch = [group[i] for i in chunk]
                if not batch:
                    continue
                seeds = [t.seed if t.seed is not None else eval_seed(fed.config.seed, t.tag, t.round_id, t.client_id)
                         for t in batch]
                pending.append((batch, self._eval.remote(cfg_ref, [self._specs[t.client_id] for t in batch], seeds,
                                                         episodes, ref)))
        for batch, future in pending:
            values: list[float] = self._ray.get(future)
            for t, value in zip(batch, values, strict=True):
                results[id(t)] = value
        return [results[id(effective.get(id(t), t))] for t in tasks]


class VectorizedRayExecutor(VectorizedExecutor):
    """The vectorized executor, its batched training in Ray workers (``simulation=vectorized``, ``backend=ray``).

    A round's sampled clients are split into ``federation.ray_num_cpus`` chunks (a number from the config, so
    the same seed gives the same run on any cluster); each chunk trains as one batched population call in a
    Ray task (:func:`train_population`) and hands its clients' population state back. The driver keeps the
    authoritative population, so protocols, checkpoints and evaluation (batched, in this process) are those of
    the local vectorized executor.
    """

    def __init__(self, federation: Federation) -> None:
        super().__init__(federation)
        self.started_ray = False

    def start(self) -> None:
        super().start()
        fed = self.fed.config.federation
        self.started_ray = connect(fed.ray_address, fed.ray_num_cpus)
        import ray

        self._ray = ray
        self._train = ray.remote(train_population)
        self._agent_cfg = agent_payload(self.fed.config)
        self._specs = [c.env_spec.to_dict() for c in self.fed.clients]

    def close(self) -> None:
        """Shut down the local Ray instance this federation started (a joined cluster stays up)."""
        if self.started_ray and self._ray.is_initialized():
            self._ray.shutdown()
        self.started_ray = False

    def _learn(self, slot: str, ids: list[int], steps: int, seeds: list[int],
               proximal: tuple[np.ndarray, np.ndarray] | None, phases: Phases | None) -> list[dict[str, float]]:
        pop = self.populations[slot]
        cfg_ref = self._ray.put(self._agent_cfg)
        refs, mus = proximal if proximal is not None else (None, None)

        def prox(i: int) -> tuple[bytes, float] | None:
            if refs is None or mus is None or mus[i] == 0:
                return None
            return _bytes(refs if refs.ndim == 1 else refs[i]), float(mus[i])

        chunks = [c for c in np.array_split(np.arange(len(ids)), min(len(ids), self.fed.config.federation.ray_num_cpus))
                  if len(c)]
        futures = []
        for chunk in chunks:
            members = [ids[i] for i in chunk]
            clients = [{"state": _state_bytes(pop.client_state(cid)), "env_seed": int(pop.env_seeds[cid]),
                        "seed": int(seeds[i]), "proximal": prox(int(i))} for i, cid in zip(chunk, members, strict=True)]
            futures.append(self._train.remote(cfg_ref, [self._specs[cid] for cid in members], clients, int(steps),
                                              None if phases is None else [list(p) for p in phases],
                                              _embedding(pop.embedding)))
        stats: dict[int, dict[str, float]] = {}
        for chunk, result in zip(chunks, self._ray.get(futures), strict=True):
            for i, res in zip(chunk, result, strict=True):
                pop.load_client_state(ids[i], _load_state(res["state"]))
                stats[int(i)] = res["stats"]
        return [stats[i] for i in range(len(ids))]
