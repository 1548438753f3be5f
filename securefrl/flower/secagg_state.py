"""SecAgg+ across Flower messages: a client's stage state between two messages, and out-of-band enrolment.

Flower runs each message of a deployment in a fresh ClientApp process, while a
:class:`~protocols.secagg.SecAggClient` lives for the five stages of a round (Bonawitz et al. 2017, CCS).
Between two stages its state -- the round's two X25519 private keys, the peers' public keys, the Shamir
shares it holds, its self-mask seed, what it revealed and signed -- is written with :func:`dump` into the
node's own ``context.state`` (it never leaves the node) and restored with :func:`load`. The encoding is an
explicit versioned little-endian layout (no pickle); :func:`load` refuses anything else.

Enrolment (the registry of identity keys) is out of band, as :mod:`protocols.secagg.identity` requires:
:func:`write_enrolment` writes one private key file per client and the public registry; each SuperNode is
started with its own key file and the registry (``--node-config "identity-key=... registry=..."``), so the
server cannot substitute a client's identity. Not covered: how the key files reach the client machines.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from protocols import crypto
from protocols.errors import PayloadError
from protocols.secagg import IdentityRegistry, SecAggClient, SecAggParams, ShareKind, Stage, enrol
from protocols.shamir import SHARE_BYTES

MAGIC = b"SFSA"
VERSION = 1
_HEAD = struct.Struct("<4sBQIB")
_U32 = struct.Struct("<I")


class StateFormatError(PayloadError):
    """Stored SecAgg client state is not in this build's layout."""


def _ids(ids: object) -> bytes:
    vals = sorted(int(v) for v in ids)  # type: ignore[attr-defined]
    return _U32.pack(len(vals)) + struct.pack(f"<{len(vals)}I", *vals)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise StateFormatError("SecAgg client state is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def ids(self) -> list[int]:
        n = self.u32()
        return list(struct.unpack(f"<{n}I", self.take(4 * n)))


def dump(client: SecAggClient, roster: list[int], book: tuple[list[int], bytes] | None) -> bytes:
    """``client``'s state; ``roster`` is the round's roster, ``book`` the key book's ids and digest if seen."""
    c = client
    out = [_HEAD.pack(MAGIC, VERSION, c.round_id, c.client_id, int(c.stage)), _ids(roster)]
    out.append(b"\x01" + _ids(book[0]) + book[1] if book is not None else b"\x00")
    out.append(crypto.private_bytes(c._enc_key) + crypto.private_bytes(c._mask_key))
    out.append(_U32.pack(len(c._peer_keys)))
    out += [_U32.pack(v) + enc + mask for v, (enc, mask) in sorted(c._peer_keys.items())]
    out.append(_U32.pack(len(c._held)))
    out += [_U32.pack(v) + seed + key for v, (seed, key) in sorted(c._held.items())]
    out.append(bytes([len(c._self_seed)]) + c._self_seed)
    out.append(_ids(c._pairwise))
    out.append(_U32.pack(len(c._revealed)))
    out += [_U32.pack(v) + bytes([int(k)]) for v, k in sorted(c._revealed.items())]
    out.append(b"\x01" + _ids(c._signed_set) if c._signed_set is not None else b"\x00")
    return b"".join(out)


def load(data: bytes, params: SecAggParams, identity: crypto.Ed25519PrivateKey,
         registry: IdentityRegistry) -> tuple[SecAggClient, list[int], tuple[list[int], bytes] | None]:
    """Rebuild the client :func:`dump` wrote (and its roster and key-book record)."""
    r = _Reader(bytes(data))
    magic, version, round_id, cid, stage = _HEAD.unpack(r.take(_HEAD.size))
    if magic != MAGIC or version != VERSION:
        raise StateFormatError(f"not SecAgg client state of version {VERSION}")
    roster = r.ids()
    book = (r.ids(), r.take(32)) if r.take(1) == b"\x01" else None
    c = SecAggClient(params, round_id, cid, roster, identity, registry)
    if book is not None:  # what share_keys derived from the key book (graph seeded by its digest)
        c._book_digest = book[1]
        c.plan = params.plan(round_id, book[0], book[1], len(c._roster))
    c.stage = Stage(stage)
    c._enc_key = crypto.load_private(r.take(crypto.KEY_BYTES))
    c._mask_key = crypto.load_private(r.take(crypto.KEY_BYTES))
    c._peer_keys = {r.u32(): (r.take(crypto.KEY_BYTES), r.take(crypto.KEY_BYTES)) for _ in range(r.u32())}
    c._held = {r.u32(): (r.take(SHARE_BYTES), r.take(SHARE_BYTES)) for _ in range(r.u32())}
    c._self_seed = r.take(r.take(1)[0])
    c._pairwise = frozenset(r.ids())
    c._revealed = {r.u32(): ShareKind(r.take(1)[0]) for _ in range(r.u32())}
    c._signed_set = tuple(r.ids()) if r.take(1) == b"\x01" else None
    if r.pos != len(r.data):
        raise StateFormatError("SecAgg client state has trailing bytes")
    return c, roster, book


# -- out-of-band enrolment ----------------------------------------------------------------------------
def write_enrolment(n_clients: int, folder: str | Path) -> Path:
    """Fresh identity keys (OS CSPRNG): ``client-<i>.key`` (private, mode 600) and ``registry.json`` (public)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    registry, keys = enrol(range(n_clients))
    for cid, key in keys.items():
        path = folder / f"client-{cid}.key"
        path.write_text(crypto.signing_key_bytes(key).hex() + "\n")
        path.chmod(0o600)
    (folder / "registry.json").write_text(json.dumps({str(c): registry[c].hex() for c in registry}, indent=1) + "\n")
    return folder


def read_registry(path: str | Path) -> IdentityRegistry:
    try:
        raw = json.loads(Path(path).read_text())
        return IdentityRegistry({int(c): bytes.fromhex(k) for c, k in raw.items()})
    except (OSError, ValueError, AttributeError) as err:
        raise StateFormatError(f"identity registry {path} is unreadable: {err}") from None


def read_identity(path: str | Path) -> crypto.Ed25519PrivateKey:
    try:
        return crypto.load_signing_key(bytes.fromhex(Path(path).read_text().strip()))
    except (OSError, ValueError) as err:
        raise StateFormatError(f"identity key file {path} is unreadable: {err}") from None
