"""Checks of a method's own ``[personalization]`` settings, run by :mod:`securefrl.compat`.

Each refusal names the field to change and what would work instead, at load time rather than
halfway through a run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securefrl.errors import ConfigError
from securefrl.protocol_factory import PROTOCOLS

if TYPE_CHECKING:
    from securefrl.config import ExperimentConfig

def check_personalization(config: ExperimentConfig) -> None:
    """Refuse a method's own settings that the rest of the config cannot honour.

    What the method needs from the agent and the executor, and whether DP, robust rules and attacks apply
    to what it sends, is declared in :data:`securefrl.axes.ALGORITHMS` and checked by :mod:`securefrl.compat`.
    """
    p = config.personalization
    fed = config.federation
    method = p.method
    if method in ("group", "ifca"):
        clip_param = PROTOCOLS.get(config.protocol.name).coordinate_clip_param
        if clip_param is not None and float(config.protocol.params.get(clip_param, 1.0)) < 1.0:
            raise ConfigError(f"protocol.params.{clip_param}", f"{method} sends a 1 in the chosen slot's count "
                              f"coordinate; {config.protocol.name} clips coordinates to [-{clip_param}, "
                              f"{clip_param}], so {clip_param} must be >= 1")
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
