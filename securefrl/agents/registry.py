"""The agents by name (:data:`AGENTS`), importable without torch.

Each entry is a lazily imported :class:`~securefrl.agents.base.Agent` class with metadata read by the
configuration layer without importing it:

- ``config``: ``"module:Class"`` of the hyperparameter dataclass ``agent.params`` is validated against;
- ``capabilities``: what the agent implements, checked by :mod:`securefrl.compat` —
  ``proximal`` (FedProx / Ditto term in every gradient step), ``freeze`` (layers can be frozen: FedRep),
  ``embedding`` (networks take a personal environment embedding), ``dpsgd`` (record-level DP-SGD),
  ``batched`` (a batched population implementation exists for the vectorized executor),
  ``discrete`` / ``continuous`` (action spaces), ``actor_critic`` (policy logits + state values, PPO's loss) /
  ``q_learning`` (action values + epsilon-greedy, a TD loss): what inference attacks read
  (:class:`~securefrl.agents.base.Agent`'s ``policy_logits`` / ``state_values`` / ``q_values``), ``gradient``
  (the minibatch-gradient methods of ``federation.update = "gradient"``, :mod:`securefrl.gradient`), ``policy``
  (a stochastic discrete actor whose episodes FedPG-BR's estimator samples, :mod:`securefrl.fedpg`),
  ``off_policy`` (trains from a replay buffer in phases on a schedule of its own environment-step count, so
  gradient-mode clients stay in lock step only if all of them are in every round).

Third parties register through the ``securefrl.agents`` entry-point group, or in code:
``AGENTS.register("mine", "pkg.mod:MyAgent", config="pkg.mod:MyConfig", capabilities=frozenset())``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from securefrl.configtools import from_dict
from securefrl.errors import ConfigError
from securefrl.registry import Registry, load_target

if TYPE_CHECKING:
    from securefrl.agents.base import Agent, EnvFn

AGENTS: Registry[type[Agent]] = Registry("agent", "agent.name", group="securefrl.agents")
"""Agent classes by name, with their config dataclass and declared capabilities as metadata."""
AGENTS.register("dqn", "securefrl.agents.dqn:DQNAgent", config="securefrl.agents.configs:DQNConfig",
                capabilities=frozenset({"proximal", "freeze", "embedding", "dpsgd", "discrete", "q_learning",
                                        "gradient", "off_policy"}))
AGENTS.register("ppo", "securefrl.agents.ppo:PPOAgent", config="securefrl.agents.configs:PPOConfig",
                capabilities=frozenset({"proximal", "freeze", "embedding", "dpsgd", "batched", "discrete",
                                        "actor_critic", "gradient", "policy"}))
AGENTS.register("sac", "securefrl.agents.sac:SACAgent", config="securefrl.agents.configs:SACConfig",
                capabilities=frozenset({"continuous", "gradient", "off_policy"}))


def agent_config_class(name: str) -> type:
    """The hyperparameter dataclass of agent ``name`` (without importing the agent itself)."""
    target = AGENTS.meta(name).get("config")
    if target is None:  # registered without metadata: the class says it
        return AGENTS.get(name).config_class  # type: ignore[attr-defined]
    return load_target(target) if isinstance(target, str) else target


def agent_capabilities(name: str) -> frozenset[str]:
    """What agent ``name`` declares it implements (see the module docstring)."""
    caps: Any = AGENTS.meta(name).get("capabilities")
    if caps is None:
        caps = getattr(AGENTS.get(name), "capabilities", frozenset())
    return frozenset(caps)


class _ConfigClasses(Mapping[str, type]):
    """Read-only view: agent name -> its config dataclass (what :data:`AGENT_CONFIGS` was as a dict)."""

    def __getitem__(self, name: str) -> type:
        if name not in AGENTS:
            raise KeyError(name)
        return agent_config_class(name)

    def __iter__(self) -> Iterator[str]:
        return iter(AGENTS.names())

    def __len__(self) -> int:
        return len(AGENTS)


AGENT_CONFIGS: Mapping[str, type] = _ConfigClasses()
"""Config dataclass of each registered agent (a view of :data:`AGENTS`)."""


def make_agent(name: str, env_fn: EnvFn, config: Any = None, seed: int = 0) -> Agent:
    """Build agent ``name`` on ``env_fn`` from a config dataclass, a plain dict of overrides, or None (defaults)."""
    AGENTS.check(name)
    cfg_cls = agent_config_class(name)
    if config is None:
        cfg = cfg_cls()
    elif isinstance(config, Mapping):
        cfg = from_dict(cfg_cls, config, "agent.params")
    elif isinstance(config, cfg_cls):
        cfg = config
    else:
        raise ConfigError("agent.params", f"{name} takes a {cfg_cls.__name__} or a dict, got {type(config).__name__}")
    return AGENTS.get(name)(env_fn, cfg, seed=seed)  # type: ignore[call-arg]
