"""Wire envelope and plaintext protocol: exact weighted means and per-client rejection."""

import numpy as np
import pytest

from protocols import wire
from protocols.errors import EnvelopeError, PayloadError, PayloadTooLargeError, WrongRoundError
from protocols.plaintext import PlaintextProtocol


def test_envelope_round_trip_and_binding():
    data = wire.pack("plaintext", 7, 3, b"hello", kind=2)
    env = wire.unpack(data, protocol="plaintext", round_id=7, client_id=3, kind=2)
    assert (env.round_id, env.client_id, env.kind, env.body) == (7, 3, 2, b"hello")
    with pytest.raises(WrongRoundError):
        wire.unpack(data, protocol="plaintext", round_id=6)
    with pytest.raises(WrongRoundError):
        wire.unpack(data, protocol="plaintext", client_id=4)
    with pytest.raises(EnvelopeError):
        wire.unpack(data, protocol="ckks")


@pytest.mark.parametrize(
    "mutate",
    [lambda d: d[:-1], lambda d: d + b"x", lambda d: b"", lambda d: b"XXXX" + d[4:], lambda d: d[:4] + b"\x09" + d[5:]],
    ids=["truncated", "padded", "empty", "magic", "version"],
)
def test_envelope_rejects_malformed(mutate):
    data = wire.pack("plaintext", 1, 1, b"body")
    with pytest.raises(EnvelopeError):
        wire.unpack(mutate(data), protocol="plaintext")


def test_envelope_size_limit_checked_before_parsing():
    with pytest.raises(PayloadTooLargeError):
        wire.unpack(b"\x00" * 100, protocol="plaintext", max_bytes=99)


def test_plaintext_weighted_mean_matches_numpy():
    rng = np.random.default_rng(0)
    dim, n = 37, 5
    proto = PlaintextProtocol(dim, public_weights=False)  # weighted FedAvg: weights travel
    updates = rng.normal(size=(n, dim))
    weights = rng.uniform(1, 10, size=n)
    payloads = {i: proto.protect(i, 0, updates[i], weights[i]) for i in range(n)}
    opened = proto.open(proto.combine(0, payloads))
    expected = (updates * weights[:, None]).sum(0) / weights.sum()
    np.testing.assert_allclose(opened.mean, expected, rtol=1e-5, atol=1e-6)
    assert opened.total_weight == pytest.approx(weights.sum())


def test_plaintext_bad_payload_dropped_others_aggregate():
    dim = 8
    proto = PlaintextProtocol(dim)
    good = {i: proto.protect(i, 2, np.full(dim, float(i)), 1.0) for i in range(3)}
    bad = dict(good)
    bad[1] = good[1][:-3]  # truncated
    bad[3] = proto.protect(3, 1, np.ones(dim), 1.0)  # replay from round 1
    agg = proto.combine(2, bad)
    assert agg.included == [0, 2]
    assert set(agg.rejected) == {1, 3}
    np.testing.assert_allclose(proto.open(agg).mean, np.full(dim, 1.0))


def test_plaintext_refuses_nonfinite_update():
    proto = PlaintextProtocol(3)
    with pytest.raises(ValueError, match="NaN"):
        proto.protect(0, 0, np.array([1.0, np.nan, 0.0]), 1.0)
    assert issubclass(PayloadError, ValueError)


def test_plaintext_refuses_a_payload_claiming_a_private_weight():
    import struct

    import numpy as np

    from protocols import wire
    from protocols.plaintext import PlaintextProtocol

    proto = PlaintextProtocol(4)
    good = {c: proto.protect(c, 0, np.ones(4) * c, 1.0) for c in range(3)}
    body = struct.pack("<d", 1e-9) + (np.ones(4) * 1e-9).astype("<f4").tobytes()  # tiny weight: mean x 1e9
    good[2] = wire.pack("plaintext", 0, 2, body)
    agg = proto.combine(0, good)
    assert agg.included == [0, 1] and "weights are public" in agg.rejected[2]
