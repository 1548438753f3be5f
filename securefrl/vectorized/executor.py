"""The vectorized executor: a round's clients trained and evaluated as one batched computation.

:class:`VectorizedExecutor` runs the train tasks of every sampled client at once in a
:class:`~securefrl.vectorized.ppo.PPOPopulation` and their evaluations in batched
:class:`~securefrl.envs.batched.BatchedEnv` es; everything else (sampling, pipeline, protocols,
DP, robust rules, update attacks, metrics, checkpoints) is the ordinary round of
:class:`securefrl.federation.Federation`, for any client algorithm whose tasks need only the features it declares. Each
client's agent is a :class:`ClientSlot`, a real :class:`~securefrl.agents.base.Agent` whose tensors are
client ``c``'s rows of the population, so everything the round does with ``client.agent`` still holds.

Supported: every environment whose family declares a batched implementation (``EnvFamily.batched``:
CartPole, Acrobot, edge caching, MEC offloading, RAN access; :mod:`securefrl.envs.batched`) + PPO, any protocol;
attacks that only craft updates; train tasks with a proximal term (FedProx, Ditto), frozen phases (FedRep),
environment-embedding networks (``embedding``) and a second agent per client (Ditto's ``"personal"`` slot: a second
population).
Anything else is refused by :mod:`securefrl.compat` (declared in :data:`securefrl.axes.EXECUTORS`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from securefrl.agents import make_agent
from securefrl.agents.base import Agent
from securefrl.envs import EnvSpec
from securefrl.envs.batched import batch_for
from securefrl.errors import ConfigError
from securefrl.seeding import derive_seed, eval_seed
from securefrl.tasks import EvalTask, TrainResult, TrainTask
from securefrl.vectorized.ppo import PPOPopulation

if TYPE_CHECKING:
    from securefrl.federation import Federation


class ClientSlot(Agent):
    """Client ``cid``'s PPO agent as a view of row ``cid`` of a :class:`PPOPopulation`.

    ``set_flat``/``get_flat`` read and write that row; ``learn`` trains this client alone through
    the batched code (C = 1), continuing the episodes of the client's environment copies, as
    ``PPOAgent`` does. Its action and minibatch streams come from the last :meth:`reseed` (the
    federation reseeds before every round); a second ``learn`` without ``reseed`` draws them from a
    seed derived from that one.
    """

    name = "ppo"
    capabilities = frozenset({"embedding"})
    """What the slot itself implements (:meth:`attach_env_embedding`); the executor runs proximal and frozen tasks."""

    def __init__(self, population: PPOPopulation, cid: int, template: Agent | None = None) -> None:
        self.population, self.cid = population, int(cid)
        self._template = template
        self._seed: int | None = None
        self._calls = 0
        self._rng = np.random.default_rng(derive_seed(cid, "slot-act"))

    def federated_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        pairs = zip(self.population.spec.names, self.population.params, strict=True)
        return [(name, p[self.cid]) for name, p in pairs]  # type: ignore[misc]  # row views of the stacked tensors

    def attach_env_embedding(self, dim: int, scale: float, generator: torch.Generator) -> None:
        """Switch the population to embedded networks (once, for all clients; before training).

        The layout is that of a per-client ``PPOAgent`` after ``attach_env_embedding`` (built on the executor's
        template agent), so flat vectors mean the same on both paths. ``generator`` is not drawn from: the new
        rows start at zero and the federation loads every client's full model before training.
        """
        pop = self.population
        if pop.embedding is None:
            if self._template is None:
                raise ValueError("this slot has no template agent to take the embedded layout from")
            from securefrl.personalization.parts import attach_env_embedding

            attach_env_embedding(self._template, dim, scale, torch.Generator().manual_seed(0))
            pop.enable_embedding(self._template.parameter_spec(), dim, scale)
        else:
            pop.enable_embedding(pop.spec, dim, scale)  # checks the same (dim, scale)
        self.env_embedding = (int(dim), float(scale))

    def reseed(self, seed: int) -> None:
        self._seed, self._calls = int(seed), 0
        self._rng = np.random.default_rng(self._seed)

    def learn(self, env_steps: int) -> dict[str, float]:
        if self._seed is None:
            raise RuntimeError("reseed the slot before learn: its action and minibatch streams come from that seed")
        seed = self._seed if self._calls == 0 else derive_seed(self._seed, "learn", self._calls) % (2**31)
        self._calls += 1
        return self.population.learn([self.cid], env_steps, [seed])[0]

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> int:
        actor = [p[self.cid: self.cid + 1] for p in self.population.params[: self.population.n_actor]]
        logits = self.population.forward(actor, torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(1, 1,
                                                                                                           -1)))[0, 0]
        if deterministic:
            return int(logits.argmax())
        probs = torch.softmax(logits.double(), dim=0).numpy()
        return int(self._rng.choice(len(probs), p=probs / probs.sum()))

    def state_dict(self) -> dict[str, Any]:
        return {"algo": "ppo-vectorized", **self.population.client_state(self.cid)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("algo") != "ppo-vectorized":
            raise ValueError(f"checkpoint is for agent {state.get('algo')!r}, this is a vectorized ppo slot")
        self.population.load_client_state(self.cid, state)


class VectorizedExecutor:
    """Runs a round's train tasks as :class:`PPOPopulation` calls and evaluation tasks as batched environments.

    Train tasks must carry a seed and no custom step; they are grouped by agent slot, steps and phases, and each
    group is one batched call: proximal terms per client (FedProx, Ditto), FedRep's frozen phases, and a second
    population per extra slot (Ditto's ``"personal"``). Evaluation tasks (which evaluate the main agents, as
    the loop's) sharing one parameter vector run as one batch of ``clients x episodes`` environments; tasks with
    per-client parameters load them into the clients' rows first (as ``set_flat`` would) and run as one batch of
    per-client networks.
    """

    def __init__(self, federation: Federation) -> None:
        self.fed = federation
        self.populations: dict[str, PPOPopulation] = {}
        """One population per agent slot (``"main"``; Ditto adds ``"personal"``)."""
        self._template: Agent | None = None

    @property
    def population(self) -> PPOPopulation:
        """The clients' main agents (the slot evaluations and the federation read)."""
        if "main" not in self.populations:
            raise RuntimeError("the population is built with the first client's agent (make_agent)")
        return self.populations["main"]

    def make_agent(self, cid: int, spec: EnvSpec, env_fn: Callable[[], Any], agent_cfg: Any, seed: int,
                   slot: str = "main") -> Agent:
        if slot not in self.populations:  # names and shapes of the networks, from the clients' env spaces
            template = make_agent("ppo", spec.make, agent_cfg, seed=0)
            self.populations[slot] = PPOPopulation(agent_cfg, template.parameter_spec(),
                                                   self.fed.config.federation.n_clients)
            if slot == "main":
                self._template = template  # embedding takes its layout from it (ClientSlot.attach_env_embedding)
        pop = self.populations[slot]
        # The per-client agent would be built with this seed and reset its environments from it once.
        pop.env_seeds[cid] = seed
        return ClientSlot(pop, cid, self._template if slot == "main" else None)

    def start(self) -> None:
        # The clients' environments as one batch per slot, of the class their family declares (securefrl.envs.batched).
        for pop in self.populations.values():
            pop.set_envs(batch_for([c.env_spec for c in self.fed.clients]))

    def close(self) -> None:
        return None

    # --- training: the round's sampled clients in one batch per slot, steps and phases ------------
    def train(self, tasks: list[TrainTask]) -> list[TrainResult]:
        out: dict[int, TrainResult] = {}
        groups: dict[tuple[str, int, Phases | None], list[TrainTask]] = {}
        for task in tasks:
            if task.run is not None or task.seed is None:
                raise ConfigError("federation.simulation", "the vectorized simulation runs seeded training without "
                                  "custom steps only; use simulation=loop")
            if task.slot not in self.populations:
                raise ConfigError("federation.simulation", f"no client has a {task.slot!r} agent to train")
            phases = None if task.phases is None else tuple((tuple(n), int(k), str(p)) for n, k, p in task.phases)
            groups.setdefault((task.slot, task.steps, phases), []).append(task)
        for (slot, steps, phases), group in groups.items():
            pop = self.populations[slot]
            ids = [t.client_id for t in group]
            if len(set(ids)) != len(ids):
                raise ValueError("one batched train call trains each client at most once")
            for t in group:
                if t.params is not None:
                    pop.set_rows([t.client_id], t.params)
            stats = self._learn(slot, ids, steps, [int(t.seed) for t in group],  # type: ignore[arg-type]
                                proximal_of(group, pop.spec.dim), phases)
            rows = pop.get_rows(ids)
            for k, t in enumerate(group):
                out[id(t)] = TrainResult(t.client_id, t.slot, rows[k], stats[k])
        return [out[id(t)] for t in tasks]

    def _learn(self, slot: str, ids: list[int], steps: int, seeds: list[int],
               proximal: tuple[np.ndarray, np.ndarray] | None, phases: Phases | None) -> list[dict[str, float]]:
        """Train clients ``ids`` of slot ``slot``'s population (here, in this process; Ray workers in a subclass)."""
        return self.populations[slot].learn(ids, steps, seeds, proximal, phases)

    # --- evaluation: every task's episodes in few batches -----------------------------------------
    def evaluate(self, tasks: list[EvalTask]) -> list[float]:
        pop, fed = self.population, self.fed
        episodes_default = fed.config.federation.eval_episodes
        results: dict[int, float] = {}
        groups: dict[tuple[int, int], list[EvalTask]] = {}  # (episodes, shared params object or 0) -> tasks
        for t in tasks:
            groups.setdefault((t.episodes or episodes_default, id(t.params) if t.params is not None else 0),
                              []).append(t)
        rows_path: dict[int, list[EvalTask]] = {}
        last: dict[int, np.ndarray] = {}
        for (episodes, key), group in groups.items():
            unique = len({t.client_id for t in group}) == len(group)
            shared = key != 0 and unique and (len(group) > 1 or len(groups) == 1)
            if not shared:
                rows_path.setdefault(episodes, []).extend(group)
                continue
            params = [p.unsqueeze(0) for p in pop.spec.unflatten(np.asarray(group[0].params, dtype=np.float32))]
            pop.set_rows([t.client_id for t in group], group[0].params)  # type: ignore[arg-type]  # the agents hold what they were evaluated with
            for t in group:
                last[t.client_id] = group[0].params  # type: ignore[assignment]
            results.update(zip(map(id, group), self._batched(group, params, episodes, per_client=False), strict=True))
        for episodes, group in rows_path.items():
            for batch in _unique_runs(group):  # split where a client repeats: its row holds one model at a time
                for t in batch:
                    if t.params is not None:
                        pop.set_rows([t.client_id], t.params)
                        last[t.client_id] = t.params
                ids = torch.as_tensor([t.client_id for t in batch])
                params = [p[ids] for p in pop.params]
                results.update(zip(map(id, batch), self._batched(batch, params, episodes, per_client=True),
                                   strict=True))
        for t in tasks:  # each client's row ends as its last task left it (what a sequential set_flat leaves)
            if t.params is not None:
                last[t.client_id] = t.params
        for cid, flat in last.items():
            pop.set_rows([cid], flat)
        return [results[id(t)] for t in tasks]

    def _batched(self, tasks: list[EvalTask], params: list[torch.Tensor], episodes: int,
                 per_client: bool) -> list[float]:
        cfg = self.fed.config
        envs = self.population.client_envs
        assert envs is not None
        ids = [t.client_id for t in tasks]
        seeds = [(t.seed if t.seed is not None else eval_seed(cfg.seed, t.tag, t.round_id, t.client_id)) + ep
                 for t in tasks for ep in range(episodes)]
        batch = envs.subset(np.repeat(ids, episodes))  # one copy of its client's environment per episode
        copies = episodes if per_client else episodes * len(ids)
        returns = self.population.greedy_returns(params, copies, batch, seeds).reshape(len(ids), episodes)
        return [float(np.mean(returns[k])) for k in range(len(ids))]


Phases = tuple[tuple[tuple[str, ...], int, str], ...]
"""A train task's ``phases`` as a hashable key: ``((frozen names, steps, stats prefix), ...)``."""


def proximal_of(tasks: list[TrainTask], dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The proximal references and coefficients of a batch of tasks (``PPOPopulation.learn``), None if no task has one.

    Tasks without a term get coefficient 0 (their gradient is unchanged); one shared reference (FedProx's and
    Ditto's global model) is passed as one row. Coefficients are checked as ``Agent.set_proximal`` checks them.
    """
    if all(t.proximal is None for t in tasks):
        return None
    mus = np.zeros(len(tasks))
    for k, t in enumerate(tasks):
        if t.proximal is not None:
            mu = float(t.proximal[1])
            if not (np.isfinite(mu) and mu >= 0):
                raise ConfigError("mu", f"the proximal coefficient must be a positive finite number, got {mu!r}")
            mus[k] = mu
    refs = [t.proximal[0] for t in tasks if t.proximal is not None]
    if len(refs) == len(tasks) and all(r is refs[0] for r in refs):
        return np.asarray(refs[0], dtype=np.float32), mus
    rows = np.zeros((len(tasks), dim), dtype=np.float32)
    for k, t in enumerate(tasks):
        if t.proximal is not None:
            rows[k] = t.proximal[0]
    return rows, mus


def _unique_runs(tasks: list[EvalTask]) -> list[list[EvalTask]]:
    """Consecutive runs of ``tasks`` in which no client repeats."""
    runs: list[list[EvalTask]] = [[]]
    seen: set[int] = set()
    for t in tasks:
        if t.client_id in seen:
            runs.append([])
            seen = set()
        runs[-1].append(t)
        seen.add(t.client_id)
    return [r for r in runs if r]
