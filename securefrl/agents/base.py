"""The agent interface the federation is written against.

An agent owns its environment(s), networks, optimizers and (for off-policy methods) replay
buffer. The federation only needs to: read and write the trainable parameters as one flat
float32 vector, train for a budget of environment steps, evaluate, reseed at the start of a
round, and checkpoint everything needed to continue exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from securefrl.errors import ConfigError
from securefrl.params import ParamSpec, set_flat

EnvFn = Callable[[], gym.Env]


@contextmanager
def frozen(agent: Agent, names: Sequence[str]) -> Iterator[None]:
    """Within the block, the named federated tensors get no gradient (so the optimizer skips them)."""
    params = dict(agent.federated_parameters())
    saved = {n: params[n].requires_grad for n in names}
    try:
        for n in names:
            params[n].requires_grad_(False)
        yield
    finally:
        for n, flag in saved.items():
            params[n].requires_grad_(flag)


class Agent(ABC):
    """Base class of DQN, PPO and SAC agents.

    Subclasses implement :meth:`federated_parameters` (the tensors that travel), :meth:`learn`,
    :meth:`act` and :meth:`reseed`, and declare what a checkpoint holds (:attr:`checkpointed`,
    :attr:`counters`); :meth:`state_dict` / :meth:`load_state_dict` are shared.
    """

    name: str = "abstract"
    capabilities: ClassVar[frozenset[str]] = frozenset()
    """What the agent implements (see :mod:`securefrl.agents.registry`); the registry entry declares the same."""
    supports_proximal: bool = False
    """True if every gradient step of :meth:`learn` adds :meth:`proximal_loss` (DQN and PPO)."""
    _proximal: tuple[float, list[torch.Tensor]] | None = None
    config: Any
    """The agent's hyperparameter dataclass (the registry entry's ``config``)."""
    optimizer: torch.optim.Optimizer
    """The optimizer of the local training steps (agents with networks; personalization adds parameter groups)."""
    env_embedding: tuple[int, float] | None = None
    """``(dim, scale)`` of the environment-embedding input the networks got (:meth:`attach_env_embedding`), or None."""
    dpsgd: Any = None
    """Record-level DP-SGD engine (:class:`securefrl.agents.dp.RecordDPSGD`) once enabled, else None."""

    @abstractmethod
    def federated_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Named trainable tensors, in a fixed order, that make up the flat vector."""

    @abstractmethod
    def learn(self, env_steps: int) -> dict[str, float]:
        """Train for ``env_steps`` environment steps (summed over vectorized envs); return stats."""

    @abstractmethod
    def act(self, obs: np.ndarray, deterministic: bool = True) -> Any:
        """Action for a single (unbatched) observation."""

    @abstractmethod
    def reseed(self, seed: int) -> None:
        """Re-derive every RNG stream (actions, minibatches, noise) from ``seed``; environments keep their episodes.

        Agents reset their environments once, when built; episodes then continue across ``learn`` calls and
        federated rounds, and :meth:`state_dict` carries their state so a checkpoint continues them exactly.
        """

    # --- checkpoints: one mechanism for every agent, driven by what it declares ----------------
    checkpointed: ClassVar[tuple[str, ...]] = ()
    """Attributes :meth:`state_dict` saves under their own names, in order: networks, target networks,
    optimizers, replay buffers (anything with ``state_dict``/``load_state_dict``) and bare tensors (e.g. a
    learned temperature). The action/minibatch streams (``streams``), the environment pool (``pool``) and
    the record-level DP-SGD engine (``dpsgd``) are saved by every agent that has them."""
    counters: ClassVar[dict[str, str]] = {"num_timesteps": "num_timesteps", "num_updates": "num_updates"}
    """Checkpoint key -> integer attribute (step and update counters the schedules read)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly (nets, optimizers, buffers, counters, streams, envs).

        Values are tensors, numpy arrays, numbers, strings or nested dicts/lists of them, so a
        checkpoint loads with ``torch.load(weights_only=True)``. Built from :attr:`checkpointed` and
        :attr:`counters`; an agent declares what it holds rather than writing its own.
        """
        from securefrl.agents.common import config_state

        state: dict[str, Any] = {"algo": self.name, "config": config_state(self.config)}
        for key in self.checkpointed:
            part = getattr(self, key)
            state[key] = part.detach().clone() if isinstance(part, torch.Tensor) else part.state_dict()
        state["counters"] = {key: int(getattr(self, attr)) for key, attr in self.counters.items()}
        if hasattr(self, "streams"):
            state["rng"] = self.streams.state_dict()
        if hasattr(self, "pool"):
            state["envs"] = self.pool.state_dict()
        state["dpsgd"] = self.dpsgd.state_dict() if self.dpsgd is not None else None
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; refuses another agent's or another config's checkpoint."""
        from securefrl.agents.common import check_checkpoint, load_envs

        check_checkpoint(state, self.name, self.config)
        if (self.dpsgd is None) != (state.get("dpsgd") is None):
            raise ValueError("checkpoint and agent differ in record-level DP-SGD (on in one, off in the other)")
        missing = [k for k in (*self.checkpointed, "counters") if k not in state]
        if missing:
            raise ValueError(f"checkpoint lacks {missing}; it was not written by this agent's state_dict")
        if self.dpsgd is not None:
            self.dpsgd.load_state_dict(state["dpsgd"])
        for key in self.checkpointed:
            part = getattr(self, key)
            if isinstance(part, torch.Tensor):
                with torch.no_grad():
                    part.copy_(state[key])
            else:
                part.load_state_dict(state[key])
        for key, attr in self.counters.items():
            setattr(self, attr, int(state["counters"][key]))
        if hasattr(self, "streams"):
            self.streams.load_state_dict(state["rng"])
        if hasattr(self, "pool"):
            load_envs(self.pool, state)

    def networks(self) -> dict[str, torch.nn.Module]:
        """Attribute name -> trained network, in a fixed order (what personalization extends, DP-SGD wraps)."""
        raise ConfigError("agent.name", f"agent {self.name!r} does not expose its networks")

    def replace_network(self, name: str, module: torch.nn.Module) -> None:
        """Swap network ``name`` for ``module`` (e.g. one with an environment-embedding input)."""
        if name not in self.networks():
            raise ConfigError("agent.name", f"agent {self.name!r} has no network {name!r}")
        setattr(self, name, module)

    def attach_env_embedding(self, dim: int, scale: float, generator: torch.Generator) -> None:
        """Give every network a personal environment-embedding input (Jin et al. 2022; personalization ``embedding``).

        Called through :func:`securefrl.personalization.parts.attach_env_embedding`, which checks the capability.
        Executors that rebuild an agent elsewhere (Ray) read :attr:`env_embedding` to rebuild the same layout.
        """
        from securefrl.personalization.parts import embed_networks

        embed_networks(self, dim, scale, generator)
        self.env_embedding = (int(dim), float(scale))

    def dp_networks(self) -> dict[str, torch.nn.Module]:
        """Attribute name -> network trained on data, for record-level DP-SGD (:mod:`securefrl.agents.dp`)."""
        if "dpsgd" not in self.capabilities:
            raise ConfigError("privacy.dpsgd", f"agent {self.name!r} does not implement record-level DP-SGD")
        return self.networks()

    # --- what attacks and analyses read, declared by capability ---------------------------
    # ``actor_critic``: a softmax policy over discrete actions and a state-value critic
    # (:meth:`policy_logits`, :meth:`state_values`), trained by PPO's loss (``compute_loss`` on a PPO
    # minibatch; ``config`` carries ``gamma``, ``gae_lambda``, ``norm_adv``, ``ent_coef``, ``vf_coef``).
    # ``q_learning``: action values (:meth:`q_values`), an epsilon-greedy behaviour policy
    # (:meth:`exploration_rate`), trained by a TD loss (``compute_loss`` on a replay batch; ``config.gamma``).
    def policy_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """Action logits ``(n, actions)`` of the policy for a batch of observations (capability ``actor_critic``)."""
        raise ConfigError("agent.name", f"agent {self.name!r} does not declare actor_critic (no policy logits)")

    def state_values(self, obs: torch.Tensor) -> torch.Tensor:
        """Critic values ``(n,)`` for a batch of observations (capability ``actor_critic``)."""
        raise ConfigError("agent.name", f"agent {self.name!r} does not declare actor_critic (no state values)")

    def q_values(self, obs: torch.Tensor) -> torch.Tensor:
        """Action values ``(n, actions)`` for a batch of observations (capability ``q_learning``)."""
        raise ConfigError("agent.name", f"agent {self.name!r} does not declare q_learning (no action values)")

    def exploration_rate(self) -> float:
        """Probability of a uniformly random action in the behaviour policy now (``q_learning``: epsilon)."""
        return 0.0

    def after_set_parameters(self) -> None:  # noqa: B027
        """Hook run after new federated parameters are loaded (e.g. sync a target network)."""

    # --- proximal term (FedProx, Ditto) ---------------------------------------------------
    def set_proximal(self, reference_flat: np.ndarray | None, mu: float = 0.0) -> None:
        """Add ``mu/2 ||w - reference||^2`` over the federated parameters to every local gradient step.

        FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks") adds it to local
        training with the round's global model as reference, so heterogeneous clients drift less; Ditto
        (Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through Personalization") trains each
        client's personal model with it, ``lambda`` pulling the personal model towards the global one.
        ``reference_flat=None`` or ``mu=0`` removes the term.
        """
        if reference_flat is None or mu == 0:
            self._proximal = None
            return
        if not self.supports_proximal:
            raise ConfigError("personalization.method", f"agent {self.name!r} does not add a proximal term to its "
                              "gradient steps; fedprox and ditto need agent dqn or ppo")
        if not (np.isfinite(mu) and mu > 0):
            raise ConfigError("mu", f"the proximal coefficient must be a positive finite number, got {mu!r}")
        self._proximal = (float(mu), self.parameter_spec().unflatten(np.asarray(reference_flat, dtype=np.float32)))

    def proximal_loss(self) -> torch.Tensor | None:
        """``mu/2 ||w - reference||^2`` for the current parameters, or None when no term is set."""
        if self._proximal is None:
            return None
        mu, reference = self._proximal
        params = [p for _, p in self.federated_parameters()]
        total = sum(((p - r) ** 2).sum() for p, r in zip(params, reference, strict=True))
        return 0.5 * mu * total  # type: ignore[return-value]

    # --- flat vector API, shared by every agent -------------------------------------------
    def parameter_spec(self) -> ParamSpec:
        return ParamSpec.from_named(self.federated_parameters())

    def get_flat(self) -> np.ndarray:
        return self.parameter_spec().flatten([p for _, p in self.federated_parameters()])

    def set_flat(self, flat: np.ndarray) -> None:
        set_flat([p for _, p in self.federated_parameters()], self.parameter_spec(), flat)
        self.after_set_parameters()

    def evaluate(self, env: gym.Env, episodes: int, seed: int) -> list[float]:
        """Greedy returns over ``episodes`` episodes of ``env`` (seeded, reproducible)."""
        returns = []
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            done, total = False, 0.0
            while not done:
                obs, reward, terminated, truncated, _ = env.step(self.act(obs, deterministic=True))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        return returns
