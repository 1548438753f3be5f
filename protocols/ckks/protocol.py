"""``CKKSProtocol``: the CKKS roles behind the :class:`AggregationProtocol` interface (a simulation harness)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from protocols import wire
from protocols.base import Aggregate, AggregationProtocol, OpenedAggregate
from protocols.ckks.params import CKKSParams
from protocols.ckks.ring import RandomSource
from protocols.ckks.roles import CKKSClient, CKKSServer, Suite, a_seed_from
from protocols.errors import PayloadError, ProtocolConfigError, ProtocolError, RoundAbortedError

KEY_MODES = ("threshold", "shared")
RELEASES = ("safe", "exact-unsafe")

THREAT_THRESHOLD = (
    "ckks threshold {t}-of-{n}: no single party holds a key; the server plus any {tm1} clients learn only "
    "flooded float32 sums of at least {k} clients"
)
THREAT_SHARED = (
    "ckks SHARED KEY (keys='shared'): every client holds the one secret key; the server plus ANY ONE "
    "colluding client decrypts every update (NVFlare-style trust in every key holder)"
)
THREAT_UNSAFE = (
    "ckks UNSAFE exact release: the server recovers the secret key from one opened mean (attack target only)"
)
REPRODUCIBLE = "REPRODUCIBLE CKKS randomness from a seed: keys and noise are predictable, unfit for deployment"


class CKKSProtocol(AggregationProtocol):
    """Threshold CKKS aggregation (default) or the labelled shared-key mode, used like ``PlaintextProtocol``.

    Owns every role of a simulated deployment: :attr:`clients` (each its own key owner) and the
    :attr:`server`. ``protect`` goes to the client, ``combine`` to the server, and ``open`` runs the
    opening sub-protocol: the included clients sign their inclusion, the decryptors (the first t
    enrolled clients still online) return flooded partial decryptions, the server combines them into
    the float32 mean. Give a curious server's code only :attr:`server`.

    Parameters
    ----------
    dim:
        Length of the flat update vector.
    n_clients:
        Clients enrolled at set-up (ids ``0..n_clients-1``).
    params:
        Ring/encoding parameters (default :class:`CKKSParams`).
    keys:
        ``"threshold"`` (default) or ``"shared"`` (one key held by every client; weaker, labelled).
    threshold:
        t of the t-of-n sharing; default ``n // 2 + 1`` of the enrolled clients.
    min_clients:
        Smallest set of distinct clients of the round any client helps open (default 2, at least 2).
    seed:
        ``None`` (default): all secrets and noise from the OS CSPRNG. An int gives the reproducible
        experiment mode (seeded ChaCha20 stream), marked unfit for deployment in :attr:`label`.
    release:
        ``"safe"`` (default). ``"exact-unsafe"`` (only with ``keys="shared"``) reproduces the broken
        release for the attack tests: exact float64 values, no minimum set, no flooding.
    offline_at_keygen:
        Client ids that drop out before enrolment (tests of dropouts at key generation).
    offline_during_sharing:
        Client ids that drop out halfway through dealing their key shares: they are left out of the
        final roster and every share they dealt is discarded (the others' t-of-n sharing is unaffected).
    **ring:
        :class:`CKKSParams` fields given directly (``protocol.params.max_clients = 64`` in a config).
    """

    name = "ckks"
    reveals_individual_updates = False
    server_can_open = False

    def __init__(
        self,
        dim: int,
        n_clients: int = 4,
        params: CKKSParams | Mapping | None = None,
        keys: str = "threshold",
        threshold: int | None = None,
        min_clients: int = 2,
        seed: int | None = None,
        release: str = "safe",
        offline_at_keygen: Sequence[int] = (),
        offline_during_sharing: Sequence[int] = (),
        **ring: Any,
    ) -> None:
        if keys not in KEY_MODES:
            raise ProtocolConfigError(f"keys must be one of {KEY_MODES}, got {keys!r}")
        if release not in RELEASES or (release == "exact-unsafe" and keys != "shared"):
            raise ProtocolConfigError(f"release must be 'safe' (or 'exact-unsafe' with keys='shared'), got {release!r}")
        if min_clients < 2:
            raise ProtocolConfigError(
                f"min_clients must be at least 2 (one client's sum is its update), got {min_clients}"
            )
        if isinstance(params, CKKSParams):
            if ring:
                raise ProtocolConfigError(f"give ring settings {sorted(ring)} inside params, not beside it")
            self.params = params
        else:
            self.params = CKKSParams(**{**dict(params or {}), **ring})  # unknown names: TypeError
        if release == "safe":
            self.params.check_flooding()
        self.dim, self.keys, self.release, self.min_clients = dim, keys, release, min_clients
        self.reproducible = seed is not None
        master = hashlib.sha256(b"securefrl/ckks/seed" + int(seed).to_bytes(16, "little", signed=True)).digest() \
            if seed is not None else None
        self._rng = RandomSource(master)
        enrolled = [c for c in range(n_clients) if c not in set(offline_at_keygen)]
        if len(enrolled) > self.params.max_clients:
            raise ProtocolConfigError(f"{len(enrolled)} clients exceed max_clients={self.params.max_clients}")
        if len(enrolled) < min_clients:
            raise ProtocolConfigError(f"only {len(enrolled)} clients enrolled; min_clients={min_clients}")
        self.threshold = 1 if keys == "shared" else (threshold if threshold is not None else len(enrolled) // 2 + 1)
        if not 1 <= self.threshold <= len(enrolled):
            raise ProtocolConfigError(f"threshold must be in [1, {len(enrolled)}], got {self.threshold}")
        shared_key = self._rng.ternary((self.params.poly_modulus_degree,), "shared-sk") if keys == "shared" else None
        self.clients: dict[int, CKKSClient] = {
            c: CKKSClient(c, self.params, dim, self._child(f"client/{c}"), shared_key=shared_key) for c in enrolled
        }
        self.setup_bytes = self._enrol(enrolled, set(offline_during_sharing))
        self.suite = next(iter(self.clients.values())).suite
        assert self.suite is not None
        self.server = CKKSServer(Suite(self.params, dim, self.suite.a_seed, self.suite.verify_keys), self.threshold,
                                 min_clients)
        #: Clients that have dropped out of the opening phase (they neither confirm inclusion nor decrypt).
        self.offline: set[int] = set()
        self._last_extra: dict[int, int] = {}
        self.last_open_times: dict[str, float] = {}

    def _child(self, label: str) -> RandomSource:
        if not self.reproducible:
            return RandomSource(None)
        return RandomSource(self._rng.bytes(32, label))

    def _enrol(self, enrolled: list[int], dropping: set[int]) -> dict[int, int]:
        """Publish identity and DH keys, distribute key shares over the pairwise channels; bytes sent per client.

        The server relays every message; the final roster is the clients whose shares reached everyone
        (``dropping`` ones stop halfway and are left out, their dealt shares discarded by the others).
        """
        roster = {c: cl.enrolment for c, cl in self.clients.items()}
        sent = {c: roster[c].size for c in enrolled}
        if self.keys == "threshold":
            for c, cl in self.clients.items():
                blobs = sorted(cl.make_shares(roster, self.threshold).items())
                if c in dropping:
                    blobs = blobs[: len(blobs) // 2]
                for rid, blob in blobs:
                    if rid in dropping and rid < c:
                        continue  # the recipient is already gone
                    self.clients[rid].receive_share(c, blob, roster)
                    sent[c] += len(blob)
        final = {c: e for c, e in roster.items() if c not in dropping}
        if len(final) < max(self.threshold, self.min_clients):
            raise ProtocolConfigError(f"only {len(final)} clients completed enrolment; t={self.threshold}, "
                                      f"min_clients={self.min_clients}")
        self.clients = {c: cl for c, cl in self.clients.items() if c in final}
        suite = Suite(self.params, self.dim, a_seed_from(final), {c: v.verify_key for c, v in final.items()})
        for cl in self.clients.values():
            cl.finish_enrolment(suite, self.threshold, self.min_clients)
        return {c: b for c, b in sent.items() if c in final}

    @property
    def label(self) -> str:
        """One line naming the mode and its threat model (printed at start-up)."""
        if self.release == "exact-unsafe":
            text = THREAT_UNSAFE
        elif self.keys == "shared":
            text = THREAT_SHARED
        else:
            text = THREAT_THRESHOLD.format(t=self.threshold, n=len(self.clients), tm1=self.threshold - 1,
                                           k=self.min_clients)
        return text + (f"; {REPRODUCIBLE}" if self.reproducible else "")

    @property
    def update_size(self) -> int:
        """Exact bytes of one client's payload (for wire-cost accounting)."""
        return self.server.suite.update_size

    def begin_round(self, round_id: int, client_ids: Sequence[int]) -> None:
        for cl in self.clients.values():
            cl.begin_round(round_id)

    def protect(self, client_id: int, round_id: int, update: np.ndarray, weight: float) -> bytes:
        if client_id not in self.clients:
            raise ProtocolConfigError(f"client {client_id} is not enrolled in this CKKS deployment")
        return self.clients[client_id].protect(round_id, update, weight)

    def combine(self, round_id: int, payloads: Mapping[int, bytes]) -> Aggregate:
        aggregate = self.server.combine(round_id, payloads)
        # What each client will send to open it (the round loop reads this before open; open corrects it).
        online = [c for c in sorted(self.clients) if c not in self.offline]
        su = self.server.suite
        self._last_extra = {c: 64 for c in aggregate.included if c in online}  # inclusion signatures
        if self.keys == "threshold" and self.release == "safe":
            partial = wire.HEADER_SIZE + 4 + 4 * self.threshold + su.poly_bytes + 64
            for i in online[: self.threshold]:
                self._last_extra[i] = self._last_extra.get(i, 0) + partial
        elif online and self.release == "safe":
            self._last_extra[online[0]] = self._last_extra.get(online[0], 0) + wire.HEADER_SIZE + 4 + 4 * len(
                aggregate.included) + 8 + 4 * self.dim + 64
        return aggregate

    def extra_client_bytes(self) -> dict[int, int]:
        return dict(self._last_extra)

    def open(self, aggregate: Aggregate) -> OpenedAggregate:
        """Run the opening sub-protocol; raise :class:`RoundAbortedError` (nothing released) if it cannot."""
        r = aggregate.round_id
        online = [c for c in sorted(self.clients) if c not in self.offline]
        if self.release == "exact-unsafe":
            return self.clients[online[0]].open_exact_unsafe(aggregate)
        included = [c for c in aggregate.included if c in online]
        if len(included) < self.min_clients:
            raise RoundAbortedError(f"{len(included)} included clients online, min_clients={self.min_clients}")
        t0 = time.perf_counter()
        sigs = {c: self.clients[c].sign_inclusion(r, included) for c in included}
        t1 = time.perf_counter()
        if self.keys == "shared":
            opener = online[0]
            received = self.server.received.get(r, {})
            release = self.clients[opener].open_shared(r, {c: received[c] for c in included}, sigs)
            self._last_extra = {c: 64 for c in included}
            self._last_extra[opener] = self._last_extra.get(opener, 0) + len(release)
            return self.server.read_release(r, opener, release)
        # Exactly t decryptors: the Lagrange weights are for this set, so each extra one would only add a
        # chance of a dropout (which aborts) and more flooding noise.
        decryptors = online[: self.threshold]
        if len(decryptors) < self.threshold:
            raise RoundAbortedError(f"{len(decryptors)} decryptors online, t={self.threshold}: nothing is released")
        partials: dict[int, bytes] = {}
        for i in decryptors:
            try:
                partials[i] = self.clients[i].partial_decrypt(r, included, sigs, decryptors)
            except (PayloadError, ProtocolError):
                continue  # a refusal; the server's combine aborts the round below
        t2 = time.perf_counter()
        self._last_extra = {i: len(p) for i, p in partials.items()}
        for c in included:
            self._last_extra[c] = self._last_extra.get(c, 0) + 64
        opened = self.server.finish(aggregate, included, decryptors, partials)
        #: Seconds of the last opening, by step (all simulated parties run in this one process).
        self.last_open_times = {"inclusion_s": t1 - t0, "partials_s": t2 - t1, "n_partials": len(partials),
                                "server_combine_s": time.perf_counter() - t2}
        return opened
