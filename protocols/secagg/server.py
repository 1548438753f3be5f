"""The server side of SecAgg+: collect each stage, drop bad or missing clients, unmask the sum.

Bonawitz et al. 2017 (CCS, "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
Fig. 4 and §6.2) over the neighbour graph of Bell et al. 2020 (CCS, SecAgg+). The surviving sets shrink
stage by stage, U1 ⊇ U2 ⊇ U3 ⊇ U4 ⊇ U5 (advertised, shared, sent input, signed the survivor set,
revealed). From U5's shares the server rebuilds the self-mask seed of every client in U3 and the mask key
of every client in U2 \\ U3, so the pairwise masks that the dropped clients' neighbours added can be taken
out. If any neighbourhood falls below the threshold the round aborts with :class:`RoundAbortedError` and
nothing is released.

Rebuilt secrets are checked (a seed against its owner's commitment, a mask key against its advertised
public key) by robust reconstruction: a holder that reveals a forged share is identified, recorded in
``rejected`` and its shares are ignored; the round goes on (its own masked input stays in the sum: the
server cannot take it out once its seed shares have been revealed). Only when no t shares pass does the
round abort.

Messages are accepted one at a time with :meth:`SecAggServer.receive` (masked inputs are summed on
arrival, so memory stays at one vector); a bad message raises a :class:`PayloadError` naming the sender,
is recorded in ``rejected``, and leaves that client out as a dropout. Closing a stage out of order
raises :class:`StageError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from protocols import crypto
from protocols.errors import PayloadError, ProtocolConfigError, RoundAbortedError, StageError
from protocols.secagg.client import book_digest, pairwise_mask_key, pairwise_sign, seed_commitment, self_mask_key
from protocols.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ForwardedShares,
    KeyEntry,
    KeyList,
    MessageCodec,
    ShareKeys,
    ShareKind,
    Stage,
    UnmaskRequest,
    UnmaskShares,
)
from protocols.secagg.params import SecAggParams
from protocols.shamir import ReconstructionError, decode_share, reconstruct, robust_reconstruct

_ALL_STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK)


@dataclass
class SecAggResult:
    """The unmasked modular sum of the included clients' encoded inputs, and who took part when."""

    round_id: int
    total: np.ndarray
    included: list[int]
    dropouts: dict[Stage, list[int]] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)


class SecAggServer:
    """The server of one SecAgg+ round. Drive it with :meth:`receive` and the stage closers.

    ``registry`` is the enrolment registry of client identity keys (required when ``params.authenticated``).
    """

    def __init__(self, params: SecAggParams, round_id: int, roster: Sequence[int],
                 registry: Mapping[int, bytes] | None = None) -> None:
        if params.authenticated and registry is None:
            raise ProtocolConfigError("authenticated SecAgg needs the identity registry")
        self.params = params
        self.plan = params.plan(round_id, roster)
        self.roster = frozenset(self.plan.roster)
        self.round_id = round_id
        self.codec = MessageCodec(params, registry)
        self.stages = tuple(s for s in _ALL_STAGES if params.authenticated or s != Stage.CONSISTENCY)
        self.stage = Stage.ADVERTISE_KEYS
        self.rejected: dict[int, str] = {}
        #: Survivors of each completed stage (U1..U5).
        self.alive: dict[Stage, frozenset[int]] = {}
        #: Wall-clock seconds spent per stage (receiving plus closing).
        self.timings: dict[Stage, float] = dict.fromkeys(self.stages, 0.0)
        self._keys: dict[int, AdvertiseKeys] = {}
        self._advert_sigs: dict[int, bytes] = {}
        self._shares: dict[int, ShareKeys] = {}
        self._masked: set[int] = set()
        self._total = np.zeros(params.vector_length, dtype=params.dtype)
        self._survivor_set: tuple[int, ...] = ()
        self._book_digest = b""
        self._signatures: dict[int, bytes] = {}
        self._requests: dict[int, UnmaskRequest] = {}
        self._revealed: dict[int, dict[int, tuple[ShareKind, int]]] = {}

    # -- receiving --------------------------------------------------------------------------------
    def receive(self, client_id: int, data: bytes) -> None:
        """Accept one client's message for the current stage; bad ones raise and are recorded."""
        if self.stage not in self.stages:
            raise StageError(f"server accepts no messages in stage {self.stage.name}")
        start = time.perf_counter()
        try:
            self._receive(client_id, data)
        except PayloadError as err:
            self.rejected[client_id] = f"{self.stage.name}: {type(err).__name__}: {err}"
            raise
        finally:
            self.timings[self.stage] += time.perf_counter() - start

    def _previous(self, stage: Stage) -> Stage:
        return self.stages[self.stages.index(stage) - 1]

    def _receive(self, cid: int, data: bytes) -> None:
        expected = self.roster if self.stage == Stage.ADVERTISE_KEYS else self.alive[self._previous(self.stage)]
        if cid not in expected:
            raise PayloadError(f"client {cid} is not expected in stage {self.stage.name}")
        seen: Collection[int] = {
            Stage.ADVERTISE_KEYS: self._keys,
            Stage.SHARE_KEYS: self._shares,
            Stage.MASKED_INPUT: self._masked,
            Stage.CONSISTENCY: self._signatures,
            Stage.UNMASK: self._revealed,
        }[self.stage]
        if cid in seen:
            raise PayloadError(f"client {cid} already sent its {self.stage.name} message")
        if self.stage == Stage.ADVERTISE_KEYS:
            msg, signature = self.codec.decode_advertise(data, self.round_id, cid)
            crypto.check_public_key(msg.enc_public)
            crypto.check_public_key(msg.mask_public)
            taken = {k for m in self._keys.values() for k in (m.enc_public, m.mask_public)}
            if msg.enc_public == msg.mask_public or {msg.enc_public, msg.mask_public} & taken:
                raise PayloadError(f"client {cid} reuses a public key")
            self._keys[cid] = msg
            self._advert_sigs[cid] = signature
        elif self.stage == Stage.SHARE_KEYS:
            shares = self.codec.decode_share_keys(data, self.round_id, cid)
            want = sorted(self.plan.neighbours[cid] & self.alive[Stage.ADVERTISE_KEYS])
            got = [v for v, _ in shares.ciphertexts]
            if got != want:
                raise PayloadError(f"client {cid} sent shares for {got}, expected {want}")
            self._shares[cid] = shares
        elif self.stage == Stage.MASKED_INPUT:
            vec = self.codec.decode_masked(data, self.round_id, cid)
            np.add(self._total, vec, out=self._total)
            self._masked.add(cid)
        elif self.stage == Stage.CONSISTENCY:
            signed, digest, signature = self.codec.decode_consistency_signature(data, self.round_id, cid)
            if signed != self._survivor_set or digest != self._book_digest:
                raise PayloadError(f"client {cid} signed a survivor set or key book other than the round's")
            self._signatures[cid] = signature
        else:
            self._revealed[cid] = self._check_reveal(cid, self.codec.decode_unmask_shares(data, self.round_id, cid))

    def _check_reveal(self, cid: int, msg: UnmaskShares) -> dict[int, tuple[ShareKind, int]]:
        req = self._requests[cid]
        want = {v: ShareKind.SELF_MASK_SEED for v in req.survivors} | {v: ShareKind.MASK_KEY for v in req.dropped}
        got = {v: kind for v, kind, _ in msg.shares}
        if got != want:
            raise PayloadError(f"client {cid} revealed shares that do not match the unmask request")
        return {v: (kind, decode_share(share)) for v, kind, share in msg.shares}

    # -- closing stages ---------------------------------------------------------------------------
    def broadcast_keys(self) -> dict[int, bytes]:
        """Close stage 1: fix the round's graph from the key book and send the book to every advertiser."""
        start = time.perf_counter()
        u1 = self._close(Stage.ADVERTISE_KEYS, frozenset(self._keys), check_neighbourhoods=False)
        entries = tuple(KeyEntry(v, self._keys[v].enc_public, self._keys[v].mask_public, self._advert_sigs[v])
                        for v in sorted(u1))
        try:
            self._book_digest = book_digest(KeyList(0, entries))
            self.plan = self.params.plan(self.round_id, sorted(u1), self._book_digest, len(self.roster))
        except ProtocolConfigError as err:  # too few advertisers for the threshold
            self.stage = Stage.ABORTED
            raise RoundAbortedError(f"stage ADVERTISE_KEYS: {len(u1)} of {len(self.roster)} clients advertised "
                                    f"keys: {err}") from None
        if self.plan.sparse and u1 != self.roster:
            self.stage = Stage.ABORTED
            raise RoundAbortedError(f"stage ADVERTISE_KEYS: clients {sorted(self.roster - u1)} did not advertise; a "
                                    "SecAgg+ sparse graph needs every sampled client's signed keys to seed it")
        self._check_neighbourhoods(Stage.ADVERTISE_KEYS, u1)
        out = {u: self.codec.encode_key_list(self.round_id, KeyList(u, entries)) for u in sorted(u1)}
        self.timings[Stage.ADVERTISE_KEYS] += time.perf_counter() - start
        return out

    def forward_shares(self) -> dict[int, bytes]:
        """Close stage 2: route each encrypted share pair to its recipient (senders that completed stage 2)."""
        start = time.perf_counter()
        u2 = self._close(Stage.SHARE_KEYS, frozenset(self._shares))
        inbox: dict[int, list[tuple[int, bytes]]] = {u: [] for u in u2}
        for v in sorted(u2):
            for u, ct in self._shares[v].ciphertexts:
                if u in u2:
                    inbox[u].append((v, ct))
        out = {u: self.codec.encode_forwarded(self.round_id, ForwardedShares(u, tuple(inbox[u]))) for u in sorted(u2)}
        self.timings[Stage.SHARE_KEYS] += time.perf_counter() - start
        return out

    def request_consistency(self) -> dict[int, bytes]:
        """Close stage 3 (authenticated): send every client in U3 the survivor set U3 to sign."""
        if not self.params.authenticated:
            raise StageError("the consistency check runs only with authenticated SecAgg")
        start = time.perf_counter()
        u3 = self._close(Stage.MASKED_INPUT, frozenset(self._masked))
        self._survivor_set = tuple(sorted(u3))
        out = {u: self.codec.encode_consistency_request(self.round_id, ConsistencyRequest(u, self._survivor_set))
               for u in self._survivor_set}
        self.timings[Stage.MASKED_INPUT] += time.perf_counter() - start
        return out

    def request_unmask(self) -> dict[int, bytes]:
        """Close stage 3 (or 4): tell each client which neighbours survived and which dropped.

        With authentication the request carries the signed survivor set and every signature collected.
        """
        start = time.perf_counter()
        if self.params.authenticated:
            closing = Stage.CONSISTENCY
            self._close(closing, frozenset(self._signatures))
            u3 = frozenset(self._survivor_set)
            signatures = tuple(sorted(self._signatures.items()))
            recipients = self.alive[Stage.CONSISTENCY]
        else:
            closing = Stage.MASKED_INPUT
            u3 = self._close(closing, frozenset(self._masked))
            signatures, recipients = (), u3
        u2 = self.alive[Stage.SHARE_KEYS]
        out = {}
        for u in sorted(recipients):
            survivors = tuple(sorted(self.plan.neighbourhood(u) & u3))
            dropped = tuple(sorted((self.plan.neighbours[u] & u2) - u3))
            self._requests[u] = UnmaskRequest(u, survivors, dropped, self._survivor_set, signatures)
            out[u] = self.codec.encode_unmask_request(self.round_id, self._requests[u])
        self.timings[closing] += time.perf_counter() - start
        return out

    def finalize(self) -> SecAggResult:
        """Close the unmask stage: rebuild and check the needed secrets, drop forgers, strip every mask."""
        start = time.perf_counter()
        if self.stage != Stage.UNMASK:
            raise StageError(f"server cannot finalize in stage {self.stage.name}")
        u5 = frozenset(self._revealed)
        self.alive[Stage.UNMASK] = u5
        u2, u3 = self.alive[Stage.SHARE_KEYS], self.alive[Stage.MASKED_INPUT]
        t = self.plan.threshold
        seeds: dict[int, dict[int, int]] = {v: {} for v in u3}
        keys: dict[int, dict[int, int]] = {v: {} for v in u2 - u3}
        for u, revealed in self._revealed.items():
            for v, (kind, value) in revealed.items():
                (seeds if kind == ShareKind.SELF_MASK_SEED else keys)[v][u + 1] = value
        try:
            self_keys = {}
            for v in sorted(u3):
                commitment = self._shares[v].commitment
                raw = self._secret(seeds[v], t, v, "self-mask seed", partial(_matches_commitment, self.round_id, v,
                                                                             commitment))
                self_keys[v] = self_mask_key(raw, self.round_id, v)
            dropped_keys = {}
            for v in sorted(u2 - u3):
                if self.plan.neighbours[v] & u3:
                    public = self._keys[v].mask_public
                    raw = self._secret(keys[v], t, v, "mask key", partial(_matches_public_key, public))
                    dropped_keys[v] = crypto.load_private(raw)
        except RoundAbortedError:
            self.stage = Stage.ABORTED
            raise
        total = self._total.copy()
        expander = crypto.MaskExpander(self.params.vector_length, self.params.dtype)
        for key in self_keys.values():
            expander.add(total, key, -1)
        for v, private in dropped_keys.items():
            for u in sorted(self.plan.neighbours[v] & u3):
                seed = pairwise_mask_key(private, self._keys[u].mask_public, self.round_id, v, u)
                expander.add(total, seed, -pairwise_sign(u, v))
        self.stage = Stage.DONE
        self.timings[Stage.UNMASK] += time.perf_counter() - start
        return SecAggResult(self.round_id, total, sorted(u3), self.dropouts(), dict(self.rejected))

    def dropouts(self) -> dict[Stage, list[int]]:
        """Clients lost at each completed stage (missing or rejected)."""
        out, before = {}, self.roster
        for stage in self.stages:
            if stage in self.alive:
                out[stage] = sorted(before - self.alive[stage])
                before = self.alive[stage]
        return out

    # -- helpers ----------------------------------------------------------------------------------
    def _close(self, stage: Stage, alive: frozenset[int], check_neighbourhoods: bool = True) -> frozenset[int]:
        """End ``stage`` with survivors ``alive``; abort if any survivor's neighbourhood fell below t."""
        if self.stage != stage:
            raise StageError(f"server cannot close stage {stage.name} while in stage {self.stage.name}")
        self.alive[stage] = alive
        if check_neighbourhoods:
            self._check_neighbourhoods(stage, alive)
        self.stage = self.stages[self.stages.index(stage) + 1] if stage != self.stages[-1] else Stage.DONE
        return alive

    def _check_neighbourhoods(self, stage: Stage, alive: frozenset[int]) -> None:
        t = self.plan.threshold
        short = [u for u in sorted(alive) if len(self.plan.neighbourhood(u) & alive) < t]
        if not alive or short:
            self.stage = Stage.ABORTED
            who = f"client {short[0]}'s neighbourhood" if short else "the round"
            raise RoundAbortedError(
                f"stage {stage.name}: {who} kept fewer than t={t} clients ({len(alive)} of "
                f"{len(self.roster)} survived); nothing is released"
            )

    def _secret(self, shares: dict[int, int], t: int, owner: int, what: str, check: Callable[[bytes], bool]) -> bytes:
        if len(shares) < t:
            raise RoundAbortedError(f"only {len(shares)} shares of client {owner}'s {what} arrived, need t={t}")
        if not self.params.authenticated:  # semi-honest: the first t shares, no commitment to check them by
            value = reconstruct(shares, t)
            if value >> (8 * crypto.KEY_BYTES) or (what == "mask key" and not check(_as_key(value))):
                raise RoundAbortedError(f"shares of client {owner}'s {what} are inconsistent (a forged share)")
            return _as_key(value)

        def passes(value: int) -> bool:
            return not value >> (8 * crypto.KEY_BYTES) and check(_as_key(value))

        try:
            value, forged = robust_reconstruct(shares, t, passes)
        except ReconstructionError as err:
            raise RoundAbortedError(f"client {owner}'s {what}: {err}") from None
        for x in sorted(forged):
            self.rejected.setdefault(x - 1, f"UNMASK: revealed a forged share of client {owner}'s {what} "
                                            "(ignored; the round went on without it)")
        return _as_key(value)


def _matches_commitment(round_id: int, owner: int, commitment: bytes, seed: bytes) -> bool:
    return seed_commitment(seed, round_id, owner) == commitment


def _matches_public_key(public: bytes, raw: bytes) -> bool:
    return crypto.public_bytes(crypto.load_private(raw)) == public


def _as_key(value: int) -> bytes:
    return (value & ((1 << (8 * crypto.KEY_BYTES)) - 1)).to_bytes(crypto.KEY_BYTES, "big")
