"""SecAgg+ masking: exact sums under dropouts, aborts below t, and refusals of adversarial servers."""

from __future__ import annotations

import numpy as np
import pytest

from protocols import wire
from protocols.errors import (
    PayloadError,
    ProtocolConfigError,
    RoundAbortedError,
    StageError,
    WrongRoundError,
)
from protocols.secagg import (
    AuthenticationError,
    DoubleRevealError,
    KeyAgreementError,
    MessageCodec,
    MessageFormatError,
    Quantizer,
    SecAggClient,
    SecAggParams,
    SecAggProtocol,
    SecAggServer,
    SignatureError,
    Stage,
    enrol,
)
from protocols.secagg.messages import AdvertiseKeys, ForwardedShares, KeyEntry, KeyList, UnmaskRequest

ADV, SHARE, MASK, CHECK, UNMASK = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY,
                                   Stage.UNMASK)
N, T, DIM = 20, 14, 16
REG, KEYS = enrol(range(64))  # one enrolment for the module: identity keys are long-term


def _server(params: SecAggParams, round_id: int, roster) -> SecAggServer:
    return SecAggServer(params, round_id, roster, REG)


def _client(params: SecAggParams, round_id: int, c: int, roster) -> SecAggClient:
    return SecAggClient(params, round_id, c, roster, KEYS[c], REG)


def _inputs(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, size=(n, dim)), np.ones(n)  # public weights: every client's is 1


def _run(params: SecAggParams, roster, updates, weights, drops=None, round_id: int = 1):
    """Drive one round through the client and server stage machines; ``drops`` silences clients per stage."""
    drops = {s: set(ids) for s, ids in (drops or {}).items()}
    server = _server(params, round_id, roster)
    clients = {c: _client(params, round_id, c, roster) for c in roster}
    for c in roster:
        if c not in drops.get(ADV, ()):
            server.receive(c, clients[c].advertise_keys())
    for c, msg in server.broadcast_keys().items():
        if c not in drops.get(SHARE, ()):
            server.receive(c, clients[c].share_keys(msg))
    for c, msg in server.forward_shares().items():
        if c not in drops.get(MASK, ()):
            server.receive(c, clients[c].masked_input(msg, updates[c], weights[c]))
    if params.authenticated:
        for c, msg in server.request_consistency().items():
            if c not in drops.get(CHECK, ()):
                server.receive(c, clients[c].sign_survivors(msg))
    for c, msg in server.request_unmask().items():
        if c not in drops.get(UNMASK, ()):
            server.receive(c, clients[c].unmask(msg))
    return server.finalize(), server, clients


def _expected_total(params: SecAggParams, included, updates, weights) -> np.ndarray:
    q = Quantizer(params)
    total = np.zeros(params.vector_length, dtype=params.dtype)
    for c in included:
        total += q.encode(updates[c], weights[c])
    return total


# -- correctness --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seeded", [False, True], ids=["nearest", "stochastic"])
def test_masked_weighted_mean_matches_plaintext_within_quantization_bound(seeded):
    updates, _ = _inputs(12, 300, seed=1)
    weights = np.random.default_rng(1).uniform(5.0, 50.0, size=12)
    rng = np.random.default_rng(7) if seeded else None
    proto = SecAggProtocol(300, n_clients=12, max_weight=50.0, public_weights=False, min_weight=5.0, rng=rng)
    proto.begin_round(0, range(12))
    payloads = {c: proto.protect(c, 0, updates[c], weights[c]) for c in range(12)}
    opened = proto.open(proto.combine(0, payloads))

    value_err, weight_err = proto.quantizer.error_bound(12, stochastic=seeded)
    assert opened.total_weight == pytest.approx(weights.sum(), abs=weight_err + 1e-9)
    total = opened.mean * opened.total_weight
    assert np.max(np.abs(total - updates.T @ weights)) <= value_err + 1e-9
    assert opened.included == list(range(12))
    assert proto.reveals_individual_updates is False and proto.server_can_open is True


def test_values_outside_the_clip_range_are_clipped_before_weighting():
    proto = SecAggProtocol(3, n_clients=3, clip=0.5)
    proto.begin_round(4, [0, 1, 2])
    payloads = {c: proto.protect(c, 4, np.array([2.0, -3.0, 0.25]), 1.0) for c in range(3)}
    opened = proto.open(proto.combine(4, payloads))
    np.testing.assert_allclose(opened.mean, [0.5, -0.5, 0.25], atol=1e-6)


def test_masked_input_hides_the_update():
    # With an all-zero update the message is the masks alone: statistically uniform 32-bit words
    # (mean of word/2^32 is 0.5 with sd 1/sqrt(12 * 4001) ~ 0.0046; tolerance 6 sd).
    proto = SecAggProtocol(4000, n_clients=3)
    proto.begin_round(0, [0, 1, 2])
    data = proto.protect(0, 0, np.zeros(4000), 1.0)
    words = np.frombuffer(data[wire.HEADER_SIZE : -64], dtype="<u4")  # the Ed25519 signature trails the body
    encoded = Quantizer(proto.params).encode(np.zeros(4000), 1.0)
    assert np.mean(words == encoded) < 0.01
    assert abs(words.mean() / 2**32 - 0.5) < 6 * (12 * words.size) ** -0.5


# -- dropouts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [ADV, SHARE, MASK, CHECK, UNMASK], ids=lambda s: s.name)
@pytest.mark.parametrize("n_drop", [N - T, N - T + 1], ids=["n-t", "n-t+1"])
def test_dropout_matrix_single_stage(stage, n_drop):
    params = SecAggParams(dim=DIM, max_clients=N, threshold=T)
    updates, weights = _inputs(N, DIM)
    dropped = set(range(3, 3 + n_drop))
    if n_drop > N - T:
        with pytest.raises(RoundAbortedError):
            _run(params, range(N), updates, weights, {stage: dropped})
        return
    result, _, _ = _run(params, range(N), updates, weights, {stage: dropped})
    survivors = [c for c in range(N) if stage in (CHECK, UNMASK) or c not in dropped]
    assert result.included == survivors
    np.testing.assert_array_equal(result.total, _expected_total(params, survivors, updates, weights))
    assert result.dropouts[stage] == sorted(dropped)


@pytest.mark.parametrize(
    ("drops", "ok"),
    [
        ({ADV: {0, 1}, SHARE: {2, 3}, MASK: {4, 5}}, True),
        ({SHARE: {2, 3}, MASK: {4, 5}, UNMASK: {6, 7}}, True),
        ({ADV: {0, 1}, SHARE: {2, 3}, MASK: {4, 5}, UNMASK: {6}}, False),
        ({MASK: {10, 11, 12, 13}, UNMASK: {14, 15, 16}}, False),
    ],
    ids=["6-before-unmask", "6-incl-unmask", "7-spread", "7-late"],
)
def test_dropout_matrix_mixed_stages(drops, ok):
    params = SecAggParams(dim=DIM, max_clients=N, threshold=T)
    updates, weights = _inputs(N, DIM, seed=2)
    if not ok:
        with pytest.raises(RoundAbortedError):
            _run(params, range(N), updates, weights, drops)
        return
    result, _, _ = _run(params, range(N), updates, weights, drops)
    gone = set().union(*(ids for s, ids in drops.items() if s != UNMASK))
    survivors = [c for c in range(N) if c not in gone]
    assert result.included == survivors
    np.testing.assert_array_equal(result.total, _expected_total(params, survivors, updates, weights))


def test_aborted_server_releases_nothing_afterwards():
    params = SecAggParams(dim=DIM, max_clients=N, threshold=T)
    updates, weights = _inputs(N, DIM)
    server = _server(params, 1, range(N))
    clients = {c: _client(params, 1, c, range(N)) for c in range(N)}
    for c in range(N):
        server.receive(c, clients[c].advertise_keys())
    for c, msg in server.broadcast_keys().items():
        server.receive(c, clients[c].share_keys(msg))
    for c, msg in server.forward_shares().items():
        if c >= N - T + 1:  # only t - 1 inputs arrive
            server.receive(c, clients[c].masked_input(msg, updates[c], weights[c]))
    with pytest.raises(RoundAbortedError):
        server.request_consistency()
    assert server.stage == Stage.ABORTED
    with pytest.raises(StageError):
        server.finalize()


def test_adapter_simulated_dropouts_and_malformed_input_become_dropouts():
    updates, weights = _inputs(N, DIM, seed=3)
    proto = SecAggProtocol(DIM, n_clients=N, threshold=T, dropouts={SHARE: {0}, UNMASK: {1, 2}})
    proto.begin_round(5, range(N))
    with pytest.raises(StageError):
        proto.protect(0, 5, updates[0], weights[0])  # dropped during key set-up
    payloads = {c: proto.protect(c, 5, updates[c], weights[c]) for c in range(1, N)}
    payloads[3] = payloads[3][:-4]  # truncated
    payloads[4] = payloads[5]  # another client's message under the wrong sender
    agg = proto.combine(5, payloads)
    assert sorted(agg.rejected) == [3, 4]
    survivors = [c for c in range(N) if c not in {0, 3, 4}]
    assert agg.included == survivors
    opened = proto.open(agg)
    expected = updates[survivors].T @ weights[survivors] / weights[survivors].sum()
    value_err, weight_err = proto.quantizer.error_bound(len(survivors))
    assert np.max(np.abs(opened.mean - expected)) <= (value_err + weight_err) / weights[survivors].sum() * 2


def test_adapter_below_threshold_aborts_in_combine():
    updates, weights = _inputs(N, DIM)
    proto = SecAggProtocol(DIM, n_clients=N, threshold=T)
    proto.begin_round(0, range(N))
    payloads = {c: proto.protect(c, 0, updates[c], weights[c]) for c in range(T - 1)}
    with pytest.raises(RoundAbortedError):
        proto.combine(0, payloads)


# -- SecAgg+ neighbour graph ---------------------------------------------------------------------------


def test_sparse_graph_round_is_exact_and_each_client_masks_only_with_its_neighbours():
    n, k = 40, 8
    params = SecAggParams(dim=DIM, max_clients=n, neighbours=k)
    plan = params.plan(3, range(n))
    assert plan.threshold == 2 * (k + 1) // 3 + 1
    assert all(len(nb) == k and all(u in plan.neighbours[v] for v in nb) for u, nb in plan.neighbours.items())
    assert params.plan(3, reversed(range(n))).neighbours == plan.neighbours  # every party derives the same graph
    assert params.plan(4, range(n)).neighbours != plan.neighbours  # fresh graph per round

    updates, weights = _inputs(n, DIM, seed=4)
    drops = {MASK: {0, 17}, UNMASK: {25}}
    result, _, clients = _run(params, range(n), updates, weights, drops, round_id=3)
    survivors = [c for c in range(n) if c not in {0, 17}]
    np.testing.assert_array_equal(result.total, _expected_total(params, survivors, updates, weights))
    assert all(len(clients[c]._pairwise) <= k for c in survivors)


def test_log_degree_graph_is_sparse_for_large_rosters():
    params = SecAggParams(dim=1, max_clients=1000, neighbours="log")
    assert params.degree(1000) < 400 and (params.degree(10), params.degree(5)) == (9, 4)  # small rosters: complete
    relaxed = SecAggParams(dim=1, max_clients=1000, neighbours="log", corrupt_fraction=0.05, dropout_fraction=0.05)
    assert relaxed.degree(1000) < 100


# -- adversarial server and replay ---------------------------------------------------------------------


def _up_to_masked_input(n: int = 5, t: int = 3, round_id: int = 1, authenticated: bool = True):
    params = SecAggParams(dim=DIM, max_clients=n, threshold=t, authenticated=authenticated)
    server = _server(params, round_id, range(n))
    clients = {c: _client(params, round_id, c, range(n)) for c in range(n)}
    for c in range(n):
        server.receive(c, clients[c].advertise_keys())
    for c, msg in server.broadcast_keys().items():
        server.receive(c, clients[c].share_keys(msg))
    return params, server, clients, server.forward_shares()


def test_tampered_share_fails_authentication_and_aborts_the_client():
    params, _, clients, forwarded = _up_to_masked_input()
    codec = MessageCodec(params)
    msg = codec.decode_forwarded(forwarded[0], 1)
    sender, ct = msg.ciphertexts[0]
    flipped = ct[:20] + bytes([ct[20] ^ 1]) + ct[21:]
    bad = codec.encode_forwarded(1, ForwardedShares(0, ((sender, flipped), *msg.ciphertexts[1:])))
    with pytest.raises(AuthenticationError):
        clients[0].masked_input(bad, np.zeros(DIM), 1.0)
    assert clients[0].stage == Stage.ABORTED


def test_share_relabelled_as_from_another_sender_fails_authentication():
    params, _, clients, forwarded = _up_to_masked_input()
    codec = MessageCodec(params)
    msg = codec.decode_forwarded(forwarded[0], 1)
    (a, ct_a), (b, ct_b) = msg.ciphertexts[:2]
    swapped = codec.encode_forwarded(1, ForwardedShares(0, ((a, ct_b), (b, ct_a), *msg.ciphertexts[2:])))
    with pytest.raises(AuthenticationError):
        clients[0].masked_input(swapped, np.zeros(DIM), 1.0)


def test_message_replayed_from_an_earlier_round_is_rejected():
    params, _, old_clients, old_forwarded = _up_to_masked_input(round_id=1)
    old_masked = old_clients[2].masked_input(old_forwarded[2], np.zeros(DIM), 1.0)
    _, server, clients, _ = _up_to_masked_input(round_id=2)
    with pytest.raises(WrongRoundError):
        server.receive(2, old_masked)
    assert 2 in server.rejected
    # Even re-wrapped in a fresh envelope, an old encrypted share does not authenticate in the new round.
    codec = MessageCodec(params)
    old = codec.decode_forwarded(old_forwarded[0], 1)
    rewrapped = codec.encode_forwarded(2, ForwardedShares(0, old.ciphertexts))
    with pytest.raises(AuthenticationError):
        clients[0].masked_input(rewrapped, np.zeros(DIM), 1.0)


def test_adapter_rejects_a_payload_replayed_from_the_previous_round():
    updates, weights = _inputs(4, DIM)
    proto = SecAggProtocol(DIM, n_clients=4, threshold=3)
    proto.begin_round(1, range(4))
    old = proto.protect(0, 1, updates[0], weights[0])
    proto.begin_round(2, range(4))
    payloads = {c: proto.protect(c, 2, updates[c], weights[c]) for c in range(4)}
    payloads[0] = old
    agg = proto.combine(2, payloads)
    assert "WrongRoundError" in agg.rejected[0] and agg.included == [1, 2, 3]


def _to_unmask(n: int = 5, t: int = 3, authenticated: bool = True):
    params, server, clients, forwarded = _up_to_masked_input(n, t, authenticated=authenticated)
    for c, msg in forwarded.items():
        server.receive(c, clients[c].masked_input(msg, np.zeros(DIM), 1.0))
    if authenticated:
        for c, msg in server.request_consistency().items():
            server.receive(c, clients[c].sign_survivors(msg))
    return params, server, clients, server.request_unmask()


def test_client_refuses_to_reveal_both_shares_of_one_peer():
    params, _, clients, _ = _to_unmask()
    codec = MessageCodec(params)
    forged = codec.encode_unmask_request(1, UnmaskRequest(0, (0, 1, 2, 3), (3, 4)))
    with pytest.raises(DoubleRevealError):
        clients[0].unmask(forged)
    assert clients[0].stage == Stage.ABORTED
    honest = codec.encode_unmask_request(1, UnmaskRequest(0, (0, 1, 2, 3), (4,)))
    with pytest.raises(StageError):  # an aborted client reveals nothing more this round
        clients[0].unmask(honest)


def test_client_refuses_to_reveal_below_threshold_or_for_unknown_peers():
    params, _, clients, _ = _to_unmask()
    codec = MessageCodec(params)
    with pytest.raises(RoundAbortedError):
        clients[0].unmask(codec.encode_unmask_request(1, UnmaskRequest(0, (0, 1), (2, 3, 4))))
    with pytest.raises(PayloadError):
        clients[1].unmask(codec.encode_unmask_request(1, UnmaskRequest(1, (0, 1, 2, 3, 4, 9), ())))
    with pytest.raises(WrongRoundError):  # addressed to another client
        clients[2].unmask(codec.encode_unmask_request(1, UnmaskRequest(3, (0, 1, 2, 3, 4), ())))


def test_server_rejects_reveals_that_do_not_match_its_request():
    params, server, clients, requests = _to_unmask(authenticated=False)  # a client that answers a forged request
    codec = MessageCodec(params)
    other = codec.encode_unmask_request(1, UnmaskRequest(0, (0, 1, 2), (3, 4)))
    with pytest.raises(PayloadError):
        server.receive(0, clients[0].unmask(other))  # answers a request the server did not send
    for c in range(1, 5):
        server.receive(c, clients[c].unmask(requests[c]))
    result = server.finalize()
    assert result.included == [0, 1, 2, 3, 4] and 0 in result.rejected


def test_key_list_that_alters_a_clients_own_keys_or_is_misaddressed_is_refused():
    params = SecAggParams(dim=DIM, max_clients=4, threshold=3)
    server = _server(params, 0, range(4))
    clients = {c: _client(params, 0, c, range(4)) for c in range(4)}
    for c in range(4):
        server.receive(c, clients[c].advertise_keys())
    lists = server.broadcast_keys()
    codec = MessageCodec(params)
    key_list = codec.decode_key_list(lists[0], 0)
    own, other = key_list.entries[0], key_list.entries[1]
    swapped = (KeyEntry(own.client_id, own.enc_public, other.mask_public, own.signature), *key_list.entries[1:])
    with pytest.raises(PayloadError):
        clients[0].share_keys(codec.encode_key_list(0, KeyList(0, swapped)))
    with pytest.raises(StageError):
        clients[0].share_keys(lists[0])  # aborted for this round
    with pytest.raises(WrongRoundError):
        clients[1].share_keys(lists[2])  # someone else's list


def test_low_order_public_key_is_rejected_by_the_server():
    params = SecAggParams(dim=DIM, max_clients=3)
    server = _server(params, 0, range(3))
    bad = MessageCodec(params).encode_advertise(0, 1, AdvertiseKeys(bytes(32), bytes(31) + b"\x01"), KEYS[1])
    with pytest.raises(KeyAgreementError):
        server.receive(1, bad)


# -- state machine and configuration -------------------------------------------------------------------


def test_illegal_transitions_raise_stage_error():
    params = SecAggParams(dim=DIM, max_clients=3)
    client = _client(params, 0, 0, range(3))
    with pytest.raises(StageError):
        client.share_keys(b"")
    with pytest.raises(StageError):
        client.masked_input(b"", np.zeros(DIM), 1.0)
    client.advertise_keys()
    with pytest.raises(StageError):
        client.advertise_keys()
    server = _server(params, 0, range(3))
    for close in (server.forward_shares, server.request_unmask, server.finalize):
        with pytest.raises(StageError):
            close()
    proto = SecAggProtocol(DIM, n_clients=3)
    with pytest.raises(StageError):
        proto.protect(0, 0, np.zeros(DIM), 1.0)
    proto.begin_round(0, range(3))
    payloads = {c: proto.protect(c, 0, np.zeros(DIM), 1.0) for c in range(3)}
    proto.combine(0, payloads)
    with pytest.raises(StageError):
        proto.combine(0, payloads)  # each round is combined once


def test_message_of_the_wrong_stage_is_rejected():
    params, server, _, _ = _up_to_masked_input()
    stale = _client(params, 1, 0, range(5)).advertise_keys()  # a stage-1 message in stage 3
    with pytest.raises(WrongRoundError):
        server.receive(0, stale)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_clients": 1000, "value_bits": 24},
        {"max_clients": 2, "value_bits": 32},
        {"max_clients": 10, "modulus_bits": 16},
        {"max_clients": 10, "threshold": 0.4},
        {"max_clients": 10, "threshold": 11},
        {"max_clients": 10, "neighbours": 3},
        {"max_clients": 10, "clip": 0.0},
    ],
    ids=["overflow", "overflow-2", "modulus", "frac-threshold", "threshold>n", "odd-degree", "clip"],
)
def test_bad_configuration_is_refused_at_construction(kwargs):
    with pytest.raises(ProtocolConfigError):
        SecAggParams(dim=DIM, **kwargs)


def test_overflow_bound_is_tight():
    assert SecAggParams(dim=1, max_clients=1000, value_bits=22).levels == 1 << 22  # 1000 * (2^22 - 1) < 2^32
    assert SecAggParams(dim=1, max_clients=100).value_bits == 25
    assert SecAggParams(dim=1, max_clients=2**20, modulus_bits=64).value_bits == 44


def test_round_level_configuration_errors():
    proto = SecAggProtocol(DIM, n_clients=4, threshold=3)
    with pytest.raises(ProtocolConfigError):
        proto.begin_round(0, range(5))  # more clients than the modulus was sized for
    with pytest.raises(ProtocolConfigError):
        proto.begin_round(0, range(2))  # threshold 3 cannot be met by 2 clients
    with pytest.raises(ProtocolConfigError):
        SecAggParams(dim=DIM, max_clients=10, threshold=5).plan(0, range(10))  # t = n/2 is insecure
    proto.begin_round(0, range(4))
    with pytest.raises(ValueError):
        proto.protect(0, 0, np.zeros(DIM), 2.0)  # weight above max_weight
    proto.protect(0, 0, np.zeros(DIM), 1.0)  # the refusal left the client able to continue


def test_wire_expansion_is_small():
    dim, n = 20_000, 10
    proto = SecAggProtocol(dim, n_clients=n)
    proto.begin_round(0, range(n))
    payloads = {c: proto.protect(c, 0, np.zeros(dim), 1.0) for c in range(n)}
    proto.combine(0, payloads)
    per_client = [sum(stages.values()) for stages in proto.traffic.values()]
    assert set(len(s) for s in proto.traffic.values()) == {5}
    assert max(per_client) / (4 * dim) < 1.1


def test_codec_refuses_inconsistent_counts_and_unordered_lists():
    params = SecAggParams(dim=DIM, max_clients=4)
    codec = MessageCodec(params)
    ct = bytes(160)
    good = codec.encode_forwarded(0, ForwardedShares(1, ((0, ct), (2, ct))))
    assert codec.decode_forwarded(good, 0).ciphertexts == ((0, ct), (2, ct))
    body = bytearray(good[wire.HEADER_SIZE :])
    body[4] = 3  # count says three entries, two follow
    with pytest.raises(MessageFormatError):
        codec.decode_forwarded(wire.pack("secagg", 0, wire.SERVER_ID, bytes(body), kind=4), 0)
    with pytest.raises(MessageFormatError):
        codec.decode_forwarded(codec.encode_forwarded(0, ForwardedShares(1, ((2, ct), (0, ct)))), 0)
    with pytest.raises(MessageFormatError):
        codec.decode_forwarded(codec.encode_forwarded(0, ForwardedShares(1, ((2, ct), (2, ct)))), 0)


def test_64_bit_modulus_round_is_exact():
    params = SecAggParams(dim=DIM, max_clients=6, modulus_bits=64)
    updates, weights = _inputs(6, DIM, seed=5)
    result, _, _ = _run(params, range(6), updates, weights, {MASK: {2}})
    assert result.total.dtype == np.dtype("<u8")
    np.testing.assert_array_equal(result.total, _expected_total(params, [0, 1, 3, 4, 5], updates, weights))


# -- malicious server: authentication, consistency check, robust reconstruction ------------------------


def test_registry_is_immutable_and_clients_refuse_a_foreign_identity():
    with pytest.raises(AttributeError):
        REG.digest = b""  # type: ignore[misc]
    with pytest.raises(TypeError):
        REG[0] = b"x" * 32  # type: ignore[index]
    params = SecAggParams(dim=DIM, max_clients=3)
    with pytest.raises(ProtocolConfigError):
        SecAggClient(params, 0, 0, range(3), KEYS[1], REG)  # client 0 holding client 1's key
    with pytest.raises(ProtocolConfigError):
        SecAggClient(params, 0, 0, range(3))  # authenticated by default: identity required


def test_edited_or_reattributed_client_message_fails_its_signature():
    _, server, clients, forwarded = _up_to_masked_input()
    data = bytearray(clients[0].masked_input(forwarded[0], np.zeros(DIM), 1.0))
    data[40] ^= 1  # one bit of the masked vector
    with pytest.raises(SignatureError):
        server.receive(0, bytes(data))
    data = bytearray(clients[1].masked_input(forwarded[1], np.zeros(DIM), 1.0))
    data[16:20] = (2).to_bytes(4, "little")  # claim it came from client 2
    with pytest.raises(SignatureError):
        server.receive(2, bytes(data))


def test_equivocating_server_gets_no_shares():
    # t = 7 of 9: the server tells 4 clients that client 8 survived and 5 that it dropped; neither survivor
    # set gathers t signatures, so no client reveals anything.
    n = 9
    params = SecAggParams(dim=DIM, max_clients=n)
    server = _server(params, 1, range(n))
    clients = {c: _client(params, 1, c, range(n)) for c in range(n)}
    for c in range(n):
        server.receive(c, clients[c].advertise_keys())
    for c, msg in server.broadcast_keys().items():
        server.receive(c, clients[c].share_keys(msg))
    for c, msg in server.forward_shares().items():
        server.receive(c, clients[c].masked_input(msg, np.zeros(DIM), 1.0))
    server.request_consistency()
    codec = MessageCodec(params, REG)
    from protocols.secagg.messages import ConsistencyRequest

    sets = {c: tuple(range(n)) if c < 4 else tuple(range(n - 1)) for c in range(n - 1)}
    signed = {c: clients[c].sign_survivors(codec.encode_consistency_request(1, ConsistencyRequest(c, sets[c])))
              for c in sets}
    sigs = {c: codec.decode_consistency_signature(signed[c], 1, c)[2] for c in signed}
    for c in range(n - 1):
        same = tuple(sorted((v, s) for v, s in sigs.items() if sets[v] == sets[c]))
        live = set(sets[c])
        req = UnmaskRequest(c, tuple(sorted(live)), tuple(sorted(set(range(n)) - live - {c})), sets[c], same)
        with pytest.raises(RoundAbortedError):
            clients[c].unmask(codec.encode_unmask_request(1, req))


def test_robust_reconstruction_finds_the_forgers():
    from protocols.shamir import ReconstructionError, robust_reconstruct, split

    secret = 123456789
    shares = split(secret, 4, list(range(1, 8)))
    shares[2] += 1
    shares[6] += 5
    value, forged = robust_reconstruct(shares, 4, lambda s: s == secret)
    assert value == secret and forged == {2, 6}
    with pytest.raises(ReconstructionError):
        robust_reconstruct(shares, 4, lambda s: False)


def test_secagg_plus_parameters_meet_the_stated_failure_bound():
    from protocols.secagg import secagg_plus_parameters

    k, t = secagg_plus_parameters(1000, 1 / 3, 0.1)
    assert k < 999 and (k + 1) / 2 < t <= k + 1
    k9, t9 = secagg_plus_parameters(9, 1 / 3, 0.1)
    assert (k9, t9) == (8, 7)  # small rosters need the complete graph
    # 2 log2 n would isolate honest clients; the selected degree is far above it.
    assert secagg_plus_parameters(1000, 0.05, 0.05)[0] > 2 * 10


# -- weights -----------------------------------------------------------------------------------------


def test_public_weights_send_no_weight_slot_and_divide_by_the_count():
    proto = SecAggProtocol(DIM, n_clients=4)
    assert proto.params.vector_length == DIM and proto.public_weights
    proto.begin_round(0, range(4))
    updates, _ = _inputs(4, DIM, seed=7)
    with pytest.raises(ValueError):
        proto.protect(0, 0, updates[0], 0.5)  # a public weight is 1
    opened = proto.open(proto.combine(0, {c: proto.protect(c, 0, updates[c], 1.0) for c in range(4)}))
    assert opened.total_weight == 4.0
    assert np.max(np.abs(opened.mean - updates.mean(axis=0))) < 1e-6


def test_travelling_weight_outside_its_bounds_aborts_the_round():
    from protocols.base import AggregateBoundsError, release

    proto = SecAggProtocol(DIM, n_clients=4, public_weights=False, min_weight=0.5, max_weight=1.0)
    proto.begin_round(0, range(4))
    payloads = {c: proto.protect(c, 0, np.zeros(DIM), 1.0) for c in range(3)}
    crafted = proto.quantizer.encode(np.zeros(DIM), 1.0)
    crafted[DIM] = np.uint32(2**32 - 3 * (proto.params.levels - 1) + 1)  # cancels the other three weights
    payloads[3] = proto.protect_encoded(3, 0, crafted)
    with pytest.raises(AggregateBoundsError):
        release(proto, proto.combine(0, payloads))


def test_graph_seed_is_a_digest_of_the_signed_key_book_that_every_party_derives():
    n, k = 30, 6
    params = SecAggParams(dim=DIM, max_clients=n, neighbours=k)
    assert params.plan(1, range(n), b"book A").neighbours != params.plan(1, range(n), b"book B").neighbours
    _, server, clients = _run(params, range(n), *_inputs(n, DIM, seed=9))
    assert all(clients[c].plan.neighbours == server.plan.neighbours for c in range(n))
    assert server.plan.neighbours != params.plan(1, range(n)).neighbours  # not the seed-only graph


def test_a_shrunken_key_book_cannot_lower_the_threshold():
    # t = 7 for the 9 sampled clients; a book of 6 (all validly signed) must not give a 6-client plan.
    n = 9
    params = SecAggParams(dim=DIM, max_clients=n)
    server = _server(params, 1, range(n))
    clients = {c: _client(params, 1, c, range(n)) for c in range(n)}
    for c in range(n):
        server.receive(c, clients[c].advertise_keys())
    codec = MessageCodec(params, REG)
    book = codec.decode_key_list(server.broadcast_keys()[0], 1)
    small = KeyList(0, tuple(e for e in book.entries if e.client_id < 6))
    with pytest.raises(RoundAbortedError):
        clients[0].share_keys(codec.encode_key_list(1, small))


def test_consistency_signatures_bind_the_key_book_each_signer_saw():
    from protocols.secagg.messages import Kind, encode_ids, signed_message

    params, server, clients, forwarded = _up_to_masked_input()
    for c, msg in forwarded.items():
        server.receive(c, clients[c].masked_input(msg, np.zeros(DIM), 1.0))
    for c, msg in server.request_consistency().items():
        server.receive(c, clients[c].sign_survivors(msg))
    requests = server.request_unmask()
    codec = MessageCodec(params, REG)
    req = codec.decode_unmask_request(requests[0], 1)
    # Client 1's signature over the same survivor set but another key book (a split view) does not count.
    other = crypto_sign(KEYS[1], signed_message(Kind.CONSISTENCY_SIGNATURE, 1, 1,
                                                encode_ids(req.survivor_set) + bytes(32)))
    sigs = tuple((v, other if v == 1 else s) for v, s in req.signatures)
    forged = UnmaskRequest(0, req.survivors, req.dropped, req.survivor_set, sigs)
    with pytest.raises(SignatureError):
        clients[0].unmask(codec.encode_unmask_request(1, forged))


def crypto_sign(key, message: bytes) -> bytes:
    from protocols import crypto

    return crypto.sign(key, message)


def test_sparse_round_needs_every_sampled_client_to_advertise():
    n = 30
    params = SecAggParams(dim=DIM, max_clients=n, neighbours=6)
    with pytest.raises(RoundAbortedError, match="seed it"):
        _run(params, range(n), *_inputs(n, DIM), {ADV: {3}})
