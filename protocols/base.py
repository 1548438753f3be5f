"""The aggregation-protocol interface the federation round loop is written against.

A round is: ``begin_round`` (interactive key set-up, if the protocol has any) ->
``protect`` on every client (its update becomes bytes) -> ``combine`` on the server (bytes
in, one aggregate out, malformed payloads dropped with a reason) -> ``open`` by whoever
holds the means to read the aggregate (the server for plaintext and SecAgg, a client-side
key holder for CKKS). The round loop knows nothing else, so protocols are swappable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Aggregate:
    """What ``combine`` produces: an opaque aggregate plus who made it in and who did not."""

    round_id: int
    payload: bytes
    included: list[int]
    rejected: dict[int, str] = field(default_factory=dict)


@dataclass
class OpenedAggregate:
    """The revealed result of a round: the weighted mean update and the total weight."""

    mean: np.ndarray
    total_weight: float
    included: list[int]


class AggregationProtocol(ABC):
    """Secure aggregation over flat float vectors.

    Subclasses state whether the server sees individual updates
    (``reveals_individual_updates``); robust aggregation rules need that to be true.
    """

    name: str = "abstract"
    reveals_individual_updates: bool = False
    #: True if the server itself can open the aggregate (plaintext, SecAgg); False for CKKS.
    server_can_open: bool = True

    def begin_round(self, round_id: int, client_ids: Sequence[int]) -> None:  # noqa: B027
        """Run any interactive set-up needed before clients protect their updates."""

    @abstractmethod
    def protect(self, client_id: int, round_id: int, update: np.ndarray, weight: float) -> bytes:
        """Client side: turn ``update`` (scaled by ``weight`` for the weighted mean) into bytes."""

    @abstractmethod
    def combine(self, round_id: int, payloads: Mapping[int, bytes]) -> Aggregate:
        """Server side: combine payloads, rejecting bad ones individually (never the whole round)."""

    @abstractmethod
    def open(self, aggregate: Aggregate) -> OpenedAggregate:
        """Key-holder side: reveal the weighted mean of the included updates."""

    def extra_client_bytes(self) -> dict[int, int]:
        """Bytes each client sent in the last round besides its ``protect`` payload (key set-up, unmasking)."""
        return {}

    def individual_updates(self, round_id: int, payloads: Mapping[int, bytes]) -> dict[int, np.ndarray]:
        """Server side: the individual updates, only for protocols that reveal them."""
        raise NotImplementedError(f"protocol {self.name!r} does not reveal individual updates")
