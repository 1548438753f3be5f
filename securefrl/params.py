"""Flat parameter vectors: one float32 vector per model, mapped to named tensors by a spec.

Federation, protocols and attacks all speak flat vectors; agents speak named tensors.
:class:`ParamSpec` is the exact, loss-free bridge between the two (in the spirit of
Stable-Baselines3's ``get_parameters`` / ``set_parameters``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ParamSpec:
    """Names and shapes of a model's trainable tensors, in a fixed order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes):
            raise ValueError("names and shapes must have the same length")
        if len(set(self.names)) != len(self.names):
            raise ValueError("parameter names must be unique")

    @classmethod
    def from_named(cls, named: Iterable[tuple[str, torch.Tensor]]) -> ParamSpec:
        items = list(named)
        return cls(tuple(n for n, _ in items), tuple(tuple(t.shape) for _, t in items))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def dim(self) -> int:
        """Length of the flat vector."""
        return sum(self.sizes)

    def slices(self) -> dict[str, slice]:
        """Where each named tensor lives in the flat vector."""
        out: dict[str, slice] = {}
        start = 0
        for name, size in zip(self.names, self.sizes, strict=True):
            out[name] = slice(start, start + size)
            start += size
        return out

    def mask(self, names: Sequence[str]) -> np.ndarray:
        """Boolean mask over the flat vector selecting the given tensors (e.g. a shared body)."""
        unknown = set(names) - set(self.names)
        if unknown:
            raise KeyError(f"unknown parameter names {sorted(unknown)}; known: {list(self.names)}")
        m = np.zeros(self.dim, dtype=bool)
        sl = self.slices()
        for n in names:
            m[sl[n]] = True
        return m

    def flatten(self, tensors: Sequence[torch.Tensor]) -> np.ndarray:
        """Concatenate tensors (in spec order) into one float32 vector."""
        if len(tensors) != len(self.names):
            raise ValueError(f"expected {len(self.names)} tensors, got {len(tensors)}")
        for name, shape, t in zip(self.names, self.shapes, tensors, strict=True):
            if tuple(t.shape) != shape:
                raise ValueError(f"tensor {name!r} has shape {tuple(t.shape)}, spec says {shape}")
        if not tensors:
            return np.zeros(0, dtype=np.float32)
        flat = torch.cat([t.detach().reshape(-1).to(torch.float32).cpu() for t in tensors])
        return flat.numpy().copy()

    def unflatten(self, flat: np.ndarray) -> list[torch.Tensor]:
        """Split a flat vector back into float32 tensors of the spec's shapes."""
        vec = np.asarray(flat)
        if vec.ndim != 1 or vec.shape[0] != self.dim:
            raise ValueError(f"flat vector must have shape ({self.dim},), got {vec.shape}")
        if not np.all(np.isfinite(vec)):
            raise ValueError("flat vector holds NaN or Inf")
        src = torch.from_numpy(vec.astype(np.float32, copy=True))
        out = []
        for (_, sl), shape in zip(self.slices().items(), self.shapes, strict=True):
            out.append(src[sl].reshape(shape).clone())
        return out


def module_spec(params: Iterable[tuple[str, torch.nn.Parameter]]) -> ParamSpec:
    """Spec of the trainable parameters among ``named_parameters()``."""
    return ParamSpec.from_named((n, p) for n, p in params if p.requires_grad)


def get_flat(params: Sequence[torch.Tensor], spec: ParamSpec) -> np.ndarray:
    return spec.flatten(list(params))


@torch.no_grad()
def set_flat(params: Sequence[torch.Tensor], spec: ParamSpec, flat: np.ndarray) -> None:
    """Copy a flat vector into existing tensors in place (exact float32 round trip)."""
    for p, value in zip(params, spec.unflatten(flat), strict=True):
        p.copy_(value)
