"""Vectorized multi-client simulation: many small clients trained as one batched computation.

- :mod:`~securefrl.vectorized.cartpole`: every client's CartPole copies stepped as one numpy
  computation with per-copy physics, bit-identical to gymnasium's ``CartPole-v1``.
- :mod:`~securefrl.vectorized.ppo`: every client's PPO networks as stacked tensors, one batched
  forward/backward, per-client Adam, clipping, schedules and random streams.
- :mod:`~securefrl.vectorized.federation`: the federation round loop over such a population
  (``federation.simulation = "vectorized"``).
"""

from securefrl.vectorized.cartpole import CartPoleBatch, greedy_returns, physics_of
from securefrl.vectorized.federation import ClientSlot, VectorizedFederation
from securefrl.vectorized.ppo import PPOPopulation, batched_mlp

__all__ = [
    "CartPoleBatch",
    "ClientSlot",
    "PPOPopulation",
    "VectorizedFederation",
    "batched_mlp",
    "greedy_returns",
    "physics_of",
]
