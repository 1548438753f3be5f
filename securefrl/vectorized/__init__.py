"""Vectorized multi-client simulation: many small clients trained as one batched computation.

- :mod:`~securefrl.vectorized.cartpole`: every client's CartPole copies stepped as one numpy
  computation with per-copy physics, bit-identical to gymnasium's ``CartPole-v1``
  (:mod:`~securefrl.vectorized.acrobot`: the same for ``Acrobot-v1``); the application
  families' batches are in :mod:`securefrl.envs.batched`, which also holds their common base
  (:class:`~securefrl.envs.batched.BatchedEnv`) and the lookup from a family to its batch.
- :mod:`~securefrl.vectorized.ppo`: every client's PPO networks as stacked tensors, one batched
  forward/backward, per-client Adam, clipping, schedules and random streams.
- :mod:`~securefrl.vectorized.executor`: the executor running a round's train and evaluation tasks
  over such a population (``federation.simulation = "vectorized"``), for every client algorithm: plain
  training, proximal terms, FedRep's frozen phases, environment-embedding networks and a second agent per
  client (one population per agent slot).
"""

from securefrl.vectorized.cartpole import CartPoleBatch, greedy_returns, physics_of
from securefrl.vectorized.executor import ClientSlot, VectorizedExecutor
from securefrl.vectorized.ppo import PPOPopulation, batched_mlp

__all__ = [
    "CartPoleBatch",
    "ClientSlot",
    "PPOPopulation",
    "VectorizedExecutor",
    "batched_mlp",
    "greedy_returns",
    "physics_of",
]
