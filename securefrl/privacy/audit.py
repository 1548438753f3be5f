"""Empirical privacy audit: a statistically valid lower bound on epsilon from a canary-client test.

Accounting gives an upper bound on epsilon *if the code does what the analysis assumes*. An audit
checks the code: it runs the real clipped + noised aggregation many times with and without a canary
client and measures how well a threshold test tells the two worlds apart (Jagielski, Ullman & Oprea
2020, "Auditing Differentially Private Machine Learning: How Private is Private SGD?"). Any
``(epsilon, delta)``-DP mechanism forces every test to satisfy ``FPR + e^eps FNR >= 1 - delta`` and
``FNR + e^eps FPR >= 1 - delta``, so upper confidence bounds on FPR and FNR give

    epsilon_lb = max(log((1 - FNR_hi - delta) / FPR_hi), log((1 - FPR_hi - delta) / FNR_hi)).

Following Nasr et al. 2023 ("Tight Auditing of Differentially Private Machine Learning"), the audit
uses the worst case the guarantee covers: the other clients' updates are fixed across trials (only the
DP noise is random) and the canary is a full-norm update whose direction the test projects onto.
The two worlds are zero-out neighbours: the canary client takes part in both and sends a zero update
in the world without it. That is the relation distributed and local noise protect — under secure
aggregation the server sees who took part, and an extra participant also brings an extra noise share,
so add/remove of a whole client would be distinguishable through the noise variance alone.
Clopper-Pearson intervals make the bound hold with the stated confidence; the threshold is chosen on
one half of the trials and evaluated on the other, because maximising over thresholds on the same data
would void the confidence level. A lower bound above the claimed epsilon proves the claim false (up to
the confidence level); a bound below it proves nothing more than "not caught".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from securefrl.errors import ConfigError
from securefrl.privacy._validate import non_negative, positive, positive_int, probability
from securefrl.privacy.accounting import Mechanism, PrivacyAccountant
from securefrl.privacy.noise import PLACEMENTS, Placement, add_central_noise, add_distributed_noise, add_local_noise
from securefrl.transforms import clip_by_l2_norm


@dataclass(frozen=True)
class AuditResult:
    """Outcome of an audit; ``violates`` means the lower bound exceeds the claimed epsilon."""

    epsilon_lower_bound: float
    claimed_epsilon: float
    violates: bool
    threshold: float
    """Score threshold selected on the first half of the trials."""
    fpr_upper: float
    """Clopper-Pearson upper bound on the false-positive rate on the held-out half."""
    fnr_upper: float
    """Clopper-Pearson upper bound on the false-negative rate on the held-out half."""
    n_trials: int
    """Mechanism runs per world (with / without canary)."""
    confidence: float
    delta: float


def clopper_pearson_upper(successes: np.ndarray | int, trials: int, alpha: float) -> np.ndarray:
    """Exact one-sided upper ``1 - alpha`` confidence bound on a binomial rate (Clopper & Pearson 1934)."""
    k = np.asarray(successes, dtype=np.float64)
    n = positive_int("trials", trials)
    probability("alpha", alpha, allow_one=False)
    if np.any((k < 0) | (k > n)):
        raise ConfigError("successes", f"must lie in [0, {n}]")
    safe_b = np.where(k < n, n - k, 1.0)
    upper = stats.beta.ppf(1.0 - alpha, k + 1.0, safe_b)
    return np.where(k < n, upper, 1.0)


def _epsilon_bounds(fpr_hi: np.ndarray, fnr_hi: np.ndarray, delta: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.maximum(1.0 - fnr_hi - delta, 0.0) / fpr_hi)
        b = np.log(np.maximum(1.0 - fpr_hi - delta, 0.0) / fnr_hi)
    return np.maximum(np.nan_to_num(np.maximum(a, b), nan=0.0, neginf=0.0), 0.0)


def _rates_hi(
    without: np.ndarray, with_: np.ndarray, thresholds: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Upper bounds on FPR / FNR of the test 'canary present iff score > threshold'."""
    without_sorted, with_sorted = np.sort(without), np.sort(with_)
    false_pos = without.size - np.searchsorted(without_sorted, thresholds, side="right")
    false_neg = np.searchsorted(with_sorted, thresholds, side="right")
    return (
        clopper_pearson_upper(false_pos, without.size, alpha),
        clopper_pearson_upper(false_neg, with_.size, alpha),
    )


def epsilon_lower_bound(
    scores_without: np.ndarray, scores_with: np.ndarray, delta: float, confidence: float = 0.95
) -> tuple[float, float, float, float]:
    """Lower bound on epsilon from canary-test scores: ``(epsilon_lb, threshold, FPR_hi, FNR_hi)``.

    The first half of each sample selects the threshold, the second half bounds the rates; both
    Clopper-Pearson bounds hold together with probability ``confidence`` (union bound, ``alpha / 2``
    each). Both test directions enter through the two inequalities of (epsilon, delta)-DP.
    """
    delta = non_negative("delta", delta)
    alpha = 1.0 - probability("confidence", confidence, allow_one=False)
    s0, s1 = np.asarray(scores_without, dtype=np.float64), np.asarray(scores_with, dtype=np.float64)
    if s0.ndim != 1 or s1.ndim != 1 or s0.size < 4 or s1.size < 4:
        raise ConfigError("scores", "need two 1-D score arrays with at least 4 entries each")
    h0, h1 = s0.size // 2, s1.size // 2
    candidates = np.unique(np.concatenate([s0[:h0], s1[:h1]]))
    fpr_sel, fnr_sel = _rates_hi(s0[:h0], s1[:h1], candidates, alpha / 2)
    threshold = float(candidates[int(np.argmax(_epsilon_bounds(fpr_sel, fnr_sel, delta)))])
    fpr_hi, fnr_hi = _rates_hi(s0[h0:], s1[h1:], np.array([threshold]), alpha / 2)
    eps = float(_epsilon_bounds(fpr_hi, fnr_hi, delta)[0])
    return eps, threshold, float(fpr_hi[0]), float(fnr_hi[0])


def gaussian_mechanism_epsilon(noise_multiplier: float, delta: float) -> float:
    """Exact epsilon of one (unsubsampled) Gaussian mechanism, sensitivity 1, std ``z``.

    Analytic Gaussian mechanism (Balle & Wang 2018, Theorem 8): the smallest epsilon with
    ``Phi(1/(2z) - eps z) - e^eps Phi(-1/(2z) - eps z) <= delta``. Any sound audit stays below it.
    """
    z = positive("noise_multiplier", noise_multiplier)
    delta = probability("delta", delta, allow_one=False)

    def delta_of(eps: float) -> float:
        return float(stats.norm.cdf(0.5 / z - eps * z) - math.exp(eps + stats.norm.logcdf(-0.5 / z - eps * z)))

    if delta_of(0.0) <= delta:
        return 0.0
    hi = 1.0
    while delta_of(hi) > delta:
        hi *= 2.0
    return float(optimize.brentq(lambda e: delta_of(e) - delta, 0.0, hi, xtol=1e-12))


def audit_gaussian_mechanism(
    clip: float,
    noise_multiplier: float,
    n_trials: int,
    rng: np.random.Generator,
    delta: float = 1e-5,
    claimed_epsilon: float | None = None,
    *,
    placement: Placement = "central",
    n_clients: int = 3,
    dim: int = 8,
    mechanism_noise_multiplier: float | None = None,
    confidence: float = 0.95,
    accountant: Mechanism = "rdp",
) -> AuditResult:
    """Audit one round of client-level DP-FedAvg aggregation with a canary client.

    Runs the library's own clipping and noise (``placement``: central, distributed with ``m_min`` =
    all ``n_clients + 1`` participants, or local) ``n_trials`` times with the canary client sending
    zeros and ``n_trials`` times with it sending ``clip`` times a random unit vector; the other
    ``n_clients`` updates are fixed. The score is the noisy sum projected on the canary direction.

    ``claimed_epsilon`` defaults to the accountant's epsilon for one full-participation step with
    ``noise_multiplier``. ``mechanism_noise_multiplier`` (default: the claimed ``noise_multiplier``)
    is what the mechanism really uses — set it lower to check that the audit catches under-noising.
    The noise is drawn from ``rng`` (seeded, reproducible audits; warns once like any seeded noise): the
    audit simulates the mechanism's distribution and releases nothing.
    """
    clip = positive("clip", clip)
    z_claim = positive("noise_multiplier", noise_multiplier)
    z_mech = (
        z_claim
        if mechanism_noise_multiplier is None
        else positive("mechanism_noise_multiplier", mechanism_noise_multiplier)
    )
    n_trials = positive_int("n_trials", n_trials)
    n_clients = positive_int("n_clients", n_clients)
    dim = positive_int("dim", dim)
    delta = probability("delta", delta, allow_one=False)
    if placement not in PLACEMENTS:
        raise ConfigError("placement", f"must be one of {PLACEMENTS}, got {placement!r}")
    if n_trials < 4:
        raise ConfigError("n_trials", f"must be at least 4, got {n_trials}")
    if claimed_epsilon is None:
        acc = PrivacyAccountant(accountant)
        acc.step(z_claim, 1.0)
        claimed_epsilon = acc.epsilon(delta)
    claimed_epsilon = non_negative("claimed_epsilon", claimed_epsilon)

    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    canary = clip * direction
    others = [rng.normal(size=dim) * clip for _ in range(n_clients)]  # fixed neighbours: worst case
    clipper = clip_by_l2_norm(clip)
    # Seeded from ``rng`` on purpose: the audit is a reproducible simulation of the mechanism whose noise is
    # never released, so the library's secure default (OS CSPRNG) is not needed here.
    noiser = (
        add_local_noise(clip, z_mech, secure=False)
        if placement == "local"
        else add_distributed_noise(clip, z_mech, n_clients + 1, secure=False)
        if placement == "distributed"
        else None
    )

    def run(with_canary: bool) -> float:
        total = np.zeros(dim)
        for update in [*others, canary if with_canary else np.zeros(dim)]:
            clipped, _ = clipper.update(update, None, rng)
            if noiser is not None:
                clipped, _ = noiser.update(clipped, None, rng)
            total += clipped
        if placement == "central":
            total = add_central_noise(total, clip, z_mech, rng, secure=False)
        return float(total @ direction)

    scores_without = np.array([run(False) for _ in range(n_trials)])
    scores_with = np.array([run(True) for _ in range(n_trials)])
    eps, threshold, fpr_hi, fnr_hi = epsilon_lower_bound(scores_without, scores_with, delta, confidence)
    return AuditResult(
        epsilon_lower_bound=eps,
        claimed_epsilon=claimed_epsilon,
        violates=eps > claimed_epsilon,
        threshold=threshold,
        fpr_upper=fpr_hi,
        fnr_upper=fnr_hi,
        n_trials=n_trials,
        confidence=confidence,
        delta=delta,
    )
