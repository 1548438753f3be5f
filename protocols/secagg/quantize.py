"""Fixed-point encoding of weighted updates into Z_{2^b}, the input space of SecAgg masking.

Masking works over integers modulo 2^b (Bonawitz et al. 2017, CCS, §3), so each client clips its
update, multiplies by its weight and rounds onto a uniform grid of ``levels`` points over
``[-clip, clip] * max_weight``; when weights travel (``public_weights=False``) the weight rides along
in one extra coordinate on a grid over ``[0, max_weight]``; with public weights (the default) every
weight is 1 and nothing is sent for it. Grid indices are non-negative, so the server's modular sum of ``n`` vectors is
the exact integer sum (the overflow check in :class:`SecAggParams` guarantees it) and decoding only
needs the number of summed clients to undo the offset.

Rounding is to nearest (error at most half a step per client) unless a seeded
:class:`numpy.random.Generator` is given, which selects unbiased stochastic rounding (error below one
step, zero in expectation). That choice is not a privacy mechanism, so a seeded generator is fine.
"""

from __future__ import annotations

import numpy as np

from protocols.secagg.params import SecAggParams


class Quantizer:
    """Encode ``(update, weight)`` as grid indices and decode sums of them."""

    def __init__(self, params: SecAggParams) -> None:
        self.params = params
        self.bound = float(params.clip) * float(params.max_weight)
        self.value_step = 2.0 * self.bound / (params.levels - 1)
        self.weight_step = float(params.max_weight) / (params.levels - 1)

    def encode(self, update: np.ndarray, weight: float, rng: np.random.Generator | None = None) -> np.ndarray:
        """Clip ``update``, scale by ``weight`` and return ``dim + 1`` grid indices in the modulus dtype."""
        p = self.params
        vec = np.asarray(update, dtype=np.float64).reshape(-1)
        if vec.shape[0] != p.dim:
            raise ValueError(f"update has {vec.shape[0]} values, protocol expects {p.dim}")
        if not np.all(np.isfinite(vec)):
            raise ValueError("update holds NaN or Inf values")
        weight = float(weight)
        if p.public_weights and weight != 1.0:
            raise ValueError(f"weights are public (every client's is 1), got {weight}; build the protocol with "
                             "public_weights=False, min_weight and max_weight to send weights")
        if not (np.isfinite(weight) and 0 < weight <= p.max_weight):
            raise ValueError(
                f"weight {weight} must lie in (0, max_weight={p.max_weight}]; raise the protocol's max_weight "
                f"(e.g. to the local step count when weighting by samples)"
            )
        scaled = np.empty(p.vector_length, dtype=np.float64)
        np.clip(vec, -p.clip, p.clip, out=scaled[: p.dim])
        scaled[: p.dim] *= weight
        scaled[: p.dim] += self.bound
        scaled[: p.dim] /= self.value_step
        if not p.public_weights:
            scaled[p.dim] = weight / self.weight_step
        if rng is None:
            np.rint(scaled, out=scaled)
        else:
            scaled += rng.random(p.vector_length)
            np.floor(scaled, out=scaled)
        np.clip(scaled, 0, p.levels - 1, out=scaled)
        return scaled.astype(p.dtype)

    def decode(self, total: np.ndarray, count: int) -> tuple[np.ndarray, float]:
        """The float sum of ``weight * update`` over ``count`` clients, and their total weight."""
        p = self.params
        ints = np.asarray(total).astype(np.float64)
        values = ints[: p.dim] * self.value_step - count * self.bound
        if p.public_weights:
            return values, float(count)
        return values, float(ints[p.dim] * self.weight_step)

    def error_bound(self, count: int, stochastic: bool = False) -> tuple[float, float]:
        """Worst-case absolute rounding error of a decoded sum over ``count`` clients: (values, weight)."""
        per_client = 1.0 if stochastic else 0.5
        weight_err = 0.0 if self.params.public_weights else count * per_client * self.weight_step
        return count * per_client * self.value_step, weight_err
