"""The CKKS roles: a client (key owner, encryptor, partial decryptor) and the server (adder, combiner).

Wire bodies (inside :mod:`protocols.wire` envelopes, protocol ``"ckks"``, little endian; n = ciphertexts
per update, N = ring degree, W = 7 bytes: the high 56 bits of a coefficient in [0, Q), R = bytes of all
residues of one coefficient, sig = Ed25519 over the whole envelope before it)::

    update     (kind 1): weight f64 | n*N coefficients W | sig 64
    aggregate  (kind 2): k u32 | k x client u32 | k x weight f64 | n*N coefficients R      (server's own)
    partial    (kind 4): d u32 | d x decryptor u32 | n*N coefficients W | sig 64
    release    (kind 5): k u32 | k x client u32 | total weight f64 | dim x float32 | sig 64 (shared-key opener)
    key share  (AES-256-GCM on the pairwise channel): N coefficients R, bound to (sender, recipient)

Inclusion signatures are bare Ed25519 signatures over (round, sorted set). Coefficients are those of
c0 (coefficient domain). The common polynomial a of round r and ciphertext k is public: expanded from
the enrolment's a-seed, never sent.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from protocols import crypto, wire
from protocols.base import Aggregate, OpenedAggregate
from protocols.ckks.errors import CiphertextFormatError, CoefficientRangeError, KeyRoleError, UpdateRangeError
from protocols.ckks.params import CKKSParams
from protocols.ckks.ring import (
    Encoder,
    RandomSource,
    RNSRing,
    expand_shift,
    floor_shift,
    matmul_mod,
    mulmod,
    ring_for,
)
from protocols.errors import PayloadError, ProtocolConfigError, ProtocolError, RoundAbortedError, WrongRoundError
from protocols.plaintext import _check_update
from protocols.shamir import lagrange_at_zero

PROTOCOL = "ckks"
KIND_UPDATE, KIND_AGGREGATE, KIND_PARTIAL, KIND_RELEASE = 1, 2, 4, 5
_SIG = crypto.SIGNATURE_BYTES
_U32 = struct.Struct("<I")


class RefusedError(ProtocolError):
    """A client refused a request that would open less than an honest aggregate (k too small, replay, ...)."""


class Suite:
    """Public state every role shares: parameters, ring, encoder, the roster of identity keys, the round seed.

    ``a_seed`` is public randomness fixed at enrolment; :meth:`common_poly` expands the fresh common
    polynomial a_{r,k} for round r and ciphertext k from it (sampled directly in the NTT domain, where
    a uniform polynomial is still uniform). Fresh per round is essential: one key with the same a twice
    would leak the difference of two updates.
    """

    def __init__(self, params: CKKSParams, dim: int, a_seed: bytes, verify_keys: Mapping[int, bytes]) -> None:
        if dim <= 0:
            raise ProtocolConfigError(f"dim must be positive, got {dim}")
        self.params, self.dim, self.a_seed = params, dim, a_seed
        self.verify_keys = dict(verify_keys)
        self.ring = ring_for(params.poly_modulus_degree, params.primes)
        self.encoder = Encoder(params.poly_modulus_degree, params.scale_bits)
        self.n_cts = params.ciphertexts_for(dim)
        self.n = params.poly_modulus_degree
        self.n_coeffs = self.n_cts * self.n
        self.agg_bytes = self.n_coeffs * params.coeff_bytes  # the server's own sum: full residues
        self.drop_bits = params.drop_bits
        self.wire_width = params.wire_coeff_bytes
        self._h_max = (self.ring.modulus - 1) >> self.drop_bits
        #: High parts that can be added in a uint64 before they must be expanded (exact integer sums).
        self.lazy = max(1, (2**64 - 1) // self._h_max)
        self.poly_bytes = self.n_coeffs * self.wire_width  # c0 and partials: high-order bits only
        self.update_size = wire.HEADER_SIZE + 8 + self.poly_bytes + _SIG
        self._a_cache: tuple[int, np.ndarray] | None = None

    def common_poly(self, round_id: int) -> np.ndarray:
        """a_{r,k} for every ciphertext k of round r, NTT domain, shape (n_cts, L, N)."""
        if self._a_cache is not None and self._a_cache[0] == round_id:
            return self._a_cache[1]
        src = RandomSource(hashlib.sha256(b"securefrl/ckks/a/v1" + self.a_seed + struct.pack("<Q", round_id)).digest())
        a = np.stack(
            [src.uniform_mod(q, (self.n_cts, self.n), f"a/{i}") for i, q in enumerate(self.ring.primes)], axis=1
        )
        self._a_cache = (round_id, a)
        return a

    # -- residue packing --------------------------------------------------------------------------------
    def pack(self, poly: np.ndarray) -> bytes:
        """(n_cts, L, N) residues -> for each coefficient, each prime's residue in its own byte width."""
        cols = []
        flat = poly.transpose(0, 2, 1).reshape(-1, self.ring.levels)
        for i, width in enumerate(self.params.prime_bytes):
            le = np.ascontiguousarray(flat[:, i], dtype="<u8").view(np.uint8).reshape(-1, 8)
            cols.append(le[:, :width])
        return np.concatenate(cols, axis=1).tobytes()

    def unpack(self, data: bytes | memoryview, offset: int, count: int | None = None) -> np.ndarray:
        """Inverse of :meth:`pack`, refusing any residue not reduced modulo its prime."""
        n_coeffs = self.n_coeffs if count is None else count
        width = self.params.coeff_bytes
        raw = np.frombuffer(data, dtype=np.uint8, count=n_coeffs * width, offset=offset).reshape(n_coeffs, width)
        out = np.empty((n_coeffs, self.ring.levels), dtype=np.uint64)
        col = 0
        for i, (w, q) in enumerate(zip(self.params.prime_bytes, self.ring.primes, strict=True)):
            buf = np.zeros((n_coeffs, 8), dtype=np.uint8)
            buf[:, :w] = raw[:, col : col + w]
            out[:, i] = buf.view("<u8").reshape(-1)
            col += w
            if n_coeffs and int(out[:, i].max()) >= q:
                raise CoefficientRangeError(f"{int(np.count_nonzero(out[:, i] >= np.uint64(q)))} residues >= q_{i}")
        return out.reshape(-1, self.n, self.ring.levels).transpose(0, 2, 1).copy()

    def pack_wire(self, poly: np.ndarray) -> bytes:
        """(n_cts, L, N) residues -> floor(x / 2^drop_bits) of each coefficient x in [0, Q), W bytes each."""
        h = floor_shift(self.ring, poly, self.drop_bits).reshape(-1)
        return np.ascontiguousarray(h, dtype="<u8").view(np.uint8).reshape(-1, 8)[:, : self.wire_width].tobytes()

    def read_wire(self, data: bytes, offset: int) -> np.ndarray:
        """The transmitted high parts h (n_cts, N) at ``offset``, refusing any h that is not below Q / 2^bits.

        Reads 8-byte words at stride W (a signature always follows, so the last read stays inside the
        payload) and masks them to W bytes: one zero-copy strided view and one pass.
        """
        w = self.wire_width
        view = np.ndarray((self.n_coeffs,), dtype="<u8", buffer=data, offset=offset, strides=(w,))
        h = np.bitwise_and(view, np.uint64((1 << (8 * w)) - 1)) if w < 8 else view.astype(np.uint64)
        if h.size and int(h.max()) > self._h_max:
            raise CoefficientRangeError(f"{int(np.count_nonzero(h > np.uint64(self._h_max)))} coefficients >= Q")
        return h.reshape(self.n_cts, self.n)

    def unpack_wire(self, data: bytes, offset: int) -> np.ndarray:
        """Inverse of :meth:`pack_wire` (to the centre of the dropped interval)."""
        return expand_shift(self.ring, self.read_wire(data, offset), self.drop_bits)

    def expand_sum(self, h_sum: np.ndarray, count: int) -> np.ndarray:
        """Residues of the sum of ``count`` transmitted polynomials whose high parts add up to ``h_sum``."""
        return expand_shift(self.ring, h_sum, self.drop_bits, count)

    def verify_signed(self, data: bytes, signer: int) -> None:
        key = self.verify_keys.get(signer)
        if key is None:
            raise PayloadError(f"client {signer} is not enrolled")
        crypto.verify(key, data[:-_SIG], data[-_SIG:])

    def inclusion_message(self, round_id: int, included: Sequence[int]) -> bytes:
        ids = sorted(included)  # bound to this deployment (its a-seed) and round: no replay elsewhere
        return b"securefrl/ckks/inclusion/v1" + self.a_seed + struct.pack(f"<QI{len(ids)}I", round_id, len(ids), *ids)


@lru_cache(maxsize=64)
def _vandermonde(xs: tuple[int, ...], t: int, q: int) -> np.ndarray:
    """Rows (1, x, x^2, ..., x^(t-1)) mod q for the share points ``xs`` (public; cached)."""
    return np.array([[pow(x, d, q) for d in range(t)] for x in xs], dtype=np.uint64)


def _ids_body(ids: Sequence[int]) -> bytes:
    return struct.pack(f"<I{len(ids)}I", len(ids), *ids)


def _read_ids(body: bytes, limit: int) -> tuple[list[int], int]:
    if len(body) < 4:
        raise CiphertextFormatError("body is shorter than its id count")
    (k,) = _U32.unpack_from(body)
    if k > limit or len(body) < 4 + 4 * k:
        raise CiphertextFormatError(f"body declares {k} ids (limit {limit})")
    ids = list(struct.unpack_from(f"<{k}I", body, 4))
    if len(set(ids)) != k or ids != sorted(ids):
        raise CiphertextFormatError("ids must be distinct and sorted")
    return ids, 4 + 4 * k


@dataclass(frozen=True)
class Enrolment:
    """One client's public enrolment record: identity key, X25519 key, a-seed contribution, signature."""

    verify_key: bytes
    dh_public: bytes
    a_share: bytes
    signature: bytes

    @staticmethod
    def message(cid: int, dh_public: bytes, a_share: bytes) -> bytes:
        return b"securefrl/ckks/enrol/v1" + _U32.pack(cid) + dh_public + a_share

    def verify(self, cid: int) -> None:
        crypto.verify(self.verify_key, self.message(cid, self.dh_public, self.a_share), self.signature)

    @property
    def size(self) -> int:
        return len(self.verify_key) + len(self.dh_public) + len(self.a_share) + len(self.signature)


def a_seed_from(roster: Mapping[int, Enrolment]) -> bytes:
    """The public seed of every a_{r,k}: a hash of all enrolled clients' signed contributions.

    Every client computes it itself, so the server cannot choose the common polynomials (it could only
    withhold a contribution, which changes the seed to another uniformly random one).
    """
    h = hashlib.sha256(b"securefrl/ckks/a-seed/v1")
    for cid in sorted(roster):
        roster[cid].verify(cid)
        h.update(_U32.pack(cid) + roster[cid].a_share)
    return h.digest()


class CKKSClient:
    """One client: owns its secret key s_j (or, in the shared-key mode, a copy of the one key) and shares.

    Threshold mode (the default): s_j is uniform ternary, Shamir-shared t-of-n coefficient-wise over each
    CKKS prime to every enrolled client over an authenticated pairwise channel (X25519 + HKDF +
    AES-256-GCM, the X25519 key signed with the client's Ed25519 identity key). The client refuses, per
    round: a second encryption (same a and s twice would leak a difference), a second inclusion
    signature, and a second partial decryption; a partial for a set of fewer than ``min_clients``
    distinct clients, for a set whose members did not all sign their inclusion, or for another round.
    """

    def __init__(
        self, cid: int, params: CKKSParams, dim: int, rng: RandomSource, *, shared_key: np.ndarray | None = None
    ) -> None:
        self.cid = cid
        self.params = params
        self.dim = dim
        self.rng = rng
        self.identity = crypto.generate_signing_key()
        self.verify_key = crypto.verify_key_bytes(self.identity)
        self._dh = crypto.generate_private_key()
        dh_public = crypto.public_bytes(self._dh)
        a_share = rng.bytes(32, f"a-share/{cid}")  # this client's contribution to the public a-seed
        #: What this client publishes at enrolment (relayed by the server, signed by the identity key).
        self.enrolment = Enrolment(self.verify_key, dh_public, a_share,
                                   crypto.sign(self.identity, Enrolment.message(cid, dh_public, a_share)))
        ring_n = params.poly_modulus_degree
        self._secret = (
            shared_key if shared_key is not None else rng.ternary((ring_n,), f"sk/{cid}")
        )  # signed coefficients
        self._verified: dict[int, Enrolment] = {}
        self._shares: dict[int, np.ndarray] = {}  # sender -> share_sender(self) residues (L, N), coefficient domain
        self.suite: Suite | None = None
        self.threshold = 1
        self.min_clients = 2
        self.shared_mode = shared_key is not None
        self._round = -1
        self._did: set[str] = set()

    # -- enrolment -----------------------------------------------------------------------------------
    def make_shares(self, roster: Mapping[int, Enrolment], threshold: int) -> dict[int, bytes]:
        """Shamir-share s_j to every client in ``roster`` ({id: (verify key, dh public, dh signature)})."""
        ring = ring_for(self.params.poly_modulus_degree, self.params.primes)
        ids = sorted(roster)
        if self.cid not in ids or not 1 <= threshold <= len(ids):
            raise ProtocolConfigError(f"threshold {threshold} of {len(ids)} enrolled clients")
        secret = ring.from_signed(self._secret)  # (L, N)
        xs = tuple(rid + 1 for rid in ids)  # share points, never 0
        shares = np.empty((len(ids), ring.levels, ring.n), dtype=np.uint64)
        for i, q in enumerate(ring.primes):
            # polynomial coefficients: the secret, then t-1 uniform ones mod q_i; shares = Vandermonde @ C
            coeffs = np.empty((threshold, ring.n), dtype=np.uint64)
            coeffs[0] = secret[i]
            for d in range(1, threshold):
                coeffs[d] = self.rng.uniform_mod(q, (ring.n,), f"shamir/{self.cid}/{d}/{i}")
            shares[:, i] = matmul_mod(_vandermonde(xs, threshold, q), coeffs, q)
        out: dict[int, bytes] = {}
        for rid, share in zip(ids, shares, strict=True):
            if rid == self.cid:
                self._shares[self.cid] = share
                continue
            key = crypto.derive_key(crypto.agree(self._dh, self._peer_dh(rid, roster)), "ckks-keyshare", 0,
                                    self.cid, rid)
            out[rid] = crypto.seal(key, self._pack_poly(share[None]), crypto.associated_data(0, self.cid, rid))
        return out

    def _peer_dh(self, peer: int, roster: Mapping[int, Enrolment]) -> bytes:
        """The peer's X25519 key, accepted only with its identity signature (checked once per peer)."""
        entry = roster[peer]
        if self._verified.get(peer) != entry:
            entry.verify(peer)
            self._verified[peer] = entry
        return entry.dh_public

    def receive_share(self, sender: int, blob: bytes, roster: Mapping[int, Enrolment]) -> None:
        key = crypto.derive_key(crypto.agree(self._dh, self._peer_dh(sender, roster)), "ckks-keyshare", 0,
                                sender, self.cid)
        plain = crypto.unseal(key, blob, crypto.associated_data(0, sender, self.cid))
        self._shares[sender] = self._unpack_poly(plain)

    def _pack_poly(self, poly: np.ndarray) -> bytes:
        n, widths = self.params.poly_modulus_degree, self.params.prime_bytes
        flat = poly.reshape(-1, n).T  # (N, L)
        cols = [np.ascontiguousarray(flat[:, i], dtype="<u8").view(np.uint8).reshape(-1, 8)[:, :w]
                for i, w in enumerate(widths)]
        return np.concatenate(cols, axis=1).tobytes()

    def _unpack_poly(self, data: bytes) -> np.ndarray:
        n, widths, primes = self.params.poly_modulus_degree, self.params.prime_bytes, self.params.primes
        if len(data) != n * sum(widths):
            raise CiphertextFormatError(f"key share holds {len(data)} bytes, expected {n * sum(widths)}")
        raw = np.frombuffer(data, dtype=np.uint8).reshape(n, -1)
        out = np.empty((len(widths), n), dtype=np.uint64)
        col = 0
        for i, (w, q) in enumerate(zip(widths, primes, strict=True)):
            buf = np.zeros((n, 8), dtype=np.uint8)
            buf[:, :w] = raw[:, col : col + w]
            out[i] = buf.view("<u8").reshape(-1)
            col += w
            if int(out[i].max()) >= q:
                raise CoefficientRangeError("key share residue not reduced modulo its prime")
        return out

    def finish_enrolment(self, suite: Suite, threshold: int, min_clients: int) -> None:
        """Keep only shares of enrolled senders; precompute NTT(s_j) for encryption."""
        self.suite, self.threshold, self.min_clients = suite, threshold, min_clients
        self._shares = {j: s for j, s in self._shares.items() if j in suite.verify_keys}
        self._s_hat = suite.ring.ntt(suite.ring.from_signed(self._secret))

    # -- per round -------------------------------------------------------------------------------------
    def begin_round(self, round_id: int) -> None:
        if round_id <= self._round:
            raise RefusedError(f"client {self.cid} already saw round {self._round}; round {round_id} is a replay")
        self._round = round_id
        self._did = set()

    def _once(self, what: str, round_id: int) -> None:
        if round_id != self._round:
            raise WrongRoundError(f"client {self.cid} is in round {self._round}, request is for round {round_id}")
        if what in self._did:
            raise RefusedError(f"client {self.cid} already gave its {what} in round {round_id}")
        self._did.add(what)

    def _suite(self) -> Suite:
        if self.suite is None:
            raise KeyRoleError(f"client {self.cid} is not enrolled")
        return self.suite

    def protect(self, round_id: int, update: np.ndarray, weight: float) -> bytes:
        """c0 = -a_{r,k} s_j + Delta*m + e for every ciphertext k; the weight travels in the clear, signed."""
        su = self._suite()
        vec = _check_update(update, self.dim)
        weight = float(weight)
        if not (np.isfinite(weight) and 0 < weight <= self.params.max_weight):
            raise ValueError(f"weight must be finite, positive and at most max_weight={self.params.max_weight:g}, "
                             f"got {weight}")
        values = np.zeros(su.n_coeffs)
        np.multiply(vec, weight, out=values[: self.dim])
        peak = float(np.max(np.abs(values)))
        if peak > self.params.value_bound:
            raise UpdateRangeError(
                f"largest |weight*update| is {peak:.4g} but these parameters allow {self.params.value_bound:.4g} "
                f"per client (max_clients={self.params.max_clients}, scale 2^{self.params.scale_bits})"
            )
        self._once("encryption", round_id)
        c0 = self._encrypt(round_id, values.reshape(su.n_cts, su.n))
        return self.signed_update(round_id, c0, weight)

    def _encrypt(self, round_id: int, values: np.ndarray) -> np.ndarray:
        su = self._suite()
        ring = su.ring
        a = su.common_poly(round_id)
        plain = su.encoder.encode(ring, values)
        err = ring.from_signed(self.rng.error((su.n_cts, su.n), f"e/{self.cid}/{round_id}"))
        return ring.add(ring.sub(plain, ring.intt(ring.mul(a, self._s_hat[None]))), err)

    def signed_update(self, round_id: int, c0: np.ndarray, weight: float) -> bytes:
        """Sign an update body (also used by tests to build a malicious client's payload)."""
        su = self._suite()
        body = struct.pack("<d", weight) + su.pack_wire(c0) + bytes(_SIG)
        env = bytearray(wire.pack(PROTOCOL, round_id, self.cid, body, kind=KIND_UPDATE))
        env[-_SIG:] = crypto.sign(self.identity, bytes(env[:-_SIG]))
        return bytes(env)

    def sign_inclusion(self, round_id: int, included: Sequence[int]) -> bytes:
        """Sign "I was summed into exactly the set ``included`` in this round" -- once per round."""
        su = self._suite()
        if self.cid not in included:
            raise RefusedError(f"client {self.cid} is asked to sign a set it is not in")
        if len(set(included)) < max(2, self.min_clients):
            raise RefusedError(f"client {self.cid} refuses to sign a set of {len(set(included))} clients "
                               f"(at least {max(2, self.min_clients)} required)")
        self._once("inclusion signature", round_id)
        return crypto.sign(self.identity, su.inclusion_message(round_id, included))

    def _check_request(self, round_id: int, included: Sequence[int], signatures: Mapping[int, bytes]) -> list[int]:
        su = self._suite()
        if round_id != self._round:
            raise WrongRoundError(f"client {self.cid} is in round {self._round}, request is for round {round_id}")
        ids = sorted(set(included))
        if len(ids) != len(included) or len(ids) < max(2, self.min_clients):
            raise RefusedError(
                f"client {self.cid} refuses to open a set of {len(set(included))} distinct clients "
                f"(at least {max(2, self.min_clients)} required)"
            )
        if not set(ids) <= set(su.verify_keys):
            raise RefusedError("the set names clients that are not enrolled")
        msg = su.inclusion_message(round_id, ids)
        for j in ids:
            sig = signatures.get(j)
            if sig is None:
                raise RefusedError(f"client {j} did not sign its inclusion in this set")
            crypto.verify(su.verify_keys[j], msg, sig)
        return ids

    def partial_decrypt(
        self, round_id: int, included: Sequence[int], signatures: Mapping[int, bytes], decryptors: Sequence[int]
    ) -> bytes:
        """lambda_i * a_{r,k} * sum_{j in I} share_j(i) + flooding, for every ciphertext k; once per round."""
        su = self._suite()
        if self.shared_mode:
            raise KeyRoleError("in the shared-key mode the opener decrypts; there are no partial decryptions")
        ids = self._check_request(round_id, included, signatures)
        dec = sorted(set(decryptors))
        if self.cid not in dec or len(dec) != len(decryptors) or len(dec) < self.threshold:
            raise RefusedError(f"decryptor set {list(decryptors)} is not {self.threshold} or more distinct clients "
                               f"including {self.cid}")
        if not set(dec) <= set(su.verify_keys) or len(dec) > self.params.max_clients:
            raise RefusedError("decryptor set names clients that are not enrolled, or too many")
        missing = [j for j in ids if j not in self._shares]
        if missing:
            raise RefusedError(f"client {self.cid} holds no key share of clients {missing}")
        self._once("partial decryption", round_id)
        ring = su.ring
        share_sum = self._shares[ids[0]]
        for j in ids[1:]:
            share_sum = ring.add(share_sum, self._shares[j])
        xs = tuple(d + 1 for d in dec)
        lam = [lagrange_at_zero(xs, q)[dec.index(self.cid)] for q in ring.primes]
        s_hat = ring.scalar(ring.ntt(share_sum), lam)
        part = ring.intt(ring.mul(su.common_poly(round_id), s_hat[None]))
        # Sized for every enrolled client: with colluders re-using their own partials, a server can collect
        # one partial per honest client per round, more than |D| of them (see CKKSParams.flood_bound).
        part = ring.add(part, ring.from_signed(self.flood(len(ids), len(su.verify_keys), round_id)))
        body = _ids_body(dec) + su.pack_wire(part) + bytes(_SIG)
        env = bytearray(wire.pack(PROTOCOL, round_id, self.cid, body, kind=KIND_PARTIAL))
        env[-_SIG:] = crypto.sign(self.identity, bytes(env[:-_SIG]))
        return bytes(env)

    def flood(self, n_included: int, n_decryptors: int, round_id: int) -> np.ndarray:
        """Uniform flooding noise on [-B, B] per coefficient, B = :meth:`CKKSParams.flood_bound`."""
        su = self._suite()
        bound = self.params.flood_bound(n_included, n_decryptors)
        return self.rng.uniform_int(bound, (su.n_cts, su.n), f"flood/{self.cid}/{round_id}")

    def open_shared(self, round_id: int, payloads: Mapping[int, bytes], signatures: Mapping[int, bytes]) -> bytes:
        """Shared-key opener: verify every included client's signed payload, sum, decrypt, flood, float32.

        The opener sums the ciphertexts itself, so a server cannot pass one client's ciphertext (or an
        old one) off as an aggregate; every member must have signed its inclusion in exactly this set
        (once per round), so asking two key holders to open nested sets in one round fails too. The
        answer is signed and holds only float32 values.
        """
        su = self._suite()
        if not self.shared_mode:
            raise KeyRoleError("only the shared-key mode has a single opener")
        ids = self._check_request(round_id, sorted(payloads), signatures)
        c0s, weights = [], []
        for cid in ids:
            c0, w = parse_update(su, round_id, cid, payloads[cid])
            c0s.append(c0)
            weights.append(w)
        self._once("opening", round_id)
        ring = su.ring
        acc = c0s[0]
        for c in c0s[1:]:
            acc = ring.add(acc, c)
        k_s = ring.scalar(self._s_hat, [len(ids) % q for q in ring.primes])
        plain = ring.add(acc, ring.intt(ring.mul(su.common_poly(round_id), k_s[None])))
        # every enrolled client holds the key and could be asked to open this same set: size for all of them
        plain = ring.add(plain, ring.from_signed(self.flood(len(ids), len(su.verify_keys), round_id)))
        mean = (su.encoder.decode(ring, plain).reshape(-1)[: self.dim] / math.fsum(weights)).astype(np.float32)
        body = _ids_body(ids) + struct.pack("<d", math.fsum(weights)) + mean.tobytes() + bytes(_SIG)
        env = bytearray(wire.pack(PROTOCOL, round_id, self.cid, body, kind=KIND_RELEASE))
        env[-_SIG:] = crypto.sign(self.identity, bytes(env[:-_SIG]))
        return bytes(env)

    def open_exact_unsafe(self, aggregate: Aggregate) -> OpenedAggregate:
        """The landed behaviour, kept only for the attack's weakened target: trusts the server's sum, no
        minimum set size, no flooding, exact float64 release. Never reachable from a default."""
        su = self._suite()
        ids, weights, c0_sum = parse_aggregate(su, aggregate)
        ring = su.ring
        k_s = ring.scalar(self._s_hat, [len(ids) % q for q in ring.primes])
        plain = ring.add(c0_sum, ring.intt(ring.mul(su.common_poly(aggregate.round_id), k_s[None])))
        total = math.fsum(weights)
        return OpenedAggregate(su.encoder.decode(ring, plain).reshape(-1)[: self.dim] / total, total, ids)


def parse_update(su: Suite, round_id: int, client_id: int, data: bytes) -> tuple[np.ndarray, float]:
    """Validate one client's signed update; its c0 as residues and its weight."""
    h, weight = parse_update_raw(su, round_id, client_id, data)
    return su.expand_sum(h, 1), weight


def parse_update_raw(su: Suite, round_id: int, client_id: int, data: bytes) -> tuple[np.ndarray, float]:
    """Validate one client's signed update: size, envelope, signature, weight bound, coefficient range.

    Returns the transmitted high parts (uint64) and the weight.
    """
    env = wire.unpack(data, protocol=PROTOCOL, max_bytes=su.update_size, round_id=round_id, client_id=client_id,
                      kind=KIND_UPDATE)
    if len(env.body) != su.update_size - wire.HEADER_SIZE:
        raise CiphertextFormatError(
            f"update body holds {len(env.body)} bytes, expected {su.update_size - wire.HEADER_SIZE} "
            f"({su.n_cts} ciphertexts of N={su.n})"
        )
    su.verify_signed(data, client_id)
    (weight,) = struct.unpack_from("<d", env.body)
    if not (math.isfinite(weight) and 0 < weight <= su.params.max_weight):
        # public and signed: the server drops this client alone; the total of the included weights is then
        # at most n_included * max_weight, so no client can cancel or swamp the others' weights
        raise PayloadError(f"weight {weight!r} is not in (0, max_weight={su.params.max_weight:g}]: client dropped")
    return su.read_wire(data, wire.HEADER_SIZE + 8), weight


def parse_aggregate(su: Suite, aggregate: Aggregate) -> tuple[list[int], list[float], np.ndarray]:
    env = wire.unpack(aggregate.payload, protocol=PROTOCOL, round_id=aggregate.round_id, client_id=wire.SERVER_ID,
                      kind=KIND_AGGREGATE)
    ids, off = _read_ids(env.body, su.params.max_clients)
    if len(env.body) != off + 8 * len(ids) + su.agg_bytes:
        raise CiphertextFormatError("aggregate body has the wrong length")
    weights = list(struct.unpack_from(f"<{len(ids)}d", env.body, off))
    return ids, weights, su.unpack(aggregate.payload, wire.HEADER_SIZE + off + 8 * len(ids))


class CKKSServer:
    """Adds c0's and combines partial decryptions; holds public material only (no key, no share).

    What it sees of client j in round r is c0_j = -a s_j + Delta m_j + e_j with a public: an RLWE
    sample, so m_j is hidden under the RLWE assumption (the secret key s_j is never used with the same
    a twice). What it receives from decryptors is flooded; what it outputs is rounded to float32.
    """

    def __init__(self, suite: Suite, threshold: int, min_clients: int) -> None:
        self.suite = suite
        self.params = suite.params
        self.dim = suite.dim
        self.threshold = threshold
        self.min_clients = min_clients
        self.received: dict[int, dict[int, bytes]] = {}  # the current round's valid payloads (the server's view)

    def combine(self, round_id: int, payloads: Mapping[int, bytes]) -> Aggregate:
        """Sum the valid updates' c0 modulo each prime; drop each bad payload (with its reason)."""
        su = self.suite
        ring = su.ring
        acc = np.zeros((su.n_cts, ring.levels, su.n), dtype=np.uint64)
        h_acc = np.zeros((su.n_cts, su.n), dtype=np.uint64)  # exact integer sum of the high parts
        pending = 0
        included: list[int] = []
        weights: list[float] = []
        rejected: dict[int, str] = {}
        self.received = {round_id: {}}
        for cid in sorted(payloads):
            if len(included) >= self.params.max_clients:
                rejected[cid] = f"TooManyClients: aggregate already holds max_clients={self.params.max_clients}"
                continue
            try:
                h, w = parse_update_raw(su, round_id, cid, payloads[cid])
            except PayloadError as err:
                rejected[cid] = f"{type(err).__name__}: {err}"
                continue
            np.add(h_acc, h, out=h_acc)
            pending += 1
            if pending == su.lazy:
                acc, h_acc, pending = ring.add(acc, su.expand_sum(h_acc, pending)), np.zeros_like(h_acc), 0
            included.append(cid)
            weights.append(w)
            self.received[round_id][cid] = payloads[cid]
        acc = ring.add(acc, su.expand_sum(h_acc, pending))
        body = _ids_body(included) + struct.pack(f"<{len(weights)}d", *weights) + su.pack(acc)
        return Aggregate(round_id, wire.pack(PROTOCOL, round_id, wire.SERVER_ID, body, kind=KIND_AGGREGATE),
                         included, rejected)

    def flooded_plaintext(self, aggregate: Aggregate, included: Sequence[int], decryptors: Sequence[int],
                          partials: Mapping[int, bytes]) -> np.ndarray:
        """sum_{j in I} c0_j + sum_{i in D} partial_i = Delta * sum m_j + errors + flooding (residues)."""
        su = self.suite
        ring = su.ring
        ids, _, c0_sum = parse_aggregate(su, aggregate)
        if not set(included) <= set(ids):
            raise RoundAbortedError("inclusion set is not a subset of the aggregate")
        for j in (j for j in ids if j not in included):  # summed but did not confirm: take its c0 back out
            c0, _ = parse_update(su, aggregate.round_id, j, self.received[aggregate.round_id][j])
            c0_sum = ring.sub(c0_sum, c0)
        missing = [i for i in decryptors if i not in partials]
        if len(decryptors) < self.threshold or missing:
            raise RoundAbortedError(
                f"{len(decryptors) - len(missing)} of {len(decryptors)} announced decryptors answered; all of at "
                f"least t={self.threshold} are needed (the partials' Lagrange weights are for that set): nothing "
                "is released"
            )
        acc = c0_sum
        for i in sorted(decryptors):
            env = wire.unpack(partials[i], protocol=PROTOCOL, round_id=aggregate.round_id, client_id=i,
                              kind=KIND_PARTIAL)
            su.verify_signed(partials[i], i)
            dec, off = _read_ids(env.body, self.params.max_clients)
            if dec != sorted(decryptors) or len(env.body) != off + su.poly_bytes + _SIG:
                raise RoundAbortedError(f"partial decryption of client {i} is for another decryptor set")
            acc = ring.add(acc, su.unpack_wire(partials[i], wire.HEADER_SIZE + off))
        return acc

    def finish(self, aggregate: Aggregate, included: Sequence[int], decryptors: Sequence[int],
               partials: Mapping[int, bytes]) -> OpenedAggregate:
        """Combine the partials, decode, divide by the included weights and round to float32."""
        su = self.suite
        plain = self.flooded_plaintext(aggregate, included, decryptors, partials)
        ids, weights, _ = parse_aggregate(su, aggregate)
        total = math.fsum(w for j, w in zip(ids, weights, strict=True) if j in included)
        values = su.encoder.decode(su.ring, plain).reshape(-1)[: self.dim]
        return OpenedAggregate((values / total).astype(np.float32), total, sorted(included))

    def read_release(self, round_id: int, opener: int, release: bytes) -> OpenedAggregate:
        su = self.suite
        env = wire.unpack(release, protocol=PROTOCOL, round_id=round_id, client_id=opener, kind=KIND_RELEASE)
        su.verify_signed(release, opener)
        ids, off = _read_ids(env.body, self.params.max_clients)
        if len(env.body) != off + 8 + 4 * self.dim + _SIG:
            raise CiphertextFormatError("release body has the wrong length")
        (total,) = struct.unpack_from("<d", env.body, off)
        mean = np.frombuffer(env.body, dtype="<f4", count=self.dim, offset=off + 8).astype(np.float32)
        return OpenedAggregate(mean.copy(), total, ids)

    def open(self, aggregate: Aggregate) -> OpenedAggregate:
        """Always refused: the server holds no key and no share."""
        raise KeyRoleError("the CKKS server holds no secret key and cannot open an aggregate")


def invert_ntt(ring: RNSRing, a: np.ndarray) -> np.ndarray:
    """Pointwise inverse modulo each prime (Fermat); used by the key-recovery attack."""
    out = []
    for i, q in enumerate(ring.primes):
        base, e, acc = a[..., i, :].copy(), q - 2, np.ones_like(a[..., i, :])
        while e:
            if e & 1:
                acc = mulmod(acc, base, q)
            base = mulmod(base, base, q)
            e >>= 1
        out.append(acc)
    return np.stack(out, axis=-2)
