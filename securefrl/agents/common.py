"""Agent plumbing shared by DQN, PPO and SAC: random streams, config checks, episode statistics."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from securefrl.errors import ConfigError


def check_seed(seed: int) -> int:
    """Seeds are non-negative integers (what SeedSequence accepts); refuse anything else up front."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError("seed", f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


class Streams:
    """Every random stream of an agent, derived from one integer seed.

    ``numpy`` drives exploration, replay sampling and minibatch shuffles; ``torch`` drives
    policy noise (SAC); ``env_seeds`` seed each environment copy at reset. Derivation goes
    through :class:`numpy.random.SeedSequence` so streams are independent.
    """

    def __init__(self, seed: int, n_envs: int) -> None:
        ss = np.random.SeedSequence(check_seed(seed))
        child_np, child_torch, child_env = ss.spawn(3)
        self.numpy = np.random.Generator(np.random.PCG64(child_np))
        self.torch = torch.Generator().manual_seed(int(child_torch.generate_state(1, dtype=np.uint64)[0] >> 1))
        self.env_seeds = [int(s) for s in child_env.generate_state(n_envs, dtype=np.uint32)]

    def state_dict(self) -> dict[str, Any]:
        return {"numpy": self.numpy.bit_generator.state, "torch": self.torch.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.numpy.bit_generator.state = state["numpy"]
        self.torch.set_state(state["torch"])


def init_generator(seed: int) -> torch.Generator:
    """Generator for weight initialisation only, separate from the training streams."""
    ss = np.random.SeedSequence([check_seed(seed), 0x5EED])
    return torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))


def obs_dim_of(space: gym.Space, agent: str) -> int:
    """Flat observation size; agents here take 1-D float vectors (classic control)."""
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ConfigError("env", f"{agent} needs a 1-D Box observation space, got {space}")
    return int(space.shape[0])


def episode_stats(finished: list[tuple[float, int]]) -> dict[str, float]:
    """Mean return / length of the episodes completed during a :meth:`learn` call (NaN if none)."""
    if not finished:
        return {"episodes": 0.0, "mean_return": float("nan"), "mean_length": float("nan")}
    rets = np.array([r for r, _ in finished])
    lens = np.array([n for _, n in finished])
    return {"episodes": float(len(finished)), "mean_return": float(rets.mean()), "mean_length": float(lens.mean())}


def config_state(config: Any) -> dict[str, Any]:
    """Config as plain values for a checkpoint (tuples become lists so JSON/YAML tools can read it)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def check_checkpoint(state: dict[str, Any], algo: str, config: Any) -> None:
    """Refuse a checkpoint of another algorithm or hyperparameters: continuing it would be a different run."""
    if state.get("algo") != algo:
        raise ValueError(f"checkpoint is for agent {state.get('algo')!r}, this agent is {algo!r}")
    mine = config_state(config)
    theirs = state.get("config", {})
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff:
        raise ValueError(f"checkpoint config differs from the agent's in {diff}; build the agent with the same config")


def load_envs(pool: Any, state: dict[str, Any]) -> None:
    """Restore the running episodes of ``pool`` from an agent checkpoint, refusing one written without them."""
    if state.get("envs") is None:
        raise ValueError("checkpoint has no environment state (written before environments persisted across "
                         "rounds); it cannot be continued exactly, start a new run")
    pool.load_state_dict(state["envs"])


# --- gradient mode (FedSGD / DD-PPO; securefrl.gradient) -----------------------------------------------
def _grad_tensors(agent: Any) -> tuple[list[torch.Tensor], Any]:
    """The agent's federated tensors and their spec, cached: gradient mode reads them twice per minibatch step.

    Loading a checkpoint or new parameters copies into the same tensors, so the cache stays valid; it is
    rebuilt if a network was replaced (personalization, which gradient mode refuses anyway).
    """
    named = agent.__dict__.get("_grad_cache")
    nets = tuple(id(m) for m in agent.networks().values())
    if named is None or named[0] != nets:
        params = [p for _, p in agent.federated_parameters()]
        named = (nets, params, agent.parameter_spec())
        agent._grad_cache = named
    return named[1], named[2]


def load_flat(agent: Any, flat: np.ndarray) -> None:
    """Load the server's flat parameters into ``agent``'s federated tensors, without ``after_set_parameters``.

    Gradient mode keeps server-side state (DQN's target network) on the server, so loading the parameters for
    one gradient must not trigger the delta mode's hook (which would resynchronise a local target).
    """
    from securefrl.params import set_flat

    params, spec = _grad_tensors(agent)
    set_flat(params, spec, flat)


def flat_gradient(agent: Any, loss: torch.Tensor, max_grad_norm: float) -> np.ndarray:
    """d loss / d federated parameters as one flat float32 vector, L2-clipped at ``max_grad_norm`` (0 = not).

    The clip is the agent's own global-norm clip of a local step (per client in gradient mode, so one client
    equals the single agent exactly); missing gradients (a tensor the loss does not reach) are zeros.
    """
    params, spec = _grad_tensors(agent)
    for p in params:
        p.grad = None
    loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    out = spec.flatten(grads)
    for p in params:
        p.grad = None
    return out


class OffPolicyGradient:
    """Gradient-mode collection of the off-policy agents (DQN, SAC): act with the server's parameters until a
    training phase is due (``learning_starts``, ``train_freq``), then queue its ``gradient_steps`` gradients,
    one server step each, at the agent's own ``lr`` (:mod:`securefrl.gradient`)."""

    config: Any
    _grad_left: int

    def _collect(self, env_steps: int) -> tuple[int, bool]:
        raise NotImplementedError  # the agent's own collection: (transitions, a training phase is due)

    def grad_collect(self, params: np.ndarray, env_steps: int) -> int:
        """Act with ``params`` until a training phase is due or ``env_steps`` transitions; queue its steps."""
        load_flat(self, params)
        done, due = self._collect(env_steps)
        self._grad_left = self.config.gradient_steps if due else 0
        return done

    def grad_pending(self) -> int:
        return int(getattr(self, "_grad_left", 0))

    def grad_lr(self) -> float:
        return float(self.config.lr)
