"""Plain MLPs and target-network updates shared by every agent.

Networks are ``nn.Sequential`` stacks of ``nn.Linear`` and element-wise activations only, so
Opacus' per-sample-gradient hooks (DP-SGD) can wrap them unchanged. Weights are initialised from
an explicit ``torch.Generator``, never from torch's global RNG.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from securefrl.errors import ConfigError

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int],
    generator: torch.Generator,
    activation: str = "relu",
    orthogonal: bool = False,
    out_gain: float = 1.0,
) -> nn.Sequential:
    """Build an MLP ``in_dim -> hidden... -> out_dim`` with seeded initialisation.

    ``orthogonal=True`` uses orthogonal weights (gain sqrt(2) in hidden layers, ``out_gain`` on
    the output) and zero biases, as recommended for PPO by Engstrom et al. (2020, "Implementation
    Matters in Deep RL"); otherwise torch's default ``nn.Linear`` scheme (Kaiming-uniform weights,
    uniform biases), drawn from ``generator``.
    """
    if activation not in _ACTIVATIONS:
        raise ConfigError("activation", f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
    dims = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        lin = nn.Linear(dims[i], dims[i + 1])
        last = i == len(dims) - 2
        with torch.no_grad():
            if orthogonal:
                nn.init.orthogonal_(lin.weight, gain=out_gain if last else float(np.sqrt(2.0)), generator=generator)
                lin.bias.zero_()
            else:
                nn.init.kaiming_uniform_(lin.weight, a=float(np.sqrt(5.0)), generator=generator)
                bound = 1.0 / float(np.sqrt(dims[i]))
                lin.bias.uniform_(-bound, bound, generator=generator)
        layers.append(lin)
        if not last:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


@torch.no_grad()
def hard_update(target: nn.Module, source: nn.Module) -> None:
    """Copy ``source`` into ``target`` (DQN target network, Mnih et al. 2015)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.copy_(s)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging ``target <- (1 - tau) target + tau source`` (Lillicrap et al. 2016)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s, tau)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy with gradients off, for target networks."""
    clone = copy.deepcopy(module)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone
