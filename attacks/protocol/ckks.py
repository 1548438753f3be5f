"""Curious-server attacks on CKKS aggregation: key recovery from an exact release, and single-update opening.

Both run on what the server holds -- :attr:`CKKSProtocol.server` (the clients' signed c0's, the public
round seed) and the opened result -- and measure the error of the individual update they recover.

- ``weakened=True``: the shared-key mode with the exact release (``keys="shared", release="exact-unsafe"``)
  at the previously landed parameters (N = 2048, one 54-bit prime, Delta = 2^36): the old behaviour.
- ``weakened=False``: the defaults (threshold keys, flooded float32 release, at least ``min_clients``).
"""

from __future__ import annotations

import struct

import numpy as np

from attacks.protocol import ProtocolAttackOutcome, register
from protocols import wire
from protocols.base import Aggregate, OpenedAggregate
from protocols.ckks import CKKSParams, CKKSProtocol
from protocols.ckks.roles import KIND_AGGREGATE, PROTOCOL, CKKSServer, _ids_body, invert_ntt, parse_update
from protocols.errors import PayloadError, ProtocolError

N_CLIENTS = 6
DIM = 4196  # fills the first ciphertext at N = 2048 and at N = 4096: its whole plaintext is released
SUCCESS_ERROR = 1e-6
LEGACY_PARAMS = CKKSParams(poly_modulus_degree=2048, prime_bits=54, scale_bits=36, max_clients=64, flood_bits=0)


def _target(weakened: bool, seed: int) -> CKKSProtocol:
    if weakened:
        return CKKSProtocol(DIM, n_clients=N_CLIENTS, params=LEGACY_PARAMS, keys="shared", release="exact-unsafe",
                            seed=seed)
    return CKKSProtocol(DIM, n_clients=N_CLIENTS, seed=seed)


def _target_name(weakened: bool) -> str:
    if weakened:
        return "ckks shared-key, exact release (unsafe)"
    return "ckks threshold, flooded float32 release (default)"


def _updates(seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.normal(0.0, 0.01, DIM) for c in range(N_CLIENTS)}


def _round(proto: CKKSProtocol, r: int, updates: dict[int, np.ndarray]) -> Aggregate:
    proto.begin_round(r, list(updates))
    return proto.combine(r, {c: proto.protect(c, r, u, 1.0) for c, u in updates.items()})


def recover_updates(server: CKKSServer, round_id: int, opened: OpenedAggregate) -> dict[int, np.ndarray]:
    """Key recovery from one opened mean (what the issue's proof of concept did), server-side only.

    Re-encode the released sum: if it is exact, P = Delta * sum m + sum e exactly. The server's summed
    c0 satisfies c0_sum + a * (k s) = P with a public, so k s = (P - c0_sum) / a pointwise in the NTT
    domain; with s every single c0_j decrypts: m_j = c0_j + a s.
    """
    su = server.suite
    ring = su.ring
    payloads = server.received[round_id]
    parsed = {c: parse_update(su, round_id, c, payloads[c]) for c in opened.included}
    c0_sum = None
    for c0, _ in parsed.values():
        c0_sum = c0 if c0_sum is None else ring.add(c0_sum, c0)
    assert c0_sum is not None, "at least one payload was parsed"
    values = np.zeros(su.n_coeffs)
    values[: su.dim] = np.asarray(opened.mean, dtype=np.float64) * opened.total_weight
    plain = su.encoder.encode(ring, values.reshape(su.n_cts, su.n))
    a = su.common_poly(round_id)
    ks_hat = ring.mul(ring.ntt(ring.sub(plain, c0_sum)), invert_ntt(ring, a))
    k = len(parsed)
    s_hat = ring.scalar(ks_hat, [pow(k, -1, q) for q in ring.primes])
    s_hat = s_hat[:1]  # the key is one polynomial; ciphertext 0's estimate is used for every ciphertext
    out = {}
    for c, (c0, w) in parsed.items():
        m = ring.add(c0, ring.intt(ring.mul(a, s_hat)))
        out[c] = su.encoder.decode(ring, m).reshape(-1)[: su.dim] / w
    return out


def _max_error(recovered: dict[int, np.ndarray], truth: dict[int, np.ndarray]) -> float:
    return float(max(np.max(np.abs(recovered[c] - truth[c])) for c in recovered)) if recovered else float("inf")


@register
class CKKSKeyRecovery:
    name = "ckks_key_recovery"
    threat_model = (
        "Honest-but-curious server. It sees every client's c0, the public seeds and the released mean, and "
        "solves c0_sum + a*(k s) = encode(exact mean) for the key in the NTT domain, then decrypts each "
        "client's c0. Works whenever the release is exact and one key encrypts every update. Stopped by "
        "flooding the release (the re-encoded value misses the error term by 2^40 times its size) and by "
        "per-client keys (even an exact sum only gives a sum of keys). Not covered: a malicious server "
        "that also corrupts clients (see t-of-n in the CKKS docs)."
    )

    def run(self, weakened: bool, seed: int) -> ProtocolAttackOutcome:
        proto = _target(weakened, seed)
        truth = _updates(seed)
        aggregate = _round(proto, 0, truth)
        opened = proto.open(aggregate)
        recovered = recover_updates(proto.server, 0, opened)
        err = _max_error(recovered, truth)
        ok = err < SUCCESS_ERROR
        reason = (
            f"exact release: key recovered, all {len(recovered)} updates decrypted to {err:.1e}"
            if ok
            else f"release is flooded and float32, keys are per client: 'recovered' updates are off by {err:.1e}"
        )
        return ProtocolAttackOutcome(self.name, _target_name(weakened), ok, err, "max error of recovered updates",
                                     reason, {"n_clients": N_CLIENTS, "dim": DIM})


def _forged_aggregate(proto: CKKSProtocol, r: int, ids: list[int], c0: np.ndarray) -> Aggregate:
    su = proto.server.suite
    body = _ids_body(ids) + struct.pack(f"<{len(ids)}d", *([1.0] * len(ids))) + su.pack(c0)
    return Aggregate(r, wire.pack(PROTOCOL, r, wire.SERVER_ID, body, kind=KIND_AGGREGATE), ids, {})


@register
class CKKSSingleOpen:
    name = "ckks_single_open"
    threat_model = (
        "Curious server that builds the 'aggregate' itself: it submits one client's ciphertext as the "
        "aggregate (k = 1), pairs it with a second client's name (k = 2, second c0 left out), or re-tags an "
        "old round's ciphertexts for the current round. Works when the opener trusts the server's sum. "
        "Stopped because every client refuses sets below min_clients and sets whose members did not sign "
        "their inclusion, gives one partial per round, and the partial is for this round's fresh a only. "
        "Not covered: a server colluding with min_clients - 1 clients (their sum with the victim is a sum)."
    )

    def run(self, weakened: bool, seed: int) -> ProtocolAttackOutcome:
        proto = _target(weakened, seed)
        truth = _updates(seed)
        victim, other = 0, 1
        su = proto.server.suite
        errors: dict[str, float] = {}
        refusals: dict[str, str] = {}
        # round 0: honest, the server keeps the ciphertexts
        _round(proto, 0, truth)
        old = {c: parse_update(su, 0, c, p)[0] for c, p in proto.server.received[0].items()}
        # rounds 1, 2: the victim's c0 alone as the aggregate; then named together with a second client
        strategies = [("k=1", [victim]), ("k=2 with one c0", [victim, other])]
        for r, (label, ids) in enumerate(strategies[:1] if weakened else strategies, start=1):
            _round(proto, r, truth)
            c0_v = parse_update(su, r, victim, proto.server.received[r][victim])[0]
            try:
                opened = self._open(proto, _forged_aggregate(proto, r, ids, c0_v), ids)
                errors[label] = float(np.max(np.abs(np.asarray(opened.mean, dtype=float) * len(ids) - truth[victim])))
            except (PayloadError, ProtocolError) as err:
                refusals[label] = f"{type(err).__name__}: {err}"
        # next round: round 0's ciphertexts re-tagged as this round's aggregate
        r = len(strategies) + 1
        _round(proto, r, truth)
        ring = su.ring
        try:
            forged = _forged_aggregate(proto, r, [victim, other], ring.add(old[victim], old[other]))
            opened = self._open(proto, forged, [victim, other])
            errors["replay"] = float(np.max(np.abs(np.asarray(opened.mean, dtype=float) * 2 - truth[victim]
                                                   - truth[other])))
        except (PayloadError, ProtocolError) as err:
            refusals["replay"] = f"{type(err).__name__}: {err}"
        best = min(errors.values()) if errors else float("inf")
        ok = best < SUCCESS_ERROR
        reason = (f"opener trusted the server's sum: victim's update opened to {best:.1e}" if ok else
                  f"refused: {refusals}; opened garbage: {errors}")
        return ProtocolAttackOutcome(self.name, _target_name(weakened), ok, best, "error of the victim's opened update",
                                     reason, {"errors": errors, "refusals": refusals})

    @staticmethod
    def _open(proto: CKKSProtocol, aggregate: Aggregate, ids: list[int]) -> OpenedAggregate:
        """Drive the opening as a server would, with the forged aggregate."""
        if proto.release == "exact-unsafe":
            return proto.open(aggregate)
        r = aggregate.round_id
        sigs = {}
        for c in ids:
            sigs[c] = proto.clients[c].sign_inclusion(r, ids)
        decryptors = sorted(proto.clients)
        partials = {i: proto.clients[i].partial_decrypt(r, ids, sigs, decryptors) for i in decryptors}
        return proto.server.finish(aggregate, ids, decryptors, partials)
