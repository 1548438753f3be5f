"""Explicit binary encodings of the SecAgg+ messages, carried in the ``secagg`` wire envelope.

The envelope (:mod:`protocols.wire`) binds every message to its round, its stage (the ``kind`` field)
and its sender; messages from the server also name their recipient in the body. Bodies are fixed
layouts of little-endian integers, raw keys and fixed-size ciphertexts/shares, with counts bounded by
``max_clients``, lists strictly ascending (no duplicates) and exact lengths checked before anything
is allocated. Nothing is pickled.

The stages follow Bonawitz et al. 2017 (CCS, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", Fig. 4, malicious variant); SecAgg+ (Bell et al. 2020, CCS) keeps them over a sparse
graph. With ``params.authenticated`` (the default) every client-to-server message carries an Ed25519
signature by the sender's long-term identity key over ``(kind, round, sender, body)``
(:func:`signed_message`), so the server, the network and other clients can neither forge, edit, replay
into another round or stage, nor re-attribute a client's message; the key book the server forwards keeps
each advertisement's signature so every client can check every key it uses, and the consistency-check
round (clients sign the survivor set) runs between masked input and unmasking.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from protocols import crypto, wire
from protocols.crypto import KEY_BYTES, NONCE_BYTES, SIGNATURE_BYTES, TAG_BYTES
from protocols.errors import PayloadError
from protocols.secagg.params import SecAggParams
from protocols.shamir import SHARE_BYTES

PROTOCOL = "secagg"
_U32 = struct.Struct("<I")
_SIGNED = struct.Struct("<HQI")
#: A commitment to a client's self-mask seed ``b_u`` (SHA-256).
COMMITMENT_BYTES = 32
#: Plaintext of one encrypted share pair: self-mask-seed share then mask-key share.
SHARE_PAIR_BYTES = 2 * SHARE_BYTES
#: Size of one encrypted share pair on the wire (nonce, ciphertext, tag).
CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PAIR_BYTES + TAG_BYTES


class Stage(IntEnum):
    """The SecAgg stages, then the two terminal states of a client or server.

    ``CONSISTENCY`` (clients sign the survivor set) runs only with ``params.authenticated``.
    """

    ADVERTISE_KEYS = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    CONSISTENCY = 4
    UNMASK = 5
    DONE = 6
    ABORTED = 7


class Kind(IntEnum):
    """Envelope ``kind`` of each message: the stage it belongs to and its direction."""

    ADVERTISE_KEYS = 1  # client -> server
    KEY_LIST = 2  # server -> client
    SHARE_KEYS = 3  # client -> server
    FORWARDED_SHARES = 4  # server -> client
    MASKED_INPUT = 5  # client -> server
    UNMASK_REQUEST = 6  # server -> client
    UNMASK_SHARES = 7  # client -> server
    AGGREGATE = 8  # server -> opener
    CONSISTENCY_REQUEST = 9  # server -> client: the survivor set to sign
    CONSISTENCY_SIGNATURE = 10  # client -> server: the survivor set, signed


#: Messages a client sends; with authentication each carries the sender's signature.
CLIENT_KINDS = frozenset({Kind.ADVERTISE_KEYS, Kind.SHARE_KEYS, Kind.MASKED_INPUT, Kind.CONSISTENCY_SIGNATURE,
                          Kind.UNMASK_SHARES})


def signed_message(kind: Kind, round_id: int, sender: int, body: bytes) -> bytes:
    """What a client signs: the message kind (stage), round, sender and body, under the protocol's domain."""
    return b"securefrl/secagg/v1/signed/" + _SIGNED.pack(int(kind), round_id, sender) + body


def encode_ids(ids: tuple[int, ...] | list[int]) -> bytes:
    """A sorted id list as ``u32 count || u32 ids``: the survivor set clients sign."""
    return _U32.pack(len(ids)) + b"".join(_U32.pack(v) for v in ids)


class ShareKind(IntEnum):
    """Which secret a revealed share belongs to; an honest client reveals one kind per peer."""

    SELF_MASK_SEED = 0  # the peer survived: its self mask must be removed
    MASK_KEY = 1  # the peer dropped: its pairwise masks must be removed


class MessageFormatError(PayloadError):
    """A SecAgg message body does not follow its layout (length, count, order, range)."""


@dataclass(frozen=True)
class KeyEntry:
    """A client's two public keys: for the share channel (c) and for pairwise masks (s), and its signature.

    ``signature`` is the advertiser's own signature over its advertisement (empty without authentication).
    """

    client_id: int
    enc_public: bytes
    mask_public: bytes
    signature: bytes = b""


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 1, client -> server: the sender's two fresh X25519 public keys."""

    enc_public: bytes
    mask_public: bytes


@dataclass(frozen=True)
class KeyList:
    """Stage 1 -> 2, server -> client: every advertised key pair of the round (the key book), signed by its owner.

    Every client receives the whole book: the neighbour graph's seed is a digest of it, so the server cannot
    choose the graph without re-rolling the clients' fresh keys.
    """

    recipient: int
    entries: tuple[KeyEntry, ...]


@dataclass(frozen=True)
class ShareKeys:
    """Stage 2, client -> server: one encrypted share pair per neighbour, ``(recipient, ciphertext)``.

    ``commitment`` is a SHA-256 commitment to the self-mask seed ``b_u``: the server checks the seed it
    rebuilds against it, so a forged share is detected and its sender identified.
    """

    ciphertexts: tuple[tuple[int, bytes], ...]
    commitment: bytes = bytes(COMMITMENT_BYTES)


@dataclass(frozen=True)
class ForwardedShares:
    """Stage 2 -> 3, server -> client: encrypted share pairs addressed to it, ``(sender, ciphertext)``."""

    recipient: int
    ciphertexts: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 3/4 -> 5, server -> client: which neighbours survived and which dropped.

    With authentication it also carries the survivor set every client signed and the signatures
    ``(signer, signature)`` the server collected; a client reveals nothing unless at least t of each
    affected neighbourhood signed the same set.
    """

    recipient: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    survivor_set: tuple[int, ...] = ()
    signatures: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True)
class ConsistencyRequest:
    """Stage 3 -> 4, server -> client: the set of clients whose masked input arrived, to be signed."""

    recipient: int
    survivor_set: tuple[int, ...]


@dataclass(frozen=True)
class UnmaskShares:
    """Stage 4, client -> server: ``(peer, kind, share)`` for every peer named in the request."""

    shares: tuple[tuple[int, ShareKind, bytes], ...]


class MessageCodec:
    """Encode and strictly decode SecAgg messages for one parameter set (sizes are bounded by it).

    With ``params.authenticated``, client messages are signed on encoding (pass ``signer``, the sender's
    identity key) and verified on decoding against ``registry`` (the enrolment registry), before their body
    is parsed.
    """

    def __init__(self, params: SecAggParams, registry: Mapping[int, bytes] | None = None) -> None:
        self.params = params
        self.registry = registry
        self.authenticated = params.authenticated
        n = params.max_clients
        h = wire.HEADER_SIZE
        sig = SIGNATURE_BYTES if self.authenticated else 0
        vec = params.vector_length * params.dtype.itemsize
        self.max_bytes = {
            Kind.ADVERTISE_KEYS: h + 2 * KEY_BYTES + sig,
            Kind.KEY_LIST: h + 8 + n * (4 + 2 * KEY_BYTES + sig),
            Kind.SHARE_KEYS: h + COMMITMENT_BYTES + 4 + n * (4 + CIPHERTEXT_BYTES) + sig,
            Kind.FORWARDED_SHARES: h + 8 + n * (4 + CIPHERTEXT_BYTES),
            Kind.MASKED_INPUT: h + vec + sig,
            Kind.CONSISTENCY_REQUEST: h + 8 + 4 * n,
            Kind.CONSISTENCY_SIGNATURE: h + 4 + 4 * n + COMMITMENT_BYTES + sig,
            Kind.UNMASK_REQUEST: h + 20 + 3 * n * 4 + n * (4 + SIGNATURE_BYTES),
            Kind.UNMASK_SHARES: h + 4 + n * (5 + SHARE_BYTES) + sig,
            Kind.AGGREGATE: h + 4 + vec,
        }

    # -- envelope ---------------------------------------------------------------------------------
    def _open(self, data: bytes, kind: Kind, round_id: int, sender: int) -> bytes:
        """Parse the envelope; for a client message, verify and strip its signature first."""
        env = wire.unpack(
            data, protocol=PROTOCOL, max_bytes=self.max_bytes[kind], round_id=round_id, client_id=sender, kind=kind
        )
        if kind not in CLIENT_KINDS or not self.authenticated:
            return env.body
        body, signature = self.split_signature(env.body)
        self.verify(kind, round_id, sender, body, signature)
        return body

    @staticmethod
    def split_signature(body: bytes) -> tuple[bytes, bytes]:
        if len(body) < SIGNATURE_BYTES:
            raise MessageFormatError(f"signed message of {len(body)} bytes is shorter than its signature")
        return body[:-SIGNATURE_BYTES], body[-SIGNATURE_BYTES:]

    def verify(self, kind: Kind, round_id: int, sender: int, body: bytes, signature: bytes) -> None:
        """Check ``sender``'s signature on a message; unknown senders and bad signatures raise SignatureError."""
        if self.registry is None:
            raise crypto.SignatureError("no identity registry to verify signatures with")
        key = self.registry.get(sender)
        if key is None:
            raise crypto.SignatureError(f"client {sender} is not enrolled in the identity registry")
        crypto.verify(key, signed_message(kind, round_id, sender, body), signature)

    def _pack(self, kind: Kind, round_id: int, sender: int, body: bytes, signer: Any = None) -> bytes:
        if kind in CLIENT_KINDS and self.authenticated:
            if signer is None:
                raise ValueError(f"an authenticated {kind.name} message needs the sender's identity key")
            body = body + crypto.sign(signer, signed_message(kind, round_id, sender, body))
        return wire.pack(PROTOCOL, round_id, sender, body, kind=int(kind))

    # -- stage 1 ----------------------------------------------------------------------------------
    def encode_advertise(self, round_id: int, sender: int, msg: AdvertiseKeys, signer: Any = None) -> bytes:
        return self._pack(Kind.ADVERTISE_KEYS, round_id, sender, msg.enc_public + msg.mask_public, signer)

    def decode_advertise(self, data: bytes, round_id: int, sender: int) -> tuple[AdvertiseKeys, bytes]:
        """The advertisement and its signature (empty without authentication), which the key book carries."""
        env = wire.unpack(data, protocol=PROTOCOL, max_bytes=self.max_bytes[Kind.ADVERTISE_KEYS],
                          round_id=round_id, client_id=sender, kind=Kind.ADVERTISE_KEYS)
        body, signature = self.split_signature(env.body) if self.authenticated else (env.body, b"")
        if len(body) != 2 * KEY_BYTES:
            raise MessageFormatError(f"advertise body holds {len(body)} bytes, expected {2 * KEY_BYTES}")
        if self.authenticated:
            self.verify(Kind.ADVERTISE_KEYS, round_id, sender, body, signature)
        return AdvertiseKeys(body[:KEY_BYTES], body[KEY_BYTES:]), signature

    def verify_entry(self, round_id: int, entry: KeyEntry) -> None:
        """Check that a key-book entry carries its owner's signature (a client does this for every entry)."""
        self.verify(Kind.ADVERTISE_KEYS, round_id, entry.client_id, entry.enc_public + entry.mask_public,
                    entry.signature)

    def encode_key_list(self, round_id: int, msg: KeyList) -> bytes:
        parts = [_U32.pack(msg.recipient), _U32.pack(len(msg.entries))]
        sig = SIGNATURE_BYTES if self.authenticated else 0
        for e in msg.entries:
            if len(e.signature) != sig:
                raise ValueError(f"key entry of client {e.client_id} has a {len(e.signature)}-byte signature")
            parts.append(_U32.pack(e.client_id) + e.enc_public + e.mask_public + e.signature)
        return self._pack(Kind.KEY_LIST, round_id, wire.SERVER_ID, b"".join(parts))

    def decode_key_list(self, data: bytes, round_id: int) -> KeyList:
        r = _Reader(self._open(data, Kind.KEY_LIST, round_id, wire.SERVER_ID))
        recipient = r.u32()
        sig = SIGNATURE_BYTES if self.authenticated else 0
        count = r.count(4 + 2 * KEY_BYTES + sig, self.params.max_clients)
        entries = tuple(KeyEntry(r.u32(), r.take(KEY_BYTES), r.take(KEY_BYTES), r.take(sig)) for _ in range(count))
        r.done()
        _ascending([e.client_id for e in entries], "key list")
        return KeyList(recipient, entries)

    # -- stage 2 ----------------------------------------------------------------------------------
    def encode_share_keys(self, round_id: int, sender: int, msg: ShareKeys, signer: Any = None) -> bytes:
        if len(msg.commitment) != COMMITMENT_BYTES:
            raise ValueError(f"commitment must be {COMMITMENT_BYTES} bytes")
        parts = [msg.commitment, _U32.pack(len(msg.ciphertexts))] + [_U32.pack(v) + ct for v, ct in msg.ciphertexts]
        return self._pack(Kind.SHARE_KEYS, round_id, sender, b"".join(parts), signer)

    def decode_share_keys(self, data: bytes, round_id: int, sender: int) -> ShareKeys:
        r = _Reader(self._open(data, Kind.SHARE_KEYS, round_id, sender))
        commitment = r.take(COMMITMENT_BYTES)
        count = r.count(4 + CIPHERTEXT_BYTES, self.params.max_clients)
        cts = tuple((r.u32(), r.take(CIPHERTEXT_BYTES)) for _ in range(count))
        r.done()
        _ascending([v for v, _ in cts], "share list")
        return ShareKeys(cts, commitment)

    def encode_forwarded(self, round_id: int, msg: ForwardedShares) -> bytes:
        parts = [_U32.pack(msg.recipient), _U32.pack(len(msg.ciphertexts))]
        parts += [_U32.pack(v) + ct for v, ct in msg.ciphertexts]
        return self._pack(Kind.FORWARDED_SHARES, round_id, wire.SERVER_ID, b"".join(parts))

    def decode_forwarded(self, data: bytes, round_id: int) -> ForwardedShares:
        r = _Reader(self._open(data, Kind.FORWARDED_SHARES, round_id, wire.SERVER_ID))
        recipient = r.u32()
        count = r.count(4 + CIPHERTEXT_BYTES, self.params.max_clients)
        cts = tuple((r.u32(), r.take(CIPHERTEXT_BYTES)) for _ in range(count))
        r.done()
        _ascending([v for v, _ in cts], "forwarded share list")
        return ForwardedShares(recipient, cts)

    # -- stage 3 ----------------------------------------------------------------------------------
    def encode_masked(self, round_id: int, sender: int, vector: np.ndarray, signer: Any = None) -> bytes:
        vec = np.ascontiguousarray(vector, dtype=self.params.dtype)
        if vec.shape != (self.params.vector_length,):
            raise ValueError(f"masked vector has shape {vec.shape}, expected ({self.params.vector_length},)")
        return self._pack(Kind.MASKED_INPUT, round_id, sender, vec.tobytes(), signer)

    def decode_masked(self, data: bytes, round_id: int, sender: int) -> np.ndarray:
        body = self._open(data, Kind.MASKED_INPUT, round_id, sender)
        expected = self.params.vector_length * self.params.dtype.itemsize
        if len(body) != expected:
            raise MessageFormatError(f"masked input holds {len(body)} bytes, expected {expected}")
        return np.frombuffer(body, dtype=self.params.dtype)

    # -- stage 4: consistency check -----------------------------------------------------------------
    def encode_consistency_request(self, round_id: int, msg: ConsistencyRequest) -> bytes:
        body = _U32.pack(msg.recipient) + encode_ids(msg.survivor_set)
        return self._pack(Kind.CONSISTENCY_REQUEST, round_id, wire.SERVER_ID, body)

    def decode_consistency_request(self, data: bytes, round_id: int) -> ConsistencyRequest:
        r = _Reader(self._open(data, Kind.CONSISTENCY_REQUEST, round_id, wire.SERVER_ID))
        recipient = r.u32()
        ids = r.ids(self.params.max_clients)
        r.done()
        return ConsistencyRequest(recipient, ids)

    def encode_consistency_signature(self, round_id: int, sender: int, survivor_set: tuple[int, ...],
                                     book_digest: bytes, signer: Any = None) -> bytes:
        """The survivor set and the digest of the key book the sender saw, signed (a view both must share)."""
        if len(book_digest) != COMMITMENT_BYTES:
            raise ValueError(f"key-book digest must be {COMMITMENT_BYTES} bytes")
        return self._pack(Kind.CONSISTENCY_SIGNATURE, round_id, sender, encode_ids(survivor_set) + book_digest,
                          signer)

    def decode_consistency_signature(self, data: bytes, round_id: int,
                                     sender: int) -> tuple[tuple[int, ...], bytes, bytes]:
        """The survivor set and key-book digest the sender signed, and its signature (already verified)."""
        env = wire.unpack(data, protocol=PROTOCOL, max_bytes=self.max_bytes[Kind.CONSISTENCY_SIGNATURE],
                          round_id=round_id, client_id=sender, kind=Kind.CONSISTENCY_SIGNATURE)
        body, signature = self.split_signature(env.body)
        self.verify(Kind.CONSISTENCY_SIGNATURE, round_id, sender, body, signature)
        r = _Reader(body)
        ids = r.ids(self.params.max_clients)
        digest = r.take(COMMITMENT_BYTES)
        r.done()
        return ids, digest, signature

    # -- stage 5 ----------------------------------------------------------------------------------
    def encode_unmask_request(self, round_id: int, msg: UnmaskRequest) -> bytes:
        head = struct.pack("<III", msg.recipient, len(msg.survivors), len(msg.dropped))
        ids = b"".join(_U32.pack(v) for v in (*msg.survivors, *msg.dropped))
        sigs = _U32.pack(len(msg.signatures)) + b"".join(_U32.pack(v) + s for v, s in msg.signatures)
        return self._pack(Kind.UNMASK_REQUEST, round_id, wire.SERVER_ID,
                          head + ids + encode_ids(msg.survivor_set) + sigs)

    def decode_unmask_request(self, data: bytes, round_id: int) -> UnmaskRequest:
        r = _Reader(self._open(data, Kind.UNMASK_REQUEST, round_id, wire.SERVER_ID))
        recipient, n_surv, n_drop = r.u32(), r.u32(), r.u32()
        limit = self.params.max_clients
        if n_surv > limit or n_drop > limit or r.remaining < 4 * (n_surv + n_drop):
            raise MessageFormatError("unmask request lists a number of ids that does not match its length")
        survivors = tuple(r.u32() for _ in range(n_surv))
        dropped = tuple(r.u32() for _ in range(n_drop))
        survivor_set = r.ids(limit)
        count = r.count(4 + SIGNATURE_BYTES, limit)
        signatures = tuple((r.u32(), r.take(SIGNATURE_BYTES)) for _ in range(count))
        r.done()
        _ascending(list(survivors), "survivor list")
        _ascending(list(dropped), "dropout list")
        _ascending([v for v, _ in signatures], "signature list")
        return UnmaskRequest(recipient, survivors, dropped, survivor_set, signatures)

    def encode_unmask_shares(self, round_id: int, sender: int, msg: UnmaskShares, signer: Any = None) -> bytes:
        parts = [_U32.pack(len(msg.shares))]
        parts += [_U32.pack(v) + bytes([int(k)]) + share for v, k, share in msg.shares]
        return self._pack(Kind.UNMASK_SHARES, round_id, sender, b"".join(parts), signer)

    def decode_unmask_shares(self, data: bytes, round_id: int, sender: int) -> UnmaskShares:
        r = _Reader(self._open(data, Kind.UNMASK_SHARES, round_id, sender))
        count = r.count(5 + SHARE_BYTES, self.params.max_clients)
        shares = []
        for _ in range(count):
            peer, kind = r.u32(), r.take(1)[0]
            if kind not in (ShareKind.SELF_MASK_SEED, ShareKind.MASK_KEY):
                raise MessageFormatError(f"unknown share kind {kind}")
            shares.append((peer, ShareKind(kind), r.take(SHARE_BYTES)))
        r.done()
        _ascending([v for v, _, _ in shares], "revealed share list")
        return UnmaskShares(tuple(shares))

    # -- result -----------------------------------------------------------------------------------
    def encode_aggregate(self, round_id: int, count: int, total: np.ndarray) -> bytes:
        vec = np.ascontiguousarray(total, dtype=self.params.dtype)
        return self._pack(Kind.AGGREGATE, round_id, wire.SERVER_ID, _U32.pack(count) + vec.tobytes())

    def decode_aggregate(self, data: bytes, round_id: int) -> tuple[int, np.ndarray]:
        r = _Reader(self._open(data, Kind.AGGREGATE, round_id, wire.SERVER_ID))
        count = r.u32()
        expected = self.params.vector_length * self.params.dtype.itemsize
        if r.remaining != expected or not 1 <= count <= self.params.max_clients:
            raise MessageFormatError("aggregate body has the wrong length or client count")
        return count, np.frombuffer(r.take(expected), dtype=self.params.dtype)


class _Reader:
    """Bounds-checked cursor over a message body."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n > self.remaining:
            raise MessageFormatError(f"message truncated: needed {n} more bytes, {self.remaining} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def count(self, entry_size: int, limit: int) -> int:
        """Read an entry count and check it against ``limit`` and the bytes that follow, before looping."""
        n = self.u32()
        if n > limit or self.remaining != n * entry_size:
            raise MessageFormatError(f"count {n} does not match the {self.remaining} bytes that follow (limit {limit})")
        return n

    def ids(self, limit: int) -> tuple[int, ...]:
        """A ``u32 count || u32 ids`` list, strictly ascending, at most ``limit`` long."""
        n = self.u32()
        if n > limit or self.remaining < 4 * n:
            raise MessageFormatError(f"id list of {n} entries does not fit (limit {limit}, {self.remaining} left)")
        out = tuple(self.u32() for _ in range(n))
        _ascending(list(out), "id list")
        return out

    def done(self) -> None:
        if self.remaining:
            raise MessageFormatError(f"{self.remaining} trailing bytes after the message")


def _ascending(ids: list[int], what: str) -> None:
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise MessageFormatError(f"{what} is not strictly ascending (duplicate or unordered ids)")
