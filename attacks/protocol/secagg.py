"""Attacks on SecAgg+ by a server that deviates from the protocol (and the clients or network it controls).

Each plug-in drives the real client and server stage machines of :mod:`protocols.secagg` with real
messages, changing only what its adversary controls. ``weakened=True`` attacks
``SecAggParams(authenticated=False)`` (the semi-honest protocol, an explicit unsafe option);
``weakened=False`` attacks the default, authenticated protocol (Bonawitz et al. 2017, CCS, §6.2).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from attacks.protocol import ProtocolAttackOutcome, register
from protocols import crypto, wire
from protocols.errors import ProtocolError
from protocols.secagg import (
    MessageCodec,
    Quantizer,
    SecAggClient,
    SecAggParams,
    SecAggProtocol,
    SecAggServer,
    enrol,
)
from protocols.secagg.client import pairwise_mask_key, pairwise_sign, self_mask_key
from protocols.secagg.messages import ForwardedShares, KeyEntry, KeyList, ShareKind, UnmaskShares
from protocols.secagg.params import RoundPlan, logarithmic_degree
from protocols.shamir import decode_share, encode_share, reconstruct

N, DIM = 9, 32


def _target(weakened: bool) -> str:
    return "secagg authenticated=False (semi-honest)" if weakened else "secagg default (authenticated)"


def _parties(params: SecAggParams, round_id: int, n: int):
    registry, keys = enrol(range(n))
    server = SecAggServer(params, round_id, range(n), registry)
    clients = {c: SecAggClient(params, round_id, c, range(n), keys[c], registry) for c in range(n)}
    return registry, keys, server, clients


@register
class KeySubstitution:
    """The server replaces the victim's view of its neighbours' public keys with keys it made itself.

    Threat model: a malicious server (no colluding clients) that controls every message it relays. In
    stage 1 it sends the victim a key book in which every neighbour's share-channel and mask keys are its
    own. The victim then encrypts its Shamir shares of ``b_u`` and ``s_sk_u`` to the server, and masks its
    input with pairwise masks the server can compute; the server forwards fake share pairs "from" the
    neighbours so the victim proceeds, rebuilds ``b_u`` from the victim's shares and strips every mask
    from the victim's masked input. No double reveal is needed, so that check never fires.

    Defence (default): each key-book entry carries its owner's Ed25519 signature over (round, id, keys),
    checked against the enrolment registry the server cannot rewrite; the substituted entries fail and the
    victim aborts before sharing anything. Not covered: a server that also controls the registry (it could
    enrol sybils), and the sum of the honest clients, which the server always learns.
    """

    name = "secagg_key_substitution"
    threat_model = __doc__ or ""

    def run(self, weakened: bool, seed: int) -> ProtocolAttackOutcome:
        rng = np.random.default_rng(seed)
        params = SecAggParams(dim=DIM, max_clients=N, authenticated=not weakened)
        r, victim = 1, 0
        registry, _, server, clients = _parties(params, r, N)
        for c in range(N):
            server.receive(c, clients[c].advertise_keys())
        books = server.broadcast_keys()
        codec = MessageCodec(params, registry)  # the server's codec: the public registry, no client's key
        book = codec.decode_key_list(books[victim], r)
        own = next(e for e in book.entries if e.client_id == victim)
        fake = {e.client_id: (crypto.generate_private_key(), crypto.generate_private_key())
                for e in book.entries if e.client_id != victim}
        entries = tuple(e if e.client_id == victim else
                        KeyEntry(e.client_id, crypto.public_bytes(fake[e.client_id][0]),
                                 crypto.public_bytes(fake[e.client_id][1]), e.signature)
                        for e in book.entries)
        x = rng.uniform(-1, 1, DIM)
        try:
            share_msg = clients[victim].share_keys(codec.encode_key_list(r, KeyList(victim, entries)))
        except ProtocolError as err:
            return ProtocolAttackOutcome(self.name, _target(weakened), False, float("inf"), "max error of x_victim",
                                         f"victim refused the substituted key book: {type(err).__name__}: {err}")
        # The victim's shares were encrypted to the server's keys: decrypt them and rebuild b_victim.
        shares_msg = codec.decode_share_keys(share_msg, r, victim)
        t = clients[victim].plan.threshold
        seed_shares = {}
        for v, ct in shares_msg.ciphertexts:
            key = crypto.derive_key(crypto.agree(fake[v][0], own.enc_public), "share-key", r, victim, v)
            pair = crypto.unseal(key, ct, crypto.associated_data(r, victim, v))
            seed_shares[v + 1] = decode_share(pair[: len(pair) // 2])
        b = reconstruct(seed_shares, t).to_bytes(crypto.SEED_BYTES, "big")
        # Fake share pairs "from" each neighbour, so the victim masks with all of them.
        cts = []
        for v, (enc, _) in sorted(fake.items()):
            key = crypto.derive_key(crypto.agree(enc, own.enc_public), "share-key", r, v, victim)
            pair = encode_share(1) + encode_share(1)
            cts.append((v, crypto.seal(key, pair, crypto.associated_data(r, v, victim))))
        masked = clients[victim].masked_input(codec.encode_forwarded(r, ForwardedShares(victim, tuple(cts))), x, 1.0)
        y = codec.decode_masked(masked, r, victim).copy()
        expander = crypto.MaskExpander(params.vector_length, params.dtype)
        expander.add(y, self_mask_key(b, r, victim), -1)
        for v, (_, mask) in sorted(fake.items()):
            seed_v = pairwise_mask_key(mask, own.mask_public, r, v, victim)
            expander.add(y, seed_v, -pairwise_sign(victim, v))
        values, weight = Quantizer(params).decode(y, 1)
        error = float(np.max(np.abs(values / weight - x)))
        ok = error <= Quantizer(params).value_step
        return ProtocolAttackOutcome(self.name, _target(weakened), ok, error, "max error of x_victim",
                                     f"victim's individual update recovered to {error:.2g} (t={t} of {N}); no "
                                     "double reveal was needed" if ok else "recovery failed")


def _round_to_unmask(params: SecAggParams, n: int, updates: np.ndarray, r: int = 1):
    """An honest round up to (and including) the unmask requests; returns what the adversary needs."""
    registry, keys, server, clients = _parties(params, r, n)
    for c in range(n):
        server.receive(c, clients[c].advertise_keys())
    for c, msg in server.broadcast_keys().items():
        server.receive(c, clients[c].share_keys(msg))
    for c, msg in server.forward_shares().items():
        server.receive(c, clients[c].masked_input(msg, updates[c], 1.0))
    if params.authenticated:
        for c, msg in server.request_consistency().items():
            server.receive(c, clients[c].sign_survivors(msg))
    return registry, keys, server, clients, server.request_unmask()


@register
class ShareForgery:
    """A malicious share holder reveals a forged Shamir share at unmasking.

    Threat model: one corrupt client (or the server in its name) in a victim's neighbourhood. When asked
    for its share of the victim's self-mask seed ``b_v`` it sends a different field element. A server that
    rebuilds ``b_v`` from the first t shares and never checks the rest strips the wrong self mask: the
    aggregate is silently corrupted and nobody is rejected (or, with a random share, it is garbage).

    Defence (default): the victim committed to ``b_v`` (SHA-256, in its signed stage-2 message); the server
    accepts a reconstruction only if it matches the commitment, tries other t-subsets otherwise, and names
    every holder whose share disagrees with the verified polynomial. The forger is rejected, the round
    completes with the exact sum. Not covered: a forger's own masked input stays in the sum (it can always
    send a wrong input; bounding that needs input validation, see ``weight_amplification``).
    """

    name = "secagg_share_forgery"
    threat_model = __doc__ or ""

    def run(self, weakened: bool, seed: int) -> ProtocolAttackOutcome:
        rng = np.random.default_rng(seed)
        params = SecAggParams(dim=DIM, max_clients=N, authenticated=not weakened)
        updates = rng.uniform(-1, 1, (N, DIM))
        _, keys, server, clients, requests = _round_to_unmask(params, N, updates)
        forger, victim = 1, 0  # a low id, so its share is among the first t
        codec = MessageCodec(params)
        for c, msg in requests.items():
            data = clients[c].unmask(msg)
            if c == forger:
                shares = codec.decode_unmask_shares(data, 1, c) if weakened else _unsigned(codec, params, data)
                forged = tuple((v, k, encode_share((decode_share(s) + 1) % ((1 << 521) - 1))
                                if (v, k) == (victim, ShareKind.SELF_MASK_SEED) else s) for v, k, s in shares.shares)
                data = codec.encode_unmask_shares(1, c, UnmaskShares(forged), keys[c])
            server.receive(c, data)
        try:
            result = server.finalize()
        except ProtocolError as err:
            return ProtocolAttackOutcome(self.name, _target(weakened), True, float("inf"), "max error of the mean",
                                         f"the forged share aborted the round for everybody: {err}")
        values, _ = Quantizer(params).decode(result.total, len(result.included))
        error = float(np.max(np.abs(values / len(result.included) - updates.mean(axis=0))))
        caught = forger in result.rejected
        ok = error > 10 * Quantizer(params).value_step and not caught
        reason = (f"mean silently corrupted (max error {error:.3g}), no client rejected" if ok else
                  f"forger identified ({result.rejected.get(forger, '')!r}); sum exact to {error:.2g}")
        return ProtocolAttackOutcome(self.name, _target(weakened), ok, error, "max error of the mean", reason,
                                     {"rejected": sorted(result.rejected)})


def _unsigned(codec: MessageCodec, params: SecAggParams, data: bytes) -> UnmaskShares:
    """The forger reads its own (signed) message back: strip the signature, parse the body unverified."""
    plain = MessageCodec(SecAggParams(dim=params.dim, max_clients=params.max_clients, authenticated=False))
    env = wire.unpack(data, protocol="secagg")
    body = env.body[:-crypto.SIGNATURE_BYTES]
    return plain.decode_unmask_shares(wire.pack("secagg", env.round_id, env.client_id, body, kind=env.kind),
                                      env.round_id, env.client_id)


@register
class Replay:
    """A network adversary replays a client's masked input from an earlier round with the header rewritten.

    Threat model: whoever sits between a client and the server (a proxy, a compromised relay, the server's
    own front end feeding its aggregator) blocks client 0's fresh masked input and injects client 0's
    message from the previous round, its envelope's round field edited to the current round. A server that
    checks only the envelope's round and sender fields accepts it: the old masks do not cancel, so the
    opened aggregate (weight and mean) is wrong.

    Defence (default): every client message is signed by its sender's identity key over (stage, round,
    sender, body); the edited round breaks the signature, the message is rejected as a
    :class:`SignatureError` and client 0 becomes a dropout, so the round opens the exact mean of the
    others. Not covered: an adversary that merely drops messages (a dropout, which the protocol tolerates
    down to the threshold).
    """

    name = "secagg_replay"
    threat_model = __doc__ or ""

    def run(self, weakened: bool, seed: int) -> ProtocolAttackOutcome:
        rng = np.random.default_rng(seed)
        n = 6
        proto = SecAggProtocol(DIM, n, authenticated=not weakened)
        old_updates, updates = rng.uniform(-1, 1, (n, DIM)), rng.uniform(-1, 1, (n, DIM))
        proto.begin_round(1, range(n))
        old = {c: proto.protect(c, 1, old_updates[c], 1.0) for c in range(n)}
        proto.combine(1, old)
        proto.begin_round(2, range(n))
        payloads = {c: proto.protect(c, 2, updates[c], 1.0) for c in range(n)}
        replayed = bytearray(old[0])
        replayed[8:16] = (2).to_bytes(8, "little")  # the envelope's round field
        payloads[0] = bytes(replayed)
        agg = proto.combine(2, payloads)
        opened = proto.open(agg)
        honest = updates[agg.included].mean(axis=0) if agg.included else np.zeros(DIM)
        err = float(np.max(np.abs(opened.mean - honest)))
        accepted = 0 in agg.included
        ok = accepted and err > 1e-3
        reason = (f"replay accepted: mean off by {err:.3g} (total weight {opened.total_weight:.3g}, {n} clients)"
                  if ok else f"replay refused ({agg.rejected.get(0, 'not included')}); mean of the others exact "
                  f"to {err:.2g}")
        return ProtocolAttackOutcome(self.name, _target(weakened), ok, err, "max error of the opened mean", reason,
                                     {"total_weight": opened.total_weight, "included": agg.included})



@register
class GraphIsolation:
    """A server that picks SecAgg+'s neighbour graph lets its corrupt clients unmask an honest client.

    Threat model: a malicious server colluding with a third of the clients (SecAgg+'s design point, Bell et
    al. 2020, CCS). In a sparse graph an honest client u shares its self-mask seed and mask key only with its
    k neighbours, t of whom rebuild either secret. If t of u's neighbours are corrupt they rebuild both, and
    with the public key book they strip every mask from u's input: the server learns u's individual update.
    The server searches offline for a graph in which some honest client has t corrupt neighbours, then runs
    an honest-looking round.

    Weakened: ``graph_from_key_book=False`` with the old ``2 log2 n`` degree, so the graph depends only on
    the ``graph_seed`` the server sets. Defence (default): the graph seed mixes in the digest of the round's
    signed key book (fresh keys the server learns only after the parameters are fixed, and a sparse round
    aborts if the book leaves anyone out), and the degree and threshold come from
    :func:`~protocols.secagg.params.secagg_plus_parameters` so that t corrupt neighbours happen with
    probability below 2^-40 per round. Not covered: a server that aborts 2^g rounds gains g bits (raise
    ``security_bits``); the honest clients' sum, which the server always learns.
    """

    name = "secagg_graph_isolation"
    threat_model = __doc__ or ""
    n_clients = 30
    seed_budget = 4096

    def run(self, weakened: bool, seed: int) -> ProtocolAttackOutcome:
        n, r = self.n_clients, 1
        corrupt = frozenset(range(n - n // 3, n))
        rng = np.random.default_rng(seed)
        base = (SecAggParams(dim=DIM, max_clients=n, neighbours=logarithmic_degree(n), graph_from_key_book=False)
                if weakened else SecAggParams(dim=DIM, max_clients=n, neighbours="log"))
        # Offline search: the server plans with each candidate seed (it cannot know the key-book digest yet).
        params = base
        for g in rng.permutation(self.seed_budget):
            candidate = replace(base, graph_seed=int(g))
            victim = _exposed_client(candidate.plan(r, range(n)), corrupt)
            if victim is not None:
                params = candidate
                break
        registry, _, server, clients = _parties(params, r, n)
        for c in range(n):
            server.receive(c, clients[c].advertise_keys())
        books = server.broadcast_keys()
        plan = server.plan  # the round's real graph, seeded as the parameters say
        for c, msg in books.items():
            server.receive(c, clients[c].share_keys(msg))
        updates = rng.uniform(-1, 1, (n, DIM))
        forwarded = server.forward_shares()
        masked = {c: clients[c].masked_input(forwarded[c], updates[c], 1.0) for c in range(n)}
        target = _exposed_client(plan, corrupt)
        if target is None:
            worst = max(len(plan.neighbours[u] & corrupt) for u in plan.roster if u not in corrupt)
            return ProtocolAttackOutcome(
                self.name, _target_graph(weakened), False, float("inf"), "max error of x_victim",
                f"no honest client has t={plan.threshold} corrupt neighbours in the round's graph (most: {worst} of "
                f"{len(plan.neighbours[0])}); the {self.seed_budget} seeds the server tried did not choose it",
                {"threshold": plan.threshold, "degree": len(plan.neighbours[0])})
        # The corrupt neighbours pool the shares of the target's secrets they hold.
        t = plan.threshold
        holders = sorted(plan.neighbours[target] & corrupt)[:t]
        seed_shares = {v + 1: decode_share(clients[v]._held[target][0]) for v in holders}
        key_shares = {v + 1: decode_share(clients[v]._held[target][1]) for v in holders}
        b = reconstruct(seed_shares, t).to_bytes(crypto.SEED_BYTES, "big")
        mask_key = crypto.load_private(reconstruct(key_shares, t).to_bytes(32, "big"))
        book = MessageCodec(params, registry).decode_key_list(books[target], r)
        mask_public = {e.client_id: e.mask_public for e in book.entries}
        y = MessageCodec(params, registry).decode_masked(masked[target], r, target).copy()
        expander = crypto.MaskExpander(params.vector_length, params.dtype)
        expander.add(y, self_mask_key(b, r, target), -1)
        for v in sorted(plan.neighbours[target]):
            expander.add(y, pairwise_mask_key(mask_key, mask_public[v], r, target, v), -pairwise_sign(target, v))
        values, weight = Quantizer(params).decode(y, 1)
        error = float(np.max(np.abs(values / weight - updates[target])))
        ok = error <= Quantizer(params).value_step
        return ProtocolAttackOutcome(
            self.name, _target_graph(weakened), ok, error, "max error of x_victim",
            f"honest client {target} has {len(plan.neighbours[target] & corrupt)} corrupt of "
            f"{len(plan.neighbours[target])} neighbours (t={t}); its update recovered to {error:.2g}" if ok
            else "recovery failed", {"threshold": t, "degree": len(plan.neighbours[target])})


def _exposed_client(plan: RoundPlan, corrupt: frozenset[int]) -> int | None:
    """An honest client with at least t corrupt neighbours in ``plan``, or None."""
    return next((u for u in plan.roster if u not in corrupt and len(plan.neighbours[u] & corrupt) >= plan.threshold),
                None)


def _target_graph(weakened: bool) -> str:
    return ("secagg+ graph chosen by the server (graph_from_key_book=False, degree 2 log2 n)" if weakened
            else "secagg+ default (graph seeded by the signed key book, Bell et al. degree)")
