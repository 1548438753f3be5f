"""Cross-section checks of a ``[personalization]`` config, run by :meth:`ExperimentConfig.validate`.

Each refusal names the field to change and what would work instead, at load time rather than
halfway through a run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securefrl.errors import ConfigError

if TYPE_CHECKING:
    from securefrl.config import ExperimentConfig

PROXIMAL_AGENTS = ("dqn", "ppo")
"""Agents whose gradient steps add :meth:`~securefrl.agents.base.Agent.proximal_loss`."""

EMBEDDING_AGENTS = ("dqn", "ppo")
"""Agents whose networks :func:`~securefrl.personalization.parts.attach_env_embedding` can extend."""


def check_personalization(config: ExperimentConfig) -> None:
    """Refuse personalization settings that the rest of the config cannot honour."""
    p = config.personalization
    fed = config.federation
    method = p.method
    if method == "none":
        return
    if fed.simulation != "loop":
        raise ConfigError("federation.simulation", f"personalization method {method!r} keeps per-client state that "
                          "the vectorized population does not model; use federation.simulation=loop")
    if fed.backend != "local":
        raise ConfigError("federation.backend", f"personalization method {method!r} runs in this process; use "
                          "federation.backend=local")
    if method in ("fedprox", "ditto", "fedrep") and config.agent.name not in PROXIMAL_AGENTS:
        raise ConfigError("personalization.method", f"{method} needs an agent with a proximal term and freezable "
                          f"layers ({', '.join(PROXIMAL_AGENTS)}), not {config.agent.name!r}")
    if method == "embedding" and config.agent.name not in EMBEDDING_AGENTS:
        raise ConfigError("personalization.method", f"embedding extends the networks of {', '.join(EMBEDDING_AGENTS)}"
                          f" only, not {config.agent.name!r}")
    if method == "local":
        if config.privacy.placement != "none":
            raise ConfigError("privacy.placement", "local-only clients send nothing, so there is nothing to make "
                              "differentially private; use placement=none")
        if config.attack.name != "none":
            raise ConfigError("attack.name", "local-only clients send nothing to poison; use attack.name=none")
    if method in ("group", "ifca"):
        if config.privacy.placement != "none":
            raise ConfigError("privacy.placement", f"{method} protects k slots per client whose noise calibration is "
                              "not implemented; use placement=none (or a non-clustered method with DP)")
        if fed.aggregator != "fedavg":
            raise ConfigError("federation.aggregator", f"{method} averages each cluster inside one protected sum; a "
                              "robust rule would see k-slot vectors, not updates. Use aggregator=fedavg")
        if config.protocol.name == "secagg" and float(config.protocol.params.get("clip", 1.0)) < 1.0:
            raise ConfigError("protocol.params.clip", f"{method} sends a 1 in the chosen slot's count coordinate; "
                              "SecAgg clips coordinates to [-clip, clip], so clip must be >= 1")
    if method == "relation":
        from securefrl.personalization.relation import check_relation

        check_relation(config)
    if method == "ifca" and p.n_clusters < 2:
        raise ConfigError("personalization.n_clusters", "ifca needs at least 2 cluster models (1 is plain FedAvg)")
    if method == "group":
        if p.groups:
            if len(p.groups) != fed.n_clients:
                raise ConfigError("personalization.groups", f"needs one group index per client ({fed.n_clients}), "
                                  f"got {len(p.groups)}")
        else:
            from securefrl.envs import resolve_env

            family = resolve_env(config.env.name, field="env.name")
            if family is None:
                raise ConfigError("personalization.group_by", f"binning a physics parameter needs an environment "
                                  f"family, not the plain id {config.env.name!r}; give personalization.groups")
            family.param(p.group_by, "personalization.group_by")
