"""Heterogeneous client environments: families with per-client physics, specs and seeded draws.

See :mod:`securefrl.envs.families` for the families and their ranges (physics families of
classic control; application families: :mod:`~securefrl.envs.edge_caching`,
:mod:`~securefrl.envs.mec_offloading`, :mod:`~securefrl.envs.ran_access`, batched in
:mod:`~securefrl.envs.batched`), and
:func:`draw_client_envs` for how a heterogeneity level becomes per-client physics.
"""

from securefrl.envs.families import (
    EDGE_CACHING_ID,
    FAMILIES,
    FAMILY_KINDS,
    MEC_OFFLOADING_ID,
    RAN_ACCESS_ID,
    EnvFamily,
    FamilyParam,
    family_names,
    get_family,
)
from securefrl.envs.rollout import policy_returns
from securefrl.envs.spec import EnvSpec, draw_client_envs, draw_config_envs, resolve_env

__all__ = [
    "EDGE_CACHING_ID",
    "FAMILIES",
    "FAMILY_KINDS",
    "MEC_OFFLOADING_ID",
    "RAN_ACCESS_ID",
    "EnvFamily",
    "EnvSpec",
    "FamilyParam",
    "draw_client_envs",
    "draw_config_envs",
    "family_names",
    "get_family",
    "policy_returns",
    "resolve_env",
]
