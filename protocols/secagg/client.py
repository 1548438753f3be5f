"""The client side of SecAgg+: a state machine over the stages of one round.

Bonawitz et al. 2017 (CCS, "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
Fig. 4, with the malicious-server additions of §6.2) over the sparse neighbourhoods of Bell et al. 2020
(CCS, SecAgg+). A client

1. advertises two fresh X25519 public keys (share channel ``c``, pairwise masks ``s``), signed with its
   long-term identity key;
2. checks every entry of the server's key book against the enrolment registry (a substituted key fails
   its owner's signature), derives the neighbour graph from a digest of the book, commits to a fresh
   self-mask seed ``b``, and Shamir-shares ``b`` and its mask private key ``s_sk`` among its
   neighbourhood (itself included) under AES-GCM keyed by ``c``-agreement and bound to
   (round, sender, recipient);
3. sends ``x + PRG(b) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)`` mod 2^b over the neighbours
   whose shares reached it, signed (bound to round, sender and stage);
4. (consistency check) signs the set of clients whose input the server says arrived, together with the
   digest of the key book it saw (so clients shown different books or sets never count each other);
5. reveals, for each neighbour, the share of ``b_v`` if v is in that set or of ``s_sk_v`` if not --
   never both for one peer, nothing below the threshold, and nothing unless at least t members of the
   peer's neighbourhood signed the same set and book (so the server cannot tell two groups different
   stories). The threshold and degree are fixed by the number of clients sampled for the round, so a
   shrunken key book cannot lower them.

Calls out of order raise :class:`StageError`; any refusal of peer bytes aborts the client for the
round (``stage`` becomes ``ABORTED``), as Bonawitz et al. prescribe. With ``params.authenticated=False``
steps 1, 2 and 5 skip every signature and stage 4 is skipped: the semi-honest protocol, for attack studies.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from protocols import crypto
from protocols.errors import (
    PayloadError,
    ProtocolConfigError,
    ProtocolError,
    RoundAbortedError,
    StageError,
    WrongRoundError,
)
from protocols.secagg.messages import (
    SHARE_PAIR_BYTES,
    AdvertiseKeys,
    KeyList,
    Kind,
    MessageCodec,
    ShareKeys,
    ShareKind,
    Stage,
    UnmaskShares,
    encode_ids,
    signed_message,
)
from protocols.secagg.params import RoundPlan, SecAggParams
from protocols.secagg.quantize import Quantizer
from protocols.shamir import SHARE_BYTES, decode_share, encode_share, split

_T = TypeVar("_T")


class DoubleRevealError(PayloadError):
    """The server asked for both the self-mask-seed share and the mask-key share of one peer.

    Revealing both would let it strip every mask from that peer's input (Bonawitz et al. 2017, §4).
    """


class SecAggClient:
    """One client in one SecAgg+ round; create a fresh instance (fresh keys) for every round.

    Parameters
    ----------
    params:
        Public protocol parameters shared with the server.
    round_id, client_id, roster:
        The round, this client, and every client sampled for the round.
    identity, registry:
        This client's long-term Ed25519 signing key and the enrolment registry of every client's
        verification key (:func:`protocols.secagg.identity.enrol`); required when ``params.authenticated``.
    """

    def __init__(self, params: SecAggParams, round_id: int, client_id: int, roster: Sequence[int],
                 identity: crypto.Ed25519PrivateKey | None = None, registry: Mapping[int, bytes] | None = None) -> None:
        self.params = params
        self.plan: RoundPlan = params.plan(round_id, roster)
        if client_id not in self.plan.neighbours:
            raise ValueError(f"client {client_id} is not in the roster of round {round_id}")
        if params.authenticated:
            if identity is None or registry is None:
                raise ProtocolConfigError("authenticated SecAgg needs the client's identity key and the registry")
            if registry.get(client_id) != crypto.verify_key_bytes(identity):
                raise ProtocolConfigError(f"the registry does not hold client {client_id}'s identity key")
        self.round_id = round_id
        self.client_id = client_id
        self.identity = identity
        self.codec = MessageCodec(params, registry)
        self.quantizer = Quantizer(params)
        self.stage = Stage.ADVERTISE_KEYS
        self._roster = frozenset(self.plan.roster)
        self._enc_key = crypto.generate_private_key()
        self._mask_key = crypto.generate_private_key()
        self._peer_keys: dict[int, tuple[bytes, bytes]] = {}  # v -> (enc_public, mask_public)
        self._held: dict[int, tuple[bytes, bytes]] = {}  # v -> (seed share, key share) at x = client_id + 1
        self._self_seed = b""
        self._pairwise: frozenset[int] = frozenset()
        self._revealed: dict[int, ShareKind] = {}
        self._signed_set: tuple[int, ...] | None = None
        self._book_digest = b""

    # -- stage 1 ----------------------------------------------------------------------------------
    def advertise_keys(self) -> bytes:
        """Stage 1: the two public keys, signed and bound to this round and client."""
        self._expect(Stage.ADVERTISE_KEYS, "advertise keys")
        msg = AdvertiseKeys(crypto.public_bytes(self._enc_key), crypto.public_bytes(self._mask_key))
        self.stage = Stage.SHARE_KEYS
        return self.codec.encode_advertise(self.round_id, self.client_id, msg, self.identity)

    # -- stage 2 ----------------------------------------------------------------------------------
    def share_keys(self, key_list: bytes) -> bytes:
        """Stage 2: check the server's key book, then send encrypted shares of ``b`` and ``s_sk``."""
        self._expect(Stage.SHARE_KEYS, "share keys")
        return self._guard(lambda: self._share_keys(key_list))

    def _share_keys(self, data: bytes) -> bytes:
        msg = self.codec.decode_key_list(data, self.round_id)
        self._check_recipient(msg.recipient)
        entries = {e.client_id: (e.enc_public, e.mask_public) for e in msg.entries}
        own = (crypto.public_bytes(self._enc_key), crypto.public_bytes(self._mask_key))
        if entries.get(self.client_id) != own:
            raise PayloadError("the server's key book omits or alters this client's own public keys")
        strangers = set(entries) - self._roster
        if strangers:
            raise PayloadError(f"key book names clients {sorted(strangers)} that are not in this round")
        if self.params.authenticated:
            for entry in msg.entries:  # a key the server substituted does not carry its owner's signature
                self.codec.verify_entry(self.round_id, entry)
        all_keys = [k for pair in entries.values() for k in pair]
        if len(set(all_keys)) != len(all_keys):
            raise PayloadError("key book repeats a public key")
        try:
            self._book_digest = book_digest(msg)
            self.plan = self.params.plan(self.round_id, sorted(entries), self._book_digest, len(self._roster))
        except ProtocolConfigError as err:
            raise RoundAbortedError(f"only {len(entries)} clients advertised keys: {err}") from None
        if self.plan.sparse and set(entries) != self._roster:
            missing = sorted(self._roster - set(entries))
            raise RoundAbortedError(f"SecAgg+ sparse graph: the key book lacks clients {missing}; its digest seeds "
                                    "the graph, so a book that leaves clients out would let the server re-roll it")
        neighbourhood = self.plan.neighbourhood(self.client_id)
        t = self.plan.threshold
        if len(neighbourhood) < t:
            raise RoundAbortedError(f"only {len(neighbourhood)} of this client's neighbourhood advertised keys, "
                                    f"need {t}")
        self._peer_keys = {v: entries[v] for v in neighbourhood if v != self.client_id}
        self._self_seed = os.urandom(crypto.SEED_BYTES)
        xs = [v + 1 for v in sorted(neighbourhood)]
        seed_shares = split(int.from_bytes(self._self_seed, "big"), t, xs)
        key_shares = split(int.from_bytes(crypto.private_bytes(self._mask_key), "big"), t, xs)
        cts = []
        for v, (enc_public, _) in sorted(self._peer_keys.items()):
            key = crypto.derive_key(crypto.agree(self._enc_key, enc_public), "share-key", self.round_id,
                                    self.client_id, v)
            pair = encode_share(seed_shares[v + 1]) + encode_share(key_shares[v + 1])
            cts.append((v, crypto.seal(key, pair, crypto.associated_data(self.round_id, self.client_id, v))))
        me = self.client_id + 1
        self._held[self.client_id] = (encode_share(seed_shares[me]), encode_share(key_shares[me]))
        self.stage = Stage.MASKED_INPUT
        commitment = seed_commitment(self._self_seed, self.round_id, self.client_id)
        return self.codec.encode_share_keys(self.round_id, self.client_id, ShareKeys(tuple(cts), commitment),
                                            self.identity)

    # -- stage 3 ----------------------------------------------------------------------------------
    def masked_input(
        self, forwarded: bytes, update: np.ndarray, weight: float, rng: np.random.Generator | None = None
    ) -> bytes:
        """Stage 3: decrypt the shares addressed to this client, then send the masked, quantized input.

        ``rng`` (a seeded generator) selects stochastic rounding; without it rounding is to nearest.
        A bad ``update``/``weight`` raises :class:`ValueError` and leaves the stage unchanged.
        """
        self._expect(Stage.MASKED_INPUT, "send its masked input")
        encoded = self.quantizer.encode(update, weight, rng)
        return self._guard(lambda: self._masked_input(forwarded, encoded))

    def masked_input_encoded(self, forwarded: bytes, encoded: np.ndarray) -> bytes:
        """Stage 3 on an already-encoded integer vector (what :meth:`masked_input` does after quantizing).

        Exposed because a malicious client can send any vector of the modulus: the server cannot tell,
        which is why the opened aggregate is bounds-checked (attack studies call this directly).
        """
        self._expect(Stage.MASKED_INPUT, "send its masked input")
        vec = np.ascontiguousarray(encoded, dtype=self.params.dtype)
        if vec.shape != (self.params.vector_length,):
            raise ValueError(f"encoded input has shape {vec.shape}, expected ({self.params.vector_length},)")
        return self._guard(lambda: self._masked_input(forwarded, vec))

    def _masked_input(self, data: bytes, encoded: np.ndarray) -> bytes:
        msg = self.codec.decode_forwarded(data, self.round_id)
        self._check_recipient(msg.recipient)
        held: dict[int, tuple[bytes, bytes]] = {}
        for v, ct in msg.ciphertexts:
            if v not in self._peer_keys:
                raise PayloadError(f"forwarded shares name sender {v}, who is not in this client's neighbourhood")
            key = crypto.derive_key(crypto.agree(self._enc_key, self._peer_keys[v][0]), "share-key", self.round_id,
                                    v, self.client_id)
            pair = crypto.unseal(key, ct, crypto.associated_data(self.round_id, v, self.client_id))
            if len(pair) != SHARE_PAIR_BYTES:
                raise PayloadError(f"decrypted share pair from {v} holds {len(pair)} bytes")
            seed_share, key_share = pair[:SHARE_BYTES], pair[SHARE_BYTES:]
            decode_share(seed_share)
            decode_share(key_share)
            held[v] = (seed_share, key_share)
        t = self.plan.threshold
        if len(held) + 1 < t:
            raise RoundAbortedError(f"only {len(held) + 1} of this client's neighbourhood shared keys, need {t}")
        acc = encoded.copy()
        expander = crypto.MaskExpander(self.params.vector_length, self.params.dtype)
        expander.add(acc, self_mask_key(self._self_seed, self.round_id, self.client_id), +1)
        for v in sorted(held):
            seed = pairwise_mask_key(self._mask_key, self._peer_keys[v][1], self.round_id, self.client_id, v)
            expander.add(acc, seed, pairwise_sign(self.client_id, v))
        self._held.update(held)
        self._pairwise = frozenset(held)
        self.stage = Stage.CONSISTENCY if self.params.authenticated else Stage.UNMASK
        return self.codec.encode_masked(self.round_id, self.client_id, acc, self.identity)

    # -- stage 4: consistency check -----------------------------------------------------------------
    def sign_survivors(self, request: bytes) -> bytes:
        """Stage 4: sign the set of clients whose masked input arrived (Bonawitz et al. 2017, ConsistencyCheck)."""
        self._expect(Stage.CONSISTENCY, "sign the survivor set")
        return self._guard(lambda: self._sign_survivors(request))

    def _sign_survivors(self, data: bytes) -> bytes:
        msg = self.codec.decode_consistency_request(data, self.round_id)
        self._check_recipient(msg.recipient)
        survivors = set(msg.survivor_set)
        if self.client_id not in survivors:
            raise PayloadError("survivor set omits this client, which sent its input")
        if survivors - set(self.plan.roster):
            raise PayloadError("survivor set names clients that did not advertise keys this round")
        t = self.plan.threshold
        live = survivors & self.plan.neighbourhood(self.client_id)
        if len(live) < t:
            raise RoundAbortedError(f"only {len(live)} of this client's neighbourhood survived, need {t}")
        self._signed_set = msg.survivor_set
        self.stage = Stage.UNMASK
        return self.codec.encode_consistency_signature(self.round_id, self.client_id, msg.survivor_set,
                                                       self._book_digest, self.identity)

    # -- stage 5 ----------------------------------------------------------------------------------
    def unmask(self, request: bytes) -> bytes:
        """Stage 5: reveal one share per listed neighbour -- seed share if it survived, key share if not."""
        self._expect(Stage.UNMASK, "unmask")
        return self._guard(lambda: self._unmask(request))

    def _unmask(self, data: bytes) -> bytes:
        msg = self.codec.decode_unmask_request(data, self.round_id)
        self._check_recipient(msg.recipient)
        survivors, dropped = set(msg.survivors), set(msg.dropped)
        both = survivors & dropped
        if both:
            raise DoubleRevealError(f"server lists peers {sorted(both)} as both surviving and dropped")
        wanted = {v: ShareKind.SELF_MASK_SEED for v in survivors} | {v: ShareKind.MASK_KEY for v in dropped}
        conflict = [v for v, kind in wanted.items() if self._revealed.get(v, kind) != kind]
        if conflict:
            raise DoubleRevealError(f"the other share of peers {sorted(conflict)} was already revealed")
        unknown = set(wanted) - self._pairwise - {self.client_id}
        if unknown:
            raise PayloadError(f"unmask request names peers {sorted(unknown)} whose shares this client does not hold")
        if self.client_id not in survivors:
            raise PayloadError("unmask request does not list this client, which sent its input, as a survivor")
        t = self.plan.threshold
        if len(survivors) < t:
            raise RoundAbortedError(f"only {len(survivors)} neighbours survived, need {t}: revealing nothing")
        if self.params.authenticated:
            self._check_consistency(msg.survivor_set, msg.signatures, survivors, dropped)
        shares = tuple((v, kind, self._held[v][int(kind)]) for v, kind in sorted(wanted.items()))
        self._revealed.update(wanted)
        self.stage = Stage.DONE
        return self.codec.encode_unmask_shares(self.round_id, self.client_id, UnmaskShares(shares), self.identity)

    def _check_consistency(self, survivor_set: tuple[int, ...], signatures: tuple[tuple[int, bytes], ...],
                           survivors: set[int], dropped: set[int]) -> None:
        """Reveal only what the signed survivor set implies, and only if >= t of each neighbourhood signed it."""
        if survivor_set != self._signed_set:
            raise PayloadError("unmask request carries a survivor set other than the one this client signed")
        live = set(survivor_set)
        if survivors != live & self.plan.neighbourhood(self.client_id) or dropped != self._pairwise - live:
            raise PayloadError("unmask request disagrees with the signed survivor set")
        body = encode_ids(survivor_set) + self._book_digest  # signers must have seen the same key book
        signers = set()
        for signer, signature in signatures:
            if signer not in live:
                raise PayloadError(f"consistency signature from client {signer}, who is not in the survivor set")
            key = self.codec.registry.get(signer) if self.codec.registry is not None else None
            if key is None:
                raise crypto.SignatureError(f"client {signer} is not enrolled")
            crypto.verify(key, signed_message(Kind.CONSISTENCY_SIGNATURE, self.round_id, signer, body), signature)
            signers.add(signer)
        t = self.plan.threshold
        for v in survivors | dropped:
            agreeing = len(signers & self.plan.neighbourhood(v))
            if agreeing < t:
                raise RoundAbortedError(f"only {agreeing} of client {v}'s neighbourhood signed the survivor set, "
                                        f"need {t}: revealing nothing")

    # -- helpers ----------------------------------------------------------------------------------
    def _expect(self, stage: Stage, action: str) -> None:
        if self.stage != stage:
            raise StageError(f"client {self.client_id} cannot {action} in stage {self.stage.name}")

    def _guard(self, step: Callable[[], _T]) -> _T:
        """Run a stage; any protocol error aborts this client for the round."""
        try:
            return step()
        except ProtocolError:
            self.stage = Stage.ABORTED
            raise

    def _check_recipient(self, recipient: int) -> None:
        if recipient != self.client_id:
            raise WrongRoundError(f"message is addressed to client {recipient}, not {self.client_id}")


def book_digest(book: KeyList) -> bytes:
    """Digest of a key book's entries (ids, keys, signatures): the seed material of the round's graph."""
    return crypto.digest(b"key-book", *(e.client_id.to_bytes(4, "little") + e.enc_public + e.mask_public
                                        + e.signature for e in book.entries))


def seed_commitment(seed: bytes, round_id: int, client_id: int) -> bytes:
    """Commitment to a self-mask seed (the seed has 256 bits of entropy, so the hash hides it)."""
    return crypto.digest(b"self-mask-seed-commitment", round_id.to_bytes(8, "little"),
                         client_id.to_bytes(4, "little"), seed)


def self_mask_key(seed: bytes, round_id: int, client_id: int) -> bytes:
    """PRG key of a client's self mask, derived from its Shamir-shared seed ``b``."""
    return crypto.derive_key(seed, "self-mask", round_id, client_id, client_id)


def pairwise_mask_key(private: crypto.X25519PrivateKey, peer_public: bytes, round_id: int, u: int, v: int) -> bytes:
    """PRG key of the mask shared by ``u`` and ``v`` (symmetric: both derive the same key)."""
    return crypto.derive_key(crypto.agree(private, peer_public), "pairwise-mask", round_id, min(u, v), max(u, v))


def pairwise_sign(u: int, v: int) -> int:
    """``u`` adds the mask it shares with ``v`` if ``u < v`` and subtracts it otherwise, so pairs cancel."""
    return 1 if u < v else -1
