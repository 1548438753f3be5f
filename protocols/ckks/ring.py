"""Arithmetic in R_q = Z_q[X]/(X^N + 1) in RNS form, the CKKS encoder, and the samplers, all in numpy.

The CKKS primes come from SEAL (:class:`~protocols.ckks.params.CKKSParams`), each q_i = 1 mod 2N and
below 2^56, so a polynomial is an array of shape ``(..., L, N)`` of uint64 residues, one row per prime.

* :func:`mulmod` multiplies residues exactly modulo q < 2^60 with a floating-point quotient estimate
  (the quotient is off by at most a few units, the wrapped uint64 remainder is then corrected);
* :class:`NTT` is the negacyclic number-theoretic transform (Longa and Naehrig, "Speeding up the
  Number Theoretic Transform for Faster Ideal Lattice-Based Cryptography", CANS 2016): products in
  R_q become pointwise products;
* :class:`Encoder` is the CKKS canonical-embedding encoder (Cheon, Kim, Kim and Song, ASIACRYPT 2017)
  through the FFT: N reals per polynomial (N/2 complex slots, real and imaginary parts), scaled by
  Delta = 2^scale_bits;
* :class:`RandomSource` gives every sampler its bytes: the OS CSPRNG by default, or, in the explicit
  reproducible experiment mode, a ChaCha20 stream keyed from a seed (unfit for deployment).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import cached_property, lru_cache

import numpy as np

from protocols import crypto

#: Standard deviation and clip bound of the RLWE error, as in SEAL (sigma = 3.2, clipped at 6 sigma).
ERROR_SIGMA = 3.2
ERROR_BOUND = 19


def mulmod(a: np.ndarray, b: np.ndarray | int, q: int) -> np.ndarray:
    """``a * b mod q`` for uint64 arrays of residues below a prime q < 2^56, exact.

    The float64 quotient estimate floor(a*b/q) is within 2^(log2 q - 51) + 1 units of the true quotient
    (relative error ~2^-52 on a value below q), so ``a*b - est*q`` computed with wrapping uint64
    arithmetic is the true remainder plus a small multiple of q; for q < 2^56 that fits a signed 64-bit
    word (|r| < 2^62) and one reduction finishes. Wider primes would overflow: params refuses them.
    """
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    est = np.floor(a.astype(np.float64) * (b.astype(np.float64) / q)).astype(np.int64).view(np.uint64)
    r = (a * b - est * np.uint64(q)).view(np.int64)
    return np.remainder(r, q).astype(np.uint64)


_LIMB = 18


def matmul_mod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """``a @ b mod q`` for uint64 residue matrices (q < 2^56, inner size <= 256), exactly, through BLAS.

    Both operands are split into three 18-bit limbs (the top one below 2^20); every limb product is
    below 2^38 and a sum of at most 256 of them below 2^46, so float64 matrix products are exact
    integers. The limb products are then recombined modulo q. Used to deal Shamir shares of a whole
    polynomial to every recipient at once (Vandermonde matrix times coefficient matrix).
    """
    if a.shape[1] > 256 or q >= 2**56:
        raise ValueError("matmul_mod needs an inner size <= 256 and q < 2^56")
    mask = np.uint64((1 << _LIMB) - 1)
    la = [((a >> np.uint64(_LIMB * k)) & mask).astype(np.float64) for k in range(2)] + [
        (a >> np.uint64(2 * _LIMB)).astype(np.float64)]
    lb = [((b >> np.uint64(_LIMB * k)) & mask).astype(np.float64) for k in range(2)] + [
        (b >> np.uint64(2 * _LIMB)).astype(np.float64)]
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.uint64)
    for k in range(5):
        part = np.zeros((a.shape[0], b.shape[1]), dtype=np.float64)
        for i in range(max(0, k - 2), min(2, k) + 1):
            part += la[i] @ lb[k - i]  # < 3 * 2^46: still exact
        r = np.remainder(part.astype(np.uint64), np.uint64(q))
        out = _addmod(out, mulmod(r, pow(2, _LIMB * k, q), q), q)
    return out


def _bitrev(n: int) -> np.ndarray:
    bits = n.bit_length() - 1
    idx = np.arange(n)
    rev = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    return rev


def _primitive_2n_root(q: int, n: int) -> int:
    """A primitive 2N-th root of unity modulo the prime q = 1 mod 2N (deterministic search).

    For x in 2, 3, ..., g = x^((q-1)/2N) has order dividing 2N, a power of two; g^N = -1 means the
    order is exactly 2N. No factoring of q - 1 is needed.
    """
    for x in range(2, 1 << 16):
        g = pow(x, (q - 1) // (2 * n), q)
        if pow(g, n, q) == q - 1:
            return g
    raise ValueError(f"no primitive {2 * n}-th root of unity modulo {q}")


class NTT:
    """Negacyclic NTT of length N modulo one prime q (output in bit-reversed order, as usual)."""

    def __init__(self, n: int, q: int) -> None:
        self.n, self.q = n, q
        psi = _primitive_2n_root(q, n)
        psi_inv = pow(psi, -1, q)
        rev = _bitrev(n)
        pows = np.array([pow(psi, int(e), q) for e in range(n)], dtype=np.uint64)
        ipows = np.array([pow(psi_inv, int(e), q) for e in range(n)], dtype=np.uint64)
        self._psi_rev = pows[rev]
        self._ipsi_rev = ipows[rev]
        self._n_inv = pow(n, -1, q)

    def forward(self, a: np.ndarray) -> np.ndarray:
        """Coefficients (..., N) -> evaluations (..., N); Cooley-Tukey butterflies, merged psi powers."""
        q, n = self.q, self.n
        a = np.array(a, dtype=np.uint64, copy=True)
        lead = a.shape[:-1]
        m, t = 1, n
        while m < n:
            t //= 2
            v = a.reshape(*lead, m, 2, t)
            s = self._psi_rev[m : 2 * m].reshape(m, 1)
            u = v[..., 0, :].copy()
            w = mulmod(v[..., 1, :], s, q)
            v[..., 0, :] = _addmod(u, w, q)
            v[..., 1, :] = _submod(u, w, q)
            m *= 2
        return a

    def inverse(self, a: np.ndarray) -> np.ndarray:
        """Evaluations (..., N) -> coefficients (..., N); Gentleman-Sande butterflies."""
        q, n = self.q, self.n
        a = np.array(a, dtype=np.uint64, copy=True)
        lead = a.shape[:-1]
        t, m = 1, n
        while m > 1:
            h = m // 2
            v = a.reshape(*lead, h, 2, t)
            s = self._ipsi_rev[h:m].reshape(h, 1)
            u = v[..., 0, :].copy()
            w = v[..., 1, :].copy()
            v[..., 0, :] = _addmod(u, w, q)
            v[..., 1, :] = mulmod(_submod(u, w, q), s, q)
            t *= 2
            m = h
        return mulmod(a, self._n_inv, q)


def _addmod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    s = np.add(a, b)
    qq = np.uint64(q)
    np.subtract(s, qq, out=s, where=s >= qq)
    return s


def _submod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    d = np.subtract(a, b)  # wraps below zero; adding q brings it back into [0, q)
    np.add(d, np.uint64(q), out=d, where=a < b)
    return d


@lru_cache(maxsize=16)
def ring_for(n: int, primes: tuple[int, ...]) -> RNSRing:
    """One shared (immutable) ring per parameter set: the NTT tables are built once."""
    return RNSRing(n, primes)


class RNSRing:
    """R_Q with Q = q_1 * ... * q_L held as residues; polynomials are uint64 arrays (..., L, N)."""

    def __init__(self, n: int, primes: Sequence[int]) -> None:
        self.n = n
        self.primes = tuple(int(p) for p in primes)
        self.modulus = math.prod(self.primes)
        self._ntts = [NTT(n, q) for q in self.primes]
        self._q_col = np.array(self.primes, dtype=np.uint64).reshape(-1, 1)

    @property
    def levels(self) -> int:
        return len(self.primes)

    def ntt(self, a: np.ndarray) -> np.ndarray:
        return np.stack([t.forward(a[..., i, :]) for i, t in enumerate(self._ntts)], axis=-2)

    def intt(self, a: np.ndarray) -> np.ndarray:
        return np.stack([t.inverse(a[..., i, :]) for i, t in enumerate(self._ntts)], axis=-2)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.stack([_addmod(a[..., i, :], b[..., i, :], q) for i, q in enumerate(self.primes)], axis=-2)

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.stack([_submod(a[..., i, :], b[..., i, :], q) for i, q in enumerate(self.primes)], axis=-2)

    def neg(self, a: np.ndarray) -> np.ndarray:
        return self.sub(np.zeros_like(a), a)

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pointwise product (both operands in the NTT domain)."""
        return np.stack([mulmod(a[..., i, :], b[..., i, :], q) for i, q in enumerate(self.primes)], axis=-2)

    def scalar(self, a: np.ndarray, c: Sequence[int]) -> np.ndarray:
        """Multiply by the RNS constant whose residues are ``c`` (one per prime)."""
        return np.stack([mulmod(a[..., i, :], int(c[i]) % q, q) for i, q in enumerate(self.primes)], axis=-2)

    def from_signed(self, x: np.ndarray) -> np.ndarray:
        """Small signed int64 coefficients (..., N) to residues (..., L, N)."""
        x = np.asarray(x, dtype=np.int64)
        return np.stack([np.remainder(x, q).astype(np.uint64) for q in self.primes], axis=-2)

    def from_scaled(self, hi: np.ndarray, shift: int) -> np.ndarray:
        """Residues of ``hi * 2^shift`` for signed int64 ``hi`` (scales above 2^63 stay exact)."""
        base = self.from_signed(hi)
        if shift == 0:
            return base
        return self.scalar(base, [pow(2, shift, q) for q in self.primes])

    @cached_property
    def _garner(self) -> list[list[int]]:
        # inv[i][j] = q_j^{-1} mod q_i for j < i
        return [[pow(self.primes[j], -1, qi) for j in range(i)] for i, qi in enumerate(self.primes)]

    def to_float(self, a: np.ndarray) -> np.ndarray:
        """Centered lift of residues (..., L, N) to float64 (..., N) by Garner's mixed-radix CRT.

        Digits u_0 = r_0, u_i = (r_i - (u_0 + q_0 u_1 + ...)) / (q_0...q_{i-1}) mod q_i; the value is
        negative (x - Q) when the top digit is in the upper half. Relative precision is float64's.
        """
        digits = _radix_digits(self, a)
        top_q = self.primes[-1]
        neg = digits[-1] >= np.uint64((top_q + 1) // 2)
        out = np.zeros((*a.shape[:-2], self.n), dtype=np.float64)
        radix = 1.0
        for i, (qi, u) in enumerate(zip(self.primes, digits, strict=True)):
            if i == len(self.primes) - 1:  # centre in int64 first: d - float(q) would round away small values
                d = np.where(neg, u.astype(np.int64) - np.int64(qi), u.astype(np.int64)).astype(np.float64)
            else:
                d = u.astype(np.float64)
            out += d * radix
            radix *= float(qi)
        return out


def _radix_digits(ring: RNSRing, a: np.ndarray) -> list[np.ndarray]:
    """Garner's mixed-radix digits u_i (each < q_i) of x = u_0 + q_0 u_1 + q_0 q_1 u_2 + ..."""
    digits: list[np.ndarray] = []
    for i, qi in enumerate(ring.primes):
        u = a[..., i, :].astype(np.uint64)
        for j in range(i):
            diff = _submod(u, np.remainder(digits[j], np.uint64(qi)), qi)
            u = mulmod(diff, ring._garner[i][j], qi)
        digits.append(u)
    return digits


def floor_shift(ring: RNSRing, a: np.ndarray, bits: int) -> np.ndarray:
    """floor(x / 2^bits) for x in [0, Q) given as residues, exactly, as uint64 (needs Q < 2^(bits + 63)).

    A float64 estimate of the quotient is within a few units; the remainder x - est * 2^bits is small, so
    computing it with wrapping uint64 arithmetic (x mod 2^64 from the digits) gives it exactly, and
    one arithmetic shift corrects the estimate. This is how updates drop the low-order bits of c0.
    """
    digits = _radix_digits(ring, a)
    low = np.zeros(digits[0].shape, dtype=np.uint64)
    est = np.zeros(digits[0].shape, dtype=np.float64)
    radix, fradix = 1, 1.0
    for qi, u in zip(ring.primes, digits, strict=True):
        low += u * np.uint64(radix % 2**64)
        est += u.astype(np.float64) * fradix
        radix *= qi
        fradix *= float(qi)
    quot = np.floor(est / 2.0**bits).astype(np.int64)
    resid = (low - (quot.view(np.uint64) << np.uint64(bits))).view(np.int64)
    return (quot + (resid >> np.int64(bits))).view(np.uint64)


def expand_shift(ring: RNSRing, h: np.ndarray, bits: int, count: int = 1) -> np.ndarray:
    """Residues of h * 2^bits + count * 2^(bits-1): ``h`` is the sum of ``count`` dropped-bit values, each
    expanded to the centre of its dropped interval (``h`` itself if bits = 0)."""
    out = []
    for q in ring.primes:
        r = mulmod(np.remainder(h, np.uint64(q)), pow(2, bits, q), q)
        out.append(_addmod(r, np.full_like(r, count * pow(2, bits - 1, q) % q if bits else 0), q))
    return np.stack(out, axis=-2)


class Encoder:
    """CKKS canonical-embedding encoding of N reals per polynomial (Cheon et al., ASIACRYPT 2017).

    A polynomial m is identified with its values at the primitive 2N-th roots zeta^(2k+1),
    zeta = exp(i pi / N); the values at k and N-1-k are complex conjugates, so N/2 complex slots
    z_k = x_k + i x_{k+N/2} carry N reals and m has real (then rounded, scaled) coefficients. Both
    directions are one FFT. Only addition is needed here, so no rotation-friendly slot order.
    """

    def __init__(self, n: int, scale_bits: int) -> None:
        self.n = n
        self.scale_bits = scale_bits
        k = np.arange(n)
        self._twist = np.exp(1j * np.pi * k / n)  # zeta^i
        # Coefficients up to |v| * 2^scale_bits; keep the int64 part at <= 2^52 precision and shift the rest.
        self.shift = max(0, scale_bits - 40)

    def to_coeffs(self, reals: np.ndarray) -> np.ndarray:
        """(..., N) reals -> (..., N) real coefficients in value units (not yet scaled)."""
        half = self.n // 2
        z = reals[..., :half] + 1j * reals[..., half:]
        evals = np.concatenate((z, np.conj(z[..., ::-1])), axis=-1)
        return (np.fft.fft(evals, axis=-1) / self._twist).real / self.n

    def from_coeffs(self, coeffs: np.ndarray) -> np.ndarray:
        """(..., N) real coefficients in value units -> (..., N) reals."""
        half = self.n // 2
        evals = np.fft.ifft(coeffs * self._twist, axis=-1) * self.n
        z = evals[..., :half]
        return np.concatenate((z.real, z.imag), axis=-1)

    def encode(self, ring: RNSRing, reals: np.ndarray) -> np.ndarray:
        """Reals (..., N) -> plaintext residues (..., L, N) of round(Delta * coefficients)."""
        hi = np.rint(self.to_coeffs(reals) * 2.0 ** (self.scale_bits - self.shift)).astype(np.int64)
        return ring.from_scaled(hi, self.shift)

    def decode(self, ring: RNSRing, plain: np.ndarray) -> np.ndarray:
        """Plaintext residues (..., L, N) -> reals (..., N)."""
        return self.from_coeffs(ring.to_float(plain) / 2.0**self.scale_bits)


class RandomSource:
    """Bytes for every sampler: ``os.urandom`` (default) or a seeded ChaCha20 stream (experiments only).

    The seeded stream derives one ChaCha20 key per draw with HKDF (:func:`protocols.crypto.derive_key`)
    from the seed, the draw's label and a per-label counter, so streams for different purposes never
    overlap and the same seed replays the same run. ``reproducible`` marks the mode as unfit for
    deployment: anyone who knows the seed knows every secret key and noise sample.
    """

    def __init__(self, seed: bytes | None = None) -> None:
        self._seed = seed
        self._counters: dict[str, int] = {}

    @property
    def reproducible(self) -> bool:
        return self._seed is not None

    def bytes(self, n: int, label: str) -> bytes:
        if self._seed is None:
            return os.urandom(n)
        c = self._counters.get(label, 0)
        self._counters[label] = c + 1
        key = crypto.derive_key(self._seed, f"ckks-rng/{label}", c, 0, 0)
        return crypto.MaskExpander(n, np.uint8).keystream(key).tobytes()

    def words(self, count: int, label: str) -> np.ndarray:
        return np.frombuffer(self.bytes(8 * count, label), dtype="<u8").astype(np.uint64)

    def uniform_mod(self, q: int, shape: tuple[int, ...], label: str) -> np.ndarray:
        """Uniform residues in [0, q) by rejection from bit-masked 64-bit words (no modulo bias)."""
        need = int(np.prod(shape))
        mask = np.uint64((1 << q.bit_length()) - 1)
        out = np.empty(0, dtype=np.uint64)
        while out.size < need:
            w = self.words(max(16, int((need - out.size) * 1.1) + 16), label) & mask
            out = np.concatenate((out, w[w < np.uint64(q)]))
        return out[:need].reshape(shape)

    def uniform_int(self, bound: int, shape: tuple[int, ...], label: str) -> np.ndarray:
        """Uniform integers in [-bound, bound] (bound < 2^62) by rejection; exact, no float rounding."""
        span = 2 * bound + 1
        need = int(np.prod(shape))
        limit = np.uint64((2**64 // span) * span - 1)
        out = np.empty(0, dtype=np.uint64)
        while out.size < need:
            w = self.words(max(16, int((need - out.size) * 1.1) + 16), label)
            out = np.concatenate((out, w[w <= limit]))
        vals = (out[:need] % np.uint64(span)).astype(np.int64) - bound
        return vals.reshape(shape)

    def ternary(self, shape: tuple[int, ...], label: str) -> np.ndarray:
        """Uniform {-1, 0, 1} (the secret-key distribution of SEAL), by rejection of byte 255."""
        need = int(np.prod(shape))
        out = np.empty(0, dtype=np.uint8)
        while out.size < need:
            b = np.frombuffer(self.bytes(int((need - out.size) * 1.01) + 16, label), dtype=np.uint8)
            out = np.concatenate((out, b[b < 255]))
        return (out[:need] % 3).astype(np.int64).reshape(shape) - 1

    def error(self, shape: tuple[int, ...], label: str) -> np.ndarray:
        """Rounded Gaussian of standard deviation 3.2 clipped to +-19 (SEAL's RLWE error), by Box-Muller."""
        need = int(np.prod(shape))
        w = self.words(2 * need, label)
        u = ((w >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
        g = np.sqrt(-2.0 * np.log(u[:need])) * np.cos(2.0 * np.pi * u[need:])
        return np.clip(np.rint(g * ERROR_SIGMA), -ERROR_BOUND, ERROR_BOUND).astype(np.int64).reshape(shape)
