"""The client-algorithm axis: what a client trains and what it sends.

A :class:`ClientAlgorithm` turns the server state into per-client :class:`~securefrl.tasks.TrainTask` s,
their results into update vectors, and the opened mean update into the next server state. It never runs
an agent itself: the federation's executor does (:mod:`securefrl.executors`). :class:`FedAvg` (McMahan et
al. 2017) is the reference; the personalization methods (:mod:`securefrl.personalization.algorithms`)
override a few of its methods. Register a new one in :data:`securefrl.axes.ALGORITHMS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from securefrl.seeding import derive_seed, train_seed
from securefrl.tasks import EvalTask, TrainResult, TrainTask

if TYPE_CHECKING:
    from securefrl.agents.base import Agent
    from securefrl.envs import EnvSpec
    from securefrl.federation import Client, Federation

__all__ = ["ClientAlgorithm", "FedAvg"]


class ClientAlgorithm:
    """Base client algorithm: FedAvg of the whole model (subclasses override what differs).

    Class attributes: ``sends`` (False: clients never send, the round skips the server), ``personalized``
    (rows gain ``return_personal`` and the summary its mean/min), ``personal_differs`` (the personal model
    differs from :meth:`client_model` and needs its own evaluation).
    """

    sends: bool = True
    personalized: bool = False
    personal_differs: bool = False

    def __init__(self, federation: Federation) -> None:
        self.fed = federation
        self.config = federation.config
        self.method = self.config.personalization.method
        self.settings = self.config.personalization

    # --- construction --------------------------------------------------------------------------------
    def make_agent(self, cid: int, spec: EnvSpec, env_fn: Callable[[], Any], agent_cfg: Any) -> Agent:
        """Client ``cid``'s agent, built by the executor (algorithms may add slots or extend the networks)."""
        return self.fed.executor.make_agent(cid, spec, env_fn, agent_cfg, derive_seed(self.config.seed, "agent", cid))

    def initial_global(self, specs: list[EnvSpec], agent_cfg: Any) -> np.ndarray:
        """The first server state, drawn from its own stream."""
        from securefrl.agents import make_agent

        init_agent = make_agent(self.config.agent.name, specs[0].make, agent_cfg,
                                seed=derive_seed(self.config.seed, "global-init"))
        return init_agent.get_flat()

    def update_dim(self) -> int:
        """Length of a client's update, what the update pipeline sees."""
        return int(self.fed.global_params.shape[0])

    def protocol_dim(self) -> int:
        """Length of the vector a client protects."""
        return self.fed.dim

    # --- what a client holds ---------------------------------------------------------------------------
    def client_model(self, client: Client) -> np.ndarray:
        """The model ``client`` holds between rounds (and is evaluated with as ``return_global``)."""
        return self.fed.global_params

    def personal_model(self, client: Client) -> np.ndarray:
        """The flat model ``client`` would deploy in its own environment."""
        return self.client_model(client)

    # --- one round ---------------------------------------------------------------------------------
    def select(self, sampled: list[int], round_id: int) -> dict[int, dict[str, Any]]:
        """Client-side choices before training (IFCA's cluster selection); extra row columns per client."""
        return {}

    def train_tasks(self, client: Client, round_id: int) -> list[TrainTask]:
        """The tasks ``client`` runs this round."""
        return [TrainTask(client.client_id, round_id, self.config.federation.local_steps,
                          train_seed(self.config.seed, round_id, client.client_id), params=self.fed.global_params)]

    def update(self, client: Client, round_id: int, results: list[TrainResult]) -> tuple[np.ndarray, dict[str, Any]]:
        """The client's update vector (before the pipeline) and its row statistics, from its task results."""
        res = results[0]
        delta = res.params.astype(np.float64) - self.fed.global_params.astype(np.float64)
        return delta, {**train_stats(res), **res.info}

    def encode(self, client_id: int, update: np.ndarray) -> np.ndarray:
        """Client side, after the pipeline: the vector handed to ``protocol.protect``."""
        return update

    def apply_mean(self, mean: np.ndarray) -> np.ndarray:
        """The next server state from the opened mean update: the server optimizer's step."""
        return self.fed.server_opt.step(self.fed.global_params, mean)

    def before_eval(self, round_id: int) -> None:
        """Client-side work before the end-of-round evaluation (clients choosing a cluster)."""

    def eval_tasks(self, round_id: int) -> list[EvalTask]:
        """The end-of-round evaluation: every client with the model it holds."""
        return [EvalTask(c.client_id, round_id, "global", self.client_model(c)) for c in self.fed.clients]

    def client_extras(self, client: Client) -> dict[str, Any]:
        """Extra per-client columns of the round rows."""
        return {}

    def summary_extras(self) -> dict[str, Any]:
        """Extra round-summary entries."""
        return {}

    # --- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class FedAvg(ClientAlgorithm):
    """FedAvg (McMahan et al. 2017): every sampled client trains the global model and sends its delta."""


def train_stats(result: TrainResult) -> dict[str, float]:
    """A ``learn`` result as row columns (``train_`` prefix)."""
    return {"train_" + k: float(v) for k, v in result.stats.items()}
