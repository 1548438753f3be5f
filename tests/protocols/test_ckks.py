"""Threshold CKKS aggregation: ring arithmetic, correctness, parameters, key roles, dropouts, refusals, bad input.

Update values come from seeded generators; keys and noise come from the OS CSPRNG unless a test uses
the reproducible mode, so assertions use tolerances derived from the flooding and float32 rounding,
never exact ciphertext bytes.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tenseal.sealapi as seal

from protocols import crypto, wire
from protocols.base import Aggregate
from protocols.ckks import (
    MAX_MODULUS_BITS_128,
    CiphertextFormatError,
    CKKSParams,
    CKKSProtocol,
    CoefficientRangeError,
    KeyRoleError,
    RefusedError,
    UpdateRangeError,
)
from protocols.ckks.ring import ERROR_BOUND, Encoder, RNSRing, expand_shift, floor_shift, matmul_mod, mulmod
from protocols.ckks.roles import CKKSClient, parse_update
from protocols.errors import (
    EnvelopeError,
    PayloadError,
    PayloadTooLargeError,
    ProtocolConfigError,
    RoundAbortedError,
    WrongRoundError,
)
from protocols.plaintext import PlaintextProtocol
from protocols.shamir import lagrange_at_zero

TOL = 1e-6  # float32 rounding of values ~0.01 is ~1e-9; flooding at these sizes ~1e-9
DIM = 3000  # one ciphertext at N = 4096
N_CLIENTS = 5  # threshold 3-of-5


def _updates(seed: int, n: int, dim: int, std: float = 0.01) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.normal(0.0, std, dim) for c in range(n)}


@pytest.fixture
def proto() -> CKKSProtocol:
    return CKKSProtocol(DIM, n_clients=N_CLIENTS)


def _protect_all(proto: CKKSProtocol, r: int, ups: dict[int, np.ndarray], weights: dict[int, float] | None = None):
    proto.begin_round(r, list(ups))
    return {c: proto.protect(c, r, u, 1.0 if weights is None else weights[c]) for c, u in ups.items()}


def _weighted_mean(ups, weights, ids):
    return sum(weights[c] * ups[c] for c in ids) / sum(weights[c] for c in ids)


def _decrypt_with(proto: CKKSProtocol, r: int, c0: np.ndarray, s: np.ndarray) -> np.ndarray:
    """m = c0 + a*s for a candidate key ``s`` given as residues (L, N) in the coefficient domain."""
    su = proto.server.suite
    ring = su.ring
    plain = ring.add(c0, ring.intt(ring.mul(su.common_poly(r), ring.ntt(s)[None])))
    return su.encoder.decode(ring, plain).reshape(-1)[:DIM]


# -- ring arithmetic ------------------------------------------------------------------------------


def _small_ring(n: int = 64) -> RNSRing:
    return RNSRing(n, [int(m.value()) for m in seal.CoeffModulus.Create(n, [54, 54])])


def test_ntt_product_is_the_negacyclic_product_modulo_each_prime():
    ring = _small_ring()
    rng = np.random.default_rng(0)
    a = np.stack([rng.integers(0, q, ring.n, dtype=np.uint64) for q in ring.primes])
    s = rng.integers(-1, 2, ring.n)
    got = ring.intt(ring.mul(ring.ntt(a), ring.ntt(ring.from_signed(s))))
    for i, q in enumerate(ring.primes):
        ref = [0] * ring.n
        for u in range(ring.n):
            for v in range(ring.n):
                sign = -1 if u + v >= ring.n else 1  # X^N = -1
                ref[(u + v) % ring.n] += sign * int(a[i, u]) * int(s[v])
        assert [x % q for x in ref] == [int(x) for x in got[i]]
    assert (ring.intt(ring.ntt(a)) == a).all()


@pytest.mark.parametrize("bits", [30, 54, 56])
def test_mulmod_is_exact(bits):
    q = int(seal.CoeffModulus.Create(4096, [bits])[0].value())
    rng = np.random.default_rng(bits)
    x = np.concatenate([rng.integers(0, q, 5000, dtype=np.uint64), np.array([q - 1, 0, 1], dtype=np.uint64)])
    y = np.concatenate([rng.integers(0, q, 5000, dtype=np.uint64), np.array([q - 1, q - 1, q - 1], dtype=np.uint64)])
    assert [int(v) for v in mulmod(x, y, q)] == [int(a) * int(b) % q for a, b in zip(x, y, strict=True)]


@pytest.mark.parametrize("bits", [45, 52])
def test_dropping_low_order_bits_is_exact_floor_and_centred_expansion(bits):
    ring = _small_ring()
    rng = np.random.default_rng(bits)
    xs = [int(v) for v in rng.integers(0, 2**62, ring.n)]
    xs = [(x * (2**46) + int(rng.integers(0, 2**46))) % ring.modulus for x in xs]
    xs[:3] = [0, ring.modulus - 1, 2**bits]
    res = np.array([[x % q for x in xs] for q in ring.primes], dtype=np.uint64)
    h = floor_shift(ring, res, bits)
    assert [int(v) for v in h] == [x >> bits for x in xs]
    back = expand_shift(ring, h, bits)
    for i, q in enumerate(ring.primes):
        centre = [((x >> bits) * 2**bits + (2 ** (bits - 1) if bits else 0)) % q for x in xs]
        assert [int(v) for v in back[i]] == centre


@pytest.mark.parametrize("bits", [54, 56])
def test_share_dealing_matrix_product_is_exact(bits):
    q = int(seal.CoeffModulus.Create(4096, [bits])[0].value())
    rng = np.random.default_rng(bits)
    a = rng.integers(0, q, (5, 256), dtype=np.uint64)
    b = rng.integers(0, q, (256, 4), dtype=np.uint64)
    a[0], b[:, 0] = q - 1, q - 1
    ref = [[sum(int(a[i, k]) * int(b[k, j]) for k in range(256)) % q for j in range(4)] for i in range(5)]
    assert [[int(x) for x in row] for row in matmul_mod(a, b, q)] == ref


def test_crt_lift_is_centred_and_encoder_round_trips():
    ring = _small_ring()
    values = [5, -5, 2**70 + 3, -(2**90), 0]
    res = np.array([[v % q for v in values] + [0] * (ring.n - len(values)) for q in ring.primes], dtype=np.uint64)
    lifted = ring.to_float(res)[: len(values)]
    assert np.allclose(lifted, np.array(values, dtype=float), rtol=1e-15, atol=1.0)
    enc = Encoder(ring.n, 60)
    x = np.random.default_rng(1).normal(size=ring.n)
    assert np.max(np.abs(enc.decode(ring, enc.encode(ring, x)) - x)) < 1e-9


# -- correctness -------------------------------------------------------------------------------


def test_weighted_mean_matches_plaintext_protocol(proto):
    ups = _updates(1, N_CLIENTS, DIM)
    weights = {0: 0.5, 1: 2.0, 2: 1.25, 3: 1.0, 4: 3.0}
    plain = PlaintextProtocol(DIM, public_weights=False)  # weights that differ must travel
    expected = plain.open(plain.combine(0, {c: plain.protect(c, 0, ups[c], weights[c]) for c in ups}))

    opened = proto.open(proto.combine(0, _protect_all(proto, 0, ups, weights)))

    assert opened.included == [0, 1, 2, 3, 4]
    assert opened.mean.dtype == np.float32  # released rounded to float32
    assert opened.total_weight == pytest.approx(sum(weights.values()))
    assert np.max(np.abs(opened.mean - _weighted_mean(ups, weights, list(ups)))) < TOL
    assert np.max(np.abs(opened.mean - expected.mean)) < TOL


def test_mean_of_20_clients_meets_the_error_target_and_100_would_too():
    dim = 4096
    proto = CKKSProtocol(dim, n_clients=20)  # 11-of-20 (the 100-client figure is in the benchmark)
    ups = _updates(2, 20, dim)

    opened = proto.open(proto.combine(0, _protect_all(proto, 0, ups)))

    exact = np.mean(list(ups.values()), axis=0)
    assert np.max(np.abs(opened.mean - exact)) < 1e-6
    assert opened.total_weight == 20.0
    # worst case at 100 clients, 51 decryptors: 8 sigma of the summed flooding in one slot, over the mean
    p = proto.params
    sigma = np.sqrt(51) * p.flood_bound(100, 100) / np.sqrt(3) * np.sqrt(p.poly_modulus_degree / 2) / p.scale
    assert 8 * sigma / 100 < 1e-5


@pytest.mark.parametrize("dim", [1, 4095, 4096, 5001])
def test_any_length_is_packed_over_enough_ciphertexts(dim):
    proto = CKKSProtocol(dim, n_clients=3)
    ups = _updates(dim, 3, dim)
    payloads = _protect_all(proto, 0, ups, {0: 1.0, 1: 2.0, 2: 1.0})

    opened = proto.open(proto.combine(0, payloads))

    n_cts = -(-dim // 4096)
    assert all(len(p) == wire.HEADER_SIZE + 8 + n_cts * 4096 * 7 + 64 == proto.update_size for p in payloads.values())
    assert np.max(np.abs(opened.mean - (ups[0] + 2.0 * ups[1] + ups[2]) / 4.0)) < TOL


def test_wire_cost_is_below_8_bytes_per_parameter():
    proto = CKKSProtocol(100_000, n_clients=2)  # 108-bit Q, 56 high-order bits of each c0 coefficient travel
    assert proto.params.drop_bits == 52
    assert proto.update_size / 100_000 < 8.0


def test_encryption_is_randomised_hides_the_update_and_is_refused_twice_per_round(proto):
    update = np.full(DIM, 0.25)
    proto.begin_round(0, [0])
    a = proto.protect(0, 0, update, 1.0)
    with pytest.raises(RefusedError, match="already"):  # same a and key twice would leak a difference
        proto.protect(0, 0, update, 1.0)
    proto.begin_round(1, [0])
    b = proto.protect(0, 1, update, 1.0)

    assert wire.unpack(a, protocol="ckks").body[8:-64] != wire.unpack(b, protocol="ckks").body[8:-64]
    assert np.float32(0.25).tobytes() not in a and np.float64(0.25).tobytes() not in a


def test_values_at_the_per_client_bound_do_not_wrap_around():
    params = CKKSParams(max_clients=4, max_weight=1e6)
    proto = CKKSProtocol(4096, n_clients=4, params=params)
    w = params.value_bound * 0.999
    payloads = _protect_all(proto, 0, {c: np.ones(4096) for c in range(4)}, {c: w for c in range(4)})

    opened = proto.open(proto.combine(0, payloads))

    assert opened.total_weight == pytest.approx(4 * w, rel=1e-12)
    assert np.max(np.abs(opened.mean - 1.0)) < TOL
    proto.begin_round(1, [0])
    with pytest.raises((UpdateRangeError, ValueError)):
        proto.protect(0, 1, np.ones(4096), params.value_bound * 1.01)


@pytest.mark.parametrize("wire_bits", [56, 63])  # 63: only two high parts fit a uint64 sum (lazy expansion)
def test_server_sum_is_exact_modulo_each_prime(wire_bits):
    proto = CKKSProtocol(DIM, n_clients=N_CLIENTS, params=CKKSParams(wire_bits=wire_bits))
    assert proto.server.suite.lazy == {56: 256, 63: 2}[wire_bits]
    ups = _updates(3, N_CLIENTS, DIM)
    payloads = _protect_all(proto, 0, ups)
    su = proto.server.suite

    aggregate = proto.combine(0, payloads)

    c0s = [parse_update(su, 0, c, p)[0].astype(object) for c, p in payloads.items()]
    expected = sum(c0s)
    for i, q in enumerate(su.ring.primes):
        expected[:, i] %= q
    off = wire.HEADER_SIZE + 4 + 4 * N_CLIENTS + 8 * N_CLIENTS
    assert (su.unpack(aggregate.payload, off).astype(object) == expected).all()


def test_bad_client_inputs_raise_before_encryption(proto):
    proto.begin_round(0, [0])
    for update, weight in ((np.zeros(DIM + 1), 1.0), (np.full(DIM, np.nan), 1.0), (np.zeros(DIM), 0.0),
                           (np.zeros(DIM), -1.0), (np.zeros(DIM), float("inf"))):
        with pytest.raises(ValueError):
            proto.protect(0, 0, update, weight)
    with pytest.raises(ProtocolConfigError, match="not enrolled"):
        proto.protect(99, 0, np.zeros(DIM), 1.0)


# -- parameters --------------------------------------------------------------------------------


def test_security_table_agrees_with_seal():
    for n, bits in MAX_MODULUS_BITS_128.items():
        assert seal.CoeffModulus.MaxBitCount(n, seal.SEC_LEVEL_TYPE.TC128) == bits
    assert CKKSParams().seal_context().parameters_set()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"poly_modulus_degree": 2048, "prime_bits": 55}, "128-bit"),
        ({"poly_modulus_degree": 4096, "prime_bits": (55, 55)}, "128-bit"),
        ({"poly_modulus_degree": 8192, "prime_bits": (57, 57)}, r"\[20, 56\]"),
        ({"poly_modulus_degree": 3000}, "one of"),
        ({"scale_bits": 106}, "scale_bits"),
        ({"scale_bits": 0}, "scale_bits"),
        ({"max_clients": 0}, "max_clients"),
    ],
)
def test_weak_or_inconsistent_parameters_are_refused(kwargs, match):
    with pytest.raises(ProtocolConfigError, match=match):
        CKKSParams(**kwargs)


def test_parameters_too_small_for_40_bit_flooding_are_refused_for_the_safe_release():
    legacy = CKKSParams(poly_modulus_degree=2048, prime_bits=54, scale_bits=36, max_clients=64, flood_bits=0)
    with pytest.raises(ProtocolConfigError, match="flooding"):
        CKKSProtocol(10, n_clients=3, params=CKKSParams(poly_modulus_degree=2048, prime_bits=54, scale_bits=30,
                                                        max_clients=8))
    with pytest.raises(ProtocolConfigError, match="exact-unsafe"):
        CKKSProtocol(10, n_clients=3, params=legacy, release="exact-unsafe")  # only with keys="shared"
    with pytest.raises(ProtocolConfigError, match="min_clients"):
        CKKSProtocol(10, n_clients=3, min_clients=1)


# -- key roles ---------------------------------------------------------------------------------


def _reachable(obj, seen=None):
    """Every object reachable from ``obj`` through attributes, lists, tuples and dicts."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    children = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    if isinstance(obj, (list, tuple, set)):
        children += list(obj)
    if isinstance(obj, dict):
        children += list(obj.values())
    for child in children:
        yield from _reachable(child, seen)


def test_no_object_the_server_holds_decrypts_one_update(proto):
    ups = _updates(4, N_CLIENTS, DIM)
    payloads = _protect_all(proto, 0, ups)
    aggregate = proto.combine(0, payloads)
    opened = proto.open(aggregate)
    su = proto.server.suite
    ring = su.ring
    secrets = [ring.from_signed(cl._secret) for cl in proto.clients.values()]
    shares = [s for cl in proto.clients.values() for s in cl._shares.values()]
    arrays = [o for o in _reachable(proto.server) if isinstance(o, np.ndarray)]

    assert not any(isinstance(o, CKKSClient) for o in _reachable(proto.server))
    for arr in arrays:  # no secret key, no key share, not even in another layout
        for key in secrets + shares:
            assert not (arr.size >= key.size and np.isin(key, arr).mean() > 0.5)
    with pytest.raises(KeyRoleError):
        proto.server.open(aggregate)
    # every candidate key the server could form from what it holds fails on a single update
    c0_0 = parse_update(su, 0, 0, payloads[0])[0]
    for arr in arrays:
        if arr.shape[-2:] == (ring.levels, su.n):
            guess = arr.reshape(-1, ring.levels, su.n)[0]
            assert np.max(np.abs(_decrypt_with(proto, 0, c0_0, guess) - ups[0])) > 1.0
    assert np.max(np.abs(opened.mean - np.mean(list(ups.values()), axis=0))) < TOL


def test_t_minus_1_key_shares_and_the_server_view_decrypt_nothing(proto):
    ups = _updates(5, N_CLIENTS, DIM)
    payloads = _protect_all(proto, 0, ups)
    su = proto.server.suite
    ring = su.ring
    c0_0 = parse_update(su, 0, 0, payloads[0])[0]
    t = proto.threshold
    holders = [1, 2, 3, 4][:t]

    def interpolate(ids):
        xs = tuple(i + 1 for i in ids)
        out = np.zeros((ring.levels, su.n), dtype=np.uint64)
        for i, q in enumerate(ring.primes):
            lam = lagrange_at_zero(xs, q)
            acc = np.zeros(su.n, dtype=np.uint64)
            for lam_j, cid in zip(lam, ids, strict=True):
                acc = (acc + mulmod(proto.clients[cid]._shares[0][i], lam_j, q)) % np.uint64(q)
            out[i] = acc
        return out

    wrong = interpolate(holders[: t - 1])  # t-1 colluding clients pool their shares of client 0's key
    assert np.max(np.abs(_decrypt_with(proto, 0, c0_0, wrong) - ups[0])) > 1.0
    right = interpolate(holders)  # the test has teeth: t shares do give the key
    assert (right == ring.from_signed(proto.clients[0]._secret)).all()
    assert np.max(np.abs(_decrypt_with(proto, 0, c0_0, right) - ups[0])) < 1e-6


@pytest.mark.parametrize("offline", [(), (4,), (0, 3), (1, 2)])
def test_any_t_of_n_decryptors_open_the_aggregate(offline):
    proto = CKKSProtocol(DIM, n_clients=N_CLIENTS)
    ups = _updates(6, N_CLIENTS, DIM)
    aggregate = proto.combine(0, _protect_all(proto, 0, ups))
    proto.offline = set(offline)  # dropped out after encryption, before decryption

    opened = proto.open(aggregate)

    alive = [c for c in ups if c not in offline]
    assert opened.included == alive
    assert np.max(np.abs(opened.mean - np.mean([ups[c] for c in alive], axis=0))) < TOL


def test_fewer_than_t_decryptors_abort_and_release_nothing():
    proto = CKKSProtocol(DIM, n_clients=N_CLIENTS)
    aggregate = proto.combine(0, _protect_all(proto, 0, _updates(7, N_CLIENTS, DIM)))
    proto.offline = {0, 1, 2}

    with pytest.raises(RoundAbortedError, match="nothing is released"):
        proto.open(aggregate)


def test_fewer_than_t_partials_abort_at_the_server(proto):
    aggregate = proto.combine(0, _protect_all(proto, 0, _updates(8, N_CLIENTS, DIM)))
    included = aggregate.included
    sigs = {c: proto.clients[c].sign_inclusion(0, included) for c in included}
    dec = [0, 1, 2]
    partials = {i: proto.clients[i].partial_decrypt(0, included, sigs, dec) for i in dec[:2]}  # client 2 drops

    with pytest.raises(RoundAbortedError, match="nothing"):
        proto.server.finish(aggregate, included, dec, partials)


def test_dropouts_at_key_generation_and_encryption():
    proto = CKKSProtocol(DIM, n_clients=N_CLIENTS, offline_at_keygen=(1,))
    ups = _updates(9, N_CLIENTS, DIM)
    assert sorted(proto.clients) == [0, 2, 3, 4] and proto.threshold == 3
    proto.begin_round(0, list(ups))
    with pytest.raises(ProtocolConfigError, match="not enrolled"):
        proto.protect(1, 0, ups[1], 1.0)
    payloads = {c: proto.protect(c, 0, ups[c], 1.0) for c in (0, 2, 3)}  # client 4 drops before encrypting

    opened = proto.open(proto.combine(0, payloads))

    assert opened.included == [0, 2, 3]
    assert np.max(np.abs(opened.mean - np.mean([ups[c] for c in (0, 2, 3)], axis=0))) < TOL
    with pytest.raises(ProtocolConfigError, match="enrolled"):
        CKKSProtocol(DIM, n_clients=3, offline_at_keygen=(0, 1))


def test_a_dropout_halfway_through_share_dealing_is_left_out_and_the_rest_works():
    proto = CKKSProtocol(DIM, n_clients=N_CLIENTS, offline_during_sharing=(2,))
    ups = _updates(19, N_CLIENTS, DIM)
    assert sorted(proto.clients) == [0, 1, 3, 4] and proto.threshold == 3
    assert all(2 not in cl._shares for cl in proto.clients.values())  # its dealt shares were discarded
    proto.begin_round(0, list(ups))
    payloads = {c: proto.protect(c, 0, ups[c], 1.0) for c in proto.clients}
    proto.offline = {0}  # and one more drops at decryption: 3 of 4 remain, t = 3

    opened = proto.open(proto.combine(0, payloads))

    assert opened.included == [1, 3, 4]
    assert np.max(np.abs(opened.mean - np.mean([ups[c] for c in (1, 3, 4)], axis=0))) < TOL


def test_single_update_and_replayed_requests_are_refused_by_every_client(proto):
    ups = _updates(10, N_CLIENTS, DIM)
    aggregate = proto.combine(0, _protect_all(proto, 0, ups))
    dec = [0, 1, 2]
    for c in proto.clients:
        with pytest.raises(RefusedError, match="at least 2"):  # k = 1: would open that client's update
            proto.clients[c].sign_inclusion(0, [c])
        with pytest.raises(RefusedError, match="at least 2"):
            proto.clients[c].partial_decrypt(0, [c], {}, dec)
    sigs = {c: proto.clients[c].sign_inclusion(0, aggregate.included) for c in aggregate.included}
    for c in proto.clients:
        with pytest.raises(RefusedError, match="already"):  # one inclusion set per client per round
            proto.clients[c].sign_inclusion(0, sorted([c, (c + 1) % N_CLIENTS]))
    proto.clients[0].partial_decrypt(0, aggregate.included, sigs, dec)
    with pytest.raises(RefusedError, match="already"):  # one partial per client per round
        proto.clients[0].partial_decrypt(0, aggregate.included, sigs, dec)
    with pytest.raises(RefusedError, match="did not sign"):  # a member that did not confirm its inclusion
        proto.clients[1].partial_decrypt(0, aggregate.included, {c: sigs[c] for c in sigs if c != 3}, dec)
    forged = {**sigs, 3: crypto.sign(crypto.generate_signing_key(), b"x")}
    with pytest.raises(PayloadError):  # a signature not made by the member
        proto.clients[1].partial_decrypt(0, aggregate.included, forged, dec)
    proto.begin_round(1, list(ups))
    for c in proto.clients:
        with pytest.raises(WrongRoundError):  # last round's request, replayed
            proto.clients[c].partial_decrypt(0, aggregate.included, sigs, dec)
        with pytest.raises(RefusedError, match="replay"):
            proto.clients[c].begin_round(0)


def test_negative_or_huge_weight_drops_that_client_and_the_round_goes_on(proto):
    ups = _updates(11, N_CLIENTS, DIM)
    payloads = _protect_all(proto, 0, ups)
    bad = proto.clients[1]  # a malicious client signs a payload with a weight its honest code would refuse
    c0 = parse_update(proto.server.suite, 0, 1, payloads[1])[0]
    for weight in (-1.0, 1e300, 100.5, float("nan"), 0.0):
        payloads[1] = bad.signed_update(0, c0, weight)

        aggregate = proto.combine(0, payloads)

        assert aggregate.included == [0, 2, 3, 4] and "weight" in aggregate.rejected[1]
    opened = proto.open(aggregate)
    assert opened.total_weight == 4.0
    assert np.max(np.abs(opened.mean - np.mean([ups[c] for c in (0, 2, 3, 4)], axis=0))) < TOL


def test_flooding_noise_has_the_configured_width(proto):
    proto.begin_round(0, [])
    cl = proto.clients[0]
    params = proto.params
    bound = params.flood_bound(5, 3)
    assert bound == pytest.approx(2.0**40 * 5 * ERROR_BOUND * 3 / 2, rel=1e-12)
    noise = np.concatenate([cl.flood(5, 3, r).ravel() for r in range(4)]).astype(np.float64)

    assert np.max(np.abs(noise)) <= bound
    assert np.std(noise) == pytest.approx(bound / np.sqrt(3), rel=0.05)  # uniform on [-B, B]
    assert abs(np.mean(noise)) < 0.05 * bound
    assert np.mean(np.abs(noise) > bound / 2) == pytest.approx(0.5, abs=0.05)


def test_released_sum_carries_the_flooding_of_t_partials():
    # 63 wire bits: the dropped-bit rounding (2^44) is negligible next to the flooding (2^47.9) here
    proto = CKKSProtocol(DIM, n_clients=N_CLIENTS, params=CKKSParams(wire_bits=63))
    ups = _updates(12, N_CLIENTS, DIM)
    payloads = _protect_all(proto, 0, ups)
    aggregate = proto.combine(0, payloads)
    included, dec = aggregate.included, [0, 1, 2]
    sigs = {c: proto.clients[c].sign_inclusion(0, included) for c in included}
    partials = {i: proto.clients[i].partial_decrypt(0, included, sigs, dec) for i in dec}
    su = proto.server.suite
    ring = su.ring

    flooded = ring.to_float(proto.server.flooded_plaintext(aggregate, included, dec, partials))
    exact = 0.0
    for c in included:  # what the sum would be without flooding: sum of c0_j + a s_j = Delta m_j + e_j
        s = ring.from_signed(proto.clients[c]._secret)
        c0 = parse_update(su, 0, c, payloads[c])[0]
        exact = exact + ring.to_float(ring.add(c0, ring.intt(ring.mul(su.common_poly(0), ring.ntt(s)[None]))))
    noise = (flooded - exact).ravel()

    width = np.sqrt(len(dec)) * proto.params.flood_bound(len(included), N_CLIENTS) / np.sqrt(3)
    assert np.std(noise) == pytest.approx(width, rel=0.05)


# -- modes ---------------------------------------------------------------------------------------


def test_shared_key_mode_is_labelled_opens_safely_and_one_key_holder_opens_everything():
    proto = CKKSProtocol(DIM, n_clients=4, keys="shared")
    ups = _updates(13, 4, DIM)
    payloads = _protect_all(proto, 0, ups)
    aggregate = proto.combine(0, payloads)

    opened = proto.open(aggregate)

    assert "SHARED KEY" in proto.label and "ANY ONE" in proto.label
    assert opened.mean.dtype == np.float32
    assert np.max(np.abs(opened.mean - np.mean(list(ups.values()), axis=0))) < TOL
    with pytest.raises(RefusedError, match="at least 2"):  # the opener sums itself and refuses k = 1
        proto.clients[0].open_shared(0, {0: payloads[0]}, {})
    with pytest.raises(RefusedError):  # members sign one set per round: no second, nested opening
        proto.clients[1].open_shared(0, {0: payloads[0], 1: payloads[1]}, {})
    # the documented weakness: the server plus any one client (a key holder) decrypts a single update
    su = proto.server.suite
    key = su.ring.from_signed(proto.clients[3]._secret)
    assert np.max(np.abs(_decrypt_with(proto, 0, parse_update(su, 0, 0, payloads[0])[0], key) - ups[0])) < 1e-6


def test_threshold_is_the_default_and_its_label_states_the_threat_model(proto):
    assert proto.keys == "threshold" and proto.threshold == 3 and proto.release == "safe"
    assert "threshold 3-of-5" in proto.label and "unfit" not in proto.label


def test_reproducible_mode_replays_exactly_and_is_marked_unfit_for_deployment():
    def run(seed):
        p = CKKSProtocol(DIM, n_clients=3, seed=seed)
        ups = _updates(14, 3, DIM)
        payloads = _protect_all(p, 0, ups)
        return p, payloads, p.open(p.combine(0, payloads)).mean

    a, pa, ma = run(5)
    _b, pb, mb = run(5)
    _c, pc, _mc = run(6)
    strip = lambda p: {k: v[:-64] for k, v in p.items()}  # noqa: E731 -- signatures use fresh identity keys
    assert strip(pa) == strip(pb) and ma.tobytes() == mb.tobytes()
    assert strip(pa) != strip(pc)
    assert "unfit for deployment" in a.label
    d, pd, _ = run(None)
    assert strip(pd) != strip(pa) and "unfit" not in d.label


# -- bad input ---------------------------------------------------------------------------------


def _flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def _coefficient_above_q(proto: CKKSProtocol, good: bytes) -> bytes:
    """A malicious (enrolled) client signs a c0 whose first residue is not reduced."""
    body = bytearray(wire.unpack(good, protocol="ckks").body[:-64])
    body[8 : 8 + 7] = b"\xff" * 7
    env = bytearray(wire.pack("ckks", 0, 1, bytes(body) + bytes(64), kind=1))
    env[-64:] = crypto.sign(proto.clients[1].identity, bytes(env[:-64]))
    return bytes(env)


BAD_INPUTS = {
    "empty": (lambda p, g: b"", EnvelopeError),
    "not bytes": (lambda p, g: "hello", EnvelopeError),
    "random bytes, right length": (lambda p, g: np.random.default_rng(5).bytes(len(g)), EnvelopeError),
    "truncated": (lambda p, g: g[:-100], EnvelopeError),
    "oversized": (lambda p, g: g + b"\x00", PayloadTooLargeError),
    "wrong length, valid envelope": (
        lambda p, g: wire.pack("ckks", 0, 1, wire.unpack(g, protocol="ckks").body[:-7], kind=1),
        CiphertextFormatError,
    ),
    "bit flip in c0": (lambda p, g: _flip(g, wire.HEADER_SIZE + 1000, 3), crypto.SignatureError),
    "bit flip in weight": (lambda p, g: _flip(g, wire.HEADER_SIZE + 2, 1), crypto.SignatureError),
    "bit flip in signature": (lambda p, g: _flip(g, len(g) - 1, 7), crypto.SignatureError),
    "bit flip in round field": (lambda p, g: _flip(g, 8), WrongRoundError),
    "sent under another client id": (lambda p, g: _flip(g, 16), WrongRoundError),
    "from another deployment": (
        lambda p, g: _protect_all(CKKSProtocol(DIM, n_clients=2), 0, {0: np.zeros(DIM), 1: np.zeros(DIM)})[1],
        crypto.SignatureError,
    ),
    "coefficient >= q, valid signature": (_coefficient_above_q, CoefficientRangeError),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_payload_is_rejected_and_the_round_survives(kind):
    proto = CKKSProtocol(DIM, n_clients=4)
    ups = _updates(15, 4, DIM)
    payloads = _protect_all(proto, 0, ups)
    make, expected = BAD_INPUTS[kind]
    bad = make(proto, payloads[1])

    with pytest.raises(expected):
        parse_update(proto.server.suite, 0, 1, bad)
    aggregate = proto.combine(0, {**payloads, 1: bad})
    opened = proto.open(aggregate)

    assert aggregate.included == [0, 2, 3] and list(aggregate.rejected) == [1]
    assert aggregate.rejected[1].startswith(expected.__name__)
    assert np.max(np.abs(opened.mean - np.mean([ups[c] for c in (0, 2, 3)], axis=0))) < TOL


def test_tampered_partial_decryption_aborts_the_round(proto):
    aggregate = proto.combine(0, _protect_all(proto, 0, _updates(16, N_CLIENTS, DIM)))
    included, dec = aggregate.included, [0, 1, 2]
    sigs = {c: proto.clients[c].sign_inclusion(0, included) for c in included}
    partials = {i: proto.clients[i].partial_decrypt(0, included, sigs, dec) for i in dec}
    partials[1] = _flip(partials[1], wire.HEADER_SIZE + 100)

    with pytest.raises(PayloadError):
        proto.server.finish(aggregate, included, dec, partials)


def test_more_clients_than_the_sum_can_hold_are_refused_at_set_up():
    with pytest.raises(ProtocolConfigError, match="max_clients"):
        CKKSProtocol(10, n_clients=3, params=CKKSParams(max_clients=2))


def test_aggregate_lists_client_ids_and_weights(proto):
    payloads = _protect_all(proto, 0, _updates(17, N_CLIENTS, DIM), {c: 1.0 + c for c in range(N_CLIENTS)})
    aggregate = proto.combine(0, {0: payloads[0], 2: payloads[2]})
    body = wire.unpack(aggregate.payload, protocol="ckks").body
    assert struct.unpack_from("<I2I2d", body) == (2, 0, 2, 1.0, 3.0)


def test_empty_or_single_client_round_aborts_instead_of_opening(proto):
    payloads = _protect_all(proto, 0, _updates(18, N_CLIENTS, DIM))
    with pytest.raises(RoundAbortedError, match="min_clients"):
        proto.open(proto.combine(0, {}))
    with pytest.raises(RoundAbortedError, match="min_clients"):
        proto.open(proto.combine(0, {3: payloads[3]}))
    with pytest.raises((RoundAbortedError, PayloadError)):
        proto.open(Aggregate(0, b"junk", [0, 1, 2]))
