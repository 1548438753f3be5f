"""Group clients by environment type (Nadiger et al. 2019, "Federated Reinforcement Learning for Fast
Personalization"): one model per group, averaged over that group's clients only.

A client's group comes either from an explicit list or from binning one of its own physics
parameters: the parameter's range at the configured heterogeneity is cut into equal bins, so the
bin edges are public (a function of the config) and each client computes its own group from its own
environment, without telling anyone its physics. Clients then aggregate through the k-slot
encoding of :mod:`securefrl.personalization.slots`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from securefrl.config import ExperimentConfig
from securefrl.envs import EnvSpec, resolve_env
from securefrl.errors import ConfigError


def bin_edges(config: ExperimentConfig) -> np.ndarray:
    """Edges of ``group_bins`` equal bins over ``group_by``'s range at ``env.heterogeneity``."""
    p = config.personalization
    family = resolve_env(config.env.name, field="env.name")
    if family is None:
        raise ConfigError("personalization.group_by", "binning needs an environment family; give groups instead")
    param = family.param(p.group_by, "personalization.group_by")
    lo, hi = config.env.ranges.get(p.group_by, (param.low, param.high))
    h = config.env.heterogeneity
    lo_h, hi_h = (1.0 - h) * param.default + h * lo, (1.0 - h) * param.default + h * hi
    return np.linspace(lo_h, hi_h, p.group_bins + 1)


def assign_groups(config: ExperimentConfig, specs: Sequence[EnvSpec]) -> list[int]:
    """Each client's group: ``personalization.groups`` or the bin of its ``group_by`` value.

    With a degenerate range (heterogeneity 0, or the parameter fixed by an override) every client
    falls into group 0.
    """
    p = config.personalization
    if p.groups:
        return [int(g) for g in p.groups]
    edges = bin_edges(config)
    out = []
    for spec in specs:
        value = spec.params.get(p.group_by)
        if value is None or edges[-1] <= edges[0]:
            out.append(0)
            continue
        out.append(int(np.clip(np.searchsorted(edges[1:-1], value, side="right"), 0, p.group_bins - 1)))
    return out


def n_groups(config: ExperimentConfig) -> int:
    """Number of group models the server keeps."""
    p = config.personalization
    return max(p.groups) + 1 if p.groups else p.group_bins
