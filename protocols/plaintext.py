"""Plaintext aggregation: no protection, the reference every secure protocol is compared to."""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np

from protocols import wire
from protocols.base import Aggregate, AggregationProtocol, OpenedAggregate
from protocols.errors import PayloadError

_WEIGHT = struct.Struct("<d")


class PlaintextProtocol(AggregationProtocol):
    """Clients send ``weight * update`` as float32 (aggregation in float64); the server sees all.

    Parameters
    ----------
    dim:
        Length of the flat update vector every client must send.
    max_bytes:
        Size limit checked before a payload is parsed.
    public_weights:
        ``True`` (default): every weight is the public 1; a payload claiming another weight is rejected and
        the mean divides by the number of included clients, so no client can shrink the total weight to blow
        the mean up. ``False`` trusts each client's weight (weighted FedAvg).
    """

    name = "plaintext"
    reveals_individual_updates = True
    server_can_open = True

    def __init__(self, dim: int, max_bytes: int | None = None, public_weights: bool = True) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.public_weights = bool(public_weights)
        self.max_bytes = max_bytes or (wire.HEADER_SIZE + _WEIGHT.size + 4 * dim)

    def protect(self, client_id: int, round_id: int, update: np.ndarray, weight: float) -> bytes:
        vec = _check_update(update, self.dim)
        if self.public_weights and weight != 1.0:
            raise ValueError(f"weights are public (every client's is 1), got {weight}; use public_weights=False")
        body = _WEIGHT.pack(float(weight)) + (vec * weight).astype("<f4").tobytes()
        return wire.pack(self.name, round_id, client_id, body)

    def _parse(self, round_id: int, client_id: int, data: bytes) -> tuple[float, np.ndarray]:
        env = wire.unpack(data, protocol=self.name, max_bytes=self.max_bytes, round_id=round_id, client_id=client_id)
        if len(env.body) != _WEIGHT.size + 4 * self.dim:
            raise PayloadError(f"body holds {len(env.body)} bytes, expected {_WEIGHT.size + 4 * self.dim}")
        (weight,) = _WEIGHT.unpack_from(env.body)
        vec = np.frombuffer(env.body, dtype="<f4", offset=_WEIGHT.size).astype(np.float64)
        if not (np.isfinite(weight) and weight > 0) or not np.all(np.isfinite(vec)):
            raise PayloadError("payload holds a non-positive weight or non-finite values")
        if self.public_weights and weight != 1.0:
            raise PayloadError(f"payload claims weight {weight!r}, but weights are public and equal to 1")
        return weight, vec

    def individual_updates(self, round_id: int, payloads: Mapping[int, bytes]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for cid, data in payloads.items():
            try:
                weight, vec = self._parse(round_id, cid, data)
            except PayloadError:
                continue
            out[cid] = vec / weight
        return out

    def combine(self, round_id: int, payloads: Mapping[int, bytes]) -> Aggregate:
        total = np.zeros(self.dim)
        total_weight = 0.0
        included: list[int] = []
        rejected: dict[int, str] = {}
        for cid in sorted(payloads):
            try:
                weight, vec = self._parse(round_id, cid, payloads[cid])
            except PayloadError as err:
                rejected[cid] = f"{type(err).__name__}: {err}"
                continue
            total += vec
            total_weight += weight
            included.append(cid)
        body = _WEIGHT.pack(total_weight) + total.astype("<f8").tobytes()
        return Aggregate(round_id, wire.pack(self.name, round_id, wire.SERVER_ID, body), included, rejected)

    def open(self, aggregate: Aggregate) -> OpenedAggregate:
        env = wire.unpack(aggregate.payload, protocol=self.name, round_id=aggregate.round_id)
        (total_weight,) = _WEIGHT.unpack_from(env.body)
        total = np.frombuffer(env.body, dtype="<f8", offset=_WEIGHT.size)
        mean = total / total_weight if total_weight > 0 else np.zeros(self.dim)
        return OpenedAggregate(mean, total_weight, list(aggregate.included))


def _check_update(update: np.ndarray, dim: int) -> np.ndarray:
    """Refuse updates of the wrong shape or with NaN/Inf before they are protected."""
    vec = np.asarray(update, dtype=np.float64).reshape(-1)
    if vec.shape[0] != dim:
        raise ValueError(f"update has {vec.shape[0]} values, protocol expects {dim}")
    if not np.all(np.isfinite(vec)):
        raise ValueError("update holds NaN or Inf values")
    return vec
