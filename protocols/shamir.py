"""Shamir t-of-n secret sharing over the prime field GF(2^521 - 1).

SecAgg (Bonawitz et al. 2017, CCS, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", §4) shares each client's self-mask seed and pairwise-mask secret key so the server can
recover exactly one of the two for every client once ``t`` others cooperate; SecAgg+ (Bell et al.
2020, CCS, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead") does the same among a
client's neighbours only. The field is the Mersenne prime 2^521 - 1, large enough to hold a 256-bit
secret (an X25519 key or a 32-byte seed) in one element, so one polynomial shares one secret.

Security rests on the polynomial coefficients being uniform and secret, so they come from
:mod:`secrets` (never a seeded generator): any ``t - 1`` shares are then uniformly distributed
whatever the secret is, i.e. they carry no information about it.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache

from protocols.errors import PayloadError, ProtocolError

#: The Mersenne prime 2^521 - 1.
PRIME = (1 << 521) - 1
#: Fixed-width big-endian encoding of one field element.
SHARE_BYTES = (PRIME.bit_length() + 7) // 8


class InsufficientSharesError(ProtocolError, ValueError):
    """Fewer than ``threshold`` shares were offered: Shamir sharing reveals nothing from them."""


class ShareFormatError(PayloadError):
    """A share received from a peer is not a valid field element."""


class ReconstructionError(ProtocolError):
    """No ``threshold`` of the offered shares rebuild a secret that passes its check (too many forged shares)."""


def evaluate(coefficients: Sequence[int], x: int, prime: int = PRIME) -> int:
    """Evaluate ``sum(c_k x^k) mod prime`` by Horner's rule (``coefficients[0]`` is the secret)."""
    acc = 0
    for c in reversed(coefficients):
        acc = (acc * x + c) % prime
    return acc


def split(secret: int, threshold: int, xs: Sequence[int], prime: int = PRIME) -> dict[int, int]:
    """Share ``secret`` at the points ``xs`` so that any ``threshold`` of them recover it.

    The ``threshold - 1`` higher coefficients are drawn with :func:`secrets.randbelow`.
    """
    _check_points(xs, prime)
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in [1, {len(xs)}] for {len(xs)} shares, got {threshold}")
    if not 0 <= secret < prime:
        raise ValueError("secret must be a non-negative integer below the field prime")
    coefficients = [secret] + [secrets.randbelow(prime) for _ in range(threshold - 1)]
    return {x: evaluate(coefficients, x, prime) for x in xs}


def reconstruct(shares: Mapping[int, int], threshold: int, prime: int = PRIME) -> int:
    """Recover the secret from at least ``threshold`` shares ``{x: y}``.

    Uses the ``threshold`` smallest points (a canonical choice, so Lagrange coefficients are cached
    and shared across secrets held by the same survivors). Raises :class:`InsufficientSharesError`
    below the threshold rather than returning a meaningless value.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, got {threshold}")
    if len(shares) < threshold:
        raise InsufficientSharesError(f"{len(shares)} shares offered, {threshold} needed to reconstruct")
    xs = tuple(sorted(shares)[:threshold])
    _check_points(xs, prime)
    lambdas = lagrange_at_zero(xs, prime)
    return sum(lam * shares[x] for lam, x in zip(lambdas, xs, strict=True)) % prime


@lru_cache(maxsize=256)
def lagrange_at_zero(xs: tuple[int, ...], prime: int = PRIME) -> tuple[int, ...]:
    """Lagrange basis coefficients ``l_i(0) = prod_{j != i} x_j / (x_j - x_i)`` modulo ``prime``."""
    return lagrange_at(xs, 0, prime)


@lru_cache(maxsize=4096)
def lagrange_at(xs: tuple[int, ...], x: int, prime: int = PRIME) -> tuple[int, ...]:
    """Lagrange basis coefficients ``l_i(x) = prod_{j != i} (x - x_j) / (x_i - x_j)`` modulo ``prime``."""
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (x - xj) % prime
                den = den * (xi - xj) % prime
        out.append(num * pow(den, -1, prime) % prime)
    return tuple(out)


def _candidate_subsets(xs: list[int], t: int, max_tries: int) -> Iterator[tuple[int, ...]]:
    """t-subsets to try, most likely first: the canonical first t, then each leaving out one or two points."""
    yield tuple(xs[:t])
    tried = 1
    for drop in (1, 2):
        for out in itertools.combinations(xs, drop):
            rest = [x for x in xs if x not in out]
            if len(rest) < t:
                return
            yield tuple(rest[:t])
            tried += 1
            if tried >= max_tries:
                return


@lru_cache(maxsize=256)
def _dual_weights(xs: tuple[int, ...], prime: int) -> tuple[int, ...]:
    """``v_i = 1 / prod_{j != i} (x_i - x_j)``: the column multipliers of the dual of the Reed-Solomon code."""
    out = []
    for i, xi in enumerate(xs):
        den = 1
        for j, xj in enumerate(xs):
            if j != i:
                den = den * (xi - xj) % prime
        out.append(pow(den, -1, prime))
    return tuple(out)


def _on_one_polynomial(xs: tuple[int, ...], shares: Mapping[int, int], t: int, prime: int) -> bool:
    """Cheap check that all points lie on one polynomial of degree < t: ``sum_i v_i x_i^k y_i = 0``, k < m - t.

    Points of a degree-<t polynomial satisfy these dual-code equations; k = 0 and 1 are checked (two dot
    products instead of evaluating the polynomial at every point), which catches any one or two forged shares.
    A crafted set of three or more might pass: those go unnamed but cannot change the (checked) secret.
    """
    v = _dual_weights(xs, prime)
    for k in range(min(2, len(xs) - t)):
        if sum(vi * pow(x, k, prime) * shares[x] for vi, x in zip(v, xs, strict=True)) % prime:
            return False
    return True


def robust_reconstruct(
    shares: Mapping[int, int], threshold: int, check: Callable[[int], bool], max_tries: int = 256,
    prime: int = PRIME,
) -> tuple[int, frozenset[int]]:
    """Recover a secret that passes ``check`` from shares some of which may be forged; name the forgers.

    Robust reconstruction for SecAgg against lying share holders (Bonawitz et al. 2017, §6.2, commitments
    to the secrets): the secret of a t-subset is accepted only if ``check`` (e.g. against the owner's
    commitment) passes; the polynomial through that subset is then evaluated at every other offered point,
    and shares that disagree are forgeries. With ``m`` shares of which ``e`` are forged, a clean subset
    exists whenever ``m - e >= t``; subsets leaving out up to two points are tried (enough for ``e <= 2``,
    and more when the liars sit among the highest points). Returns ``(secret, forged x's)``; raises
    :class:`ReconstructionError` if no subset passes.
    """
    if len(shares) < threshold:
        raise InsufficientSharesError(f"{len(shares)} shares offered, {threshold} needed to reconstruct")
    xs = sorted(shares)
    _check_points(xs, prime)
    for base in _candidate_subsets(xs, threshold, max_tries):
        secret = sum(lam * shares[x] for lam, x in zip(lagrange_at_zero(base, prime), base, strict=True)) % prime
        if not check(secret):
            continue
        if _on_one_polynomial(tuple(xs), shares, threshold, prime):
            return secret, frozenset()  # every offered share agrees: nobody to name
        forged = frozenset(
            x for x in xs if x not in base
            and sum(lam * shares[b] for lam, b in zip(lagrange_at(base, x, prime), base, strict=True)) % prime
            != shares[x]
        )
        return secret, forged
    raise ReconstructionError(f"no {threshold} of the {len(xs)} shares rebuild a secret that passes its check")


def encode_share(value: int) -> bytes:
    """Fixed-width encoding of a share value, so messages have exact, checkable lengths."""
    return value.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    """Parse a share received from a peer; values outside the field are refused."""
    if len(data) != SHARE_BYTES:
        raise ShareFormatError(f"share holds {len(data)} bytes, expected {SHARE_BYTES}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ShareFormatError("share value is not a field element (>= 2^521 - 1)")
    return value


def _check_points(xs: Sequence[int], prime: int) -> None:
    if len(set(xs)) != len(xs):
        raise ValueError("share points must be distinct")
    if any(not 0 < x < prime for x in xs):
        raise ValueError("share points must lie in [1, prime - 1]; x = 0 would be the secret itself")
