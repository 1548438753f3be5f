"""Vertical FRL: partition checks, AEAD channels, message flow, determinism, split backprop.

Tiny seeded CartPole runs (a few hundred steps) only; learning quality lives in benchmarks/vertical.py.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from securefrl.agents.dqn import DQNConfig
from securefrl.errors import ConfigError
from securefrl.vertical import (
    AuthenticationError,
    ChannelEnd,
    KeyAgreementError,
    Kind,
    MalformedMessageError,
    MessageLog,
    ObservationFilter,
    ReplayError,
    UnexpectedMessageError,
    VFRLConfig,
    VFRLSystem,
    WireRecord,
    check_partition,
    decode_arrays,
    encode_arrays,
    find_in_messages,
    find_in_object,
    run_full_observation_baseline,
    run_partial_view_baseline,
    run_vfrl,
)
from securefrl.vertical.channel import HEADER_SIZE, Direction, hello


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**overrides: object) -> VFRLConfig:
    """A few hundred CartPole steps with frequent small training phases and target syncs."""
    dqn = DQNConfig(learning_starts=100, train_freq=50, gradient_steps=5, batch_size=16, buffer_size=2_000,
                    exploration_steps=200, target_update_interval=10)
    cfg = VFRLConfig(total_steps=400, eval_every=200, eval_episodes=1, dqn=dqn, encoder_hidden=(16,), embed_dim=8,
                     head_hidden=(16,))
    return replace(cfg, **overrides)


def channel_pair(party: int = 1) -> tuple[ChannelEnd, ChannelEnd]:
    p_key, q_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    p_end = ChannelEnd.establish("party", party, p_key, hello(q_key, party, Direction.FROM_Q))
    q_end = ChannelEnd.establish("q", party, q_key, hello(p_key, party, Direction.TO_Q))
    return p_end, q_end


# --- partition and config validation -------------------------------------------------------------
def test_partition_accepts_disjoint_and_non_covering_splits() -> None:
    assert check_partition([[0, 1], [2, 3]], 4) == ((0, 1), (2, 3))
    assert check_partition([[3], [0, 2]], 4) == ((3,), (0, 2))  # index 1 observed by nobody: allowed


@pytest.mark.parametrize(("partition", "match"), [
    ([[0, 1], [1, 2]], "parties 1 and 2"),
    ([[0, 0], [2]], "twice by the same party"),
    ([[0, 4]], "out of range"),
    ([[-1]], "out of range"),
    ([[0], []], "non-empty"),
    ([], "non-empty"),
    ([[0.5]], "integers"),
    ([[True]], "integers"),
    ("01", "non-empty list"),
])
def test_partition_rejects_bad_splits(partition: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        check_partition(partition, 4)  # type: ignore[arg-type]
    assert err.value.field.startswith("partition")


def test_partition_cover_and_range_checked_against_the_environment() -> None:
    with pytest.raises(ConfigError, match=r"indices \[1\] are observed by no party"):
        check_partition([[0], [2, 3]], 4, require_cover=True)
    with pytest.raises(ConfigError, match=r"out of range; allowed: 0\.\.3") as err:
        VFRLSystem(tiny(partition=((0, 1), (2, 7))), seed=0)  # CartPole has 4 features
    assert err.value.field == "vfrl.partition[1]"


@pytest.mark.parametrize(("overrides", "field"), [
    ({"noise_multiplier": 1.0}, "vfrl.noise_multiplier"),
    ({"embedding_clip": 0.0}, "vfrl.embedding_clip"),
    ({"combine": "mean"}, "vfrl.combine"),
    ({"embedding_norm": "batchnorm"}, "vfrl.embedding_norm"),
    ({"env_id": "NoSuchEnv-v0"}, "vfrl.env_id"),
    ({"dqn": DQNConfig(n_envs=2)}, "vfrl.dqn.n_envs"),
    ({"embed_dim": 0}, "vfrl.embed_dim"),
    ({"dqn": DQNConfig(batch_sampling="poisson")}, "vfrl.dqn.batch_sampling"),
])
def test_config_rejects_bad_values(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        tiny(**overrides).validate()
    assert err.value.field == field


def test_continuous_action_env_is_refused() -> None:
    with pytest.raises(ConfigError, match="Discrete"):
        VFRLSystem(tiny(env_id="Pendulum-v1", partition=((0,), (1, 2))), seed=0)


# --- wire encoding and AEAD channel --------------------------------------------------------------
def test_array_encoding_round_trip_and_rejections() -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([5, -1], np.int64), np.array([1], np.uint8)]
    out = decode_arrays(encode_arrays(arrays), [(np.float32, 2), (np.int64, 1), (np.uint8, 1)])
    for a, b in zip(arrays, out, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    blob = encode_arrays(arrays)
    with pytest.raises(MalformedMessageError, match="trailing"):
        decode_arrays(blob + b"\0")
    with pytest.raises(MalformedMessageError, match="announced"):
        decode_arrays(blob[:-1])
    with pytest.raises(MalformedMessageError, match="expected 1"):
        decode_arrays(blob, [(np.float32, 2)])
    with pytest.raises(MalformedMessageError, match="NaN"):
        decode_arrays(encode_arrays([np.array([np.nan], np.float32)]))
    with pytest.raises(ValueError, match="not encodable"):
        encode_arrays([np.zeros(2, np.float64)])


def test_channel_round_trip_hides_plaintext() -> None:
    p_end, q_end = channel_pair()
    body = encode_arrays([np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8)])
    msg = p_end.seal(Kind.EMBED_ACT, 7, body)
    assert body[8:40] not in msg  # ciphertext does not carry the plaintext floats
    assert q_end.open(msg, Kind.EMBED_ACT, 7) == body
    reply = encode_arrays([np.array([3], np.int64)])
    assert p_end.open(q_end.seal(Kind.BATCH_REQUEST, 0, reply), Kind.BATCH_REQUEST, 0) == reply


@pytest.mark.parametrize("offset", [
    HEADER_SIZE + 3,   # ciphertext byte
    -1,                # tag byte
    6,                 # header: direction (refused by the routing check before decryption)
    12,                # header: step (associated data)
    5,                 # header: kind (associated data)
])
def test_tampered_message_is_rejected(offset: int) -> None:
    p_end, q_end = channel_pair()
    msg = bytearray(p_end.seal(Kind.EMBED_ACT, 3, encode_arrays([np.ones((1, 8), np.float32)])))
    msg[offset] ^= 0x01
    with pytest.raises((AuthenticationError, UnexpectedMessageError, MalformedMessageError)) as err:
        q_end.open(bytes(msg), Kind.EMBED_ACT, 3)
    if offset in (HEADER_SIZE + 3, -1, 12, 5):
        assert isinstance(err.value, AuthenticationError)
    # the channel is not desynchronised by the forgery: the genuine message still opens
    msg[offset] ^= 0x01
    q_end.open(bytes(msg), Kind.EMBED_ACT, 3)


def test_replay_reorder_misrouting_and_truncation_are_rejected() -> None:
    p_end, q_end = channel_pair(party=1)
    first = p_end.seal(Kind.EMBED_ACT, 0, encode_arrays([np.ones((1, 8), np.float32)]))
    second = p_end.seal(Kind.EMBED_ACT, 1, encode_arrays([np.ones((1, 8), np.float32)]))
    with pytest.raises(UnexpectedMessageError, match="skips ahead"):
        q_end.open(second, Kind.EMBED_ACT, 1)
    q_end.open(first, Kind.EMBED_ACT, 0)
    with pytest.raises(ReplayError):
        q_end.open(first, Kind.EMBED_ACT, 0)
    with pytest.raises(UnexpectedMessageError, match="expected EMBED_ACT for step 2"):
        q_end.open(second, Kind.EMBED_ACT, 2)  # authentic, but bound to step 1
    with pytest.raises(UnexpectedMessageError, match="this end reads"):
        p_end.open(second, Kind.EMBED_ACT, 1)  # reflected back to its sender
    _, other_q = channel_pair(party=1)  # same party id, another session key
    with pytest.raises(AuthenticationError):
        other_q.open(first, Kind.EMBED_ACT, 0)
    with pytest.raises(MalformedMessageError, match="header says"):
        q_end.open(second[:-5], Kind.EMBED_ACT, 1)
    small = ChannelEnd("q", 1, q_end.keys, max_bytes=HEADER_SIZE + 4)
    with pytest.raises(MalformedMessageError, match="exceeds the limit"):
        small.open(second, Kind.EMBED_ACT, 1)


def test_low_order_public_key_is_refused() -> None:
    bad_hello = bytearray(hello(X25519PrivateKey.generate(), 1, Direction.FROM_Q))
    bad_hello[HEADER_SIZE:] = bytes(32)  # the all-zero point has order 4
    with pytest.raises(KeyAgreementError):
        ChannelEnd.establish("party", 1, X25519PrivateKey.generate(), bytes(bad_hello))


def test_live_system_rejects_tampered_and_replayed_embeddings() -> None:
    system = VFRLSystem(tiny(), seed=0)
    q, p1, p2 = system.q_agent, *system.parties
    m1, _ = p1.embed_for_action(0)
    m2, _ = p2.embed_for_action(0)
    forged = bytearray(m1)
    forged[-20] ^= 0x80
    with pytest.raises(AuthenticationError):
        q.act({1: bytes(forged), 2: m2}, 0, explore=False)
    q.act({1: m1, 2: m2}, 0, explore=False)
    with pytest.raises(ReplayError):
        q.act({1: m1, 2: m2}, 0, explore=False)
    system.close()


# --- what crosses the wire -------------------------------------------------------------------------
def test_no_raw_observation_leaves_its_party() -> None:
    log = MessageLog(keep_bytes=True, keep_plaintext=True)
    system = VFRLSystem(tiny(), seed=3, log=log)
    system.train(300)
    system.evaluate(1, seed=11)
    observations = {p.party: p.raw_observations() for p in system.parties}
    assert all(len(rows) > 300 for rows in observations.values())

    # every party talks only to the Q-network agent, and only in encrypted kinds after the handshake
    for rec in log.records:
        if rec.sender.startswith("party"):
            assert rec.recipient == "q" and rec.kind in {"HELLO", "EMBED_ACT", "EMBED_TRAIN"}
        if rec.kind in {"EMBED_ACT", "EMBED_TRAIN", "BATCH_REQUEST", "GRADIENT"}:
            assert rec.plaintext is not None and rec.plaintext not in rec.data
    kinds = {rec.kind for rec in log.records}
    assert {"EMBED_TRAIN", "GRADIENT", "BATCH_REQUEST", "ACTION", "REWARD"} <= kinds

    assert find_in_messages(log.records, observations) == []

    # the detector does find a raw slice when one is sent (so the check above can fail)
    leaked = encode_arrays([observations[2][5:7]])
    bad = [*log.records, WireRecord("party1", "q", "EMBED_ACT", 0, leaked, None)]
    assert {leak.owner for leak in find_in_messages(bad, observations)} == {2}
    system.close()


def test_q_agent_and_parties_hold_no_foreign_raw_observation() -> None:
    system = VFRLSystem(tiny(), seed=4)
    system.train(250)
    observations = {p.party: p.raw_observations() for p in system.parties}
    q = system.q_agent
    others = [*system.parties, system.world, system.world.env, system.eval_world]
    assert find_in_object(q, observations, forbidden=others) == []
    for p in system.parties:
        foreign = {k: v for k, v in observations.items() if k != p.party}
        assert find_in_object(p, foreign, forbidden=[x for x in others if x is not p] + [q]) == []

    # positive controls: a stashed observation or a reference to a party is found
    q.stash = observations[1][:4].copy()  # type: ignore[attr-defined]
    assert {leak.owner for leak in find_in_object(q, observations)} == {1}
    del q.stash  # type: ignore[attr-defined]
    q.peer = system.parties[0]  # type: ignore[attr-defined]
    assert any(leak.owner == -1 for leak in find_in_object(q, {}, forbidden=system.parties))
    del q.peer  # type: ignore[attr-defined]
    system.close()


# --- learning mechanics ----------------------------------------------------------------------------
def test_same_seed_same_run_and_other_seed_differs() -> None:
    cfg = tiny()
    a, b, c = run_vfrl(cfg, 5), run_vfrl(cfg, 5), run_vfrl(cfg, 6)
    assert a.param_digest == b.param_digest
    assert (a.curve, a.train_curve, a.eval_returns, a.wire) == (b.curve, b.train_curve, b.eval_returns, b.wire)
    assert a.param_digest != c.param_digest
    assert a.method == "vfrl" and a.env_steps == 400 and len(a.curve) == 2


def test_gradients_reach_encoders_and_targets_sync() -> None:
    system = VFRLSystem(tiny(), seed=1)
    before = [copy.deepcopy(p.encoder.state_dict()) for p in system.parties]
    head_before = copy.deepcopy(system.q_agent.head.state_dict())
    system.train(250)  # training phases at steps 100, 150, 200, 250: 4 phases x 5 updates
    assert system.q_agent.num_updates == 20 and all(p.updates == 20 for p in system.parties)
    for p, old in zip(system.parties, before, strict=True):
        for name, tensor in p.encoder.state_dict().items():
            assert not torch.equal(tensor, old[name]), f"{p.name} {name} did not change"
        # num_updates = 20 is a multiple of target_update_interval = 10: targets were just synced
        for t, s in zip(p.target_encoder.parameters(), p.encoder.parameters(), strict=True):
            assert torch.equal(t, s)
    assert any(not torch.equal(t, head_before[n]) for n, t in system.q_agent.head.state_dict().items())
    system.close()


def test_split_backprop_equals_end_to_end_gradient() -> None:
    """The encoder gradient obtained through the wire equals autograd through encoders+head in one graph."""
    cfg = tiny(dqn=replace(tiny().dqn, max_grad_norm=0.0))
    log = MessageLog(keep_bytes=True, keep_plaintext=True)
    system = VFRLSystem(cfg, seed=2, log=log)
    system.train(120)  # fill replay (one training phase ran at step 100)
    q, parties = system.q_agent, system.parties
    encoders = [copy.deepcopy(p.encoder) for p in parties]
    targets = [copy.deepcopy(p.target_encoder) for p in parties]
    head, target_head = copy.deepcopy(q.head), copy.deepcopy(q.target_head)
    system._update()
    request = next(r for r in reversed(log.records) if r.kind == "BATCH_REQUEST")
    (tids,) = decode_arrays(request.plaintext)
    slices = [p.lookup(tids) for p in parties]
    idx = np.searchsorted(q._tids[: q._size], tids)  # tids are stored in order before the ring wraps
    actions = torch.from_numpy(q._actions[idx])
    rewards, terminated = torch.from_numpy(q._rewards[idx]), torch.from_numpy(q._terminated[idx])

    emb = torch.cat([enc(torch.from_numpy(o)) for enc, (o, _) in zip(encoders, slices, strict=True)], dim=1)
    with torch.no_grad():
        nxt_online = torch.cat([enc(torch.from_numpy(n)) for enc, (_, n) in zip(encoders, slices, strict=True)], 1)
        nxt_target = torch.cat([t(torch.from_numpy(n)) for t, (_, n) in zip(targets, slices, strict=True)], 1)
        next_a = head(nxt_online).argmax(1, keepdim=True)
        target = rewards + cfg.dqn.gamma * (1 - terminated) * target_head(nxt_target).gather(1, next_a).squeeze(1)
    loss = F.smooth_l1_loss(head(emb).gather(1, actions.view(-1, 1)).squeeze(1), target)
    loss.backward()
    for enc, p in zip(encoders, parties, strict=True):
        for ref, got in zip(enc.parameters(), p.encoder.parameters(), strict=True):
            assert got.grad is not None
            torch.testing.assert_close(got.grad, ref.grad, rtol=1e-5, atol=1e-7)
    assert loss.item() == pytest.approx(q.last_loss, rel=1e-6)
    system.close()


def test_dp_release_clips_and_adds_calibrated_noise() -> None:
    cfg = tiny(embedding_clip=0.5, noise_multiplier=0.0)
    system = VFRLSystem(cfg, seed=0)
    p = system.parties[0]
    big = torch.full((200, 8), 3.0)
    assert torch.all(p.release(big).norm(dim=1) <= 0.5 + 1e-6)
    small = torch.full((1, 8), 0.01)
    assert torch.equal(p.release(small), small)  # inside the ball: untouched
    system.close()

    noisy = VFRLSystem(tiny(embedding_clip=0.5, noise_multiplier=2.0), seed=0)
    out = noisy.parties[0].release(torch.zeros(4000, 8))
    # std should be z*C = 1.0; 32k draws give a sampling error of ~0.4%, tolerance 3%
    assert float(out.std()) == pytest.approx(1.0, rel=0.03)
    report = noisy.privacy_report()
    assert report["epsilon"] is None and report["per_release_noise_multiplier_replace_one"] == 1.0
    noisy.close()


@pytest.mark.parametrize(("norm", "bound"), [("layernorm", None), ("tanh", 1.0)])
def test_embedding_norm_bounds_what_parties_release(norm: str, bound: float | None) -> None:
    system = VFRLSystem(tiny(embedding_norm=norm), seed=0)
    p = system.parties[0]
    wild = torch.tensor([[1e3, -1e3], [0.5, 0.1], [-40.0, 7.0]])
    with torch.no_grad():
        emb = p.encoder(wild)
    if bound is None:  # unit variance across the 8 coordinates: norm sqrt(8) for any input
        torch.testing.assert_close(emb.norm(dim=1), torch.full((3,), 8**0.5), rtol=1e-3, atol=1e-3)
    else:
        assert float(emb.abs().max()) <= bound
    system.close()


def test_dp_run_and_sum_combination_run_end_to_end() -> None:
    res = run_vfrl(tiny(embedding_clip=1.0, noise_multiplier=0.5, combine="sum"), 0)
    assert np.isfinite(res.mean_return) and res.privacy["noise_source"] == "os-csprng"  # secure by default
    assert res.privacy["max_releases_per_transition"] >= 2


# --- baselines -----------------------------------------------------------------------------------
def test_observation_filter_and_baselines() -> None:
    import gymnasium as gym

    env = ObservationFilter(gym.make("CartPole-v1"), (2, 3))
    full = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=9)
    ref, _ = full.reset(seed=9)
    np.testing.assert_array_equal(obs, ref[[2, 3]].astype(np.float32))
    assert env.observation_space.shape == (2,)
    cfg = tiny(total_steps=300, eval_every=0)
    part = run_partial_view_baseline(cfg, 0, 2)
    whole = run_full_observation_baseline(cfg, 0)
    assert part.method == "partial:party2" and whole.method == "full"
    assert part.env_steps == whole.env_steps == 300 and len(part.eval_returns) == 1
    with pytest.raises(ConfigError, match=r"1\.\.2"):
        run_partial_view_baseline(cfg, 0, 3)


def test_decode_arrays_refuses_a_shape_that_would_overflow_before_allocating() -> None:
    import struct

    from securefrl.vertical.channel import MalformedMessageError, decode_arrays, encode_arrays

    good = encode_arrays([np.zeros((2, 3), dtype=np.float32)])
    head = good[:1] + good[1:3]  # count, then (dtype code, ndim) of the one array
    huge = head + struct.pack("<I", 2**32 - 1) * 2  # (2^32 - 1)^2 * 4 bytes: wraps negative in int64
    with pytest.raises(MalformedMessageError):
        decode_arrays(huge)
