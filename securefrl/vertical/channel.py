"""Authenticated encryption between each party and the Q-network agent, and the binary message format.

Why: in vertical FRL the embeddings are the only thing computed from a party's raw observation that
leaves it, and only the Q-network agent needs them (Zhuo et al. 2019, FedRL, encrypt what agents
exchange; Qi et al. 2021, §4 on protecting intermediate results). Each party runs X25519 key agreement
with the Q-network agent (both keys fresh per session, from the OS CSPRNG), and HKDF-SHA256 turns the
shared secret into one AES-256-GCM key per direction. Every message carries a 64-bit counter that is
also the GCM nonce (so a nonce never repeats under a key) and a header that is the AEAD associated data:
kind, direction, party id, step and counter are all authenticated. The receiver accepts counters in
strict order, so a replayed, reordered, tampered, misaddressed or truncated message raises a typed
error instead of being used.

Scope: the public keys exchanged in the ``HELLO`` messages are not authenticated here; a deployment
must pin them or sign them (as SecAgg assumes a PKI, Bonawitz et al. 2017). Message sizes and timing
are visible on the wire.

Wire layout (little endian)::

    magic   4s  b"VFRL"        version u8      kind u8     direction u8   reserved u8 (0)
    party   u32                 step    u64     counter u64               body_len u32
    body    body_len bytes: AES-GCM ciphertext || 16-byte tag   (HELLO: the 32-byte public key, in clear)

Plaintext bodies are arrays in an explicit encoding (:func:`encode_arrays`): never pickle.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefrl.errors import SecureFRLError

MAGIC = b"VFRL"
VERSION = 1
KEY_BYTES = 32
TAG_BYTES = 16
_HEADER = struct.Struct("<4sBBBBIQQI")
HEADER_SIZE = _HEADER.size
_NONCE = struct.Struct("<IQ")
_DOMAIN = b"securefrl/vfrl/v1/"
_MAX_COUNTER = (1 << 64) - 1


class VerticalProtocolError(SecureFRLError, ValueError):
    """Base of every rejection of a vertical-FRL message; the offending message is never used."""


class MalformedMessageError(VerticalProtocolError):
    """The bytes are not a well-formed message (magic, version, lengths, array encoding, size limit)."""


class AuthenticationError(VerticalProtocolError):
    """AEAD verification failed: the ciphertext, tag or authenticated header was modified, or wrong key."""


class ReplayError(VerticalProtocolError):
    """The message's counter was already consumed on this channel: a replay (or duplicate delivery)."""


class UnexpectedMessageError(VerticalProtocolError):
    """An authentic-looking message that does not belong here: wrong party, direction, kind, step or order."""


class KeyAgreementError(VerticalProtocolError):
    """A peer's public key is malformed or of low order (X25519 would give an all-zero secret)."""


class Kind(IntEnum):
    """Message kinds; each appears in the authenticated header so one kind cannot stand in for another."""

    HELLO = 1
    """Public key for the key agreement (clear text)."""
    EMBED_ACT = 2
    """Party -> Q: embedding of the party's current partial observation, for action selection."""
    BATCH_REQUEST = 3
    """Q -> party: transition ids of a replay minibatch."""
    EMBED_TRAIN = 4
    """Party -> Q: embeddings of the minibatch (online obs, [online next obs], target next obs)."""
    GRADIENT = 5
    """Q -> party: TD-loss gradient w.r.t. the party's obs embedding, and a target-sync flag."""
    ACTION = 6
    """Q -> environment: the chosen action (clear text; the environment is not a party)."""
    REWARD = 7
    """Environment -> Q: reward and termination flag (clear text; the Q-network agent holds the reward)."""


class Direction(IntEnum):
    """Which way a message travels on a party <-> Q-network-agent channel."""

    TO_Q = 0
    FROM_Q = 1


@dataclass(frozen=True)
class Header:
    """Parsed message header (authenticated for encrypted kinds)."""

    kind: Kind
    direction: Direction
    party: int
    step: int
    counter: int
    body_len: int

    def pack(self) -> bytes:
        """The 32-byte wire form (also the AEAD associated data)."""
        return _HEADER.pack(MAGIC, VERSION, int(self.kind), int(self.direction), 0, self.party, self.step,
                            self.counter, self.body_len)


def parse_header(data: bytes, max_bytes: int) -> Header:
    """Parse and bound-check a message header; the size limit is checked before anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessageError(f"message must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise MalformedMessageError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) < HEADER_SIZE:
        raise MalformedMessageError(f"message of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, version, kind, direction, reserved, party, step, counter, body_len = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise MalformedMessageError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise MalformedMessageError(f"unsupported version {version}; this build reads {VERSION}")
    if reserved != 0:
        raise MalformedMessageError("reserved header byte must be 0")
    if body_len != len(data) - HEADER_SIZE:
        raise MalformedMessageError(f"header says {body_len} body bytes but {len(data) - HEADER_SIZE} follow")
    try:
        return Header(Kind(kind), Direction(direction), party, step, counter, body_len)
    except ValueError as err:
        raise MalformedMessageError(f"unknown kind or direction: {err}") from None


# --- explicit array encoding --------------------------------------------------------------------
_DTYPES: dict[int, np.dtype] = {1: np.dtype("<f4"), 2: np.dtype("<i8"), 3: np.dtype("u1")}
_CODES: dict[np.dtype, int] = {np.dtype(np.float32): 1, np.dtype(np.int64): 2, np.dtype(np.uint8): 3}
_ARR_HEAD = struct.Struct("<BB")
_DIM = struct.Struct("<I")
MAX_ARRAYS = 16
MAX_NDIM = 4


def encode_arrays(arrays: Sequence[np.ndarray]) -> bytes:
    """Encode float32 / int64 / uint8 arrays as ``count u8, then per array: dtype u8, ndim u8, dims u32, data``."""
    if len(arrays) > MAX_ARRAYS:
        raise ValueError(f"at most {MAX_ARRAYS} arrays per message, got {len(arrays)}")
    parts = [bytes([len(arrays)])]
    for arr in arrays:
        a = np.asarray(arr)
        code = _CODES.get(a.dtype)
        if code is None:
            raise ValueError(f"dtype {a.dtype} is not encodable; use float32, int64 or uint8")
        if a.ndim > MAX_NDIM:
            raise ValueError(f"at most {MAX_NDIM} dimensions, got {a.ndim}")
        parts.append(_ARR_HEAD.pack(code, a.ndim))
        parts.extend(_DIM.pack(d) for d in a.shape)
        parts.append(np.ascontiguousarray(a, dtype=_DTYPES[code]).tobytes())
    return b"".join(parts)


def decode_arrays(body: bytes, expected: Sequence[tuple[np.dtype | type, int]] | None = None) -> list[np.ndarray]:
    """Decode :func:`encode_arrays` output, checking every length; ``expected`` gives (dtype, ndim) per array."""
    view = memoryview(body)
    if len(view) < 1:
        raise MalformedMessageError("empty array payload")
    count, pos = view[0], 1
    if count > MAX_ARRAYS or (expected is not None and count != len(expected)):
        want = MAX_ARRAYS if expected is None else len(expected)
        raise MalformedMessageError(f"payload holds {count} arrays, expected {want}")
    out: list[np.ndarray] = []
    for i in range(count):
        if pos + _ARR_HEAD.size > len(view):
            raise MalformedMessageError("array header runs past the end of the payload")
        code, ndim = _ARR_HEAD.unpack_from(view, pos)
        pos += _ARR_HEAD.size
        if code not in _DTYPES or ndim > MAX_NDIM:
            raise MalformedMessageError(f"array {i}: unknown dtype code {code} or ndim {ndim}")
        if pos + ndim * _DIM.size > len(view):
            raise MalformedMessageError(f"array {i}: shape runs past the end of the payload")
        shape = tuple(_DIM.unpack_from(view, pos + k * _DIM.size)[0] for k in range(ndim))
        pos += ndim * _DIM.size
        dtype = _DTYPES[code]
        nbytes = math.prod(shape) * dtype.itemsize  # exact Python ints: a huge shape cannot wrap negative
        if pos + nbytes > len(view):
            raise MalformedMessageError(f"array {i}: {nbytes} data bytes announced, {len(view) - pos} left")
        arr = np.frombuffer(view[pos:pos + nbytes], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
        pos += nbytes
        if expected is not None:
            want_dtype, want_ndim = expected[i]
            if arr.dtype != np.dtype(want_dtype) or arr.ndim != want_ndim:
                raise MalformedMessageError(
                    f"array {i} is {arr.dtype}[{arr.ndim}-D], expected {np.dtype(want_dtype)}[{want_ndim}-D]")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise MalformedMessageError(f"array {i} holds NaN or Inf")
        out.append(arr)
    if pos != len(view):
        raise MalformedMessageError(f"{len(view) - pos} trailing bytes after the arrays")
    return out


def clear_message(kind: Kind, direction: Direction, party: int, step: int, body: bytes) -> bytes:
    """A message whose body travels in clear (HELLO, ACTION, REWARD): header + body, no secrecy."""
    return Header(kind, direction, party, step, 0, len(body)).pack() + body


def open_clear(data: bytes, kind: Kind, max_bytes: int, *, party: int | None = None,
               step: int | None = None) -> tuple[Header, bytes]:
    """Parse a clear message and check its kind (and party / step when given)."""
    head = parse_header(data, max_bytes)
    if head.kind != kind:
        raise UnexpectedMessageError(f"expected a {kind.name} message, got {head.kind.name}")
    if party is not None and head.party != party:
        raise UnexpectedMessageError(f"{kind.name} is from party {head.party}, expected party {party}")
    if step is not None and head.step != step:
        raise UnexpectedMessageError(f"{kind.name} is bound to step {head.step}, expected step {step}")
    return head, bytes(data[HEADER_SIZE:])


# --- key agreement --------------------------------------------------------------------------------
def public_bytes(key: X25519PrivateKey) -> bytes:
    """Raw 32-byte X25519 public key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def hello(key: X25519PrivateKey, party: int, direction: Direction) -> bytes:
    """The clear-text HELLO carrying ``key``'s public half for the channel with ``party``."""
    return clear_message(Kind.HELLO, direction, party, 0, public_bytes(key))


def derive_keys(private: X25519PrivateKey, peer_public: bytes, party_public: bytes, q_public: bytes,
                party: int) -> dict[Direction, bytes]:
    """One AES-256 key per direction from X25519 + HKDF-SHA256.

    The salt is the transcript (both public keys), the info binds the purpose, the party id and the
    direction, so the two directions and different parties never share a key.
    """
    if len(peer_public) != KEY_BYTES:
        raise KeyAgreementError(f"public key holds {len(peer_public)} bytes, expected {KEY_BYTES}")
    try:
        secret = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as err:  # cryptography refuses low-order points
        raise KeyAgreementError(f"key agreement failed: {err}") from None
    keys = {}
    for direction in Direction:
        info = _DOMAIN + b"channel/" + struct.pack("<IB", party, int(direction))
        keys[direction] = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=party_public + q_public,
                               info=info).derive(secret)
    return keys


@dataclass
class ChannelEnd:
    """One end of the encrypted channel between party ``party`` and the Q-network agent.

    ``role`` is ``"party"`` or ``"q"``; the end sends in its own direction and only accepts the other.
    Counters start at 0 in each direction and must arrive in order.
    """

    role: str
    party: int
    keys: dict[Direction, bytes] = field(repr=False)
    max_bytes: int = 1 << 24
    sent: int = 0
    received: int = 0

    def __post_init__(self) -> None:
        if self.role not in ("party", "q"):
            raise ValueError(f"role must be 'party' or 'q', got {self.role!r}")
        self._out = Direction.TO_Q if self.role == "party" else Direction.FROM_Q
        self._in = Direction.FROM_Q if self.role == "party" else Direction.TO_Q
        self._seal = AESGCM(self.keys[self._out])
        self._open = AESGCM(self.keys[self._in])

    @classmethod
    def establish(cls, role: str, party: int, private: X25519PrivateKey, peer_hello: bytes,
                  max_bytes: int = 1 << 24) -> ChannelEnd:
        """Finish the key agreement from our private key and the peer's HELLO."""
        mine = Direction.TO_Q if role == "party" else Direction.FROM_Q
        peer_dir = Direction.FROM_Q if role == "party" else Direction.TO_Q
        head, peer_public = open_clear(peer_hello, Kind.HELLO, max_bytes, party=party)
        if head.direction != peer_dir:
            raise UnexpectedMessageError(f"HELLO travels {head.direction.name}, expected {peer_dir.name}")
        own = public_bytes(private)
        party_pub, q_pub = (own, peer_public) if mine == Direction.TO_Q else (peer_public, own)
        return cls(role, party, derive_keys(private, peer_public, party_pub, q_pub, party), max_bytes)

    def seal(self, kind: Kind, step: int, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext``; the header (kind, direction, party, step, counter) is the associated data."""
        if self.sent >= _MAX_COUNTER:
            raise VerticalProtocolError("message counter exhausted; establish a new session")
        head = Header(kind, self._out, self.party, step, self.sent, len(plaintext) + TAG_BYTES).pack()
        ct = self._seal.encrypt(_NONCE.pack(int(self._out), self.sent), plaintext, head)
        self.sent += 1
        return head + ct

    def open(self, data: bytes, kind: Kind, step: int) -> bytes:
        """Authenticate and decrypt the next message; it must be of ``kind`` and bound to ``step``.

        Checks, in order: size and format; direction and party; counter (older: :class:`ReplayError`,
        newer: a message went missing); the AEAD tag (:class:`AuthenticationError`); then kind and step,
        which are authenticated. The counter only advances once all checks passed.
        """
        head = parse_header(data, self.max_bytes)
        if head.direction != self._in or head.party != self.party:
            raise UnexpectedMessageError(
                f"message travels {head.direction.name} for party {head.party}; this end reads "
                f"{self._in.name} for party {self.party}")
        if head.counter < self.received:
            raise ReplayError(f"counter {head.counter} already used (next expected {self.received}) on the "
                              f"{self._in.name} channel of party {self.party}")
        if head.counter > self.received:
            raise UnexpectedMessageError(f"counter {head.counter} skips ahead of {self.received}: messages lost "
                                         "or reordered")
        try:
            plaintext = self._open.decrypt(_NONCE.pack(int(self._in), head.counter), bytes(data[HEADER_SIZE:]),
                                           bytes(data[:HEADER_SIZE]))
        except InvalidTag:
            raise AuthenticationError(f"{head.kind.name} message of party {self.party} failed authentication "
                                      "(tampered or wrong key)") from None
        if head.kind != kind or head.step != step:
            raise UnexpectedMessageError(f"got {head.kind.name} for step {head.step}, expected {kind.name} for "
                                         f"step {step}")
        self.received += 1
        return plaintext
