"""The federation round loop with every sampled client trained in one batched computation.

:class:`VectorizedFederation` is :class:`securefrl.federation.Federation` (same sampling, update
pipeline, protocols, DP, robust rules, attacks on updates, metrics, checkpoints) with two hot
paths replaced: the first ``local_update`` of a round trains *all* the round's sampled clients at
once in a :class:`~securefrl.vectorized.ppo.PPOPopulation`, and the first ``_evaluate`` of a round
evaluates every client's episodes in one :class:`~securefrl.vectorized.cartpole.CartPoleBatch`.
The remaining calls of the round read those results. Each client's agent is a
:class:`ClientSlot`, a real :class:`~securefrl.agents.base.Agent` whose tensors are client ``c``'s
rows of the population, so everything the round loop does with ``client.agent`` still holds.

Supported: CartPole (family or ``CartPole-v1``) + PPO, any protocol, local backend; attacks that
only craft updates. Anything else is refused with a :class:`~securefrl.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from securefrl.agents import make_agent
from securefrl.agents.base import Agent
from securefrl.config import ExperimentConfig
from securefrl.envs import EnvSpec
from securefrl.errors import ConfigError
from securefrl.federation import Client, Federation
from securefrl.seeding import derive_seed
from securefrl.vectorized.cartpole import physics_of
from securefrl.vectorized.ppo import PPOPopulation, batched_mlp

CARTPOLE_NAMES = ("cartpole", "CartPole-v1")


def check_vectorized(config: ExperimentConfig) -> None:
    """Refuse configurations the vectorized simulation does not implement, naming the field."""
    fed = config.federation
    if config.agent.name != "ppo":
        raise ConfigError("federation.simulation", f"vectorized simulation runs agent ppo only, not "
                          f"{config.agent.name!r}; use federation.simulation=loop")
    if config.env.name not in CARTPOLE_NAMES:
        raise ConfigError("federation.simulation", f"vectorized simulation runs env {' or '.join(CARTPOLE_NAMES)} "
                          f"only, not {config.env.name!r}; use federation.simulation=loop")
    if getattr(fed, "backend", "local") != "local":
        raise ConfigError("federation.backend", "vectorized simulation runs in this process; use backend=local "
                          "(or simulation=loop with backend=ray)")
    if config.attack.name != "none":
        from securefrl.behaviour import make_behaviour

        if callable(getattr(make_behaviour(config.attack.name, **config.attack.params), "wrap_env", None)):
            raise ConfigError("attack.name", f"{config.attack.name!r} changes the malicious clients' environments, "
                              "which the batched CartPole does not model; use federation.simulation=loop")


class ClientSlot(Agent):
    """Client ``cid``'s PPO agent as a view of row ``cid`` of a :class:`PPOPopulation`.

    ``set_flat``/``get_flat`` read and write that row; ``learn`` trains this client alone through
    the batched code (C = 1), continuing the episodes of the client's environment copies, as
    ``PPOAgent`` does. Its action and minibatch streams come from the last :meth:`reseed` (the
    federation reseeds before every round); a second ``learn`` without ``reseed`` draws them from a
    seed derived from that one.
    """

    name = "ppo"

    def __init__(self, population: PPOPopulation, cid: int) -> None:
        self.population, self.cid = population, int(cid)
        self._seed: int | None = None
        self._calls = 0
        self._rng = np.random.default_rng(derive_seed(cid, "slot-act"))

    def federated_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(name, p[self.cid]) for name, p in zip(self.population.spec.names, self.population.params,
                                                       strict=True)]  # type: ignore[misc]

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
        logits = batched_mlp(actor, torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(1, 1, -1)))[0, 0]
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


class VectorizedFederation(Federation):
    """:class:`~securefrl.federation.Federation` whose clients train and evaluate as one batch per round."""

    def __post_init__(self) -> None:
        check_vectorized(self.config)
        agent_cfg = self.config.agent_config()
        template = make_agent("ppo", EnvSpec("CartPole-v1").make, agent_cfg, seed=0)  # names and shapes only
        self.population = PPOPopulation(agent_cfg, template.parameter_spec(), self.config.federation.n_clients)
        self._train_cache: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}
        self._trained_round = -1
        self._eval_cache: dict[tuple[int, str], dict[int, float]] = {}
        super().__post_init__()
        phys, limit = physics_of([c.env_spec for c in self.clients])
        self.population.physics = (phys, limit)

    def _make_agent(self, cid: int, spec: EnvSpec, env_fn: Callable[[], Any], agent_cfg: Any) -> Agent:
        # The per-client agent would be built with this seed and reset its environments from it once.
        self.population.env_seeds[cid] = derive_seed(self.config.seed, "agent", cid)
        return ClientSlot(self.population, cid)

    # --- training: the whole round's sampled clients in one batch ---------------------------------
    def local_update(self, client: Client, round_id: int) -> tuple[np.ndarray, dict[str, Any]]:
        """The first call of a round trains every sampled client together; later calls read the result."""
        if self._trained_round != round_id:
            self._train_cache = self._train_batch(self.sample_clients(round_id), round_id)
            self._trained_round = round_id
        if client.client_id not in self._train_cache:  # not a sampled client: train it on its own
            return super().local_update(client, round_id)
        client.env_steps += self.config.federation.local_steps
        return self._train_cache.pop(client.client_id)

    def _train_batch(self, ids: list[int], round_id: int) -> dict[int, tuple[np.ndarray, dict[str, Any]]]:
        fed, pop = self.config.federation, self.population
        pop.set_rows(ids, self.global_params)
        seeds = [derive_seed(self.config.seed, "train", round_id, c) % (2**31) for c in ids]
        stats = pop.learn(ids, fed.local_steps, seeds)
        deltas = pop.get_rows(ids).astype(np.float64) - self.global_params.astype(np.float64)
        return {c: (deltas[k], {"train_" + key: float(v) for key, v in stats[k].items()}) for k, c in enumerate(ids)}

    # --- evaluation: every client's episodes in one batch -----------------------------------------
    def _evaluate(self, client: Client, round_id: int, tag: str) -> float:
        """``local``: sampled clients with their trained rows; ``global``: every client with the global model."""
        key = (round_id, tag)
        if key not in self._eval_cache:
            if tag == "local":
                ids = self.sample_clients(round_id)
                params = [p[torch.as_tensor(ids)] for p in self.population.params]
                per_client = True
            elif tag == "global":
                ids = [c.client_id for c in self.clients]
                params = [p.unsqueeze(0) for p in self.population.spec.unflatten(self.global_params)]
                per_client = False
            else:
                return super()._evaluate(client, round_id, tag)
            self._eval_cache = {k: v for k, v in self._eval_cache.items() if k[0] == round_id}
            self._eval_cache[key] = self._batched_eval(ids, params, per_client, round_id, tag)
        values = self._eval_cache[key]
        if client.client_id not in values:
            return super()._evaluate(client, round_id, tag)
        return values[client.client_id]

    def _batched_eval(self, ids: list[int], params: list[torch.Tensor], per_client: bool, round_id: int,
                      tag: str) -> dict[int, float]:
        episodes = self.config.federation.eval_episodes
        phys, limit = self.population.physics  # type: ignore[misc]
        seeds = [derive_seed(self.config.seed, "eval", tag, round_id, c) % (2**31) + ep
                 for c in ids for ep in range(episodes)]
        physics = {k: np.repeat(v[ids], episodes) for k, v in phys.items()}
        copies = episodes if per_client else episodes * len(ids)
        returns = self.population.greedy_returns(params, copies, physics, limit, seeds).reshape(len(ids), episodes)
        return {c: float(np.mean(returns[k])) for k, c in enumerate(ids)}
