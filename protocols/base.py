"""The aggregation-protocol interface the federation round loop is written against.

A round is: ``begin_round`` (interactive key set-up, if the protocol has any) ->
``protect`` on every client (its update becomes bytes) -> ``combine`` on the server (bytes
in, one aggregate out, malformed payloads dropped with a reason) -> ``open`` by whoever
holds the means to read the aggregate (the server for plaintext and SecAgg, a client-side
key holder for CKKS). The round loop knows nothing else, so protocols are swappable.

Weights: where every client's weight is public (uniform, DP, equal budgets) a protocol should not send
it (``public_weights``) and divide by the number of included clients; a weight that travels inside a
protected payload is checked by nobody but its sender, so one client could cancel the others' weights
and blow the mean up. Where weights must travel, :func:`check_total_weight` bounds the opened total by
``n_included * [min_w, max_w]``. Whatever the protocol, :func:`release` -- the one place the round loop
takes the opened mean from -- refuses a mean that is not finite or exceeds the protocol's per-coordinate
``mean_bound`` (an honest weighted mean of clipped updates cannot), so nothing out of range reaches the
optimizer. Both refusals raise :class:`AggregateBoundsError`, a :class:`RoundAbortedError`: the round is
dropped, the run goes on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from protocols.errors import RoundAbortedError


class AggregateBoundsError(RoundAbortedError):
    """The opened aggregate is outside what honest clients can produce (weight or mean out of bounds)."""


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
    #: True if every weight is the public 1 and is not sent (the mean divides by the included count).
    public_weights: bool = False
    #: Largest ``|coordinate|`` of an honest opened mean (the protocol's per-coordinate clip), or None.
    mean_bound: float | None = None
    #: Name of the constructor parameter that clips every coordinate (SecAgg's fixed-point range), or None.
    #: DP sets it to leave room for the noise; methods that send a count coordinate need it >= 1.
    coordinate_clip_param: str | None = None

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


def check_total_weight(total_weight: float, n_included: int, min_weight: float, max_weight: float,
                       slack: float = 0.0) -> None:
    """Refuse an opened total weight outside ``n_included * [min_weight, max_weight]`` (+- ``slack``)."""
    lo, hi = n_included * min_weight - slack, n_included * max_weight + slack
    if not (np.isfinite(total_weight) and lo <= total_weight <= hi and total_weight > 0):
        raise AggregateBoundsError(
            f"opened total weight {total_weight:.6g} is outside {n_included} x [{min_weight:g}, {max_weight:g}]: "
            "some client sent a weight it is not allowed to; the round is dropped"
        )


def release(protocol: AggregationProtocol, aggregate: Aggregate, slack: float = 1e-6) -> OpenedAggregate:
    """Open ``aggregate`` and check the mean before anyone uses it: finite, and within ``protocol.mean_bound``.

    The one gate between ``open`` and the optimizer step. ``slack`` absorbs rounding of fixed-point
    protocols (relative to the bound).
    """
    opened = protocol.open(aggregate)
    mean = np.asarray(opened.mean, dtype=np.float64)
    if not np.all(np.isfinite(mean)):
        raise AggregateBoundsError("opened mean holds NaN or Inf values; the round is dropped")
    bound = protocol.mean_bound
    if bound is not None and mean.size:
        worst = float(np.max(np.abs(mean)))
        if worst > bound * (1.0 + slack) + slack:
            raise AggregateBoundsError(
                f"opened mean has a coordinate of magnitude {worst:.6g} > the per-coordinate bound {bound:g} "
                "that honest clipped updates respect; the round is dropped"
            )
    return opened
