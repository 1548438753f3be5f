"""Weight-slot amplification: one client cancels the others' weights so the opened mean explodes."""

from __future__ import annotations

from typing import Any

import numpy as np

from attacks.protocol import ProtocolAttackOutcome, register
from protocols.base import AggregateBoundsError, release
from protocols.secagg import SecAggProtocol

N, DIM, CLIP = 6, 16, 1.0


@register
class WeightAmplification:
    """A malicious client sends a weight that cancels everybody else's, so the mean is divided by ~0.

    Threat model: one corrupt client in a SecAgg round (the server honest-but-curious, or colluding: it
    does not matter). The weighted mean is ``sum(w_i x_i) / sum(w_i)`` and, when the weight travels in a
    masked slot, only its sender ever checks it: the corrupt client puts ``-(sum of the others)`` (mod the
    modulus) in its slot, the opened total weight is one grid step, and the mean is ~10^8 times the clip
    bound -- one client steers the global model anywhere.

    Defence (default): weights are public (every client's is 1, as DP and uniform FedAvg need), so no
    weight travels and the mean divides by the number of included clients; where weights must travel the
    opened total must lie in ``n_included * [min_weight, max_weight]``; and :func:`protocols.base.release`
    refuses an opened mean that is not finite or exceeds the per-coordinate clip. The attacker's best in
    the default is then a vector at the edge of the grid: the round is dropped, or the mean moves by at
    most ``2 clip / n`` per coordinate more than an honest client could -- bounded, but not removed.
    Not covered: a client that sends a wrong but in-range update (poisoning, see ``attacks.poisoning``);
    preventing that needs zero-knowledge range proofs on inputs, which this library does not implement.
    Weakened target: ``SecAggProtocol(public_weights=False, min_weight=0, unsafe_skip_bounds=True)``.
    CKKS bounds its weight in :mod:`protocols.ckks` (issue-10's attack).
    """

    name = "weight_amplification"
    threat_model = __doc__ or ""

    def run(self, weakened: bool, seed: int) -> ProtocolAttackOutcome:
        rng = np.random.default_rng(seed)
        unsafe = {"public_weights": False, "min_weight": 0.0, "unsafe_skip_bounds": True}
        kw: dict[str, Any] = unsafe if weakened else {}
        proto = SecAggProtocol(DIM, N, clip=CLIP, **kw)
        target = ("secagg public_weights=False, unsafe_skip_bounds=True" if weakened
                  else "secagg default (public weights, bounded release)")
        updates = rng.uniform(-CLIP, CLIP, (N, DIM))
        bad = N - 1
        proto.begin_round(0, range(N))
        payloads = {c: proto.protect(c, 0, updates[c], 1.0) for c in range(bad)}
        q, p = proto.quantizer, proto.params
        honest = np.stack([q.encode(updates[c], 1.0) for c in range(bad)]).astype(np.int64)
        crafted = np.full(p.vector_length, p.levels - 1, dtype=np.int64)  # every value at the top of the grid
        if not p.public_weights:  # cancel the others' weights: their slots sum to k steps, ours is -k + 1
            crafted[p.dim] = (1 - int(honest[:, p.dim].sum())) % (1 << p.modulus_bits)
        else:  # no weight slot: push the values as far as the modulus allows instead
            crafted[: p.dim] = (1 << p.modulus_bits) - 1 - honest[:, : p.dim].sum(axis=0)
        payloads[bad] = proto.protect_encoded(bad, 0, crafted.astype(p.dtype))
        agg = proto.combine(0, payloads)
        try:
            opened = release(proto, agg)
        except AggregateBoundsError as err:
            return ProtocolAttackOutcome(self.name, target, False, 0.0, "max |mean| / clip",
                                         f"round dropped before the optimizer step: {err}")
        ratio = float(np.max(np.abs(opened.mean))) / CLIP
        ok = ratio > 1.0
        reason = (f"opened total weight {opened.total_weight:.3g} (honest: {N}), mean {ratio:.3g} x the clip bound"
                  if ok else f"mean stays within the clip bound ({ratio:.3g} x clip)")
        return ProtocolAttackOutcome(self.name, target, ok, ratio, "max |mean| / clip", reason,
                                     {"total_weight": opened.total_weight})
