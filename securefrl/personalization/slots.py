"""k-slot encoding: aggregate k cluster models in one protected sum without revealing who chose which.

Clustered aggregation (IFCA, Ghosh et al. 2020, "An Efficient Framework for Clustered Federated
Learning"; grouped aggregation, Nadiger et al. 2019, "Federated Reinforcement Learning for Fast
Personalization") needs one average per cluster. Sending ``(cluster id, update)`` would tell the
server every client's cluster, which is a fingerprint of its environment. Instead each client
protects a vector of ``k`` slots of ``dim + 1`` numbers: its update and a count of 1 in the slot
of the cluster it chose, zeros in every other slot. The protocol (CKKS, SecAgg, plaintext) sums
these vectors like any other update; payloads have the same length whatever the choice, and under
CKKS or SecAgg the server never sees an individual vector, so it cannot tell the choice. Opening
the sum gives, per slot, the sum of that cluster's updates and the number of clients who chose it;
their ratio is the cluster's FedAvg mean. Who opens learns the per-cluster counts of the round
(aggregate information), never an assignment. The price is ``k`` times the upload.
"""

from __future__ import annotations

import numpy as np

MIN_SHARE = 1e-6
"""Opened counts below this are treated as empty slots (CKKS returns approximate zeros)."""


def slot_length(dim: int, k: int) -> int:
    """Length of the protected vector for ``k`` clusters of ``dim``-long updates."""
    return k * (dim + 1)


def encode_slots(update: np.ndarray, slot: int, k: int) -> np.ndarray:
    """``update`` in slot ``slot`` with count 1, zeros elsewhere: the vector a client protects."""
    vec = np.asarray(update, dtype=np.float64).reshape(-1)
    if not 0 <= slot < k:
        raise ValueError(f"slot must lie in [0, {k}), got {slot}")
    d = vec.shape[0]
    out = np.zeros(slot_length(d, k))
    start = slot * (d + 1)
    out[start:start + d] = vec
    out[start + d] = 1.0
    return out


def decode_slots(mean: np.ndarray, k: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster mean updates ``(k, dim)`` and shares ``(k,)`` from the opened mean of slot vectors.

    The protocol's weighted mean divides every coordinate by the same total weight, so the ratio of a
    slot's update sum to its count is that cluster's weighted mean. A cluster nobody chose (share
    below :data:`MIN_SHARE`) gets a zero update. ``shares`` are fractions of the round's total weight.
    """
    m = np.asarray(mean, dtype=np.float64).reshape(k, dim + 1)
    shares = m[:, dim].copy()
    deltas = np.zeros((k, dim))
    ok = shares > MIN_SHARE
    deltas[ok] = m[ok, :dim] / shares[ok, None]
    return deltas, shares
