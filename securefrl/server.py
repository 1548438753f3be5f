"""The server-aggregation axis: from the combined payloads to one mean update.

:class:`ProtocolOpen` lets the protocol's key holder open the aggregate (FedAvg's weighted mean) through
:func:`protocols.base.release`, which refuses a non-finite or out-of-bound mean (the round aborts);
:class:`RobustAggregation` runs a robust rule (:mod:`securefrl.aggregators`) over the individual updates,
which only protocols that reveal them provide (checked at config time by :mod:`securefrl.compat`).
:class:`DPAggregation` wraps either: it records each client's clip bit before the pipeline, then noises the
opened mean where the placement is central and accounts the round — the shape of Flower's DP strategy
wrappers (Beutel et al. 2020) and optax's chained transforms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocols.base import Aggregate, AggregationProtocol, release

__all__ = ["DPAggregation", "Opened", "ProtocolOpen", "RobustAggregation", "ServerAggregation", "make_aggregation"]


@dataclass
class Opened:
    """What the server released this round: the mean update, the individual updates it saw, metrics."""

    mean: np.ndarray | None
    individual: dict[int, np.ndarray] | None
    metrics: dict[str, Any] = field(default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)
    """Clients a robust rule dropped, with the reason."""


class ServerAggregation:
    """``open(round, protocol, aggregate, payloads, weight) -> Opened``; ``observe`` sees raw client updates."""

    def observe(self, deltas: Mapping[int, np.ndarray]) -> None:
        """The round's raw client updates, before their pipeline (only DP's adaptive clipping uses them)."""

    def open(self, round_id: int, protocol: AggregationProtocol, aggregate: Aggregate, payloads: Mapping[int, bytes],
             weight: float) -> Opened:
        raise NotImplementedError

    @staticmethod
    def _individual(round_id: int, protocol: AggregationProtocol, aggregate: Aggregate,
                    payloads: Mapping[int, bytes]) -> dict[int, np.ndarray] | None:
        if not protocol.reveals_individual_updates:
            return None
        return protocol.individual_updates(round_id, {c: payloads[c] for c in aggregate.included})

    # checkpoints: only a robust rule's state persists (key "rule_state"), DP's (key "dp") is the accountant's
    @property
    def rule_state(self) -> Any:
        return None

    @rule_state.setter
    def rule_state(self, value: Any) -> None:
        return None


class ProtocolOpen(ServerAggregation):
    """The protocol's key holder opens the weighted mean of the included updates."""

    def open(self, round_id: int, protocol: AggregationProtocol, aggregate: Aggregate, payloads: Mapping[int, bytes],
             weight: float) -> Opened:
        individual = self._individual(round_id, protocol, aggregate, payloads)
        # release: open, then refuse a non-finite or out-of-bound mean before any optimizer step (raises
        # ProtocolError, which aborts the round)
        mean = release(protocol, aggregate).mean if aggregate.included else None
        return Opened(mean, individual)


class RobustAggregation(ServerAggregation):
    """A robust rule over the revealed individual updates (falls back to opening when none were revealed)."""

    def __init__(self, rule: Any) -> None:
        self.rule = rule
        self._state: Any = None

    @property
    def rule_state(self) -> Any:
        return self._state

    @rule_state.setter
    def rule_state(self, value: Any) -> None:
        self._state = value

    def open(self, round_id: int, protocol: AggregationProtocol, aggregate: Aggregate, payloads: Mapping[int, bytes],
             weight: float) -> Opened:
        individual = self._individual(round_id, protocol, aggregate, payloads)
        if not aggregate.included:
            return Opened(None, individual)
        if not individual:
            return Opened(release(protocol, aggregate).mean, individual)
        ids = sorted(individual)
        result = self.rule(np.stack([individual[c] for c in ids]), np.full(len(ids), weight), self._state)
        self._state = result.state
        return Opened(result.aggregate, individual, dropped={ids[i]: reason for i, reason in result.dropped.items()})


class DPAggregation(ServerAggregation):
    """Client-level DP around an aggregation: clip bits in, noised (central) and accounted mean out."""

    def __init__(self, inner: ServerAggregation, dp: Any, seed: int) -> None:
        self.inner, self.dp, self.seed = inner, dp, seed
        self._bits: dict[int, float] = {}

    @property
    def rule_state(self) -> Any:
        return self.inner.rule_state

    @rule_state.setter
    def rule_state(self, value: Any) -> None:
        self.inner.rule_state = value

    def observe(self, deltas: Mapping[int, np.ndarray]) -> None:
        self._bits = {c: (0.5 if np.linalg.norm(d) <= self.dp.clip_norm else -0.5) for c, d in deltas.items()}
        self.inner.observe(deltas)

    def open(self, round_id: int, protocol: AggregationProtocol, aggregate: Aggregate, payloads: Mapping[int, bytes],
             weight: float) -> Opened:
        from securefrl.seeding import derive_rng

        out = self.inner.open(round_id, protocol, aggregate, payloads, weight)
        if out.mean is not None:
            out.mean, metrics = self.dp.finish_round(out.mean, len(aggregate.included),
                                                     [self._bits[c] for c in aggregate.included],
                                                     derive_rng(self.seed, "central-noise", round_id))
            out.metrics.update(metrics)
        return out


def make_aggregation(rule: Any, dp: Any, seed: int) -> ServerAggregation:
    """The server aggregation the config asks for: protocol open or a robust rule, wrapped by DP if any."""
    inner: ServerAggregation = RobustAggregation(rule) if rule is not None else ProtocolOpen()
    return DPAggregation(inner, dp, seed) if dp is not None else inner
