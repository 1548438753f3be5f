"""Client-side update pipeline: small composable transforms with explicit state and RNG.

Modelled on optax's ``GradientTransformation``: a transform is a pair of pure functions
``init(dim) -> state`` and ``update(vec, state, rng) -> (vec, state)``; :func:`chain`
composes them left to right. State lives outside the transform (one per client), so the
pipeline is reproducible and checkpointable, and randomness only ever comes from the
explicit ``numpy.random.Generator`` handed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from securefrl.errors import UpdateRejectedError

State = Any


@dataclass(frozen=True)
class UpdateTransform:
    """A named pair of ``init`` / ``update`` functions."""

    name: str
    init: Callable[[int], State]
    update: Callable[[np.ndarray, State, np.random.Generator], tuple[np.ndarray, State]]


def chain(*transforms: UpdateTransform) -> UpdateTransform:
    """Compose transforms; the state is the tuple of the parts' states."""

    def init(dim: int) -> State:
        return tuple(t.init(dim) for t in transforms)

    def update(vec: np.ndarray, state: State, rng: np.random.Generator) -> tuple[np.ndarray, State]:
        new_states = []
        for t, s in zip(transforms, state, strict=True):
            vec, s = t.update(vec, s, rng)
            new_states.append(s)
        return vec, tuple(new_states)

    return UpdateTransform("chain(" + ", ".join(t.name for t in transforms) + ")", init, update)


def identity() -> UpdateTransform:
    return UpdateTransform("identity", lambda dim: None, lambda v, s, rng: (v, s))


def check_finite(vec: np.ndarray) -> np.ndarray:
    """Refuse NaN / Inf before anything else touches the update (clipping NaN gives NaN)."""
    arr = np.asarray(vec, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise UpdateRejectedError(f"update holds {bad} NaN/Inf values of {arr.size}; it is not aggregated")
    return arr


def clip_by_l2_norm(max_norm: float) -> UpdateTransform:
    """Scale the update so that its L2 norm is at most ``max_norm`` (DP-FedAvg, McMahan et al. 2018)."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")

    def update(vec: np.ndarray, state: State, rng: np.random.Generator) -> tuple[np.ndarray, State]:
        arr = check_finite(vec)
        norm = float(np.linalg.norm(arr))
        if norm > max_norm:
            arr = arr * (max_norm / norm)
        return arr, state

    return UpdateTransform(f"clip({max_norm})", lambda dim: None, update)


def clipped_coordinates(update: np.ndarray, bound: float | None) -> int:
    """How many coordinates of ``update`` a protocol with per-coordinate range ``+-bound`` clips (None: none)."""
    return 0 if bound is None else int(np.count_nonzero(np.abs(update) > bound))
