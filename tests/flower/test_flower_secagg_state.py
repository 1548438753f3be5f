"""A SecAgg+ client that is written to bytes and rebuilt between every stage (as in a Flower deployment,
where each message runs in a fresh process) produces the same aggregate as clients kept in memory."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.secagg import SecAggClient, SecAggParams, SecAggServer, enrol
from protocols.secagg.client import book_digest
from protocols.secagg.messages import MessageCodec
from protocols.secagg.quantize import Quantizer
from securefrl.flower import secagg_state


def _round(params, registry, keys, updates, rebuild):
    roster = sorted(updates)
    server = SecAggServer(params, 5, roster, registry)
    store = {c: (SecAggClient(params, 5, c, roster, keys[c], registry), None) for c in roster}

    def step(c, fn, book=None):
        client, old_book = store[c]
        if rebuild:  # bytes out, bytes in: a fresh object every stage
            client, _, old_book = secagg_state.load(secagg_state.dump(client, roster, old_book), params, keys[c],
                                                    registry)
        out = fn(client)
        store[c] = (client, book if book is not None else old_book)
        return out

    for c in roster:
        server.receive(c, step(c, lambda cl: cl.advertise_keys()))
    for c, msg in server.broadcast_keys().items():
        kl = MessageCodec(params, registry).decode_key_list(msg, 5)
        server.receive(c, step(c, lambda cl, m=msg: cl.share_keys(m),
                               (sorted(e.client_id for e in kl.entries), book_digest(kl))))
    for c, msg in server.forward_shares().items():
        server.receive(c, step(c, lambda cl, m=msg, c=c: cl.masked_input(m, updates[c], 1.0)))
    for c, msg in server.request_consistency().items():
        server.receive(c, step(c, lambda cl, m=msg: cl.sign_survivors(m)))
    for c, msg in server.request_unmask().items():
        server.receive(c, step(c, lambda cl, m=msg: cl.unmask(m)))
    result = server.finalize()
    return Quantizer(params).decode(result.total, len(result.included))[0] / len(result.included)


def test_rebuilt_clients_give_the_in_memory_aggregate():
    params = SecAggParams(dim=6, max_clients=4)
    registry, keys = enrol(range(4))
    rng = np.random.default_rng(0)
    updates = {c: rng.uniform(-0.5, 0.5, 6) for c in range(4)}
    kept = _round(params, registry, keys, updates, rebuild=False)
    rebuilt = _round(params, registry, keys, updates, rebuild=True)
    np.testing.assert_allclose(rebuilt, kept, atol=0)
    np.testing.assert_allclose(rebuilt, np.mean(list(updates.values()), axis=0), atol=1e-6)


def test_state_of_another_layout_is_refused():
    params = SecAggParams(dim=6, max_clients=4)
    registry, keys = enrol(range(4))
    data = secagg_state.dump(SecAggClient(params, 0, 1, [0, 1, 2], keys[1], registry), [0, 1, 2], None)
    with pytest.raises(secagg_state.StateFormatError):
        secagg_state.load(b"XXXX" + data[4:], params, keys[1], registry)
    with pytest.raises(secagg_state.StateFormatError):
        secagg_state.load(data + b"\x00", params, keys[1], registry)
    with pytest.raises(secagg_state.StateFormatError):
        secagg_state.load(data[:-3], params, keys[1], registry)


def test_enrolment_files_round_trip(tmp_path):
    folder = secagg_state.write_enrolment(3, tmp_path / "enrol")
    registry = secagg_state.read_registry(folder / "registry.json")
    from protocols import crypto

    for c in range(3):
        key = secagg_state.read_identity(folder / f"client-{c}.key")
        assert registry[c] == crypto.verify_key_bytes(key)
        assert (folder / f"client-{c}.key").stat().st_mode & 0o077 == 0
