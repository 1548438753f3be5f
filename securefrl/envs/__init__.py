"""Heterogeneous client environments: families with per-client physics, specs and seeded draws.

See :mod:`securefrl.envs.families` for the families and their ranges, and
:func:`draw_client_envs` for how a heterogeneity level becomes per-client physics.
"""

from securefrl.envs.families import FAMILIES, EnvFamily, FamilyParam, family_names, get_family
from securefrl.envs.spec import EnvSpec, draw_client_envs, resolve_env

__all__ = [
    "FAMILIES",
    "EnvFamily",
    "EnvSpec",
    "FamilyParam",
    "draw_client_envs",
    "family_names",
    "get_family",
    "resolve_env",
]
