"""``SecAggProtocol``: SecAgg+ behind the :class:`AggregationProtocol` interface of the round loop.

The clients and the server run in-process but talk only through the real byte messages of
:mod:`protocols.secagg.messages`, so sizes, binding checks and dropout handling are those of a
deployment (Bonawitz et al. 2017, CCS; Bell et al. 2020, CCS, SecAgg+). The interface maps onto the
four stages as follows:

* ``begin_round`` -- advertise keys and share keys;
* ``protect`` -- the client's masked-input message (``weight * update`` plus the weight, quantized);
* ``combine`` -- collect masked inputs (malformed or unauthenticated ones are rejected individually and
  their senders become dropouts), run the consistency check and the unmask stage with the clients that
  sent input, and strip the masks;
* ``open`` -- decode the sum and divide by the number of included clients (public weights, the
  default) or by the opened total weight, which must lie in ``n_included * [min_weight, max_weight]``.

Every client is enrolled once, at construction: it gets a long-term Ed25519 identity key and the
registry of everyone's verification keys (:func:`~protocols.secagg.identity.enrol`), which the server
cannot rewrite. The server learns only the sum of the included clients' inputs, even if it deviates
from the protocol (Bonawitz et al. 2017, §6.2), provided fewer than the configured fraction of clients
collude with it. ``dropouts`` simulates clients that go silent at a given stage, for tests and
dropout studies.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from protocols.base import Aggregate, AggregationProtocol, OpenedAggregate, check_total_weight
from protocols.crypto import Ed25519PrivateKey
from protocols.errors import PayloadError, ProtocolConfigError, RoundAbortedError, StageError
from protocols.secagg.client import SecAggClient
from protocols.secagg.identity import IdentityRegistry, enrol
from protocols.secagg.messages import MessageCodec, Stage
from protocols.secagg.params import SecAggParams
from protocols.secagg.quantize import Quantizer
from protocols.secagg.server import SecAggServer


@dataclass
class _Round:
    round_id: int
    server: SecAggServer
    clients: dict[int, SecAggClient]
    forwarded: dict[int, bytes] = field(default_factory=dict)


class SecAggProtocol(AggregationProtocol):
    """Pairwise-masking secure aggregation (SecAgg, and SecAgg+ with a sparse neighbour graph).

    Parameters
    ----------
    dim:
        Length of the flat update vector.
    n_clients:
        Most clients in one round; sizes the overflow check of the modulus.
    threshold, neighbours, clip, max_weight, value_bits, modulus_bits, graph_seed, authenticated,
    corrupt_fraction, dropout_fraction, security_bits:
        See :class:`~protocols.secagg.params.SecAggParams`. Defaults: authenticated, complete graph, t =
        floor(2n/3) + 1, updates clipped to [-1, 1] per coordinate, weights up to 1, arithmetic mod 2^32
        with the most value bits that cannot overflow. ``authenticated=False`` is UNSAFE (attack studies).
    public_weights, min_weight:
        ``True`` (default): every weight is the public 1 and is not sent. ``False`` sends the weight in a
        masked slot; the opened total is then bounded by ``n_included * [min_weight, max_weight]``.
    unsafe_skip_bounds:
        UNSAFE, attack studies only: open without bounding the total weight or the mean (``mean_bound``
        becomes None), as the landed code did.
    registry, identities:
        Enrolment of clients ``0 .. n_clients - 1``; by default fresh identity keys are made here (one per
        client, OS CSPRNG). A deployment passes the registry its clients were enrolled with.
    rng:
        Seeded generator for stochastic rounding; ``None`` rounds to nearest.
    dropouts:
        Simulated dropouts: ``{stage: client ids}`` that go silent at that stage of every round.
    """

    name = "secagg"
    reveals_individual_updates = False
    server_can_open = True
    coordinate_clip_param = "clip"

    def __init__(
        self,
        dim: int,
        n_clients: int,
        *,
        threshold: int | float | None = None,
        neighbours: int | str | None = None,
        clip: float = 1.0,
        max_weight: float = 1.0,
        value_bits: int | None = None,
        modulus_bits: int = 32,
        graph_seed: int = 0,
        public_weights: bool = True,
        min_weight: float | None = None,
        unsafe_skip_bounds: bool = False,
        authenticated: bool = True,
        corrupt_fraction: float = 1 / 3,
        dropout_fraction: float = 0.1,
        security_bits: int = 40,
        rng: np.random.Generator | None = None,
        dropouts: Mapping[Stage, Collection[int]] | None = None,
        registry: IdentityRegistry | None = None,
        identities: Mapping[int, Ed25519PrivateKey] | None = None,
    ) -> None:
        self.params = SecAggParams(
            dim=dim, max_clients=n_clients, threshold=threshold, neighbours=neighbours, clip=clip,
            max_weight=max_weight, value_bits=value_bits, modulus_bits=modulus_bits, graph_seed=graph_seed,
            public_weights=public_weights, min_weight=min_weight,
            authenticated=authenticated, corrupt_fraction=corrupt_fraction, dropout_fraction=dropout_fraction,
            security_bits=security_bits,
        )
        self.dim = dim
        self.public_weights = public_weights
        self.unsafe_skip_bounds = bool(unsafe_skip_bounds)
        self.mean_bound = None if self.unsafe_skip_bounds else float(clip)
        if registry is None or identities is None:
            registry, identities = enrol(range(n_clients))
        self.registry = registry
        self._identities = dict(identities)
        self.codec = MessageCodec(self.params, registry)
        self.quantizer = Quantizer(self.params)
        self.rng = rng
        self.dropouts: dict[Stage, set[int]] = {Stage(s): set(ids) for s, ids in (dropouts or {}).items()}
        #: Bytes each client sent in the current (or last) round, per stage.
        self.traffic: dict[int, dict[Stage, int]] = {}
        self._round: _Round | None = None

    # -- AggregationProtocol ----------------------------------------------------------------------
    def begin_round(self, round_id: int, client_ids: Sequence[int]) -> None:
        """Run the advertise-keys and share-keys stages among ``client_ids``.

        Raises :class:`ProtocolConfigError` if the roster cannot meet the threshold or exceeds
        ``n_clients``, and :class:`RoundAbortedError` if too many clients drop out during key set-up.
        """
        self._round = None
        server = SecAggServer(self.params, round_id, client_ids, self.registry)
        missing = [c for c in server.plan.roster if c not in self._identities]
        if missing:
            raise ProtocolConfigError(f"clients {missing} were not enrolled (ids must lie in [0, n_clients))")
        clients = {c: SecAggClient(self.params, round_id, c, client_ids, self._identities[c], self.registry)
                   for c in server.plan.roster}
        self.traffic = {c: {} for c in clients}
        adverts = {c: clients[c].advertise_keys() for c in clients if c not in self._silent(Stage.ADVERTISE_KEYS)}
        self._deliver(server, Stage.ADVERTISE_KEYS, adverts)
        key_lists = server.broadcast_keys()
        shares = self._respond(Stage.SHARE_KEYS, key_lists, lambda c, m: clients[c].share_keys(m))
        self._deliver(server, Stage.SHARE_KEYS, shares)
        forwarded = server.forward_shares()
        self._round = _Round(round_id, server, clients, forwarded)

    def extra_client_bytes(self) -> dict[int, int]:
        return {c: sum(n for st, n in stages.items() if st != Stage.MASKED_INPUT) for c, stages in self.traffic.items()}

    def protect(self, client_id: int, round_id: int, update: np.ndarray, weight: float) -> bytes:
        """The client's masked-input message for ``weight * update`` (and ``weight``)."""
        rnd = self._current(round_id)
        if client_id not in rnd.forwarded:
            raise StageError(f"client {client_id} is not in the masked-input stage of round {round_id} "
                             "(not sampled, or dropped out during key set-up)")
        data = rnd.clients[client_id].masked_input(rnd.forwarded[client_id], update, weight, self.rng)
        self.traffic[client_id][Stage.MASKED_INPUT] = len(data)
        return data

    def protect_encoded(self, client_id: int, round_id: int, encoded: np.ndarray) -> bytes:
        """A masked-input message for an arbitrary vector of the modulus: what a malicious client can send.

        The server cannot tell it from an honest one (masking hides it); attack studies use this to show
        what the bounds on the opened aggregate must stop.
        """
        rnd = self._current(round_id)
        if client_id not in rnd.forwarded:
            raise StageError(f"client {client_id} is not in the masked-input stage of round {round_id}")
        data = rnd.clients[client_id].masked_input_encoded(rnd.forwarded[client_id], encoded)
        self.traffic[client_id][Stage.MASKED_INPUT] = len(data)
        return data

    def combine(self, round_id: int, payloads: Mapping[int, bytes]) -> Aggregate:
        """Collect masked inputs, run the unmask stage with their senders, and return the masked-free sum.

        Raises :class:`RoundAbortedError` (releasing nothing) if fewer than t clients remain.
        """
        rnd = self._current(round_id)
        self._round = None  # one combine per round; the clients' secrets go with it
        server = rnd.server
        rejected: dict[int, str] = {}
        silent = self._silent(Stage.MASKED_INPUT)
        for cid in sorted(payloads):
            if cid in silent:
                continue
            try:
                server.receive(cid, payloads[cid])
            except PayloadError as err:
                rejected[cid] = f"{type(err).__name__}: {err}"
        if self.params.authenticated:
            checks = server.request_consistency()
            signed = self._respond(Stage.CONSISTENCY, checks, lambda c, m: rnd.clients[c].sign_survivors(m))
            self._deliver(server, Stage.CONSISTENCY, signed)
        requests = server.request_unmask()
        reveals = self._respond(Stage.UNMASK, requests, lambda c, m: rnd.clients[c].unmask(m))
        self._deliver(server, Stage.UNMASK, reveals)
        result = server.finalize()
        payload = self.codec.encode_aggregate(round_id, len(result.included), result.total)
        for cid, reason in result.rejected.items():  # e.g. a holder that revealed a forged share
            rejected.setdefault(cid, reason)
        return Aggregate(round_id, payload, result.included, rejected)

    def open(self, aggregate: Aggregate) -> OpenedAggregate:
        """Decode the summed grid indices and divide by the summed weight."""
        count, total = self.codec.decode_aggregate(aggregate.payload, aggregate.round_id)
        if count != len(aggregate.included):
            raise PayloadError(f"aggregate sums {count} clients but lists {len(aggregate.included)} as included")
        values, total_weight = self.quantizer.decode(total, count)
        if not self.public_weights and not self.unsafe_skip_bounds:
            p = self.params
            check_total_weight(total_weight, count, float(p.min_weight or 0.0), p.max_weight,
                               slack=self.quantizer.error_bound(count)[1])
        mean = values / total_weight if total_weight > 0 else np.zeros(self.dim)
        return OpenedAggregate(mean, total_weight, list(aggregate.included))

    # -- helpers ----------------------------------------------------------------------------------
    def _current(self, round_id: int) -> _Round:
        if self._round is None or self._round.round_id != round_id:
            raise StageError(f"round {round_id} has not begun (call begin_round first) or was already combined")
        return self._round

    def _silent(self, stage: Stage) -> set[int]:
        return self.dropouts.get(stage, set())

    def _respond(
        self, stage: Stage, inbox: dict[int, bytes], step: Callable[[int, bytes], bytes]
    ) -> dict[int, bytes]:
        """Each addressed client answers unless it is simulated silent or refuses (then it drops out)."""
        out: dict[int, bytes] = {}
        for cid, msg in inbox.items():
            if cid in self._silent(stage):
                continue
            try:
                out[cid] = step(cid, msg)
            except (PayloadError, RoundAbortedError):
                continue  # an honest client that refuses the server's message aborts for this round
        return out

    def _deliver(self, server: SecAggServer, stage: Stage, messages: dict[int, bytes]) -> None:
        for cid, data in messages.items():
            self.traffic[cid][stage] = len(data)
            try:
                server.receive(cid, data)
            except PayloadError:
                continue  # recorded in server.rejected; the client is a dropout
