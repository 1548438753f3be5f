"""Gaussian noise for client-level DP (DP-FedAvg, McMahan et al. 2018) at three placements.

The Gaussian mechanism on a sum of updates each clipped to L2 norm ``C`` adds ``N(0, (z C)^2)`` per
coordinate, ``z`` being the noise multiplier the accountant is told about. Who adds it decides whom the
guarantee protects against:

* **central** — a trusted aggregator adds the full noise to the *sum* (:func:`add_central_noise`). Only
  sound where the protocol reveals the sum to that aggregator (plaintext, or the key holder after
  opening a CKKS aggregate); the individual updates must not be visible to anyone else.
* **distributed** — every client adds a share ``N(0, (z C)^2 / m_min)`` (:func:`add_distributed_noise`)
  and secure aggregation reveals only the sum, which carries the full noise once ``m_min`` shares are
  in it (Truex et al. 2019; Kairouz et al. 2021, "The Distributed Discrete Gaussian Mechanism").
  :func:`survivor_noise_multiplier` reports the noise multiplier actually achieved after dropouts.
* **local** — every client adds the full ``N(0, (z C)^2)`` to its own update (:func:`add_local_noise`);
  nobody needs to be trusted, at the price of ``sqrt(m)`` times more noise in the sum.

Distributed and local noise protect what a participating client sends (zero-out neighbours: its update
replaced by zeros). They do not hide participation: whoever sees who took part sees it, and an extra
participant adds an extra noise share, which shows in the variance of the sum.

Every function here is secure by default, as the config path is: noise comes from the operating system's
CSPRNG (:func:`secure_gaussian`) and any ``rng`` passed is ignored. Seeded noise needs ``secure=False``
explicitly together with a ``numpy.random.Generator`` (experiments: reproducible, and
:class:`SeededNoiseWarning` says once per process that this is not for deployment, since whoever has the
seed regenerates the noise and removes it).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Literal

import numpy as np

from securefrl.errors import ConfigError, SecureFRLError
from securefrl.privacy._validate import non_negative, positive, positive_int
from securefrl.transforms import State, UpdateTransform, chain, check_finite, clip_by_l2_norm

Placement = Literal["central", "distributed", "local"]
PLACEMENTS: tuple[str, ...] = ("central", "distributed", "local")

# Slack for "already clipped" checks: clipping rescales in floating point, so the norm can exceed C by ~1 ulp.
CLIP_TOLERANCE = 1e-6

_seeded_warning_issued = False


class SeededNoiseWarning(UserWarning):
    """Noise was drawn from a seeded pseudo-random generator: fine for experiments, not for deployment."""


class InsufficientSurvivorsError(SecureFRLError, ValueError):
    """Fewer clients survived than distributed noise was calibrated for, so the sum is under-noised."""

    def __init__(self, survivors: int, min_survivors: int) -> None:
        super().__init__(
            f"only {survivors} clients survived but the distributed noise shares were calibrated for at least "
            f"{min_survivors}; the aggregate carries less noise than claimed. Discard the round, or pass "
            "allow_fewer=True to account for the reduced noise multiplier honestly."
        )
        self.survivors = survivors
        self.min_survivors = min_survivors


def _warn_seeded_once() -> None:
    global _seeded_warning_issued
    if not _seeded_warning_issued:
        _seeded_warning_issued = True
        warnings.warn(
            "DP noise is drawn from a seeded numpy Generator: reproducible for experiments, but predictable to "
            "anyone who knows the seed and open to floating-point attacks. It is what "
            "privacy.seeded_noise_experiment = true (secure=False in the Python API) asks for; leave the flag false "
            "and secure at its default (True) for OS CSPRNG noise.",
            SeededNoiseWarning,
            stacklevel=3,
        )


def secure_uniform(n: int) -> np.ndarray:
    """``n`` uniforms on ``[0, 1)`` with 53 random bits each, read from ``os.urandom``."""
    raw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    return (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _urandom_standard_normal(n: int) -> np.ndarray:
    """``n`` standard normals by Box-Muller on 53-bit uniforms read from ``os.urandom``."""
    pairs = (n + 1) // 2
    raw = np.frombuffer(os.urandom(16 * pairs), dtype=np.uint64).reshape(pairs, 2)
    scale = 2.0**-53
    u1 = ((raw[:, 0] >> np.uint64(11)).astype(np.float64) + 1.0) * scale  # (0, 1]: log never sees 0
    u2 = (raw[:, 1] >> np.uint64(11)).astype(np.float64) * scale  # [0, 1)
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = (2.0 * math.pi) * u2
    out = np.empty(2 * pairs, dtype=np.float64)
    out[0::2] = radius * np.cos(angle)
    out[1::2] = radius * np.sin(angle)
    return out[:n]


def secure_gaussian(std: float, size: int | tuple[int, ...]) -> np.ndarray:
    """Draw ``N(0, std^2)`` noise from the OS CSPRNG, hardened as Opacus's ``secure_mode`` does.

    Why this construction: a seeded PRNG lets anyone who learns or guesses the seed subtract the noise
    exactly, and a plain floating-point Gaussian sampler leaks through the pattern of representable
    values (Mironov 2012 for Laplace; Jin et al. 2022, "Are We There Yet? Timing and Floating-Point
    Attacks on Differential Privacy Systems", for Gaussian and Opacus). So

    1. the randomness is read from ``os.urandom`` (the kernel CSPRNG: no seed, no recoverable state),
       turned into 53-bit uniforms and into normals by Box-Muller;
    2. like Opacus's ``secure_mode`` (Holohan & Braghin 2021, "Secure Random Sampling in Differential
       Privacy", §5.1, with n = 2), each output is the sum of four independent ``N(0, std^2)`` draws
       divided by 2 — same distribution, but an attacker must now invert four samples at once.

    Limits, stated plainly: this is a mitigation, not a proof. The output is still a float64, so its
    support is discrete and the tails are cut near 17 std; the DP proof of the continuous Gaussian
    mechanism does not formally cover it, and timing side channels are not addressed. A formal
    guarantee needs the discrete Gaussian on a fixed-point grid (Canonne, Kamath & Steinke 2020),
    which is not implemented here. ``torchcsprng``, which Opacus uses, is not required.
    """
    std = non_negative("std", std)
    shape = (size,) if isinstance(size, int) else tuple(size)
    n = math.prod(shape)
    if std == 0 or n == 0:
        return np.zeros(shape, dtype=np.float64)
    total = np.zeros(n, dtype=np.float64)
    for _ in range(4):
        total += std * _urandom_standard_normal(n)
    return (total / 2.0).reshape(shape)


def gaussian_noise(
    std: float, size: int | tuple[int, ...], rng: np.random.Generator | None, *, secure: bool = True
) -> np.ndarray:
    """``N(0, std^2)`` noise: from the OS CSPRNG (default) or, with ``secure=False``, from ``rng`` (experiments,
    warns once).

    In secure mode ``rng`` is ignored on purpose: deployment noise must not be reproducible.
    """
    std = non_negative("std", std)
    if secure:
        return secure_gaussian(std, size)
    if not isinstance(rng, np.random.Generator):
        raise ConfigError("rng", "seeded noise (secure=False) needs an explicit numpy.random.Generator; the default, "
                          "secure=True, needs none")
    _warn_seeded_once()
    return rng.normal(0.0, std, size) if std > 0 else np.zeros(size, dtype=np.float64)


def add_central_noise(
    sum_vec: np.ndarray,
    clip: float,
    noise_multiplier: float,
    rng: np.random.Generator | None,
    *,
    secure: bool = True,
) -> np.ndarray:
    """Add ``N(0, (z C)^2)`` to an aggregate sum of clipped updates (central DP-FedAvg, McMahan et al. 2018).

    Only allowed where the protocol reveals the sum to a party trusted to add the noise (plaintext
    aggregation, or the CKKS key holder after ``open``): that party sees the un-noised sum. Where no
    party may see it, use distributed noise instead. OS CSPRNG noise unless ``secure=False`` (then ``rng``).
    """
    arr = check_finite(sum_vec)
    std = positive("clip", clip) * non_negative("noise_multiplier", noise_multiplier)
    return arr + gaussian_noise(std, arr.shape, rng, secure=secure)


def distributed_noise_std(clip: float, noise_multiplier: float, min_survivors: int, max_colluding: int = 0) -> float:
    """Per-client noise std ``z C / sqrt(m_min - k)``: any ``m_min - k`` shares sum to the full ``(z C)^2``.

    ``k = max_colluding`` included clients may withhold their share (colluding with the server, which then
    knows the rest); the honest ``m_min - k`` still carry the full noise.
    """
    c = positive("clip", clip)
    z = non_negative("noise_multiplier", noise_multiplier)
    m = positive_int("min_survivors", min_survivors)
    k = _colluding(max_colluding, m)
    return z * c / math.sqrt(m - k)


def _colluding(max_colluding: int, min_survivors: int) -> int:
    k = int(max_colluding)
    if k < 0 or k >= min_survivors:
        raise ConfigError("max_colluding", f"must lie in [0, min_survivors={min_survivors}), got {max_colluding}")
    return k


def survivor_noise_multiplier(
    noise_multiplier: float, survivors: int, min_survivors: int, *, allow_fewer: bool = False, max_colluding: int = 0
) -> float:
    """Noise multiplier the aggregate really carries: ``z_eff = z * sqrt((survivors - k) / (m_min - k))``.

    Each of the ``survivors`` clients whose share reached the sum added variance ``(z C)^2 / (m_min - k)``,
    of which up to ``k = max_colluding`` may have withheld theirs, so only ``survivors - k`` count.
    Report ``z_eff`` to the accountant so epsilon is honest: smaller when more clients survived than
    planned for, larger when fewer did. Fewer than ``m_min`` survivors raises
    :class:`InsufficientSurvivorsError` unless ``allow_fewer`` (then the reduced ``z_eff`` is returned).
    """
    z = non_negative("noise_multiplier", noise_multiplier)
    m_min = positive_int("min_survivors", min_survivors)
    m = positive_int("survivors", survivors)
    k = _colluding(max_colluding, m_min)
    if m < m_min and not allow_fewer:
        raise InsufficientSurvivorsError(m, m_min)
    if m <= k:
        raise InsufficientSurvivorsError(m, m_min)
    return z * math.sqrt((m - k) / (m_min - k))


def _require_clipped(arr: np.ndarray, clip: float, name: str) -> None:
    norm = float(np.linalg.norm(arr))
    if norm > clip * (1.0 + CLIP_TOLERANCE):
        raise ConfigError(
            "pipeline",
            f"{name} is calibrated to clip norm {clip} but received an update of norm {norm:.6g}; "
            "put clip_by_l2_norm before the noise transform",
        )


def _noise_transform(name: str, clip: float, std: float, secure: bool) -> UpdateTransform:
    def init(dim: int) -> State:
        return None

    def update(vec: np.ndarray, state: State, rng: np.random.Generator) -> tuple[np.ndarray, State]:
        arr = check_finite(vec)
        _require_clipped(arr, clip, name)
        return arr + gaussian_noise(std, arr.shape, rng, secure=secure), state

    return UpdateTransform(name, init, update)


def add_local_noise(clip: float, noise_multiplier: float, *, secure: bool = True) -> UpdateTransform:
    """Transform adding the full ``N(0, (z C)^2)`` to one client's clipped update (local DP).

    Each update is then private on its own, against the server and everyone else. The noise comes from the
    OS CSPRNG unless ``secure=False`` (then from the ``rng`` the pipeline's ``update`` is given: experiments).
    """
    c = positive("clip", clip)
    z = non_negative("noise_multiplier", noise_multiplier)
    return _noise_transform(f"local_noise(z={z}, C={c})", c, z * c, secure)


def add_distributed_noise(
    clip: float, noise_multiplier: float, min_survivors: int, *, secure: bool = True, max_colluding: int = 0
) -> UpdateTransform:
    """Transform adding one client's share ``N(0, (z C)^2 / m_min)`` of the aggregate noise.

    Sound only under secure aggregation that reveals just the sum; any ``m >= m_min`` surviving shares
    give at least the claimed noise (report :func:`survivor_noise_multiplier` to the accountant). OS CSPRNG
    noise unless ``secure=False`` (then the ``rng`` given to ``update``: experiments).
    """
    c = positive("clip", clip)
    z = non_negative("noise_multiplier", noise_multiplier)
    std = distributed_noise_std(c, z, min_survivors, max_colluding)
    return _noise_transform(f"distributed_noise(z={z}, C={c}, m_min={min_survivors}, k={max_colluding})", c, std,
                            secure)


def dp_client_pipeline(
    placement: Placement,
    clip: float,
    noise_multiplier: float,
    *,
    min_survivors: int | None = None,
    secure: bool = True,
    max_colluding: int = 0,
) -> UpdateTransform:
    """Client pipeline ``check_finite -> clip -> noise`` for the given noise placement.

    For ``"central"`` the client only clips; the aggregator calls :func:`add_central_noise` on the sum.
    Secure noise by default; ``secure=False`` for seeded, reproducible experiments.
    """
    if placement not in PLACEMENTS:
        raise ConfigError("placement", f"must be one of {PLACEMENTS}, got {placement!r}")
    clipper = clip_by_l2_norm(positive("clip", clip))
    if placement == "central":
        return chain(clipper)
    if placement == "local":
        return chain(clipper, add_local_noise(clip, noise_multiplier, secure=secure))
    if min_survivors is None:
        raise ConfigError("min_survivors", "distributed noise needs the minimum number of surviving clients")
    return chain(clipper, add_distributed_noise(clip, noise_multiplier, min_survivors, secure=secure,
                                                max_colluding=max_colluding))
