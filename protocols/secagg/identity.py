"""Long-term client identities for authenticated SecAgg+ (Bonawitz et al. 2017, CCS, §6.2 "active adversary").

Against a server that deviates, every client needs to know the other clients' public keys from a source
the server does not control: a public-key infrastructure. Here it is an :class:`IdentityRegistry`, an
immutable map from client id to its Ed25519 verification key, built once at enrolment and handed to every
client (:func:`enrol`). The server receives the same registry but cannot rewrite the copy a client holds:
the registry is a frozen value, clients keep their own reference, and its :attr:`~IdentityRegistry.digest`
names its content so two parties can compare registries out of band.

Not covered: how the registry reaches the clients in a deployment (a file shipped with the client, a
certificate authority). If the server itself distributes the registry, it can enrol sybils and nothing here
helps; the registry must come from a party the clients trust.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from protocols import crypto
from protocols.errors import ProtocolConfigError
from protocols.wire import SERVER_ID


class IdentityRegistry(Mapping[int, bytes]):
    """Immutable ``client id -> 32-byte Ed25519 verification key`` map, with a digest of its content."""

    __slots__ = ("_keys", "digest")
    _keys: Mapping[int, bytes]
    digest: bytes

    def __init__(self, keys: Mapping[int, bytes]) -> None:
        checked: dict[int, bytes] = {}
        for cid, key in sorted(keys.items()):
            if not isinstance(cid, int) or not 0 <= cid < SERVER_ID:
                raise ProtocolConfigError(f"registry client id {cid!r} is not in [0, {SERVER_ID - 1}]")
            if not isinstance(key, bytes) or len(key) != crypto.KEY_BYTES:
                raise ProtocolConfigError(f"registry key of client {cid} is not {crypto.KEY_BYTES} raw bytes")
            checked[cid] = key
        if len(set(checked.values())) != len(checked):
            raise ProtocolConfigError("two clients share one identity key")
        object.__setattr__(self, "_keys", MappingProxyType(checked))
        parts = (cid.to_bytes(4, "little") + k for cid, k in checked.items())
        object.__setattr__(self, "digest", crypto.digest(b"identity-registry", *parts))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("an identity registry is immutable")

    def __getitem__(self, cid: int) -> bytes:
        return self._keys[cid]

    def __iter__(self) -> Iterator[int]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"IdentityRegistry({len(self)} clients, digest={self.digest.hex()[:16]})"


def enrol(client_ids: Iterable[int]) -> tuple[IdentityRegistry, dict[int, crypto.Ed25519PrivateKey]]:
    """Give every client a fresh long-term Ed25519 identity key (OS CSPRNG); return the registry and the keys.

    Each signing key stays with its client; the registry is public and goes to everyone.
    """
    keys = {int(c): crypto.generate_signing_key() for c in client_ids}
    return IdentityRegistry({c: crypto.verify_key_bytes(k) for c, k in keys.items()}), keys
