"""Which tensors stay on a client: personal heads, environment embeddings, and freezing for FedRep.

* :func:`head_parameter_names` picks the last layers of every network (FedPer, Arivazhagan et al. 2019,
  "Federated Learning with Personalization Layers"; FedRep, Collins et al. 2021, "Exploiting Shared
  Representations for Personalized Federated Learning"): the body is shared, the head personal.
* :class:`EnvEmbeddingInput` / :func:`attach_env_embedding` give a network a per-client embedding
  vector concatenated to its observation input (Jin et al. 2022, "Federated Reinforcement Learning
  with Environment Heterogeneity", AISTATS): the network is shared and learns how the embedding
  changes the dynamics; each client's embedding stays local and identifies its environment.
* :func:`frozen` switches gradients off for some tensors during a phase of local training (FedRep
  trains the head with the body frozen, then the body with the head frozen).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from securefrl.agents.base import Agent, frozen
from securefrl.errors import ConfigError

EMBEDDING_SUFFIX = ".embedding"
"""Federated-parameter names ending with this are personal environment embeddings."""


def _layer_of(name: str) -> tuple[str, str] | None:
    """``("actor", "actor.4")`` for ``"actor.4.weight"``; None for names without a layer part."""
    parts = name.split(".")
    if len(parts) < 3:
        return None
    return parts[0], ".".join(parts[:-1])


def head_parameter_names(names: Sequence[str], head_layers: int) -> list[str]:
    """Names of the tensors in the last ``head_layers`` layers of every network.

    Names follow ``<network>.<layer>.<tensor>`` (``actor.4.weight``, ``q.2.bias``); a network is
    the first component, a layer everything but the last. Tensors without a layer part are shared.
    At least one layer of every network must remain shared, otherwise nothing would be federated.
    """
    layers: dict[str, list[str]] = {}
    for n in names:
        where = _layer_of(n)
        if where is None:
            continue
        net, layer = where
        if layer not in layers.setdefault(net, []):
            layers[net].append(layer)
    heads: set[str] = set()
    for net, ls in layers.items():
        if head_layers >= len(ls):
            raise ConfigError("personalization.head_layers", f"network {net!r} has {len(ls)} layers; at most "
                              f"{len(ls) - 1} can stay personal so that a body is shared")
        heads.update(ls[len(ls) - head_layers:])
    return [n for n in names if (w := _layer_of(n)) is not None and w[1] in heads]


def embedding_parameter_names(names: Sequence[str]) -> list[str]:
    """Names of the personal environment-embedding vectors among a model's tensors."""
    return [n for n in names if n.endswith(EMBEDDING_SUFFIX)]


class EnvEmbeddingInput(nn.Module):
    """``net`` with a learned environment embedding concatenated to its observation input.

    The first layer computes ``W [obs; scale * e] + b = W_obs obs + b + W_e (scale * e)``, which is
    what this module evaluates without materialising the concatenation (one extra matrix-vector product
    per forward, shared by the batch). ``e`` (``embedding``) is the client's; ``W_e``
    (``embed_weight``) belongs to the shared network. ``e`` starts at zero, so every client starts
    from the same function; its gradient ``scale * W_e^T dL/dh`` is non-zero from the first step.
    Under Adam a parameter moves about ``lr`` per step whatever its gradient scale, so ``scale``
    makes the network's input ``scale * e`` move ``scale`` times faster than the weights.
    """

    def __init__(self, net: nn.Sequential, dim: int, scale: float, generator: torch.Generator) -> None:
        super().__init__()
        first = net[0]
        if not isinstance(first, nn.Linear):
            raise ConfigError("personalization.method", f"embedding needs a network starting with a Linear layer, "
                              f"got {type(first).__name__}")
        self.net = net
        self.scale = float(scale)
        self.embedding = nn.Parameter(torch.zeros(dim))
        bound = 1.0 / float(np.sqrt(first.in_features + dim))
        weight = torch.empty(first.out_features, dim).uniform_(-bound, bound, generator=generator)
        self.embed_weight = nn.Parameter(weight)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.net[0](obs) + F.linear(self.scale * self.embedding, self.embed_weight)
        for layer in list(self.net)[1:]:
            x = layer(x)
        return x


def attach_env_embedding(agent: Agent, dim: int, scale: float, generator: torch.Generator) -> Agent:
    """Give every network of ``agent`` its own environment embedding (in place; returns ``agent``).

    The agent does it (:meth:`~securefrl.agents.base.Agent.attach_env_embedding`): a per-client agent wraps its
    networks (:func:`embed_networks`), a vectorized client's slot switches its population's layout.
    """
    if "embedding" not in agent.capabilities:
        raise ConfigError("personalization.method", f"agent {agent.name!r} does not declare the embedding capability")
    agent.attach_env_embedding(dim, scale, generator)
    return agent


def embed_networks(agent: Agent, dim: int, scale: float, generator: torch.Generator) -> None:
    """Wrap every network of ``agent`` in :class:`EnvEmbeddingInput` (in place).

    DQN's Q-network and its target get one; PPO's actor and critic are separate networks here, so
    each gets its own vector (one shared vector would appear twice among the federated tensors and
    couple two otherwise independent networks). The new tensors join the agent's optimizer as an
    extra parameter group, so learning-rate schedules and gradient clipping cover them.
    """
    modules = []
    for name, net in agent.networks().items():  # in the agent's fixed order: each draws its embedding in turn
        wrapped = EnvEmbeddingInput(net, dim, scale, generator)  # type: ignore[arg-type]  # the agents' MLPs
        agent.replace_network(name, wrapped)
        modules.append(wrapped)
    agent.optimizer.add_param_group({"params": [p for m in modules for p in (m.embedding, m.embed_weight)]})


__all__ = ["EnvEmbeddingInput", "attach_env_embedding", "embed_networks", "embedding_parameter_names", "frozen",
           "head_parameter_names"]
