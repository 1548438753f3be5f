"""The executor axis: where a round's train and evaluation tasks run.

An executor builds the clients' agents and runs :class:`~securefrl.tasks.TrainTask` /
:class:`~securefrl.tasks.EvalTask` lists; it knows nothing of client algorithms. :class:`LocalExecutor`
runs them one after another in this process (the reference); :mod:`securefrl.vectorized.executor` runs a
round's tasks as one batched computation, :mod:`securefrl.ray_backend` as Ray tasks. Each declares the
task features it runs in :data:`securefrl.axes.EXECUTORS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from securefrl.seeding import eval_seed
from securefrl.tasks import EvalTask, TrainResult, TrainTask

if TYPE_CHECKING:
    from securefrl.agents.base import Agent
    from securefrl.envs import EnvSpec
    from securefrl.federation import Federation

__all__ = ["Executor", "LocalExecutor", "run_eval", "run_train"]


class Executor(Protocol):
    """Runs train and evaluation tasks for a federation's clients."""

    def make_agent(self, cid: int, spec: EnvSpec, env_fn: Callable[[], Any], agent_cfg: Any, seed: int,
                   slot: str = "main") -> Agent: ...

    def start(self) -> None: ...

    def train(self, tasks: list[TrainTask]) -> list[TrainResult]: ...

    def evaluate(self, tasks: list[EvalTask]) -> list[float]: ...

    def close(self) -> None: ...


def run_train(agent: Agent, task: TrainTask) -> tuple[dict[str, float], dict[str, Any]]:
    """Run ``task`` on ``agent`` in this process; returns (``learn`` statistics, extra reports)."""
    from securefrl.agents.base import frozen

    if task.params is not None:
        agent.set_flat(task.params)
    if task.seed is not None:
        agent.reseed(task.seed)
    if task.run is not None:
        return task.run(agent), {}
    if task.proximal is not None:
        agent.set_proximal(*task.proximal)
    try:
        if task.phases is None:
            stats = agent.learn(task.steps)
        else:
            stats = {}
            for names, steps, prefix in task.phases:
                with frozen(agent, names):
                    stats.update({prefix + k: v for k, v in agent.learn(steps).items()})
    finally:
        if task.proximal is not None:
            agent.set_proximal(None)
    info = agent.dpsgd.report() if getattr(agent, "dpsgd", None) is not None else {}  # record-level epsilon
    return stats, info


def run_eval(agent: Agent, env: Any, task: EvalTask, config_seed: int, default_episodes: int) -> float:
    """Mean greedy return of ``task`` on ``agent`` in ``env`` (the agent keeps ``task.params`` afterwards)."""
    if task.params is not None:
        agent.set_flat(task.params)
    seed = task.seed if task.seed is not None else eval_seed(config_seed, task.tag, task.round_id, task.client_id)
    return float(np.mean(agent.evaluate(env, task.episodes or default_episodes, seed)))


class LocalExecutor:
    """Every task in turn, on the clients' own agents in this process: the reference executor."""

    def __init__(self, federation: Federation) -> None:
        self.fed = federation

    def make_agent(self, cid: int, spec: EnvSpec, env_fn: Callable[[], Any], agent_cfg: Any, seed: int,
                   slot: str = "main") -> Agent:
        from securefrl.agents import make_agent

        return make_agent(self.fed.config.agent.name, env_fn, agent_cfg, seed=seed)

    def start(self) -> None:
        return None

    def train(self, tasks: list[TrainTask]) -> list[TrainResult]:
        out = []
        for task in tasks:
            agent = self.fed.clients[task.client_id].agent_for(task.slot)
            stats, info = run_train(agent, task)
            out.append(TrainResult(task.client_id, task.slot, agent.get_flat(), stats, info))
        return out

    def evaluate(self, tasks: list[EvalTask]) -> list[float]:
        fed = self.fed
        return [run_eval(fed.clients[t.client_id].agent, fed.clients[t.client_id].eval_env, t, fed.config.seed,
                         fed.config.federation.eval_episodes) for t in tasks]

    def close(self) -> None:
        return None
