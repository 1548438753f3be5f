"""Update-poisoning attacks: what each one submits, its threat model, and a seeded robustness check
against the aggregation rules (including where the papers say the attack beats the defence)."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.base import AttackError, Knowledge, ThreatModel
from attacks.poisoning import (
    ALIE,
    ATTACKS,
    MinMax,
    alie_z,
    make_attack,
    min_max_gamma,
)
from securefrl.aggregators import make_rule
from securefrl.errors import ConfigError


def _round(seed: int, n: int = 15, f: int = 3, d: int = 20, mean: float = 1.0, std: float = 0.1):
    """Honest updates of one round: the first f rows belong to the malicious clients."""
    rng = np.random.default_rng(seed)
    x = rng.normal(mean, std, size=(n, d))
    return x[:f], x[f:], rng


# ---------------------------------------------------------------------------------------------------
# what each attack submits
# ---------------------------------------------------------------------------------------------------


def test_sign_flip_negates() -> None:
    own, _, rng = _round(0)
    np.testing.assert_array_equal(make_attack("sign_flip").craft(own, None, rng), -own)
    np.testing.assert_array_equal(make_attack("sign_flip", scale=2.0).craft(own, None, rng), -2.0 * own)
    assert make_attack("sign_flip").omniscient is False


def test_scaling_boosts_by_n_over_server_lr() -> None:
    own, _, rng = _round(0)
    np.testing.assert_allclose(make_attack("scaling", factor=5.0).craft(own, None, rng), 5.0 * own)
    np.testing.assert_allclose(make_attack("scaling", n_clients=10, server_lr=0.5).craft(own, None, rng), 20.0 * own)
    with pytest.raises(ConfigError, match="exactly one of factor or n_clients"):
        make_attack("scaling")
    with pytest.raises(ConfigError, match="exactly one of factor or n_clients"):
        make_attack("scaling", factor=2.0, n_clients=10)


def test_gaussian_replaces_or_adds_seeded_noise() -> None:
    own = np.ones((2, 20_000))
    attack = make_attack("gaussian", sigma=0.5)
    a = attack.craft(own, None, np.random.default_rng(3))
    b = attack.craft(5 * own, None, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)  # replacement ignores the update; same seed, same noise
    # 40 000 draws: the std of the sample mean is 0.5 / 200 = 0.0025, so 0.02 is an 8-sigma tolerance.
    assert abs(a.mean()) < 0.02 and abs(a.std() - 0.5) < 0.02
    c = make_attack("gaussian", sigma=0.5, additive=True).craft(own, None, np.random.default_rng(3))
    np.testing.assert_allclose(c - own, a)


def test_alie_z_follows_the_paper_formula() -> None:
    # n = 50, f = 12: s = floor(26) - 12 = 14, z = Phi^-1(36/50) = Phi^-1(0.72) = 0.5828.
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-4)
    # n = 15, f = 3: s = 5, z = Phi^-1(10/15) = 0.4307.
    assert alie_z(15, 3) == pytest.approx(0.4307, abs=1e-4)
    # n = 10, f = 1: s = 5 supporters are half the clients, z = Phi^-1(0.5) = 0.
    assert alie_z(10, 1) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match="alie needs f <= floor\\(n/2\\)"):
        alie_z(10, 6)


def test_alie_lands_at_mean_minus_z_std_of_the_honest_updates() -> None:
    own, honest, rng = _round(1)
    attack = make_attack("alie", n_clients=15, n_malicious=3)
    out = attack.craft(own, honest, rng)
    expected = honest.mean(axis=0) - alie_z(15, 3) * honest.std(axis=0)
    assert out.shape == own.shape
    for row in out:
        np.testing.assert_allclose(row, expected)
    assert attack.omniscient
    # Partial knowledge: the colluders estimate the statistics from their own honest updates.
    partial = ALIE(z=1.0, knowledge="partial")
    assert not partial.omniscient
    np.testing.assert_allclose(partial.craft(own, None, rng)[0], own.mean(axis=0) - own.std(axis=0))
    with pytest.raises(AttackError, match="needs at least 2 benign updates"):
        partial.craft(own[:1], None, rng)


@pytest.mark.parametrize("epsilon", [0.1, 100.0])
def test_ipm_is_minus_epsilon_times_the_honest_mean(epsilon: float) -> None:
    own, honest, rng = _round(2)
    out = make_attack("ipm", epsilon=epsilon).craft(own, honest, rng)
    for row in out:
        np.testing.assert_allclose(row, -epsilon * honest.mean(axis=0))


@pytest.mark.parametrize("perturbation", MinMax.PERTURBATIONS)
def test_min_max_stays_within_the_largest_honest_distance_and_is_maximal(perturbation: str) -> None:
    own, honest, rng = _round(3)
    attack = make_attack("min_max", perturbation=perturbation)
    out = attack.craft(own, honest, rng)
    max_pair = max(np.linalg.norm(honest - row, axis=1).max() for row in honest)
    for row in out:
        assert np.linalg.norm(honest - row, axis=1).max() <= max_pair + 1e-9
    # Maximal: a 0.1 % larger gamma breaks the constraint.
    gamma = attack.last_gamma
    assert gamma is not None and gamma > 0
    p = attack.perturbation_vector(honest)
    beyond = honest.mean(axis=0) + 1.001 * gamma * p
    assert np.linalg.norm(honest - beyond, axis=1).max() > max_pair
    # It moves away from the mean along -direction: the inner product with the mean drops.
    assert out[0] @ honest.mean(axis=0) < honest.mean(axis=0) @ honest.mean(axis=0)


def test_min_max_gamma_is_found_at_any_update_scale() -> None:
    # The paper's halving search from gamma_init = 10 cannot exceed 20; bracketing first fixes that.
    _, honest, _ = _round(4)
    p = -honest.mean(axis=0) / np.linalg.norm(honest.mean(axis=0))
    small = min_max_gamma(honest, p)
    large = min_max_gamma(1e4 * honest, p)
    assert large > 20
    assert large == pytest.approx(1e4 * small, rel=1e-4)


# ---------------------------------------------------------------------------------------------------
# threat models, registry, input checks
# ---------------------------------------------------------------------------------------------------


OMNISCIENT = {"alie": {"n_clients": 15, "n_malicious": 3}, "ipm": {}, "min_max": {}}
LOCAL = {"sign_flip": {}, "scaling": {"factor": 3.0}, "gaussian": {}}


def test_every_attack_states_its_threat_model() -> None:
    assert set(ATTACKS) == set(OMNISCIENT) | set(LOCAL)
    for name, params in {**OMNISCIENT, **LOCAL}.items():
        attack = make_attack(name, **params)
        assert attack.omniscient is (name in OMNISCIENT)
        tm = attack.threat_model
        assert isinstance(tm, ThreatModel) and "own submitted updates" in tm.controls
        assert tm.knowledge is (Knowledge.OMNISCIENT if name in OMNISCIENT else Knowledge.OWN)
        assert "Threat model" in (type(attack).__doc__ or "")


@pytest.mark.parametrize("name", sorted(OMNISCIENT))
def test_omniscient_attacks_refuse_to_run_blind(name: str) -> None:
    own, _, rng = _round(5)
    with pytest.raises(AttackError, match="is omniscient: it needs honest_updates"):
        make_attack(name, **OMNISCIENT[name]).craft(own, None, rng)


def test_unknown_names_and_parameters_list_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"unknown attack 'lie' \(did you mean 'alie'\?\); "
                                          "known: alie, gaussian, ipm, min_max"):
        make_attack("lie")
    with pytest.raises(ConfigError, match="ipm does not take parameter\\(s\\) eps; allowed: epsilon, knowledge"):
        make_attack("ipm", eps=0.1)
    with pytest.raises(ConfigError, match=r"attack\.min_max\.perturbation: must be one of"):
        make_attack("min_max", perturbation="random")
    with pytest.raises(ConfigError, match=r"attack\.ipm\.knowledge: must be one of"):
        make_attack("ipm", knowledge="psychic")


def test_bad_inputs_are_refused() -> None:
    own, honest, rng = _round(6)
    attack = make_attack("ipm")
    with pytest.raises(AttackError, match="own_updates must have shape"):
        attack.craft(own[0], honest, rng)
    with pytest.raises(AttackError, match="must have d=20 columns"):
        attack.craft(own, honest[:, :5], rng)
    bad = honest.copy()
    bad[0, 0] = np.nan
    with pytest.raises(AttackError, match="honest_updates holds NaN or Inf"):
        attack.craft(own, bad, rng)
    with pytest.raises(AttackError, match=r"rng must be a numpy\.random\.Generator"):
        attack.craft(own, honest, 0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# seeded robustness check: attacks against aggregation rules
# ---------------------------------------------------------------------------------------------------

N, F = 15, 3
SEEDS = range(5)
COUNTING_RULES = ("median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median")


def _deviations(attack_name: str, seed: int, **params: float) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Distance of each rule's aggregate to the honest clients' mean, and what Krum-type rules selected."""
    own, honest, rng = _round(seed, N, F)
    malicious = make_attack(attack_name, **params).craft(own, honest, rng)
    x = np.vstack([malicious, honest])  # rows 0..F-1 are the attackers
    truth = honest.mean(axis=0)
    dev, selected = {}, {}
    for name in ("fedavg", *COUNTING_RULES):
        res = make_rule(name, N, F)(x)
        dev[name] = float(np.linalg.norm(res.aggregate - truth))
        selected[name] = res.info.get("selected", [])
    # Centred clipping needs a reference: last round's aggregate, here the honest mean plus round noise.
    reference = truth + rng.normal(0.0, 0.1 / np.sqrt(N), size=truth.shape)
    res = make_rule("centered_clipping", N, F, n_iters=3)(x, state=reference)
    dev["centered_clipping"] = float(np.linalg.norm(res.aggregate - truth))
    return dev, selected


@pytest.mark.parametrize("seed", SEEDS)
def test_sign_flip_moves_the_mean_far_more_than_robust_rules(seed: int) -> None:
    dev, selected = _deviations("sign_flip", seed)
    # Expected mean deviation 2 f/n * ||mu|| = 0.4 * sqrt(20) = 1.79; one honest row is ~0.45 from the mean.
    assert dev["fedavg"] > 1.5
    for name in (*COUNTING_RULES, "centered_clipping"):
        assert dev[name] < 0.3 * dev["fedavg"], name
    for name in ("krum", "multi_krum"):
        assert not set(selected[name]) & set(range(F)), name
    # Bulyan's late Krum iterations run on a small remaining set in which the f flipped rows (as tightly
    # clustered as the honest ones) can win a place; its coordinate-wise step is what bounds them, which
    # the deviation check above covers.


@pytest.mark.parametrize("seed", SEEDS)
def test_alie_beats_outlier_based_rules_as_baruch_et_al_report(seed: int) -> None:
    # ALIE hides inside the honest spread: the robust rules keep the crafted value and, because they also
    # discard honest rows, end up *further* from the honest mean than the plain mean does. Krum selects the
    # attackers' point outright (the f identical copies are each other's nearest neighbours).
    dev, selected = _deviations("alie", seed, n_clients=N, n_malicious=F)
    assert selected["krum"][0] in range(F)
    for name in ("krum", "median", "trimmed_mean", "bulyan"):
        assert dev[name] > dev["fedavg"], name
    # What the mean suffers is small: f/n * z * ||sigma|| = 0.2 * 0.43 * 0.1 * sqrt(20) = 0.04.
    assert dev["fedavg"] < 0.06


@pytest.mark.parametrize("seed", SEEDS)
def test_ipm_small_epsilon_wins_krum_selection_when_variance_dominates(seed: int) -> None:
    # Xie et al.: epsilon = 0.1 against Krum, in the SGD regime where the honest noise dwarfs the mean.
    own, honest, rng = _round(seed, N, F, d=50, mean=0.1, std=1.0)
    x = np.vstack([make_attack("ipm", epsilon=0.1).craft(own, honest, rng), honest])
    truth = honest.mean(axis=0)
    krum = make_rule("krum", N, F)(x)
    assert krum.info["selected"][0] in range(F)
    assert krum.aggregate @ truth < 0  # the inner product with the true direction is negative
    assert make_rule("fedavg", N, F)(x).aggregate @ truth > 0  # the mean barely notices epsilon = 0.1


@pytest.mark.parametrize("seed", SEEDS)
def test_ipm_large_epsilon_flips_the_mean_and_drags_the_median(seed: int) -> None:
    own, honest, rng = _round(seed, N, F, d=50, mean=0.1, std=1.0)
    clean = np.vstack([own, honest])
    x = np.vstack([make_attack("ipm", epsilon=100.0).craft(own, honest, rng), honest])
    truth = honest.mean(axis=0)
    assert make_rule("fedavg", N, F)(x).aggregate @ truth < 0
    assert make_rule("krum", N, F)(x).info["selected"][0] >= F  # far-away attackers are not selected
    # Every median coordinate moves against the honest mean's sign (or stays), never towards it.
    shift = make_rule("median", N, F)(x).aggregate - make_rule("median", N, F)(clean).aggregate
    assert np.all(shift * np.sign(truth) <= 0)
    assert np.any(shift != 0)
