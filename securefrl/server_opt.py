"""Server optimizers applied to the aggregated (mean) client update.

The mean update is treated as a pseudo-gradient step direction (Reddi et al. 2021,
"Adaptive Federated Optimization"): FedAvg adds it scaled by the server learning rate,
FedAvgM adds a momentum buffer of it (Hsu et al. 2019), FedAdam an Adam-style normalised
step with adaptivity tau. State is explicit so it can be checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ServerOptimizer:
    """``step(global, mean_update) -> new global``; ``kind`` is fedavg, fedavgm or fedadam."""

    kind: str = "fedavg"
    lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-3
    state: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("fedavg", "fedavgm", "fedadam"):
            raise ValueError(f"unknown server optimizer {self.kind!r}; choose fedavg, fedavgm or fedadam")

    def step(self, params: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        delta = np.asarray(mean_update, dtype=np.float64)
        if self.kind == "fedavg":
            direction = delta
        elif self.kind == "fedavgm":
            v = self.state.get("momentum", np.zeros_like(delta))
            v = self.beta1 * v + delta
            self.state["momentum"] = v
            direction = v
        else:
            m = self.beta1 * self.state.get("m", np.zeros_like(delta)) + (1 - self.beta1) * delta
            v = self.beta2 * self.state.get("v", np.zeros_like(delta)) + (1 - self.beta2) * delta**2
            self.state["m"], self.state["v"] = m, v
            direction = m / (np.sqrt(v) + self.eps)
        return (params.astype(np.float64) + self.lr * direction).astype(np.float32)
