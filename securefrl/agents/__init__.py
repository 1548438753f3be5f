"""RL agents behind one interface (:class:`~securefrl.agents.base.Agent`) and a name registry.

``dqn`` (Mnih et al. 2015) and ``ppo`` (Schulman et al. 2017) handle discrete actions; ``sac``
(Haarnoja et al. 2018) handles continuous control. Configs and the CLI name agents by these keys
(:data:`AGENTS`, :mod:`securefrl.agents.registry`). Importing this package does not import torch:
the agent classes load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from securefrl.agents.configs import DQNConfig, PPOConfig, SACConfig
from securefrl.agents.registry import AGENT_CONFIGS, AGENTS, agent_capabilities, agent_config_class, make_agent

_LAZY = {"Agent": "securefrl.agents.base", "EnvFn": "securefrl.agents.base", "DQNAgent": "securefrl.agents.dqn",
         "PPOAgent": "securefrl.agents.ppo", "SACAgent": "securefrl.agents.sac"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "agent_capabilities",
    "agent_config_class",
    "make_agent",
]
