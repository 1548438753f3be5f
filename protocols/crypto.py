"""The project's one layer of cryptographic primitives: X25519 key agreement, HKDF, AES-GCM,
Ed25519 signatures and the ChaCha20 mask PRG, used by SecAgg+, CKKS key distribution and vertical FRL.

Follows the instantiation of Bonawitz et al. 2017 (CCS, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", §6): Diffie-Hellman key agreement for both the share-encryption
channel and the pairwise masks, an authenticated cipher for the shares, and a PRG to stretch 256-bit
seeds into mask vectors. Every secret comes from the OS CSPRNG (via ``cryptography``/``os.urandom``);
every derived key is bound by HKDF ``info`` to its purpose, its round and the parties involved, so a key
is never used for two things and nothing carries over from one round to the next.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocols.errors import PayloadError

KEY_BYTES = 32
SIGNATURE_BYTES = 64
SEED_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_DOMAIN = b"securefrl/secagg/v1/"
_IDS = struct.Struct("<QII")
_RAW = serialization.Encoding.Raw


class AuthenticationError(PayloadError):
    """A ciphertext failed authentication: it was tampered with, replayed or misaddressed."""


class SignatureError(AuthenticationError):
    """A signature does not verify under the signer's registered identity key."""


class KeyAgreementError(PayloadError):
    """A peer's public key is malformed or a low-order point (the shared secret would be all zero)."""


def generate_private_key() -> X25519PrivateKey:
    """A fresh X25519 private key from the OS CSPRNG."""
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """The 32-byte raw encoding of a public key (of ``key`` itself if it is private)."""
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(_RAW, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The 32-byte raw private key, the secret that SecAgg Shamir-shares for dropout recovery."""
    return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def load_private(raw: bytes) -> X25519PrivateKey:
    """Rebuild a private key from its 32 raw bytes (after Shamir reconstruction)."""
    if len(raw) != KEY_BYTES:
        raise KeyAgreementError(f"private key holds {len(raw)} bytes, expected {KEY_BYTES}")
    return X25519PrivateKey.from_private_bytes(raw)


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret with a peer's raw public key; malformed or low-order keys are refused."""
    if len(peer_public) != KEY_BYTES:
        raise KeyAgreementError(f"public key holds {len(peer_public)} bytes, expected {KEY_BYTES}")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as err:  # cryptography refuses low-order points (all-zero shared secret)
        raise KeyAgreementError(f"key agreement failed: {err}") from None


def check_public_key(peer_public: bytes) -> None:
    """Refuse a public key that no honest party could agree with (wrong size or low order)."""
    agree(generate_private_key(), peer_public)


def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh long-term Ed25519 identity key from the OS CSPRNG."""
    return Ed25519PrivateKey.generate()


def verify_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32-byte raw encoding of an identity (verification) key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(_RAW, serialization.PublicFormat.Raw)


def signing_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The 32-byte raw seed of an identity (signing) key, for the key file a deployed client keeps."""
    return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def load_signing_key(raw: bytes) -> Ed25519PrivateKey:
    """An identity key from its 32-byte raw seed (:func:`signing_key_bytes`)."""
    if len(raw) != KEY_BYTES:
        raise ValueError(f"an Ed25519 signing key is {KEY_BYTES} raw bytes, got {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw)


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes) over ``message``."""
    return key.sign(message)


def verify(verify_key: bytes, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature; a bad key, size or signature raises :class:`SignatureError`."""
    if len(verify_key) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"identity key of {len(verify_key)} bytes or signature of {len(signature)} bytes "
                             f"(expected {KEY_BYTES} and {SIGNATURE_BYTES})")
    try:
        Ed25519PublicKey.from_public_bytes(verify_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise SignatureError("signature does not verify under the registered identity key") from None


def digest(*parts: bytes) -> bytes:
    """SHA-256 over length-prefixed ``parts`` under the project's domain (so no two part lists collide).

    Used for commitments (to a client's self-mask seed), the graph seed every client derives, and registry
    and survivor-set digests.
    """
    h = hashes.Hash(hashes.SHA256())
    h.update(_DOMAIN)
    for part in parts:
        h.update(struct.pack("<Q", len(part)))
        h.update(part)
    return h.finalize()


def derive_key(secret: bytes, purpose: str, round_id: int, a: int, b: int) -> bytes:
    """HKDF-SHA256 key for ``purpose`` in round ``round_id`` between parties ``a`` and ``b``.

    The order of ``a`` and ``b`` is part of the binding: callers pass (sender, recipient) for a
    directional key and (min, max) for a symmetric one.
    """
    info = _DOMAIN + purpose.encode() + b"/" + _IDS.pack(round_id, a, b)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def seal(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM with a random 96-bit nonce: ``nonce || ciphertext || tag``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def unseal(key: bytes, blob: bytes, associated_data: bytes) -> bytes:
    """Open a :func:`seal` output; any tampering or wrong binding raises :class:`AuthenticationError`."""
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise AuthenticationError(f"ciphertext of {len(blob)} bytes is shorter than nonce and tag")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data)
    except InvalidTag:
        raise AuthenticationError("share ciphertext failed authentication (tampered, replayed, misaddressed)") from None


def associated_data(round_id: int, sender: int, recipient: int) -> bytes:
    """AEAD associated data binding an encrypted share to its round, sender and recipient."""
    return _DOMAIN + b"share/" + _IDS.pack(round_id, sender, recipient)


class MaskExpander:
    """Stretch 256-bit mask keys into uniform vectors modulo 2^32 or 2^64 with the ChaCha20 keystream.

    Each mask key is derived for a single round and pair, so the fixed all-zero nonce never repeats
    under one key. Output words are read little endian, so every party expands identical masks.
    The zero input and the output buffer are allocated once and reused: mask expansion is the
    dominant client cost (one self mask plus one per neighbour).
    """

    def __init__(self, length: int, dtype: np.typing.DTypeLike) -> None:
        self.length = length
        self.dtype = np.dtype(dtype).newbyteorder("<")
        nbytes = length * self.dtype.itemsize
        self._zeros = bytes(nbytes)
        self._buffer = bytearray(nbytes)

    def keystream(self, key: bytes) -> np.ndarray:
        """The mask for ``key`` as a view on the shared buffer (valid until the next call)."""
        if len(key) != KEY_BYTES:
            raise ValueError(f"mask key must be {KEY_BYTES} bytes, got {len(key)}")
        encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
        encryptor.update_into(self._zeros, self._buffer)
        return np.frombuffer(self._buffer, dtype=self.dtype, count=self.length)

    def add(self, acc: np.ndarray, key: bytes, sign: int) -> None:
        """``acc += sign * mask(key)`` in place, wrapping modulo 2^bits."""
        stream = self.keystream(key)
        if sign > 0:
            np.add(acc, stream, out=acc)
        else:
            np.subtract(acc, stream, out=acc)


# --- general forms, for channels with their own transcript binding and nonce schedule (vertical FRL) -------
def hkdf_sha256(secret: bytes, *, salt: bytes | None, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 (RFC 5869) with the caller's salt (e.g. a transcript) and ``info`` (purpose binding)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM with a caller-managed nonce (a per-direction counter that never repeats under one key)."""
    return AESGCM(key).encrypt(nonce, plaintext, associated_data)


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """Open :func:`aead_encrypt` output; tampering or a wrong key, nonce or binding raises AuthenticationError."""
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated_data)
    except InvalidTag:
        raise AuthenticationError("ciphertext failed authentication (tampered or wrong key)") from None
