"""CKKS aggregation: correctness against plaintext, packing, parameters, key roles, bad input.

All ciphertexts are real SEAL ciphertexts. Update values come from seeded generators; the
cryptographic randomness (keys, encryption noise, nonces) comes from SEAL and os.urandom, so
assertions use error tolerances derived from the CKKS noise (about 1e-7 at these sizes), never
exact ciphertext bytes.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tenseal.sealapi as seal

from protocols import wire
from protocols.base import Aggregate
from protocols.ckks import (
    MAX_MODULUS_BITS_128,
    CiphertextFormatError,
    CKKSKeyDealer,
    CKKSParams,
    CKKSProtocol,
    CoefficientRangeError,
    IntegrityError,
    KeyMismatchError,
    KeyRoleError,
    UpdateRangeError,
)
from protocols.ckks._seal_io import PRNG_INFO_SIZE
from protocols.ckks.roles import _UPDATE_HEAD, KIND_UPDATE
from protocols.errors import (
    EnvelopeError,
    PayloadError,
    PayloadTooLargeError,
    ProtocolConfigError,
    WrongRoundError,
)
from protocols.plaintext import PlaintextProtocol

TOL = 1e-6  # the CKKS error target; measured errors at these sizes are ~1e-8..1e-7
DIM = 3000  # 3001 values incl. the weight slot -> 2 ciphertexts at N=2048
ROUND = 7


def _updates(seed: int, n: int, dim: int, std: float = 0.01) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, std, dim) for _ in range(n)]


@pytest.fixture(scope="module")
def proto() -> CKKSProtocol:
    return CKKSProtocol(DIM)


@pytest.fixture(scope="module")
def good(proto: CKKSProtocol) -> tuple[dict[int, bytes], dict[int, np.ndarray], dict[int, float]]:
    ups = dict(enumerate(_updates(1, 3, DIM)))
    weights = {0: 0.5, 1: 2.0, 2: 1.25}
    payloads = {c: proto.protect(c, ROUND, ups[c], weights[c]) for c in ups}
    return payloads, ups, weights


def _weighted_mean(ups: dict[int, np.ndarray], weights: dict[int, float], ids: list[int]) -> np.ndarray:
    return sum(weights[c] * ups[c] for c in ids) / sum(weights[c] for c in ids)


# -- correctness -------------------------------------------------------------------------------


def test_weighted_mean_matches_plaintext_protocol(proto, good):
    payloads, ups, weights = good
    plain = PlaintextProtocol(DIM)
    expected = plain.open(plain.combine(ROUND, {c: plain.protect(c, ROUND, ups[c], weights[c]) for c in ups}))

    opened = proto.open(proto.combine(ROUND, payloads))

    assert opened.included == [0, 1, 2]
    assert opened.total_weight == pytest.approx(3.75, abs=TOL)
    exact = _weighted_mean(ups, weights, [0, 1, 2])
    assert np.max(np.abs(opened.mean - exact)) < TOL
    # PlaintextProtocol sends float32, so it is the reference only to float32 precision.
    assert np.max(np.abs(opened.mean - expected.mean)) < 1e-8 + 1e-6 * np.max(np.abs(exact))


def test_sum_of_100_clients_meets_error_target():
    dim = 4095  # 2 ciphertexts, last slot of the second holds the weight
    proto = CKKSProtocol(dim)
    ups = _updates(2, 100, dim)

    opened = proto.open(proto.combine(ROUND, {c: proto.protect(c, ROUND, u, 1.0) for c, u in enumerate(ups)}))

    err = np.max(np.abs(opened.mean * opened.total_weight - np.sum(ups, axis=0)))
    assert err < TOL
    assert opened.total_weight == pytest.approx(100.0, abs=TOL)


@pytest.mark.parametrize("dim", [1, 2047, 2048, 4096, 5001])
def test_any_length_is_packed_over_enough_ciphertexts(dim):
    proto = CKKSProtocol(dim)
    ups = _updates(dim, 2, dim)
    n_cts = -(-(dim + 1) // 2048)
    payloads = {c: proto.protect(c, ROUND, u, 1.0 + c) for c, u in enumerate(ups)}

    opened = proto.open(proto.combine(ROUND, payloads))

    body = wire.HEADER_SIZE + _UPDATE_HEAD.size + n_cts * (PRNG_INFO_SIZE + 2048 * 7) + 16
    assert all(len(p) == body == proto.update_size for p in payloads.values())
    assert np.max(np.abs(opened.mean - (ups[0] + 2.0 * ups[1]) / 3.0)) < TOL


def test_wire_cost_is_below_8_bytes_per_parameter():
    proto = CKKSProtocol(100_000)
    assert proto.update_size / 100_000 < 8.0


def test_encryption_is_randomised_and_hides_the_update(proto):
    update = np.full(DIM, 0.25)

    a = proto.protect(0, ROUND, update, 1.0)
    b = proto.protect(0, ROUND, update, 1.0)

    assert a != b
    assert np.float32(0.25).tobytes() not in a and np.float64(0.25).tobytes() not in a


def test_values_at_the_per_client_bound_do_not_wrap_around():
    # A full ciphertext of equal values w (+ weight w) encodes to coefficients w at X^0 and X^(N/2):
    # max_clients such clients sum to ~70% of q/2 with the sqrt(2)-conservative bound, so a bound
    # looser by 1.42x or more would wrap around here.
    params = CKKSParams(max_clients=4)
    proto = CKKSProtocol(2047, params)
    w = params.value_bound * 0.999
    payloads = {c: proto.protect(c, ROUND, np.ones(2047), w) for c in range(4)}

    opened = proto.open(proto.combine(ROUND, payloads))

    assert opened.total_weight == pytest.approx(4 * w, rel=1e-9)
    assert np.max(np.abs(opened.mean - 1.0)) < TOL
    with pytest.raises(UpdateRangeError):
        proto.protect(0, ROUND, np.ones(2047), params.value_bound * 1.01)


def test_server_sum_is_exact_modulo_q_with_lazy_reduction():
    params = CKKSParams(poly_modulus_degree=4096, prime_bits=60, scale_bits=40, max_clients=64)
    proto = CKKSProtocol(500, params)
    # c0's below q ~ 2^60 overflow a uint64 after ~32 additions on average: 48 clients need the
    # intermediate reductions to stay exact modulo q.
    assert proto.server._lazy < 24
    ups = _updates(3, 48, 500)
    payloads = {c: proto.protect(c, ROUND, u, 1.0) for c, u in enumerate(ups)}

    aggregate = proto.combine(ROUND, payloads)

    c0s = np.stack([proto.server.parse_update(ROUND, c, p)[0] for c, p in payloads.items()]).astype(object)
    expected = np.sum(c0s, axis=0) % params.modulus  # Python integers: no overflow
    offset = wire.HEADER_SIZE + 36 + 4 * 48 + 48 * proto.server.shared.n_cts * PRNG_INFO_SIZE
    assert (proto.server.shared.unpack_coeffs(aggregate.payload, offset).astype(object) == expected).all()
    assert np.max(np.abs(proto.open(aggregate).mean - np.mean(ups, axis=0))) < TOL


def test_empty_round_opens_to_zero(proto):
    opened = proto.open(proto.combine(ROUND, {}))
    assert opened.total_weight == 0.0 and not opened.mean.any() and opened.included == []


def test_bad_client_inputs_raise_before_encryption(proto):
    with pytest.raises(ValueError):
        proto.protect(0, ROUND, np.zeros(DIM + 1), 1.0)
    with pytest.raises(ValueError):
        proto.protect(0, ROUND, np.full(DIM, np.nan), 1.0)
    with pytest.raises(ValueError):
        proto.protect(0, ROUND, np.zeros(DIM), 0.0)


# -- parameters --------------------------------------------------------------------------------


def test_security_table_agrees_with_seal():
    for n, bits in MAX_MODULUS_BITS_128.items():
        assert seal.CoeffModulus.MaxBitCount(n, seal.SEC_LEVEL_TYPE.TC128) == bits


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"poly_modulus_degree": 2048, "prime_bits": 55}, "128-bit"),
        ({"poly_modulus_degree": 1024, "prime_bits": 28, "scale_bits": 10, "max_clients": 2}, "128-bit"),
        ({"poly_modulus_degree": 4096, "prime_bits": 61}, r"\[20, 60\]"),
        ({"poly_modulus_degree": 3000}, "one of"),
        ({"scale_bits": 50}, "scale_bits"),
        ({"scale_bits": 0}, "scale_bits"),
        ({"max_clients": 0}, "max_clients"),
    ],
)
def test_weak_or_inconsistent_parameters_are_refused(kwargs, match):
    with pytest.raises(ProtocolConfigError, match=match):
        CKKSParams(**kwargs)


def test_largest_secure_modulus_for_n1024_is_accepted_and_works():
    params = CKKSParams(poly_modulus_degree=1024, prime_bits=27, scale_bits=20, max_clients=2)
    proto = CKKSProtocol(100, params)
    ups = _updates(4, 2, 100)

    opened = proto.open(proto.combine(ROUND, {c: proto.protect(c, ROUND, u, 1.0) for c, u in enumerate(ups)}))

    assert np.max(np.abs(opened.mean - np.mean(ups, axis=0))) < 1e-3  # scale 2^20: coarse but correct


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


def test_server_holds_no_secret_key_and_cannot_decrypt(proto, good):
    payloads, _, _ = good
    aggregate = proto.combine(ROUND, payloads)
    server_objects = list(_reachable(proto.server))
    holder_objects = list(_reachable(proto.key_holder))

    assert not any(isinstance(o, (seal.SecretKey, seal.Decryptor, seal.KeyGenerator)) for o in server_objects)
    assert any(isinstance(o, seal.Decryptor) for o in holder_objects)  # the walk does find keys where they are
    with pytest.raises(KeyRoleError):
        proto.server.open(aggregate)
    with pytest.raises(ValueError):  # the public context alone gives no decryptor
        seal.Decryptor(proto.server.context, seal.SecretKey())
    assert proto.server_can_open is False and proto.reveals_individual_updates is False


def test_a_key_made_on_the_public_context_does_not_open_the_aggregate(proto, good):
    payloads, ups, weights = good
    aggregate = proto.combine(ROUND, payloads)
    guessed_key = seal.KeyGenerator(proto.server.context).secret_key()
    impostor = type(proto.key_holder)(proto.server.shared, guessed_key)

    try:
        opened = impostor.open(aggregate)
    except PayloadError:
        return  # decrypted total weight was not even positive
    assert np.max(np.abs(opened.mean - _weighted_mean(ups, weights, [0, 1, 2]))) > 1.0


# -- bad input ---------------------------------------------------------------------------------


def _flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def _reseal(proto: CKKSProtocol, data: bytes, edit) -> bytes:
    """Edit a payload's body and re-authenticate it with the deployment's MAC key (a key insider)."""
    env = wire.unpack(data, protocol="ckks")
    body = bytearray(env.body[:-16])
    edit(body)
    nonce = bytes(body[16:28])
    return proto.server.shared.seal_envelope(env.round_id, env.client_id, env.kind, bytes(body), nonce)


def _c0_offset(proto: CKKSProtocol) -> int:
    return _UPDATE_HEAD.size + proto.server.shared.n_cts * PRNG_INFO_SIZE


def _set_coefficient_to_max(proto):
    def edit(body):
        off = _c0_offset(proto) + 7 * 5
        body[off : off + 7] = b"\xff" * 7

    return edit


def _unknown_prng(proto):
    def edit(body):
        body[_UPDATE_HEAD.size] = 9

    return edit


BAD_INPUTS = {
    "empty": (lambda p, g: b"", EnvelopeError),
    "not bytes": (lambda p, g: "hello", EnvelopeError),
    "random bytes, right length": (lambda p, g: np.random.default_rng(5).bytes(len(g)), EnvelopeError),
    "truncated": (lambda p, g: g[:-100], EnvelopeError),
    "oversized": (lambda p, g: g + b"\x00", PayloadTooLargeError),
    "wrong length, valid envelope": (
        lambda p, g: wire.pack("ckks", ROUND, 1, wire.unpack(g, protocol="ckks").body[:-7], kind=KIND_UPDATE),
        CiphertextFormatError,
    ),
    "other model size": (
        lambda p, g: CKKSProtocol(DIM - 2100).protect(1, ROUND, np.zeros(DIM - 2100), 1.0),
        CiphertextFormatError,
    ),
    "bit flip in c0": (lambda p, g: _flip(g, wire.HEADER_SIZE + _c0_offset(p) + 1000, 3), IntegrityError),
    "bit flip in seed": (lambda p, g: _flip(g, wire.HEADER_SIZE + _UPDATE_HEAD.size + 10), IntegrityError),
    "bit flip in tag": (lambda p, g: _flip(g, len(g) - 1, 7), IntegrityError),
    "bit flip in round field": (lambda p, g: _flip(g, 8), WrongRoundError),
    "replayed from another round": (lambda p, g: p.protect(1, ROUND + 1, np.zeros(DIM), 1.0), WrongRoundError),
    "sent under another client id": (lambda p, g: p.protect(2, ROUND, np.zeros(DIM), 1.0), WrongRoundError),
    "foreign key, same parameters": (
        lambda p, g: CKKSKeyDealer(p.params).key_holder(DIM).protect(1, ROUND, np.zeros(DIM), 1.0),
        KeyMismatchError,
    ),
    "coefficient >= q, valid tag": (lambda p, g: _reseal(p, g, _set_coefficient_to_max(p)), CoefficientRangeError),
    "unknown PRNG type, valid tag": (lambda p, g: _reseal(p, g, _unknown_prng(p)), CiphertextFormatError),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_payload_is_rejected_and_the_round_survives(proto, good, kind):
    payloads, ups, weights = good
    make, expected = BAD_INPUTS[kind]
    bad = make(proto, payloads[1])

    with pytest.raises(expected):
        proto.server.parse_update(ROUND, 1, bad)
    aggregate = proto.combine(ROUND, {0: payloads[0], 1: bad, 2: payloads[2]})
    opened = proto.open(aggregate)

    assert aggregate.included == [0, 2] and list(aggregate.rejected) == [1]
    assert aggregate.rejected[1].startswith(expected.__name__)
    assert opened.total_weight == pytest.approx(weights[0] + weights[2], abs=TOL)
    assert np.max(np.abs(opened.mean - _weighted_mean(ups, weights, [0, 2]))) < TOL


def test_foreign_payload_with_copied_fingerprint_fails_the_tag(proto):
    foreign = CKKSKeyDealer(proto.params).key_holder(DIM)
    forged = foreign.protect(1, ROUND, np.zeros(DIM), 1.0)
    env = wire.unpack(forged, protocol="ckks")
    body = proto.server.shared.fingerprint + env.body[16:]
    forged = wire.pack("ckks", ROUND, 1, body, kind=KIND_UPDATE)

    with pytest.raises(IntegrityError):
        proto.server.parse_update(ROUND, 1, forged)


def test_tampered_aggregate_is_refused_by_the_key_holder(proto, good):
    payloads, _, _ = good
    aggregate = proto.combine(ROUND, payloads)

    with pytest.raises(IntegrityError):
        proto.open(Aggregate(ROUND, _flip(aggregate.payload, len(aggregate.payload) // 2), aggregate.included))
    with pytest.raises(CiphertextFormatError):
        proto.open(Aggregate(ROUND, aggregate.payload, [0, 1]))
    with pytest.raises(WrongRoundError):
        proto.open(Aggregate(ROUND + 1, aggregate.payload, aggregate.included))
    with pytest.raises(KeyMismatchError):
        CKKSProtocol(DIM).open(aggregate)


def test_too_many_clients_are_rejected_not_wrapped():
    proto = CKKSProtocol(10, CKKSParams(max_clients=2))
    payloads = {c: proto.protect(c, ROUND, np.full(10, 0.1 * (c + 1)), 1.0) for c in range(3)}

    aggregate = proto.combine(ROUND, payloads)

    assert aggregate.included == [0, 1] and "max_clients" in aggregate.rejected[2]
    assert np.max(np.abs(proto.open(aggregate).mean - 0.15)) < TOL


def test_aggregate_lists_client_ids_in_its_authenticated_body(proto, good):
    payloads, _, _ = good
    aggregate = proto.combine(ROUND, {0: payloads[0], 2: payloads[2]})
    body = wire.unpack(aggregate.payload, protocol="ckks").body
    k = struct.unpack_from("<I", body, 32)[0]
    assert list(struct.unpack_from(f"<{k}I", body, 36)) == [0, 2]
