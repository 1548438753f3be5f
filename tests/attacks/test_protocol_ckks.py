"""The curious-server CKKS attacks succeed against the old behaviour and fail against the defaults."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.protocol import PROTOCOL_ATTACKS, load_all
from attacks.protocol.ckks import DIM, _round, _updates, recover_updates
from protocols.ckks import CKKSProtocol


@pytest.fixture(scope="module", autouse=True)
def _registry():
    load_all()


@pytest.mark.parametrize("name", ["ckks_key_recovery", "ckks_single_open"])
def test_attack_succeeds_on_the_unsafe_shared_key_release(name):
    outcome = PROTOCOL_ATTACKS[name]().run(weakened=True, seed=0)
    assert outcome.succeeded, outcome.reason
    assert outcome.metric < 1e-6  # individual updates recovered essentially exactly


@pytest.mark.parametrize("name", ["ckks_key_recovery", "ckks_single_open"])
def test_attack_fails_on_the_defaults(name):
    outcome = PROTOCOL_ATTACKS[name]().run(weakened=False, seed=0)
    assert not outcome.succeeded
    assert outcome.metric > 1.0  # not a near miss: what comes out is garbage or refused
    assert "default" in outcome.target and PROTOCOL_ATTACKS[name].threat_model


def test_single_open_default_refuses_k1_and_garbles_the_rest():
    outcome = PROTOCOL_ATTACKS["ckks_single_open"]().run(weakened=False, seed=1)
    assert "k=1" in outcome.details["refusals"]
    assert all(err > 1.0 for err in outcome.details["errors"].values())


def test_flooding_alone_stops_key_recovery_even_with_one_shared_key():
    proto = CKKSProtocol(DIM, n_clients=6, keys="shared", seed=2)  # shared key, safe (flooded float32) release
    truth = _updates(2)
    opened = proto.open(_round(proto, 0, truth))

    recovered = recover_updates(proto.server, 0, opened)

    assert np.max(np.abs(opened.mean - np.mean(list(truth.values()), axis=0))) < 1e-6  # the mean is right
    assert min(np.max(np.abs(recovered[c] - truth[c])) for c in truth) > 1.0
