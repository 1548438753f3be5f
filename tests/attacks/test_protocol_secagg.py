"""Protocol attacks on SecAgg+: each breaks the weakened (semi-honest) target and fails against the default."""

from __future__ import annotations

import pytest

from attacks.protocol import PROTOCOL_ATTACKS, load_all

load_all()
SECAGG_ATTACKS = ["secagg_key_substitution", "secagg_share_forgery", "secagg_replay", "weight_amplification",
                  "secagg_graph_isolation"]


@pytest.mark.parametrize("name", SECAGG_ATTACKS)
def test_attack_succeeds_against_the_weakened_protocol(name):
    out = PROTOCOL_ATTACKS[name]().run(weakened=True, seed=0)
    assert out.succeeded, out.reason
    assert "default" not in out.target


@pytest.mark.parametrize("name", SECAGG_ATTACKS)
def test_attack_fails_against_the_default_with_a_reason(name):
    out = PROTOCOL_ATTACKS[name]().run(weakened=False, seed=1)
    assert not out.succeeded, out.reason
    assert out.reason and "default" in out.target


def test_key_substitution_recovers_the_individual_update_only_when_weakened():
    weak = PROTOCOL_ATTACKS["secagg_key_substitution"]().run(True, 2)
    assert weak.metric < 1e-6  # the victim's update, to quantization error
    strong = PROTOCOL_ATTACKS["secagg_key_substitution"]().run(False, 2)
    assert "SignatureError" in strong.reason


def test_share_forgery_names_the_forger_and_keeps_the_sum_exact():
    out = PROTOCOL_ATTACKS["secagg_share_forgery"]().run(False, 3)
    assert out.details["rejected"] == [1] and out.metric < 1e-6


def test_every_secagg_attack_states_its_threat_model():
    for name in SECAGG_ATTACKS:
        doc = PROTOCOL_ATTACKS[name].threat_model
        assert "Threat model" in doc and "Defence" in doc and "Not covered" in doc


def test_weight_amplification_blows_the_mean_up_only_when_weights_travel_unchecked():
    weak = PROTOCOL_ATTACKS["weight_amplification"]().run(True, 4)
    assert weak.metric > 1e6 and weak.details["total_weight"] < 1e-6
    strong = PROTOCOL_ATTACKS["weight_amplification"]().run(False, 4)
    assert "round dropped" in strong.reason


@pytest.mark.parametrize("name", ["dp_noise_regeneration", "dpsgd_noise_regeneration", "dp_membership_vs_server"])
def test_dp_attacks_break_the_weakened_config_and_not_the_default(name):
    weak = PROTOCOL_ATTACKS[name]().run(weakened=True, seed=0)
    strong = PROTOCOL_ATTACKS[name]().run(weakened=False, seed=0)
    assert weak.succeeded, weak.reason
    assert not strong.succeeded and strong.reason, strong.reason


def test_membership_attack_exceeds_the_amplified_claim_but_not_the_server_epsilon():
    out = PROTOCOL_ATTACKS["dp_membership_vs_server"]().run(weakened=True, seed=1)
    assert out.details["claimed_epsilon"] <= 8.0 < out.metric <= out.details["epsilon_server"]


def test_the_key_book_digest_takes_the_graph_out_of_the_servers_hands():
    # With the weak degree, a seed the server found offline exposes a client only while the digest is left out.
    from dataclasses import replace

    from protocols.secagg import SecAggParams
    from protocols.secagg.params import logarithmic_degree

    n, corrupt = 30, frozenset(range(20, 30))
    weak = SecAggParams(dim=4, max_clients=n, neighbours=logarithmic_degree(n), graph_from_key_book=False)

    def exposed(plan):
        return [u for u in plan.roster if u not in corrupt and len(plan.neighbours[u] & corrupt) >= plan.threshold]

    found = next(g for g in range(4096) if exposed(replace(weak, graph_seed=g).plan(1, range(n))))
    chosen = replace(weak, graph_seed=found)
    assert exposed(chosen.plan(1, range(n), b"any key-book digest"))  # ignored when graph_from_key_book=False
    bound = replace(chosen, graph_from_key_book=True)
    digests = [bytes([i]) * 32 for i in range(20)]
    hits = sum(bool(exposed(bound.plan(1, range(n), d))) for d in digests)
    assert hits <= 2  # ~0.8% of graphs expose someone at this degree: the chosen seed no longer helps
