"""Server-side aggregation rules over a stack of flat client updates, FedAvg and Byzantine-robust ones.

Every rule maps ``updates`` of shape ``(n, d)`` (one flat update per client) and ``weights`` of
shape ``(n,)`` to one aggregate of shape ``(d,)``. Robust rules need the individual updates, so they
can only run where the aggregation protocol reveals them
(``protocols.AggregationProtocol.reveals_individual_updates``); ``requires_individual_updates``
says which rules do.

Robustness guarantees are stated against ``f`` Byzantine clients out of ``n``. Each rule checks its
precondition on ``(n, f)`` when it is built (:func:`make_rule`), so a configuration that voids the
guarantee is refused before any training, and again on every call, because rows can be dropped.

Safety before robustness: rows holding NaN or Inf, or with an absurd magnitude, are dropped before
the rule runs and reported in :attr:`AggregationResult.dropped`; the aggregate is always finite.
Honest clients refuse non-finite updates before sending (:func:`securefrl.transforms.check_finite`),
so every dropped row is charged to the Byzantine budget: the rule then runs with
``f_effective = max(f - n_dropped, 0)``.

Client-reported weights are only trusted by rules that are weighted by design (FedAvg, norm
bounding, geometric median as in RFA); rules whose guarantee counts clients ignore them, since a
Byzantine client would otherwise claim a large weight.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from protocols.base import AggregationProtocol
from securefrl.configtools import did_you_mean
from securefrl.errors import ConfigError, SecureFRLError
from securefrl.registry import Registry

__all__ = [
    "RULES",
    "AggregationError",
    "AggregationResult",
    "AggregationRule",
    "Bulyan",
    "CenteredClipping",
    "CoordinateMedian",
    "FedAvg",
    "FedPGBRFilter",
    "GeometricMedian",
    "Krum",
    "MultiKrum",
    "NormBounding",
    "TrimmedMean",
    "check_protocol_compatible",
    "make_rule",
    "register_rule",
]

_TINY = 1e-300  # guards divisions by a norm that may be exactly zero


class AggregationError(SecureFRLError, ValueError):
    """A round's updates cannot be aggregated (bad shape, nothing usable left, precondition broken)."""


@dataclass
class AggregationResult:
    """The aggregate plus an audit trail of what went into it.

    Indices always refer to rows of the ``updates`` array handed to the rule.
    """

    #: The aggregate update, shape ``(d,)``, always finite.
    aggregate: np.ndarray
    #: Rows that entered the rule (after dropping unusable ones).
    included: list[int]
    #: Rows refused before the rule ran, with the reason (same shape as ``protocols.Aggregate.rejected``).
    dropped: dict[int, str] = field(default_factory=dict)
    #: Rule-specific diagnostics: ``f_effective`` always; e.g. ``selected`` rows (caller's numbering) and
    #: ``scores`` (aligned with ``included``) for Krum-type rules, ``iterations`` for the geometric median.
    info: dict[str, Any] = field(default_factory=dict)
    #: State to hand to the next call (centred clipping's reference point); ``None`` for stateless rules.
    state: Any = None


# ----------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------


def _check_int(fld: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(fld, f"must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(fld, f"must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_positive(fld: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(fld, f"must be a positive finite number, got {value!r}")
    if not (math.isfinite(float(value)) and value > 0):
        raise ConfigError(fld, f"must be a positive finite number, got {value}")
    return float(value)


def _pairwise_sq_dists(x: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between rows, via the Gram matrix.

    Rows are centred on the coordinate-wise median first: centring on the mean would let one large
    (Byzantine) row inflate every norm and wash out the honest rows' small distances in rounding.
    """
    c = x - np.median(x, axis=0)
    sq = np.einsum("ij,ij->i", c, c)
    d = sq[:, None] + sq[None, :] - 2.0 * (c @ c.T)
    np.maximum(d, 0.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def _krum_scores(dists: np.ndarray, f: int) -> np.ndarray:
    """Krum score of each row: sum of squared distances to its ``n - f - 2`` nearest other rows.

    The neighbour count is clamped to ``[1, n - 1]`` so the iterated Krum inside Bulyan, which runs
    on shrinking sets, stays defined (it is exactly ``n - f - 2`` whenever Krum's precondition holds).
    """
    n = dists.shape[0]
    if n == 1:
        return np.zeros(1)
    k = min(max(n - f - 2, 1), n - 1)
    off = dists + np.diag(np.full(n, np.inf))
    nearest = np.sort(off, axis=1)[:, :k]
    return nearest.sum(axis=1)


# ----------------------------------------------------------------------------------------------------
# the interface
# ----------------------------------------------------------------------------------------------------


class AggregationRule(ABC):
    """A server aggregation rule built for ``n_clients`` per round of which at most ``n_malicious`` lie.

    Parameters
    ----------
    n_clients:
        Clients expected per round (``n``); the precondition is checked against it at construction.
    n_malicious:
        Assumed bound ``f`` on Byzantine clients per round.
    huge_ratio:
        A finite row whose L2 norm exceeds ``huge_ratio`` times the round's median norm is dropped as
        absurd (``None`` disables this relative check). The median is robust while ``f < n/2``.
    huge_abs:
        A row with any ``|entry| > huge_abs`` is dropped; this also keeps squared norms far from
        float64 overflow, which is what guarantees a finite output.
    """

    name: ClassVar[str] = "abstract"
    #: False only for rules the protocol can compute over protected (summed) updates.
    requires_individual_updates: ClassVar[bool] = True
    #: Whether the client-reported weights enter the result.
    uses_weights: ClassVar[bool] = False

    def __init__(
        self, n_clients: int, n_malicious: int = 0, *, huge_ratio: float | None = 1e6, huge_abs: float = 1e15
    ) -> None:
        self.n_clients = _check_int("aggregator.n_clients", n_clients, 1)
        self.n_malicious = _check_int("aggregator.n_malicious", n_malicious, 0)
        if self.n_malicious >= self.n_clients:
            raise ConfigError(
                "aggregator.n_malicious",
                f"{self.name} needs f < n (at least one honest client), got n={self.n_clients}, f={self.n_malicious}",
            )
        self.huge_ratio = None if huge_ratio is None else _check_positive("aggregator.huge_ratio", huge_ratio)
        self.huge_abs = _check_positive("aggregator.huge_abs", huge_abs)
        problem = self.precondition(self.n_clients, self.n_malicious)
        if problem is not None:
            raise ConfigError("aggregator", problem)

    def precondition(self, n: int, f: int) -> str | None:
        """Return why ``(n, f)`` voids the rule's guarantee, or ``None`` if it is fine."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_clients={self.n_clients}, n_malicious={self.n_malicious})"

    # -- sanitising ---------------------------------------------------------------------------------

    def _sanitize(self, x: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
        """Indices of usable rows and the reasons the others were dropped."""
        dropped: dict[int, str] = {}
        finite = np.all(np.isfinite(x), axis=1)
        for i in np.flatnonzero(~finite):
            dropped[int(i)] = "holds NaN or Inf"
        max_abs = np.zeros(x.shape[0])
        max_abs[finite] = np.max(np.abs(x[finite]), axis=1)
        too_big = finite & (max_abs > self.huge_abs)
        for i in np.flatnonzero(too_big):
            dropped[int(i)] = f"largest |entry| {max_abs[i]:.3g} exceeds huge_abs={self.huge_abs:.3g}"
        ok = finite & ~too_big
        if self.huge_ratio is not None and np.count_nonzero(ok) > 0:
            norms = np.linalg.norm(x[ok], axis=1)
            med = float(np.median(norms))
            if med > 0:
                limit = self.huge_ratio * med
                idx = np.flatnonzero(ok)
                for i, nrm in zip(idx, norms, strict=True):
                    if nrm > limit:
                        dropped[int(i)] = (
                            f"norm {nrm:.3g} exceeds huge_ratio={self.huge_ratio:.3g} x median norm {med:.3g}"
                        )
                        ok[i] = False
        return np.flatnonzero(ok), dropped

    # -- the call -----------------------------------------------------------------------------------

    def __call__(
        self, updates: np.ndarray, weights: np.ndarray | None = None, state: Any = None
    ) -> AggregationResult:
        """Aggregate one round: validate, drop unusable rows, re-check the precondition, run the rule."""
        x = np.asarray(updates, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise AggregationError(f"{self.name}: updates must have shape (n, d) with n, d >= 1, got {x.shape}")
        n = x.shape[0]
        if weights is None:
            w = np.ones(n)
        else:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (n,):
                raise AggregationError(f"{self.name}: weights must have shape ({n},), got {w.shape}")
            if not np.all(np.isfinite(w)) or np.any(w < 0):
                raise AggregationError(f"{self.name}: weights must be finite and >= 0, got {w.tolist()}")
        keep, dropped = self._sanitize(x)
        if keep.size == 0:
            raise AggregationError(f"{self.name}: all {n} updates were dropped as unusable: {dropped}")
        f_eff = max(self.n_malicious - len(dropped), 0)
        problem = self.precondition(int(keep.size), f_eff)
        if problem is not None:
            raise AggregationError(f"{problem} (after dropping {len(dropped)} of {n} updates)")
        if self.uses_weights and float(w[keep].sum()) <= 0:
            raise AggregationError(f"{self.name}: the usable updates {keep.tolist()} all have weight 0")
        agg, info, new_state = self._aggregate(x[keep], w[keep], f_eff, state)
        if "selected" in info:  # rule-local row numbers -> rows of the caller's array
            info["selected"] = [int(keep[i]) for i in info["selected"]]
        info["f_effective"] = f_eff
        if not np.all(np.isfinite(agg)):  # cannot happen after sanitising; refuse rather than propagate
            raise AggregationError(f"{self.name}: produced a non-finite aggregate")
        return AggregationResult(agg, [int(i) for i in keep], dropped, info, new_state)

    @abstractmethod
    def _aggregate(
        self, x: np.ndarray, w: np.ndarray, f: int, state: Any
    ) -> tuple[np.ndarray, dict[str, Any], Any]:
        """Run the rule on sanitised rows ``x`` (n', d) with weights ``w`` and Byzantine bound ``f``."""


# ----------------------------------------------------------------------------------------------------
# the rules
# ----------------------------------------------------------------------------------------------------


class FedAvg(AggregationRule):
    """Weighted mean of the updates (McMahan et al. 2017, "Communication-Efficient Learning of Deep
    Networks from Decentralized Data"). The non-robust reference: one Byzantine client moves it
    arbitrarily far. It is also what summing protocols compute, so it needs no individual updates."""

    name = "fedavg"
    requires_individual_updates = False
    uses_weights = True

    def _aggregate(self, x: np.ndarray, w: np.ndarray, f: int, state: Any) -> tuple[np.ndarray, dict[str, Any], Any]:
        return (w / w.sum()) @ x, {}, None


class CoordinateMedian(AggregationRule):
    """Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates", ICML). Each coordinate is robust on its own while ``f < n/2``."""

    name = "median"

    def precondition(self, n: int, f: int) -> str | None:
        return None if n > 2 * f else f"median needs n > 2f, got n={n}, f={f}"

    def _aggregate(self, x: np.ndarray, w: np.ndarray, f: int, state: Any) -> tuple[np.ndarray, dict[str, Any], Any]:
        return np.median(x, axis=0), {}, None


class TrimmedMean(AggregationRule):
    """Coordinate-wise trimmed mean (Yin et al. 2018, ICML): per coordinate drop the ``k`` largest and
    ``k`` smallest values and average the rest, ``k = max(f, floor(beta * n))``.

    The guarantee needs ``beta >= f/n`` (every Byzantine value can be trimmed) and ``2 beta n < n``
    (something is left). ``beta`` defaults to ``f/n``.
    """

    name = "trimmed_mean"

    def __init__(self, n_clients: int, n_malicious: int = 0, *, beta: float | None = None, **kwargs: Any) -> None:
        if beta is not None:
            if isinstance(beta, bool) or not isinstance(beta, (int, float, np.integer, np.floating)):
                raise ConfigError("aggregator.beta", f"trimmed_mean needs a number 0 <= beta < 0.5, got {beta!r}")
            if not 0 <= float(beta) < 0.5:
                raise ConfigError("aggregator.beta", f"trimmed_mean needs 0 <= beta < 0.5 (2*beta*n < n), got {beta}")
            if isinstance(n_clients, int) and isinstance(n_malicious, int) and n_clients > 0:
                if float(beta) * n_clients < n_malicious - 1e-9:
                    raise ConfigError(
                        "aggregator.beta",
                        f"trimmed_mean needs beta >= f/n, got beta={beta}, n={n_clients}, f={n_malicious} "
                        f"(f/n={n_malicious / n_clients:.4g})",
                    )
        self.beta = None if beta is None else float(beta)
        super().__init__(n_clients, n_malicious, **kwargs)

    def trim_count(self, n: int, f: int) -> int:
        """Values removed from each end of every coordinate for ``n`` rows and bound ``f``."""
        beta = f / n if self.beta is None else self.beta
        return max(f, math.floor(beta * n + 1e-9))

    def precondition(self, n: int, f: int) -> str | None:
        k = self.trim_count(n, f)
        if 2 * k < n:
            return None
        beta = "f/n" if self.beta is None else self.beta
        return f"trimmed_mean needs 2*k < n with k = max(f, floor(beta*n)) trimmed per side, got n={n}, f={f}, " \
            f"beta={beta}, k={k}"

    def _aggregate(self, x: np.ndarray, w: np.ndarray, f: int, state: Any) -> tuple[np.ndarray, dict[str, Any], Any]:
        n = x.shape[0]
        k = self.trim_count(n, f)
        kept = np.sort(x, axis=0)[k : n - k]
        return kept.mean(axis=0), {"trimmed_per_side": k}, None


class Krum(AggregationRule):
    """Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent", NeurIPS): choose the update whose ``n - f - 2`` nearest neighbours are closest in
    squared distance. Needs ``n > 2f + 2`` so that an honest update always has an honest majority of
    neighbours."""

    name = "krum"

    def precondition(self, n: int, f: int) -> str | None:
        return None if n > 2 * f + 2 else f"{self.name} needs n > 2f+2, got n={n}, f={f}"

    def _select(self, x: np.ndarray, f: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        scores = _krum_scores(_pairwise_sq_dists(x), f)
        order = np.argsort(scores, kind="stable")  # ties go to the lower row, deterministically
        return order[:m], scores

    def _aggregate(self, x: np.ndarray, w: np.ndarray, f: int, state: Any) -> tuple[np.ndarray, dict[str, Any], Any]:
        sel, scores = self._select(x, f, 1)
        return x[sel[0]].copy(), {"selected": sel.tolist(), "scores": scores}, None


class MultiKrum(Krum):
    """Multi-Krum (Blanchard et al. 2017, NeurIPS): average the ``m`` updates with the best Krum scores
    (scores computed once). ``m`` defaults to ``n - f``; it must satisfy ``1 <= m <= n - f`` so that
    honest updates can fill the selection. When fewer rows arrive, ``m`` is reduced to ``n' - f``."""

    name = "multi_krum"

    def __init__(self, n_clients: int, n_malicious: int = 0, *, m: int | None = None, **kwargs: Any) -> None:
        super().__init__(n_clients, n_malicious, **kwargs)
        if m is not None:
            m = _check_int("aggregator.m", m, 1)
            if m > self.n_clients - self.n_malicious:
                raise ConfigError(
                    "aggregator.m",
                    f"multi_krum needs 1 <= m <= n - f, got m={m}, n={self.n_clients}, f={self.n_malicious}",
                )
        self.m = m

    def _aggregate(self, x: np.ndarray, w: np.ndarray, f: int, state: Any) -> tuple[np.ndarray, dict[str, Any], Any]:
        n = x.shape[0]
        m = n - f if self.m is None else min(self.m, n - f)
        sel, scores = self._select(x, f, m)
        return x[sel].mean(axis=0), {"selected": sel.tolist(), "scores": scores, "m": m}, None


class Bulyan(AggregationRule):
    """Bulyan (El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed Learning in Byzantium",
    ICML). Iterated Krum selects ``theta = n - 2f`` updates; then, per coordinate, the ``beta = theta - 2f``
    values closest to the selection's median are averaged. This bounds what a Byzantine update can do
    in any single coordinate, which Krum alone does not. Needs ``n >= 4f + 3``."""

    name = "bulyan"

    def precondition(self, n: int, f: int) -> str | None:
        return None if n >= 4 * f + 3 else f"bulyan needs n >= 4f+3, got n={n}, f={f}"

    def _aggregate(self, x: np.ndarray, w: np.ndarray, f: int, state: Any) -> tuple[np.ndarray, dict[str, Any], Any]:
        n = x.shape[0]
        theta = n - 2 * f
        dists = _pairwise_sq_dists(x)
        remaining = list(range(n))
        selected: list[int] = []
        for _ in range(theta):
            sub = dists[np.ix_(remaining, remaining)]
            j = int(np.argmin(_krum_scores(sub, f)))
            selected.append(remaining.pop(j))
        s = x[selected]
        beta = theta - 2 * f
        med = np.median(s, axis=0)
        closest = np.argsort(np.abs(s - med), axis=0, kind="stable")[:beta]
        agg = np.take_along_axis(s, closest, axis=0).mean(axis=0)
        return agg, {"selected": selected, "beta": beta}, None


class GeometricMedian(AggregationRule):
    """Weighted geometric median by the smoothed Weiszfeld algorithm (RFA: Pillutla, Kakade and
    Harchaoui 2022, "Robust Aggregation for Federated Learning", IEEE Trans. Signal Processing).

    Iterates ``v <- sum_i b_i x_i / sum_i b_i`` with ``b_i = w_i / max(nu, ||v - x_i||)`` from the
    weighted mean, until the relative decrease of ``sum_i w_i ||v - x_i||`` falls below ``ftol``. Its
    breakdown point is one half of the total *weight*, so it trusts the reported weights as RFA does;
    pass ``weights=None`` for the unweighted median. Precondition on counts: ``n > 2f``.
    """

    name = "geometric_median"
    uses_weights = True

    def __init__(
        self,
        n_clients: int,
        n_malicious: int = 0,
        *,
        nu: float = 1e-6,
        max_iter: int = 100,
        ftol: float = 1e-10,
        **kwargs: Any,
    ) -> None:
        super().__init__(n_clients, n_malicious, **kwargs)
        self.nu = _check_positive("aggregator.nu", nu)
        self.max_iter = _check_int("aggregator.max_iter", max_iter, 1)
        self.ftol = _check_positive("aggregator.ftol", ftol)

    def precondition(self, n: int, f: int) -> str | None:
        return None if n > 2 * f else f"geometric_median needs n > 2f, got n={n}, f={f}"

    def _aggregate(self, x: np.ndarray, w: np.ndarray, f: int, state: Any) -> tuple[np.ndarray, dict[str, Any], Any]:
        alpha = w / w.sum()
        v = alpha @ x
        obj = float(alpha @ np.linalg.norm(x - v, axis=1))
        iterations = 0
        while iterations < self.max_iter:
            iterations += 1
            b = alpha / np.maximum(self.nu, np.linalg.norm(x - v, axis=1))
            v = b @ x / b.sum()
            new_obj = float(alpha @ np.linalg.norm(x - v, axis=1))
            converged = abs(obj - new_obj) <= self.ftol * max(new_obj, _TINY)
            obj = new_obj
            if converged:
                break
        return v, {"iterations": iterations, "objective": obj}, None


class NormBounding(AggregationRule):
    """Norm bounding (Sun et al. 2019, "Can You Really Backdoor Federated Learning?"): scale every update
    to L2 norm at most ``max_norm``, then take the weighted mean. It caps each client's influence (the
    defence against boosted model-replacement updates) but is not Byzantine-robust in direction.

    ``max_norm=None`` uses the round's median update norm, a scale-free bound that honest clients set
    while ``f < n/2`` (this adaptive choice is the library's, not the paper's).
    """

    name = "norm_bounding"
    uses_weights = True

    def __init__(self, n_clients: int, n_malicious: int = 0, *, max_norm: float | None = None, **kwargs: Any) -> None:
        super().__init__(n_clients, n_malicious, **kwargs)
        self.max_norm = None if max_norm is None else _check_positive("aggregator.max_norm", max_norm)

    def _aggregate(self, x: np.ndarray, w: np.ndarray, f: int, state: Any) -> tuple[np.ndarray, dict[str, Any], Any]:
        norms = np.linalg.norm(x, axis=1)
        bound = float(np.median(norms)) if self.max_norm is None else self.max_norm
        scale = np.minimum(1.0, bound / np.maximum(norms, _TINY))
        agg = (w / w.sum()) @ (x * scale[:, None])
        return agg, {"norm_bound": bound, "clipped": np.flatnonzero(scale < 1.0).tolist()}, None


class CenteredClipping(AggregationRule):
    """Centred clipping (Karimireddy, He and Jaggi 2021, "Learning from History for Byzantine Robust
    Optimization", ICML): starting from a reference ``v`` (the previous aggregate), repeat ``n_iters``
    times ``v <- v + mean_i clip_tau(x_i - v)``, where ``clip_tau`` scales a vector to norm at most
    ``tau``. Each Byzantine update moves ``v`` by at most ``tau / n`` per iteration.

    State is explicit: pass ``result.state`` of round ``t`` as ``state`` of round ``t + 1`` (``None``
    starts from zero, the paper's initial momentum). ``tau=None`` uses the median distance to ``v`` in
    each iteration (the library's scale-free choice; the paper uses a tuned constant). The paper's
    guarantee assumes a small Byzantine fraction; the breakdown precondition checked is ``n > 2f``.
    Without a good reference (``state=None`` in the first round) it is only norm bounding around zero,
    which a norm-preserving attack such as sign flipping passes unharmed.
    """

    name = "centered_clipping"

    def __init__(
        self, n_clients: int, n_malicious: int = 0, *, tau: float | None = None, n_iters: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(n_clients, n_malicious, **kwargs)
        self.tau = None if tau is None else _check_positive("aggregator.tau", tau)
        self.n_iters = _check_int("aggregator.n_iters", n_iters, 1)

    def precondition(self, n: int, f: int) -> str | None:
        return None if n > 2 * f else f"centered_clipping needs n > 2f, got n={n}, f={f}"

    def _aggregate(self, x: np.ndarray, w: np.ndarray, f: int, state: Any) -> tuple[np.ndarray, dict[str, Any], Any]:
        d = x.shape[1]
        if state is None:
            v = np.zeros(d)
        else:
            v = np.asarray(state, dtype=np.float64)
            if v.shape != (d,) or not np.all(np.isfinite(v)):
                raise AggregationError(
                    f"centered_clipping: state must be a finite vector of shape ({d},), got shape {v.shape}"
                )
            v = v.copy()
        taus = []
        for _ in range(self.n_iters):
            diff = x - v
            dn = np.linalg.norm(diff, axis=1)
            tau = float(np.median(dn)) if self.tau is None else self.tau
            taus.append(tau)
            v = v + (diff * np.minimum(1.0, tau / np.maximum(dn, _TINY))[:, None]).mean(axis=0)
        return v, {"tau": taus}, v.copy()


class FedPGBRFilter(AggregationRule):
    """FedPG-BR's Byzantine filter (Fan et al. 2021, "Fault-Tolerant Federated Reinforcement Learning with
    Theoretical Guarantee", NeurIPS; their FedPG-Aggregate step), in our words:

    1. with a distance threshold ``T``, keep the candidates ``S``: rows within ``T`` of more than half of
       all rows (itself included) — honest gradient estimates concentrate within ``T`` of each other;
    2. the anchor ``m`` is the row of ``S`` closest to the coordinate-wise median of all rows;
    3. the aggregate is the mean of the rows within ``T`` of ``m`` (``info["selected"]``; the others are
       filtered out).

    ``T = 2 sigma sqrt(V / B)`` with ``V = 2 log(2 n / delta)`` as in the paper, for an estimator of variance
    bound ``sigma`` over batches of ``B`` episodes; ``sigma=None`` uses ``T = 2 x`` the median distance of the
    rows to the coordinate-wise median (the library's scale-free choice, like norm bounding's). Precondition
    ``n > 2f``: the honest majority defines ``S``. If no row qualifies for ``S`` the anchor is the row closest
    to the median (the paper's fallback when its concentration bound fails).
    """

    name = "fedpg_br"

    def __init__(self, n_clients: int, n_malicious: int = 0, *, sigma: float | None = None, batch: int = 16,
                 delta: float = 0.6, **kwargs: Any) -> None:
        super().__init__(n_clients, n_malicious, **kwargs)
        self.sigma = None if sigma is None else _check_positive("aggregator.sigma", sigma)
        self.batch = _check_int("aggregator.batch", batch, 1)
        self.delta = _check_positive("aggregator.delta", delta)

    def precondition(self, n: int, f: int) -> str | None:
        return None if n > 2 * f else f"fedpg_br needs n > 2f, got n={n}, f={f}"

    def threshold(self, x: np.ndarray) -> float:
        """The distance threshold ``T`` for rows ``x``."""
        if self.sigma is not None:
            v = 2.0 * math.log(2.0 * x.shape[0] / self.delta)
            return 2.0 * self.sigma * math.sqrt(v / self.batch)
        return 2.0 * float(np.median(np.linalg.norm(x - np.median(x, axis=0), axis=1)))

    def _aggregate(self, x: np.ndarray, w: np.ndarray, f: int, state: Any) -> tuple[np.ndarray, dict[str, Any], Any]:
        n = x.shape[0]
        t = self.threshold(x)
        dist = np.sqrt(_pairwise_sq_dists(x))
        candidates = np.flatnonzero((dist <= t).sum(axis=1) > n / 2)
        to_median = np.linalg.norm(x - np.median(x, axis=0), axis=1)
        pool = candidates if candidates.size else np.arange(n)
        anchor = int(pool[np.argmin(to_median[pool])])
        keep = np.flatnonzero(dist[anchor] <= t)
        return x[keep].mean(axis=0), {"selected": keep.tolist(), "threshold": t}, None


# ----------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------

RULES: Registry[type[AggregationRule]] = Registry("aggregation rule", "federation.aggregator",
                                                 group="securefrl.aggregators")
"""Rule classes by name; :func:`register_rule` adds user rules (or the ``securefrl.aggregators`` entry points)."""
for _cls in (FedAvg, CoordinateMedian, TrimmedMean, Krum, MultiKrum, Bulyan, GeometricMedian, NormBounding,
             CenteredClipping, FedPGBRFilter):
    RULES.register(_cls.name, _cls)


def register_rule(cls: type[AggregationRule]) -> type[AggregationRule]:
    """Add a rule class to :data:`RULES` under ``cls.name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, AggregationRule)):
        raise ConfigError("aggregator", f"can only register AggregationRule subclasses, got {cls!r}")
    RULES.register(cls.name, cls)
    return cls


def _params_of(cls: type) -> set[str]:
    """Keyword parameters accepted by a rule class, following ``**kwargs`` up the MRO."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init: Callable[..., None] | None = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        names.update(p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY)
        if not any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values()):
            break
    return names


def make_rule(name: str, n_clients: int, n_malicious: int = 0, **params: Any) -> AggregationRule:
    """Build the rule registered as ``name`` for ``n_clients`` per round with at most ``n_malicious`` Byzantine.

    Raises :class:`ConfigError` for an unknown name or parameter, or a precondition the pair
    ``(n, f)`` breaks, e.g. ``krum needs n > 2f+2, got n=6, f=2``.
    """
    cls = RULES.get(name)
    allowed = _params_of(cls)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(
            "aggregator",
            f"{name} does not take parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
            + did_you_mean(unknown[0], allowed),
        )
    return cls(n_clients, n_malicious, **params)


def check_protocol_compatible(rule: AggregationRule, protocol: AggregationProtocol) -> None:
    """Refuse, at set-up time, a rule that needs individual updates with a protocol that hides them."""
    if rule.requires_individual_updates and not protocol.reveals_individual_updates:
        raise ConfigError(
            "aggregator",
            f"{rule.name} needs the individual updates, but protocol {protocol.name!r} reveals only their "
            f"aggregate; use fedavg with this protocol, or a protocol that reveals updates (e.g. plaintext)",
        )
