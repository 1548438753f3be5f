"""Summary statistics of the benchmarks over seeds: Student-t intervals and bootstrap ratios (one copy)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_ratio", "t_interval"]


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% Student-t interval (half-width nan for a single value)."""
    from scipy import stats

    a = np.asarray(values, dtype=np.float64)
    if a.size < 2:
        return float(a.mean()), float("nan")
    return float(a.mean()), float(stats.t.ppf(0.975, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))


def bootstrap_ratio(num: Sequence[float], den: Sequence[float], seed: int = 0, n: int = 2000
                    ) -> tuple[float, float, float]:
    """mean(num) / mean(den) and a 95% percentile-bootstrap interval (the two samples resampled independently)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    ra = a[rng.integers(0, len(a), (n, len(a)))].mean(axis=1)
    rb = b[rng.integers(0, len(b), (n, len(b)))].mean(axis=1)
    lo, hi = np.percentile(ra / rb, [2.5, 97.5])
    return float(a.mean() / b.mean()), float(lo), float(hi)
