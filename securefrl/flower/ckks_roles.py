"""Threshold CKKS across Flower messages: key generation and decryption as ServerApp round-trips.

The roles are :class:`protocols.ckks.CKKSClient` (key owner, encryptor, partial decryptor; one per
ClientApp) and :class:`protocols.ckks.CKKSServer` (adds ciphertexts, combines partials; holds no key).
Enrolment, once per run, is three round-trips: each client draws its keys and sends its signed enrolment
record (identity key, X25519 key, contribution to the public a-seed; ``ckks_enrol``); every client gets the
roster and returns its secret key's t-of-n Shamir shares, each sealed to one recipient (``ckks_shares``);
every client gets the shares addressed to it and derives the a-seed from the roster itself
(``ckks_finish``), so the server cannot choose the common polynomials. Opening a round's aggregate is two:
included clients sign their inclusion (``ckks_include``), the first t enrolled clients return flooded
partial decryptions (``ckks_partial``). The order of draws matches :class:`~protocols.ckks.CKKSProtocol`,
so with ``protocol.params.seed`` (reproducible mode, unfit for deployment) a Flower run equals the
in-process run.

A client's CKKS state (secret key, the shares it holds, its identity and DH keys, its per-round refusals)
stays on its node, in ``context.state`` as numpy arrays and raw bytes -- no pickle.

Not covered: the roster of identity keys reaches the clients through the server (as in the in-process
harness); a server that substitutes keys at enrolment is outside this threat model.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from protocols import crypto
from protocols.ckks import CKKSClient, CKKSParams
from protocols.ckks.ring import RandomSource
from protocols.ckks.roles import Enrolment, Suite, a_seed_from
from protocols.errors import PayloadError, ProtocolConfigError
from securefrl.config import ExperimentConfig
from securefrl.errors import ConfigError

#: CKKSProtocol arguments that are not ring parameters.
_PROTOCOL_KEYS = ("keys", "threshold", "min_clients", "seed", "release", "offline_at_keygen", "params")
_U32 = struct.Struct("<I")
STATE_ARRAYS = "securefrl-ckks-arrays"
STATE_CONFIG = "securefrl-ckks-config"


class CKKSSetup:
    """The public CKKS settings of a run: ring parameters, threshold, minimum set, seed (if reproducible)."""

    def __init__(self, cfg: ExperimentConfig, dim: int) -> None:
        p = dict(cfg.protocol.params)
        if p.get("keys", "threshold") != "threshold" or p.get("release", "safe") != "safe":
            raise ConfigError("protocol.params.keys", "the Flower apps run threshold CKKS with the safe release only")
        ring = {k: v for k, v in p.items() if k not in _PROTOCOL_KEYS}
        try:
            self.params = CKKSParams(**{**dict(p.get("params") or {}), **ring})
            self.params.check_flooding()
        except (TypeError, ProtocolConfigError) as err:
            raise ConfigError("protocol.params", str(err)) from None
        n = cfg.federation.n_clients
        self.dim, self.n = dim, n
        self.threshold = int(p["threshold"]) if p.get("threshold") is not None else n // 2 + 1
        self.min_clients = int(p.get("min_clients", 2))
        seed = p.get("seed")
        self.master = (hashlib.sha256(b"securefrl/ckks/seed" + int(seed).to_bytes(16, "little", signed=True)).digest()
                       if seed is not None else None)

    def client_rng(self, cid: int) -> RandomSource:
        """Client ``cid``'s stream: in the reproducible mode the child CKKSProtocol derives for it."""
        if self.master is None:
            return RandomSource(None)
        return RandomSource(RandomSource(self.master).bytes(32, f"client/{cid}"))

    def suite(self, roster: Mapping[int, Enrolment]) -> Suite:
        """The public suite of an enrolled roster (a-seed hashed from every signed contribution)."""
        return Suite(self.params, self.dim, a_seed_from(roster), {c: e.verify_key for c, e in roster.items()})


# -- byte layouts of the enrolment messages ----------------------------------------------------------------
_ENTRY = 4 + 32 + 32 + 32 + 64


def encode_roster(roster: Mapping[int, Enrolment]) -> bytes:
    """Every client's signed enrolment record (identity key, X25519 key, a-seed contribution, signature)."""
    return b"".join(_U32.pack(c) + e.verify_key + e.dh_public + e.a_share + e.signature
                    for c, e in sorted(roster.items()))


def decode_roster(data: bytes, limit: int) -> dict[int, Enrolment]:
    if len(data) % _ENTRY or len(data) // _ENTRY > limit:
        raise PayloadError(f"roster of {len(data)} bytes is not a list of at most {limit} entries")
    out = {}
    for i in range(0, len(data), _ENTRY):
        (c,) = _U32.unpack_from(data, i)
        b = data[i + 4:i + _ENTRY]
        out[c] = Enrolment(b[:32], b[32:64], b[64:96], b[96:])
    return out


def encode_blobs(blobs: Mapping[int, bytes]) -> bytes:
    return b"".join(_U32.pack(c) + _U32.pack(len(b)) + b for c, b in sorted(blobs.items()))


def decode_blobs(data: bytes, limit: int, max_blob: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        if pos + 8 > len(data) or len(out) >= limit:
            raise PayloadError("share list is truncated or too long")
        c, n = _U32.unpack_from(data, pos)[0], _U32.unpack_from(data, pos + 4)[0]
        if n > max_blob or pos + 8 + n > len(data) or c in out:
            raise PayloadError("share list holds an oversized, truncated or repeated entry")
        out[c] = data[pos + 8:pos + 8 + n]
        pos += 8 + n
    return out


def encode_signatures(sigs: Mapping[int, bytes]) -> bytes:
    return b"".join(_U32.pack(c) + s for c, s in sorted(sigs.items()))


def decode_signatures(data: bytes, limit: int) -> dict[int, bytes]:
    size = 4 + crypto.SIGNATURE_BYTES
    if len(data) % size or len(data) // size > limit:
        raise PayloadError("signature list has the wrong length")
    return {_U32.unpack_from(data, i)[0]: data[i + 4:i + size] for i in range(0, len(data), size)}


# -- a client's state in context.state -----------------------------------------------------------------------
def save_client(client: CKKSClient, roster: Mapping[int, Enrolment] | None) -> tuple[Any, Any]:
    """(ArrayRecord, ConfigRecord) holding ``client``'s state (and the enrolment roster while it is needed)."""
    from flwr.app import Array, ArrayRecord, ConfigRecord

    arrays = {"secret": Array(np.asarray(client._secret, dtype=np.int64))}
    for j, share in client._shares.items():
        arrays[f"share/{j}"] = Array(np.asarray(share, dtype=np.uint64))
    rng = client.rng
    config: dict[str, Any] = {
        "identity": crypto.signing_key_bytes(client.identity),
        "dh": crypto.private_bytes(client._dh),
        "enrolment": encode_roster({client.cid: client.enrolment}),
        "rng_seed": rng._seed if rng._seed is not None else b"",
        "rng_labels": list(rng._counters), "rng_counts": list(rng._counters.values()),
        "round": client._round, "did": sorted(client._did),
        "verified": encode_roster(client._verified),
    }
    if client.suite is not None:
        config["a_seed"] = client.suite.a_seed
        config["verify_keys"] = b"".join(_U32.pack(j) + k for j, k in sorted(client.suite.verify_keys.items()))
    if roster is not None:
        config["roster"] = encode_roster(roster)
    return ArrayRecord(array_dict=arrays), ConfigRecord(config)


def load_client(setup: CKKSSetup, cid: int, arrays: Any, config: Any) -> tuple[CKKSClient, dict | None]:
    """Rebuild the client :func:`save_client` stored (and the roster, if stored)."""
    rng = RandomSource(bytes(config["rng_seed"]) or None)
    client = CKKSClient(cid, setup.params, setup.dim, rng)
    client.rng._counters = dict(zip(config["rng_labels"], config["rng_counts"], strict=True))
    client.identity = crypto.load_signing_key(bytes(config["identity"]))
    client.verify_key = crypto.verify_key_bytes(client.identity)
    client._dh = crypto.load_private(bytes(config["dh"]))
    client.enrolment = decode_roster(bytes(config["enrolment"]), 1)[cid]
    client._secret = arrays["secret"].numpy()
    client._shares = {int(k.split("/")[1]): arrays[k].numpy() for k in arrays if k.startswith("share/")}
    client._verified = decode_roster(bytes(config["verified"]), setup.params.max_clients)
    if "a_seed" in config:
        raw = bytes(config["verify_keys"])
        keys = {_U32.unpack_from(raw, i)[0]: raw[i + 4:i + 36] for i in range(0, len(raw), 36)}
        suite = Suite(setup.params, setup.dim, bytes(config["a_seed"]), keys)
        client.finish_enrolment(suite, setup.threshold, setup.min_clients)
    client._round = int(config["round"])
    client._did = set(config["did"])
    roster = decode_roster(bytes(config["roster"]), setup.params.max_clients) if "roster" in config else None
    return client, roster
