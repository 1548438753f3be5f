"""RL agents behind one interface (:class:`~securefrl.agents.base.Agent`) and a name registry.

``dqn`` (Mnih et al. 2015) and ``ppo`` (Schulman et al. 2017) handle discrete actions; ``sac``
(Haarnoja et al. 2018) handles continuous control. Configs and the CLI name agents by these keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from securefrl.agents.base import Agent, EnvFn
from securefrl.agents.dqn import DQNAgent, DQNConfig
from securefrl.agents.ppo import PPOAgent, PPOConfig
from securefrl.agents.sac import SACAgent, SACConfig
from securefrl.configtools import from_dict
from securefrl.errors import ConfigError

AGENT_CONFIGS: dict[str, type] = {"dqn": DQNConfig, "ppo": PPOConfig, "sac": SACConfig}
"""Config dataclass of each registered agent."""

AGENTS: dict[str, type[Agent]] = {"dqn": DQNAgent, "ppo": PPOAgent, "sac": SACAgent}
"""Agent class of each registered name."""


def make_agent(name: str, env_fn: EnvFn, config: Any = None, seed: int = 0) -> Agent:
    """Build agent ``name`` on ``env_fn`` from a config dataclass, a plain dict of overrides, or None (defaults)."""
    if name not in AGENTS:
        raise ConfigError("agent.name", f"unknown agent {name!r}; choose one of {sorted(AGENTS)}")
    cfg_cls = AGENT_CONFIGS[name]
    if config is None:
        cfg = cfg_cls()
    elif isinstance(config, Mapping):
        cfg = from_dict(cfg_cls, config, "agent.params")
    elif isinstance(config, cfg_cls):
        cfg = config
    else:
        raise ConfigError("agent.params", f"{name} takes a {cfg_cls.__name__} or a dict, got {type(config).__name__}")
    return AGENTS[name](env_fn, cfg, seed=seed)


__all__ = [
    "AGENTS",
    "AGENT_CONFIGS",
    "Agent",
    "DQNAgent",
    "DQNConfig",
    "EnvFn",
    "PPOAgent",
    "PPOConfig",
    "SACAgent",
    "SACConfig",
    "make_agent",
]
