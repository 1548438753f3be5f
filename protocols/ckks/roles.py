"""The three CKKS roles: key dealer, key holder (client side) and server, and their wire formats.

* :class:`CKKSKeyDealer` makes the SEAL secret key, a random key id and an integrity (MAC) key,
  and hands each role only what it needs.
* :class:`CKKSKeyHolder` (every client, and whoever opens the aggregate) holds the secret key:
  it encrypts updates (:meth:`~CKKSKeyHolder.protect`) and decrypts aggregates
  (:meth:`~CKKSKeyHolder.open`).
* :class:`CKKSServer` holds the public SEAL context, the key fingerprint and the MAC key, and
  never a secret key: it adds ciphertexts (:meth:`~CKKSServer.combine`) and cannot open them.

Wire bodies (inside :mod:`protocols.wire` envelopes, protocol ``"ckks"``; W = bytes per coefficient,
n = ciphertexts per update, N = ring degree, little endian)::

    update    (kind 1): fingerprint 16 | nonce 12 | n u32 | n x seed 65 | n*N x c0 W | tag 16
    aggregate (kind 2): fingerprint 16 | nonce 12 | n u32 | k u32 | k x client u32 | k*n x seed 65
                        | n*N x sum(c0) W | tag 16

``tag`` is a GMAC (AES-256-GCM with empty plaintext, NIST SP 800-38D) over the whole envelope
before the tag, so round, sender, kind and every byte of the body are authenticated.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping

import numpy as np
import tenseal.sealapi as seal
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocols import wire
from protocols.base import Aggregate, OpenedAggregate
from protocols.ckks._seal_io import PRNG_INFO_SIZE, ScratchDir, SealCodec, seal_version
from protocols.ckks.errors import (
    CiphertextFormatError,
    CoefficientRangeError,
    IntegrityError,
    KeyMismatchError,
    KeyRoleError,
    UpdateRangeError,
)
from protocols.ckks.params import CKKSParams
from protocols.errors import PayloadError, ProtocolConfigError
from protocols.plaintext import _check_update

PROTOCOL = "ckks"
KIND_UPDATE = 1
KIND_AGGREGATE = 2
_UPDATE_HEAD = struct.Struct("<16s12sI")
_AGG_HEAD = struct.Struct("<16s12sII")
_TAG = 16
_NONCE = 12
_PRNG_TYPES = (1, 2)


class SharedKeyMaterial:
    """What every role holds: parameters, model size, key fingerprint and the MAC key (no secret key).

    The MAC key is shared with the server on purpose: it authenticates payloads against outsiders,
    not against insiders (see the package docstring). The fingerprint binds ciphertexts to one
    dealer's key set, so a ciphertext made under another secret key (same parameters) is refused
    instead of silently adding garbage to the sum.
    """

    def __init__(self, params: CKKSParams, dim: int, key_id: bytes, mac_key: bytes) -> None:
        if dim <= 0:
            raise ProtocolConfigError(f"dim must be positive, got {dim}")
        self.params = params
        self.dim = dim
        self.n_cts = params.ciphertexts_for(dim)
        self.n_coeffs = self.n_cts * params.poly_modulus_degree
        self.fingerprint = hashlib.sha256(
            b"securefrl/ckks/key-fingerprint/v1"
            + key_id
            + struct.pack("<IIQ", params.poly_modulus_degree, params.scale_bits, params.modulus)
        ).digest()[:16]
        self._gmac = AESGCM(mac_key)
        self.update_body_size = (
            _UPDATE_HEAD.size + self.n_cts * PRNG_INFO_SIZE + self.n_coeffs * params.coeff_bytes + _TAG
        )
        self.update_size = wire.HEADER_SIZE + self.update_body_size

    def aggregate_body_size(self, n_clients: int) -> int:
        """Body bytes of an aggregate over ``n_clients`` updates."""
        return (
            _AGG_HEAD.size
            + 4 * n_clients
            + n_clients * self.n_cts * PRNG_INFO_SIZE
            + self.n_coeffs * self.params.coeff_bytes
            + _TAG
        )

    def seal_envelope(self, round_id: int, client_id: int, kind: int, body_without_tag: bytes, nonce: bytes) -> bytes:
        """Envelope around ``body_without_tag`` followed by a GMAC tag over everything before it."""
        env = bytearray(wire.pack(PROTOCOL, round_id, client_id, body_without_tag + bytes(_TAG), kind=kind))
        view = memoryview(env)
        view[-_TAG:] = self._gmac.encrypt(nonce, b"", view[:-_TAG])
        return bytes(env)

    def verify(self, data: bytes, nonce: bytes) -> None:
        """Check the envelope's GMAC tag; any flipped bit anywhere in the payload fails here."""
        view = memoryview(data)
        try:
            self._gmac.decrypt(nonce, view[-_TAG:], view[:-_TAG])
        except InvalidTag:
            raise IntegrityError("authentication tag does not verify: payload corrupted or forged") from None

    def pack_coeffs(self, coeffs: np.ndarray) -> bytes:
        """uint64 coefficients (< q) to W little-endian bytes each: only the bytes q needs."""
        width = self.params.coeff_bytes
        le = np.ascontiguousarray(coeffs, dtype="<u8").view(np.uint8).reshape(-1, 8)
        return le[:, :width].tobytes()

    def unpack_coeffs(self, data: bytes, offset: int, out: np.ndarray | None = None) -> np.ndarray:
        """W-byte coefficients at ``offset`` to uint64, rejecting any value not reduced modulo q.

        Reads 8-byte words at stride W (one byte past the last coefficient must exist: the tag
        follows) and masks them to W bytes: a zero-copy strided view, then one pass into ``out``
        (reused across clients by the server, so no fresh pages per client).
        """
        width = self.params.coeff_bytes
        view = np.ndarray((self.n_coeffs,), dtype="<u8", buffer=data, offset=offset, strides=(width,))
        coeffs = np.empty(self.n_coeffs, dtype=np.uint64) if out is None else out
        if width < 8:
            np.bitwise_and(view, np.uint64((1 << (8 * width)) - 1), out=coeffs)
        else:
            np.copyto(coeffs, view)
        if coeffs.size and int(coeffs.max()) >= self.params.modulus:
            raise CoefficientRangeError(
                f"{int(np.count_nonzero(coeffs >= np.uint64(self.params.modulus)))} ciphertext coefficients "
                f"are >= q = {self.params.modulus}"
            )
        return coeffs

    def check_prng(self, seeds: bytes) -> None:
        """Every seed descriptor must name a PRNG SEAL knows (1 = BLAKE2xb, 2 = SHAKE256)."""
        types = np.frombuffer(seeds, dtype=np.uint8)[::PRNG_INFO_SIZE]
        if not np.isin(types, _PRNG_TYPES).all():
            raise CiphertextFormatError("a ciphertext seed names an unknown PRNG type")


class CKKSKeyDealer:
    """Creates the key set once and hands out role objects (Cheon et al., 2017, symmetric-key CKKS).

    The dealer is a set-up role (e.g. run by the clients jointly or by a trusted party); in a
    real deployment it ships the secret key to the clients over a confidential channel and only
    :class:`CKKSServer`'s material to the server. Keys stay in memory here; nothing is pickled.
    """

    def __init__(self, params: CKKSParams | None = None) -> None:
        self.params = params or CKKSParams()
        self._context = self.params.seal_context()
        self._secret_key = seal.KeyGenerator(self._context).secret_key()
        self._key_id = os.urandom(16)
        self._mac_key = os.urandom(32)

    def key_holder(self, dim: int) -> CKKSKeyHolder:
        """Client-side role: holds the secret key, encrypts updates and opens aggregates."""
        return CKKSKeyHolder(SharedKeyMaterial(self.params, dim, self._key_id, self._mac_key), self._secret_key)

    def server(self, dim: int) -> CKKSServer:
        """Server role: public context, fingerprint and MAC key, no secret key."""
        return CKKSServer(SharedKeyMaterial(self.params, dim, self._key_id, self._mac_key))


class CKKSServer:
    """Adds encrypted updates without any secret key (it holds a public SEAL context only).

    Each update is c = (c0, a) with c0 = -a*s + e + m mod q and a expanded from a public seed.
    The server parses c0 into numpy and adds modulo q; the seeds are forwarded to the key
    holder, who expands the a's through SEAL and adds them. Because decryption is linear
    (c0 + a*s), sum(c0) with sum(a) decrypts to sum(m) + sum(e) exactly as the SEAL sum of the
    full ciphertexts would. This is as secure as adding full ciphertexts: a is a deterministic
    public function of the seed, so the server sees exactly the information a full ciphertext
    carries and it relies on the same RLWE assumption; it never sees s, an m or a sum in the clear.
    """

    def __init__(self, shared: SharedKeyMaterial) -> None:
        self.shared = shared
        self.params = shared.params
        self.dim = shared.dim
        #: Public SEAL context (parameters only); there is no key here to decrypt with.
        self.context = self.params.seal_context()
        q = self.params.modulus
        self._q = np.uint64(q)
        # Values below q: this many can be added into a uint64 before a reduction is needed.
        self._lazy = max(1, min((2**64 - 1) // q - 1, 1 << 20))

    def parse_update(
        self, round_id: int, client_id: int, data: bytes, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, bytes]:
        """Validate one client's payload and return (c0 coefficients, seed descriptors).

        Order: size limit (before parsing) -> envelope -> exact length -> key fingerprint ->
        GMAC tag -> PRNG types -> coefficient range.
        """
        sh = self.shared
        env = wire.unpack(
            data, protocol=PROTOCOL, max_bytes=sh.update_size, round_id=round_id, client_id=client_id, kind=KIND_UPDATE
        )
        if len(env.body) != sh.update_body_size:
            raise CiphertextFormatError(
                f"update body holds {len(env.body)} bytes, expected {sh.update_body_size} "
                f"({sh.n_cts} ciphertexts of N={self.params.poly_modulus_degree})"
            )
        fingerprint, nonce, n_cts = _UPDATE_HEAD.unpack_from(env.body)
        if fingerprint != sh.fingerprint:
            raise KeyMismatchError("ciphertext was made under another key set (key fingerprint differs)")
        if n_cts != sh.n_cts:
            raise CiphertextFormatError(f"update declares {n_cts} ciphertexts, expected {sh.n_cts}")
        sh.verify(data, nonce)
        seeds_off = wire.HEADER_SIZE + _UPDATE_HEAD.size
        seeds = bytes(data[seeds_off : seeds_off + sh.n_cts * PRNG_INFO_SIZE])
        sh.check_prng(seeds)
        return sh.unpack_coeffs(data, seeds_off + len(seeds), out), seeds

    def combine(self, round_id: int, payloads: Mapping[int, bytes]) -> Aggregate:
        """Sum the valid updates' c0 modulo q; drop each bad payload with its reason."""
        acc = np.zeros(self.shared.n_coeffs, dtype=np.uint64)
        buf = np.empty_like(acc)
        seeds: list[bytes] = []
        included: list[int] = []
        rejected: dict[int, str] = {}
        pending = 0
        for cid in sorted(payloads):
            if len(included) >= self.params.max_clients:
                rejected[cid] = f"TooManyClients: aggregate already holds max_clients={self.params.max_clients}"
                continue
            try:
                c0, client_seeds = self.parse_update(round_id, cid, payloads[cid], out=buf)
            except PayloadError as err:
                rejected[cid] = f"{type(err).__name__}: {err}"
                continue
            np.add(acc, c0, out=acc)
            pending += 1
            if pending >= self._lazy:
                np.remainder(acc, self._q, out=acc)
                pending = 0
            seeds.append(client_seeds)
            included.append(cid)
        np.remainder(acc, self._q, out=acc)
        nonce = os.urandom(_NONCE)
        body = b"".join(
            (
                _AGG_HEAD.pack(self.shared.fingerprint, nonce, self.shared.n_cts, len(included)),
                struct.pack(f"<{len(included)}I", *included),
                *seeds,
                self.shared.pack_coeffs(acc),
            )
        )
        payload = self.shared.seal_envelope(round_id, wire.SERVER_ID, KIND_AGGREGATE, body, nonce)
        return Aggregate(round_id, payload, included, rejected)

    def open(self, aggregate: Aggregate) -> OpenedAggregate:
        """Always refused: the server holds no secret key (the key holder opens aggregates)."""
        raise KeyRoleError("the CKKS server holds no secret key and cannot open an aggregate; a key holder must")


class CKKSKeyHolder:
    """Client-side role holding the secret key: encrypts updates, opens aggregates.

    Updates are encrypted with SEAL's seeded symmetric-key encryption, which halves the
    ciphertext (c1 is replaced by its seed), and only ceil(log2 q / 8) bytes are sent per c0
    coefficient. The weight rides in the spare slot after the update so it stays encrypted.
    """

    def __init__(self, shared: SharedKeyMaterial, secret_key: seal.SecretKey) -> None:
        self.shared = shared
        self.params = shared.params
        self.dim = shared.dim
        self.context = self.params.seal_context()
        self._encoder = seal.CKKSEncoder(self.context)
        self._encryptor = seal.Encryptor(self.context, secret_key)
        self._decryptor = seal.Decryptor(self.context, secret_key)
        self._evaluator = seal.Evaluator(self.context)
        self._scratch = ScratchDir()
        probe = self._seal_bytes(np.zeros(self.params.reals_per_ciphertext))
        self._codec = SealCodec(
            parms_id=tuple(self.context.first_parms_id()),
            poly_modulus_degree=self.params.poly_modulus_degree,
            scale=self.params.scale,
            version=seal_version(probe),
        )
        self._zero_c0 = bytes(8 * self.params.poly_modulus_degree)
        self._self_test()

    # -- client side ---------------------------------------------------------------------------
    def _seal_bytes(self, reals: np.ndarray) -> bytes:
        """Encode N reals (two per complex slot) and encrypt; SEAL's seeded serialization bytes."""
        half = self.params.poly_modulus_degree // 2
        plain = seal.Plaintext()
        self._encoder.encode((reals[:half] + 1j * reals[half:]).tolist(), self.params.scale, plain)
        path = self._scratch.file()
        self._encryptor.encrypt_symmetric(plain).save(path)
        with open(path, "rb") as fh:
            return fh.read()

    def protect(self, client_id: int, round_id: int, update: np.ndarray, weight: float) -> bytes:
        """Encrypt ``weight * update`` and ``weight`` (spare slot) into one authenticated payload."""
        sh = self.shared
        vec = _check_update(update, self.dim)
        weight = float(weight)
        if not (np.isfinite(weight) and weight > 0):
            raise ValueError(f"weight must be finite and positive, got {weight}")
        values = np.zeros(sh.n_coeffs)
        np.multiply(vec, weight, out=values[: self.dim])
        values[self.dim] = weight
        peak = float(np.max(np.abs(values)))
        if peak > self.params.value_bound:
            raise UpdateRangeError(
                f"largest |weight*update| or weight is {peak:.4g} but these parameters allow "
                f"{self.params.value_bound:.4g} per client (max_clients={self.params.max_clients}, "
                f"scale 2^{self.params.scale_bits}, {self.params.prime_bits}-bit q); normalise the weights "
                "(e.g. to fractions of the round's samples) or lower scale_bits/max_clients"
            )
        n = self.params.reals_per_ciphertext
        c0 = np.empty((sh.n_cts, n), dtype=np.uint64)
        seeds = []
        for j in range(sh.n_cts):
            c0[j], prng = self._codec.split_seeded(self._seal_bytes(values[j * n : (j + 1) * n]))
            seeds.append(prng)
        nonce = os.urandom(_NONCE)
        body = b"".join((_UPDATE_HEAD.pack(sh.fingerprint, nonce, sh.n_cts), *seeds, sh.pack_coeffs(c0)))
        return sh.seal_envelope(round_id, client_id, KIND_UPDATE, body, nonce)

    # -- opener side ---------------------------------------------------------------------------
    def _load(self, c0: bytes, prng: bytes) -> seal.Ciphertext:
        """Expand (c0, seed) into a full SEAL ciphertext through SEAL's own loader."""
        path = self._scratch.file()
        with open(path, "wb") as fh:
            fh.write(self._codec.build_seeded(c0, prng))
        ct = seal.Ciphertext()
        try:
            ct.load(self.context, path)
        except (ValueError, RuntimeError) as err:
            raise CiphertextFormatError(f"SEAL refused a ciphertext: {err}") from err
        return ct

    def _decrypt(self, ct: seal.Ciphertext) -> np.ndarray:
        plain = seal.Plaintext()
        self._decryptor.decrypt(ct, plain)
        z = np.asarray(self._encoder.decode_complex(plain))
        return np.concatenate((z.real, z.imag))

    def open(self, aggregate: Aggregate) -> OpenedAggregate:
        """Verify the server's aggregate, add the clients' expanded a's to sum(c0), decrypt.

        Raises a :class:`PayloadError` subclass if the aggregate is malformed, foreign or tampered.
        """
        sh = self.shared
        max_size = wire.HEADER_SIZE + sh.aggregate_body_size(self.params.max_clients)
        env = wire.unpack(
            aggregate.payload,
            protocol=PROTOCOL,
            max_bytes=max_size,
            round_id=aggregate.round_id,
            client_id=wire.SERVER_ID,
            kind=KIND_AGGREGATE,
        )
        if len(env.body) < _AGG_HEAD.size:
            raise CiphertextFormatError("aggregate body is shorter than its header")
        fingerprint, nonce, n_cts, k = _AGG_HEAD.unpack_from(env.body)
        if fingerprint != sh.fingerprint:
            raise KeyMismatchError("aggregate was made under another key set (key fingerprint differs)")
        if n_cts != sh.n_cts or k > self.params.max_clients or len(env.body) != sh.aggregate_body_size(k):
            raise CiphertextFormatError(
                f"aggregate declares {n_cts} ciphertexts and {k} clients in {len(env.body)} bytes; "
                f"expected {sh.n_cts} ciphertexts and {sh.aggregate_body_size(k)} bytes"
            )
        sh.verify(aggregate.payload, nonce)
        off = wire.HEADER_SIZE + _AGG_HEAD.size
        ids = list(struct.unpack_from(f"<{k}I", aggregate.payload, off))
        if ids != list(aggregate.included):
            raise CiphertextFormatError(f"aggregate holds clients {ids} but claims {aggregate.included}")
        if k == 0:
            return OpenedAggregate(np.zeros(self.dim), 0.0, [])
        off += 4 * k
        seed_block = aggregate.payload[off : off + k * sh.n_cts * PRNG_INFO_SIZE]
        sh.check_prng(seed_block)
        c0_sum = sh.unpack_coeffs(aggregate.payload, off + len(seed_block)).reshape(sh.n_cts, -1)
        values = np.empty(sh.n_coeffs)
        n = self.params.reals_per_ciphertext
        for j in range(sh.n_cts):
            acc = None
            for i in range(k):
                start = (i * sh.n_cts + j) * PRNG_INFO_SIZE
                prng = seed_block[start : start + PRNG_INFO_SIZE]
                if acc is None:
                    acc = self._load(c0_sum[j].astype("<u8").tobytes(), prng)
                else:
                    self._evaluator.add_inplace(acc, self._load(self._zero_c0, prng))
            values[j * n : (j + 1) * n] = self._decrypt(acc)
        total_weight = float(values[self.dim])
        if not total_weight > 0:
            raise PayloadError(
                f"decrypted total weight is {total_weight:.4g}: the sum overflowed q or was not made under this key"
            )
        return OpenedAggregate(values[: self.dim] / total_weight, total_weight, ids)

    def _self_test(self) -> None:
        """Round-trip one ciphertext through split/rebuild/load/decrypt; refuses an unknown SEAL layout."""
        n = self.params.reals_per_ciphertext
        probe = np.linspace(-0.5, 0.5, n)
        c0, prng = self._codec.split_seeded(self._seal_bytes(probe))
        got = self._decrypt(self._load(c0.astype("<u8").tobytes(), prng))
        if not np.allclose(got, probe, rtol=0.0, atol=2.0 ** (12 - self.params.scale_bits)):
            raise ProtocolConfigError("CKKS self-test failed: this SEAL build's ciphertext layout is not supported")
