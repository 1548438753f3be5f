"""Per-client update clipping for DP-FedAvg: fixed (McMahan et al. 2018) and adaptive (Andrew et al. 2021).

Fixed clipping is :func:`securefrl.transforms.clip_by_l2_norm` (re-exported here). Adaptive clipping,
from Andrew, Thakkar, McMahan & Ramaswamy 2021, "Differentially Private Learning with Adaptive
Clipping", lets the clip norm ``C`` track a target quantile ``gamma`` of the clients' update norms:

1. each client clips to the current ``C`` and also reports the centred bit ``b_i - 1/2`` where
   ``b_i = 1[||delta_i|| <= C]`` (:func:`clip_with_indicator`);
2. the bits are summed (securely, like the updates) and noised with std ``sigma_b``; the server turns
   the noisy sum into a noisy unclipped fraction (:func:`noisy_unclipped_fraction`);
3. the server updates ``C <- C * exp(-eta * (b_frac - gamma))`` (:func:`adaptive_clip_update`).

The noisy count is a second Gaussian mechanism on the same clients, so it spends privacy budget.
The paper (Theorem 1) shows that releasing both with update noise multiplier ``z_delta`` and count
noise ``sigma_b`` is as private as one Gaussian mechanism with multiplier
``z = (z_delta^-2 + (2 sigma_b)^-2)^-1/2``; the factor 2 is the sensitivity 1/2 of the centred bit.
To hit a target ``z``, noise the updates with :func:`adaptive_update_noise_multiplier` and give the
accountant ``z`` (:func:`adaptive_effective_noise_multiplier`). The paper recommends ``gamma = 0.5``,
``eta = 0.2`` and ``sigma_b = expected clients per round / 20``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np

from securefrl.errors import ConfigError, UpdateRejectedError
from securefrl.privacy._validate import non_negative, positive
from securefrl.privacy.noise import gaussian_noise
from securefrl.transforms import check_finite, clip_by_l2_norm

__all__ = [
    "AdaptiveClipState",
    "adaptive_clip_update",
    "adaptive_effective_noise_multiplier",
    "adaptive_update_noise_multiplier",
    "check_finite",
    "clip_by_l2_norm",
    "clip_with_indicator",
    "noisy_unclipped_fraction",
]


def clip_with_indicator(vec: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    """Clip ``vec`` to L2 norm ``clip`` and return the centred bit ``1[||vec|| <= clip] - 1/2``.

    Centring halves the bit's sensitivity, which is what the effective noise multiplier formula of
    Andrew et al. 2021 assumes. NaN/Inf updates are rejected before anything else.
    """
    arr = check_finite(vec)
    bit = 0.5 if float(np.linalg.norm(arr)) <= positive("clip", clip) else -0.5
    # Clipping is deterministic: it gets no generator, so it would fail loudly if it ever drew randomness.
    clipped, _ = clip_by_l2_norm(clip).update(arr, None, cast(np.random.Generator, None))
    return clipped, bit


def adaptive_effective_noise_multiplier(update_noise_multiplier: float, count_stddev: float) -> float:
    """Noise multiplier of the joint release (updates + noisy count): ``(z_delta^-2 + (2 sigma_b)^-2)^-1/2``.

    This is the value to give the accountant (Andrew et al. 2021, Theorem 1). It is smaller than
    ``z_delta``: the count costs budget.
    """
    z_delta = positive("update_noise_multiplier", update_noise_multiplier)
    sigma_b = positive("count_stddev", count_stddev)
    return (z_delta**-2 + (2.0 * sigma_b) ** -2) ** -0.5


def adaptive_update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """Update noise multiplier ``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2`` that makes the joint release ``z``.

    Requires ``2 sigma_b > z``; otherwise the count alone already spends more than the whole budget.
    """
    z = positive("noise_multiplier", noise_multiplier)
    sigma_b = positive("count_stddev", count_stddev)
    if 2.0 * sigma_b <= z:
        raise ConfigError(
            "count_stddev",
            f"must exceed noise_multiplier / 2 = {z / 2} for the count to leave room for the updates, "
            f"got {sigma_b}; increase count_stddev (paper: expected clients per round / 20) or lower z",
        )
    return (z**-2 - (2.0 * sigma_b) ** -2) ** -0.5


def noisy_unclipped_fraction(
    centered_bit_sum: float,
    expected_clients: float,
    count_stddev: float,
    rng: np.random.Generator | None,
    *,
    secure: bool = True,
) -> float:
    """Central release of the unclipped fraction ``(sum(b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2``.

    ``m`` is the *expected* number of clients per round: under Poisson client sampling the actual
    number is itself private (Andrew et al. 2021, Algorithm 1). The result may fall outside [0, 1]. The noise
    comes from the OS CSPRNG unless ``secure=False`` (then from ``rng``: experiments), as in
    :func:`securefrl.privacy.noise.gaussian_noise`.
    """
    if not math.isfinite(centered_bit_sum):
        raise UpdateRejectedError(f"centred bit sum must be finite, got {centered_bit_sum!r}")
    m = positive("expected_clients", expected_clients)
    noise = float(gaussian_noise(non_negative("count_stddev", count_stddev), 1, rng, secure=secure)[0])
    return (float(centered_bit_sum) + noise) / m + 0.5


@dataclass(frozen=True)
class AdaptiveClipState:
    """Server-side state of quantile-tracking clipping (Andrew et al. 2021); immutable, JSON-able."""

    clip_norm: float
    """Current clip norm ``C`` broadcast to the clients."""
    count_stddev: float
    """Std ``sigma_b`` of the noise on the summed centred bits (paper: expected clients / 20)."""
    target_quantile: float = 0.5
    """Fraction ``gamma`` of updates that should end up unclipped (0.5: clip at the median norm)."""
    learning_rate: float = 0.2
    """Step ``eta`` of the geometric update; ``C`` changes by at most a factor ``exp(eta)`` per round."""

    def __post_init__(self) -> None:
        positive("clip_norm", self.clip_norm)
        positive("count_stddev", self.count_stddev)
        positive("learning_rate", self.learning_rate)
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigError("target_quantile", f"must lie in (0, 1), got {self.target_quantile!r}")

    def to_dict(self) -> dict[str, float]:
        """Plain dict for JSON checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptiveClipState:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise :class:`ConfigError`."""
        expected = {"clip_norm", "count_stddev", "target_quantile", "learning_rate"}
        if set(data) != expected:
            raise ConfigError("adaptive_clip", f"expected keys {sorted(expected)}, got {sorted(data)}")
        return cls(**{k: float(v) for k, v in data.items()})


def adaptive_clip_update(state: AdaptiveClipState, noisy_fraction: float) -> AdaptiveClipState:
    """Geometric step ``C <- C * exp(-eta * (b_frac - gamma))`` given the noisy unclipped fraction.

    Too many unclipped updates (``b_frac > gamma``) shrink ``C``; too few grow it. The fraction must
    already be noised (:func:`noisy_unclipped_fraction`, or a securely summed distributed-noise count).
    """
    if not math.isfinite(noisy_fraction):
        raise UpdateRejectedError(f"noisy unclipped fraction must be finite, got {noisy_fraction!r}")
    new_clip = state.clip_norm * math.exp(-state.learning_rate * (float(noisy_fraction) - state.target_quantile))
    return AdaptiveClipState(new_clip, state.count_stddev, state.target_quantile, state.learning_rate)
