"""Threshold CKKS with every client's state written to Flower records and rebuilt between messages gives the
in-process CKKSProtocol's opened mean (reproducible mode: the same draws in the same order)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")

from protocols.ckks import CKKSClient, CKKSProtocol, CKKSServer, RefusedError
from securefrl.config import load_config
from securefrl.flower import ckks_roles

DIM = 10


def _round_trip(setup, client, roster=None):
    arrays, config = ckks_roles.save_client(client, roster)
    return ckks_roles.load_client(setup, client.cid, arrays, config)


def test_rebuilt_ckks_roles_open_what_the_in_process_protocol_opens():
    cfg = load_config(overrides=["federation.n_clients=3", "protocol.name=ckks", "protocol.params.seed=7"])
    setup = ckks_roles.CKKSSetup(cfg, DIM)
    rng = np.random.default_rng(0)
    updates = {c: rng.uniform(-0.5, 0.5, DIM) for c in range(3)}
    ref = CKKSProtocol(DIM, n_clients=3, seed=7)
    ref.begin_round(0, [0, 1, 2])
    want = ref.open(ref.combine(0, {c: ref.protect(c, 0, u, 1.0) for c, u in updates.items()})).mean

    clients = {c: _round_trip(setup, CKKSClient(c, setup.params, DIM, setup.client_rng(c)))[0] for c in range(3)}
    roster = ckks_roles.decode_roster(ckks_roles.encode_roster({c: cl.enrolment for c, cl in clients.items()}), 3)
    inbox = {c: {} for c in clients}
    for c, cl in clients.items():
        blobs = ckks_roles.decode_blobs(ckks_roles.encode_blobs(cl.make_shares(roster, setup.threshold)), 3, 1 << 24)
        for rid, blob in blobs.items():
            inbox[rid][c] = blob
        clients[c], _ = _round_trip(setup, cl, roster)
    for c in clients:
        cl, _ = _round_trip(setup, clients[c], roster)
        for sender, blob in sorted(inbox[c].items()):
            cl.receive_share(sender, blob, roster)
        cl.finish_enrolment(setup.suite(roster), setup.threshold, setup.min_clients)
        clients[c], _ = _round_trip(setup, cl)
    server = CKKSServer(setup.suite(roster), setup.threshold, setup.min_clients)
    payloads = {}
    for c in clients:
        cl, _ = _round_trip(setup, clients[c])
        cl.begin_round(0)
        payloads[c] = cl.protect(0, updates[c], 1.0)
        clients[c], _ = _round_trip(setup, cl)
    agg = server.combine(0, payloads)
    sigs = {}
    for c in agg.included:
        sigs[c] = clients[c].sign_inclusion(0, agg.included)
        clients[c], _ = _round_trip(setup, clients[c])
    dec = sorted(clients)[: setup.threshold]
    partials = {d: clients[d].partial_decrypt(0, agg.included, ckks_roles.decode_signatures(
        ckks_roles.encode_signatures(sigs), 3), dec) for d in dec}
    got = server.finish(agg, agg.included, dec, partials).mean
    np.testing.assert_array_equal(got, want)
    with pytest.raises(RefusedError):  # a rebuilt client still refuses a second partial decryption this round
        _round_trip(setup, clients[dec[0]])[0].partial_decrypt(0, agg.included, sigs, dec)
