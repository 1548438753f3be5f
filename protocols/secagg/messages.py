"""Explicit binary encodings of the SecAgg+ messages, carried in the ``secagg`` wire envelope.

The envelope (:mod:`protocols.wire`) binds every message to its round, its stage (the ``kind`` field)
and its sender; messages from the server also name their recipient in the body. Bodies are fixed
layouts of little-endian integers, raw keys and fixed-size ciphertexts/shares, with counts bounded by
``max_clients``, lists strictly ascending (no duplicates) and exact lengths checked before anything
is allocated. Nothing is pickled.

The four stages follow Bonawitz et al. 2017 (CCS, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", Fig. 4) without the consistency-check round, which only matters
against an actively malicious server that forges the survivor list; SecAgg+ (Bell et al. 2020, CCS)
keeps the same stages over a sparse graph.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from protocols import wire
from protocols.crypto import KEY_BYTES, NONCE_BYTES, TAG_BYTES
from protocols.errors import PayloadError
from protocols.secagg.params import SecAggParams
from protocols.shamir import SHARE_BYTES

PROTOCOL = "secagg"
_U32 = struct.Struct("<I")
#: Plaintext of one encrypted share pair: self-mask-seed share then mask-key share.
SHARE_PAIR_BYTES = 2 * SHARE_BYTES
#: Size of one encrypted share pair on the wire (nonce, ciphertext, tag).
CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PAIR_BYTES + TAG_BYTES


class Stage(IntEnum):
    """The four SecAgg stages, then the two terminal states of a client or server."""

    ADVERTISE_KEYS = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    UNMASK = 4
    DONE = 5
    ABORTED = 6


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


class ShareKind(IntEnum):
    """Which secret a revealed share belongs to; an honest client reveals one kind per peer."""

    SELF_MASK_SEED = 0  # the peer survived: its self mask must be removed
    MASK_KEY = 1  # the peer dropped: its pairwise masks must be removed


class MessageFormatError(PayloadError):
    """A SecAgg message body does not follow its layout (length, count, order, range)."""


@dataclass(frozen=True)
class KeyEntry:
    """A client's two public keys: for the share channel (c) and for pairwise masks (s)."""

    client_id: int
    enc_public: bytes
    mask_public: bytes


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 1, client -> server: the sender's two fresh X25519 public keys."""

    enc_public: bytes
    mask_public: bytes


@dataclass(frozen=True)
class KeyList:
    """Stage 1 -> 2, server -> client: the keys of the recipient's neighbours that advertised (and its own)."""

    recipient: int
    entries: tuple[KeyEntry, ...]


@dataclass(frozen=True)
class ShareKeys:
    """Stage 2, client -> server: one encrypted share pair per neighbour, ``(recipient, ciphertext)``."""

    ciphertexts: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class ForwardedShares:
    """Stage 2 -> 3, server -> client: encrypted share pairs addressed to it, ``(sender, ciphertext)``."""

    recipient: int
    ciphertexts: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 3 -> 4, server -> client: which neighbours survived and which dropped."""

    recipient: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


@dataclass(frozen=True)
class UnmaskShares:
    """Stage 4, client -> server: ``(peer, kind, share)`` for every peer named in the request."""

    shares: tuple[tuple[int, ShareKind, bytes], ...]


class MessageCodec:
    """Encode and strictly decode SecAgg messages for one parameter set (sizes are bounded by it)."""

    def __init__(self, params: SecAggParams) -> None:
        self.params = params
        n = params.max_clients
        h = wire.HEADER_SIZE
        vec = params.vector_length * params.dtype.itemsize
        self.max_bytes = {
            Kind.ADVERTISE_KEYS: h + 2 * KEY_BYTES,
            Kind.KEY_LIST: h + 8 + n * (4 + 2 * KEY_BYTES),
            Kind.SHARE_KEYS: h + 4 + n * (4 + CIPHERTEXT_BYTES),
            Kind.FORWARDED_SHARES: h + 8 + n * (4 + CIPHERTEXT_BYTES),
            Kind.MASKED_INPUT: h + vec,
            Kind.UNMASK_REQUEST: h + 12 + 2 * n * 4,
            Kind.UNMASK_SHARES: h + 4 + n * (5 + SHARE_BYTES),
            Kind.AGGREGATE: h + 4 + vec,
        }

    # -- envelope ---------------------------------------------------------------------------------
    def _open(self, data: bytes, kind: Kind, round_id: int, sender: int) -> bytes:
        env = wire.unpack(
            data, protocol=PROTOCOL, max_bytes=self.max_bytes[kind], round_id=round_id, client_id=sender, kind=kind
        )
        return env.body

    @staticmethod
    def _pack(kind: Kind, round_id: int, sender: int, body: bytes) -> bytes:
        return wire.pack(PROTOCOL, round_id, sender, body, kind=int(kind))

    # -- stage 1 ----------------------------------------------------------------------------------
    def encode_advertise(self, round_id: int, sender: int, msg: AdvertiseKeys) -> bytes:
        return self._pack(Kind.ADVERTISE_KEYS, round_id, sender, msg.enc_public + msg.mask_public)

    def decode_advertise(self, data: bytes, round_id: int, sender: int) -> AdvertiseKeys:
        body = self._open(data, Kind.ADVERTISE_KEYS, round_id, sender)
        if len(body) != 2 * KEY_BYTES:
            raise MessageFormatError(f"advertise body holds {len(body)} bytes, expected {2 * KEY_BYTES}")
        return AdvertiseKeys(body[:KEY_BYTES], body[KEY_BYTES:])

    def encode_key_list(self, round_id: int, msg: KeyList) -> bytes:
        parts = [_U32.pack(msg.recipient), _U32.pack(len(msg.entries))]
        parts += [_U32.pack(e.client_id) + e.enc_public + e.mask_public for e in msg.entries]
        return self._pack(Kind.KEY_LIST, round_id, wire.SERVER_ID, b"".join(parts))

    def decode_key_list(self, data: bytes, round_id: int) -> KeyList:
        r = _Reader(self._open(data, Kind.KEY_LIST, round_id, wire.SERVER_ID))
        recipient = r.u32()
        count = r.count(4 + 2 * KEY_BYTES, self.params.max_clients)
        entries = tuple(KeyEntry(r.u32(), r.take(KEY_BYTES), r.take(KEY_BYTES)) for _ in range(count))
        r.done()
        _ascending([e.client_id for e in entries], "key list")
        return KeyList(recipient, entries)

    # -- stage 2 ----------------------------------------------------------------------------------
    def encode_share_keys(self, round_id: int, sender: int, msg: ShareKeys) -> bytes:
        parts = [_U32.pack(len(msg.ciphertexts))] + [_U32.pack(v) + ct for v, ct in msg.ciphertexts]
        return self._pack(Kind.SHARE_KEYS, round_id, sender, b"".join(parts))

    def decode_share_keys(self, data: bytes, round_id: int, sender: int) -> ShareKeys:
        r = _Reader(self._open(data, Kind.SHARE_KEYS, round_id, sender))
        count = r.count(4 + CIPHERTEXT_BYTES, self.params.max_clients)
        cts = tuple((r.u32(), r.take(CIPHERTEXT_BYTES)) for _ in range(count))
        r.done()
        _ascending([v for v, _ in cts], "share list")
        return ShareKeys(cts)

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
    def encode_masked(self, round_id: int, sender: int, vector: np.ndarray) -> bytes:
        vec = np.ascontiguousarray(vector, dtype=self.params.dtype)
        if vec.shape != (self.params.vector_length,):
            raise ValueError(f"masked vector has shape {vec.shape}, expected ({self.params.vector_length},)")
        return self._pack(Kind.MASKED_INPUT, round_id, sender, vec.tobytes())

    def decode_masked(self, data: bytes, round_id: int, sender: int) -> np.ndarray:
        body = self._open(data, Kind.MASKED_INPUT, round_id, sender)
        expected = self.params.vector_length * self.params.dtype.itemsize
        if len(body) != expected:
            raise MessageFormatError(f"masked input holds {len(body)} bytes, expected {expected}")
        return np.frombuffer(body, dtype=self.params.dtype)

    def encode_unmask_request(self, round_id: int, msg: UnmaskRequest) -> bytes:
        head = struct.pack("<III", msg.recipient, len(msg.survivors), len(msg.dropped))
        ids = b"".join(_U32.pack(v) for v in (*msg.survivors, *msg.dropped))
        return self._pack(Kind.UNMASK_REQUEST, round_id, wire.SERVER_ID, head + ids)

    def decode_unmask_request(self, data: bytes, round_id: int) -> UnmaskRequest:
        r = _Reader(self._open(data, Kind.UNMASK_REQUEST, round_id, wire.SERVER_ID))
        recipient, n_surv, n_drop = r.u32(), r.u32(), r.u32()
        limit = self.params.max_clients
        if n_surv > limit or n_drop > limit or r.remaining != 4 * (n_surv + n_drop):
            raise MessageFormatError("unmask request lists a number of ids that does not match its length")
        survivors = tuple(r.u32() for _ in range(n_surv))
        dropped = tuple(r.u32() for _ in range(n_drop))
        r.done()
        _ascending(list(survivors), "survivor list")
        _ascending(list(dropped), "dropout list")
        return UnmaskRequest(recipient, survivors, dropped)

    # -- stage 4 ----------------------------------------------------------------------------------
    def encode_unmask_shares(self, round_id: int, sender: int, msg: UnmaskShares) -> bytes:
        parts = [_U32.pack(len(msg.shares))]
        parts += [_U32.pack(v) + bytes([int(k)]) + share for v, k, share in msg.shares]
        return self._pack(Kind.UNMASK_SHARES, round_id, sender, b"".join(parts))

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

    def done(self) -> None:
        if self.remaining:
            raise MessageFormatError(f"{self.remaining} trailing bytes after the message")


def _ascending(ids: list[int], what: str) -> None:
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise MessageFormatError(f"{what} is not strictly ascending (duplicate or unordered ids)")
