"""Versioned binary envelope carried around every protocol payload.

Layout (little endian, fixed 28-byte header followed by the body)::

    magic    4s   b"SFRL"
    version  u8   WIRE_VERSION
    protocol u8   protocol code (see PROTOCOL_CODES)
    kind     u16  message kind, protocol specific (e.g. SecAgg stage)
    round    u64  round number the payload is bound to
    client   u32  sender id (0xFFFFFFFF for the server / aggregate)
    body_len u64  length of the body in bytes

Sizes are checked against an explicit limit before anything is parsed, and the body
length must match exactly: truncated or padded envelopes are rejected. No pickle.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from protocols.errors import EnvelopeError, PayloadTooLargeError, WrongRoundError

MAGIC = b"SFRL"
WIRE_VERSION = 1
SERVER_ID = 0xFFFFFFFF
PROTOCOL_CODES: dict[str, int] = {"plaintext": 1, "ckks": 2, "secagg": 3}
_HEADER = struct.Struct("<4sBBHQIQ")
HEADER_SIZE = _HEADER.size
DEFAULT_MAX_BYTES = 1 << 31


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope: who sent what, for which round, and the raw body."""

    protocol: str
    kind: int
    round_id: int
    client_id: int
    body: bytes


def pack(protocol: str, round_id: int, client_id: int, body: bytes, kind: int = 0) -> bytes:
    """Wrap ``body`` in a versioned envelope bound to ``protocol``, ``round_id`` and ``client_id``."""
    code = PROTOCOL_CODES[protocol]
    return _HEADER.pack(MAGIC, WIRE_VERSION, code, kind, round_id, client_id, len(body)) + body


def unpack(
    data: bytes,
    *,
    protocol: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
    round_id: int | None = None,
    client_id: int | None = None,
    kind: int | None = None,
) -> Envelope:
    """Parse and check an envelope; every defect raises a typed :class:`PayloadError`.

    ``round_id``, ``client_id`` and ``kind`` are checked when given, so a payload replayed
    from another round or attributed to another sender is refused.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EnvelopeError(f"payload must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"payload of {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) < HEADER_SIZE:
        raise EnvelopeError(f"payload of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, version, code, kind_, rnd, cid, body_len = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise EnvelopeError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != WIRE_VERSION:
        raise EnvelopeError(f"unsupported wire version {version}, this build reads {WIRE_VERSION}")
    if code != PROTOCOL_CODES[protocol]:
        raise EnvelopeError(f"payload is for protocol code {code}, expected {protocol!r}")
    if body_len != len(data) - HEADER_SIZE:
        raise EnvelopeError(f"body length field says {body_len} bytes but {len(data) - HEADER_SIZE} follow")
    if round_id is not None and rnd != round_id:
        raise WrongRoundError(f"payload is bound to round {rnd}, expected round {round_id}")
    if client_id is not None and cid != client_id:
        raise WrongRoundError(f"payload claims sender {cid}, but arrived from client {client_id}")
    if kind is not None and kind_ != kind:
        raise WrongRoundError(f"payload is message kind {kind_}, expected {kind}")
    return Envelope(protocol, kind_, rnd, cid, bytes(data[HEADER_SIZE:]))
