"""Server optimizers applied to the aggregated (mean) client update.

The mean update is treated as a pseudo-gradient step direction (Reddi et al. 2021,
"Adaptive Federated Optimization"): FedAvg adds it scaled by the server learning rate,
FedAvgM adds a momentum buffer of it (Hsu et al. 2019), FedAdam an Adam-style normalised
step with adaptivity tau. State is explicit so it can be checkpointed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from securefrl.registry import Registry

Direction = Callable[["ServerOptimizer", np.ndarray], np.ndarray]
"""``direction(optimizer, mean_update) -> step direction``; may read and write ``optimizer.state``."""

SERVER_OPTIMIZERS: Registry[Direction] = Registry("server optimizer", "federation.server_optimizer",
                                                  group="securefrl.server_optimizers")
"""Server step rules by name: each turns the mean update into the direction added with ``lr``."""


@SERVER_OPTIMIZERS.register("fedavg")
def _fedavg(opt: ServerOptimizer, delta: np.ndarray) -> np.ndarray:
    return delta


@SERVER_OPTIMIZERS.register("fedavgm")
def _fedavgm(opt: ServerOptimizer, delta: np.ndarray) -> np.ndarray:
    v = opt.beta1 * opt.state.get("momentum", np.zeros_like(delta)) + delta
    opt.state["momentum"] = v
    return v


@SERVER_OPTIMIZERS.register("fedadam")
def _fedadam(opt: ServerOptimizer, delta: np.ndarray) -> np.ndarray:
    m = opt.beta1 * opt.state.get("m", np.zeros_like(delta)) + (1 - opt.beta1) * delta
    v = opt.beta2 * opt.state.get("v", np.zeros_like(delta)) + (1 - opt.beta2) * delta**2
    opt.state["m"], opt.state["v"] = m, v
    return m / (np.sqrt(v) + opt.eps)


@dataclass
class ServerOptimizer:
    """``step(global, mean_update) -> new global``; ``kind`` names an entry of :data:`SERVER_OPTIMIZERS`."""

    kind: str = "fedavg"
    lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-3
    state: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._direction = SERVER_OPTIMIZERS.get(self.kind)

    def step(self, params: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        direction = self._direction(self, np.asarray(mean_update, dtype=np.float64))
        return (params.astype(np.float64) + self.lr * direction).astype(np.float32)
