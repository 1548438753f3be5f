"""Aggregation rules: known answers, preconditions, and NaN/Inf/huge safety for every rule."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.plaintext import PlaintextProtocol
from securefrl.aggregators import (
    RULES,
    AggregationError,
    AggregationRule,
    FedAvg,
    check_protocol_compatible,
    make_rule,
    register_rule,
)
from securefrl.errors import ConfigError

# ---------------------------------------------------------------------------------------------------
# known answers
# ---------------------------------------------------------------------------------------------------


def test_fedavg_is_the_weighted_mean_and_runs_under_secure_aggregation() -> None:
    rule = make_rule("fedavg", 2)
    res = rule(np.array([[1.0, 0.0], [3.0, 2.0]]), np.array([1.0, 3.0]))
    np.testing.assert_allclose(res.aggregate, [2.5, 1.5])
    assert rule.requires_individual_updates is False
    assert all(RULES[name].requires_individual_updates for name in RULES if name != "fedavg")


def test_median_is_coordinate_wise() -> None:
    odd = np.array([[1.0, 5.0], [2.0, -1.0], [10.0, 0.0]])
    np.testing.assert_allclose(make_rule("median", 3, 1)(odd).aggregate, [2.0, 0.0])
    even = np.array([[0.0], [1.0], [2.0], [10.0]])
    np.testing.assert_allclose(make_rule("median", 4, 1)(even).aggregate, [1.5])


def test_median_ignores_reported_weights() -> None:
    x = np.array([[0.0], [1.0], [100.0]])
    res = make_rule("median", 3, 1)(x, np.array([1.0, 1.0, 1e9]))
    np.testing.assert_allclose(res.aggregate, [1.0])


def test_trimmed_mean_drops_the_extremes_per_coordinate() -> None:
    # Column 0 has its extremes in rows 0 and 4, column 1 in rows 2 and 3.
    x = np.array([[-100.0, 1.0], [1.0, 2.0], [2.0, -50.0], [3.0, 70.0], [100.0, 3.0]])
    res = make_rule("trimmed_mean", 5, 1)(x)
    np.testing.assert_allclose(res.aggregate, [2.0, 2.0])
    assert res.info["trimmed_per_side"] == 1
    # beta = 0.4 trims floor(0.4 * 5) = 2 per side: only the median value is left.
    res = make_rule("trimmed_mean", 5, 1, beta=0.4)(x)
    assert res.info["trimmed_per_side"] == 2
    np.testing.assert_allclose(res.aggregate, [2.0, 2.0])


def test_trimmed_mean_always_trims_at_least_f_when_fewer_updates_arrive() -> None:
    # Built for n = 10 with beta = 0.2 (2 per side); 7 arrive: floor(0.2 * 7) = 1 < f = 2, so 2 are trimmed.
    x = np.array([[-100.0], [-90.0], [1.0], [2.0], [3.0], [90.0], [100.0]])
    res = make_rule("trimmed_mean", 10, 2, beta=0.2)(x)
    assert res.info["trimmed_per_side"] == 2
    np.testing.assert_allclose(res.aggregate, [2.0])


# Six 1-D points (embedded in 3-D): four clustered, two far away. With f = 1 each score sums the
# n - f - 2 = 3 smallest squared distances; worked out by hand:
KRUM_POINTS = np.array([0.0, 0.1, 0.25, 0.3, 10.0, 20.0])
KRUM_SCORES_CLUSTER = [0.1625, 0.0725, 0.0875, 0.1325]


def _embed(values: np.ndarray) -> np.ndarray:
    x = np.zeros((values.size, 3))
    x[:, 0] = values
    x[:, 2] = 7.0
    return x


def test_krum_picks_the_most_central_clustered_update() -> None:
    res = make_rule("krum", 6, 1)(_embed(KRUM_POINTS))
    assert res.info["selected"] == [1]
    np.testing.assert_allclose(res.aggregate, [0.1, 0.0, 7.0])
    np.testing.assert_allclose(res.info["scores"][:4], KRUM_SCORES_CLUSTER, atol=1e-9)


def test_multi_krum_averages_the_m_best_scores() -> None:
    x = _embed(KRUM_POINTS)
    res = make_rule("multi_krum", 6, 1, m=2)(x)
    assert res.info["selected"] == [1, 2]
    np.testing.assert_allclose(res.aggregate, [0.175, 0.0, 7.0])
    # Default m = n - f = 5 keeps everything but the farthest point (20).
    res = make_rule("multi_krum", 6, 1)(x)
    assert sorted(res.info["selected"]) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(res.aggregate[0], np.mean(KRUM_POINTS[:5]))


def test_bulyan_selects_by_iterated_krum_then_averages_around_the_median() -> None:
    # n = 7, f = 1: theta = 5 rows are chosen by iterated Krum, which (worked by hand) takes the values
    # 2, 3, 1, 4, 0 and never the outlier 100 (or 5); beta = 3 values closest to the median 2 are 1, 2, 3.
    values = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 100.0])
    x = np.column_stack([values, np.full(7, 7.0)])
    res = make_rule("bulyan", 7, 1)(x)
    assert sorted(res.info["selected"]) == [0, 1, 2, 3, 4]
    assert res.info["beta"] == 3
    np.testing.assert_allclose(res.aggregate, [2.0, 7.0])


def test_geometric_median_known_points() -> None:
    rule = make_rule("geometric_median", 3, 1)
    # On a line the geometric median is the ordinary median.
    np.testing.assert_allclose(rule(np.array([[0.0], [1.0], [10.0]])).aggregate, [1.0], atol=1e-4)
    # The Fermat point of an equilateral triangle is its centroid.
    tri = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
    np.testing.assert_allclose(rule(tri).aggregate, tri.mean(axis=0), atol=1e-6)
    # RFA is weighted: a point holding more than half the weight is the median.
    res = rule(np.array([[0.0], [1.0], [10.0]]), np.array([1.0, 1.0, 5.0]))
    np.testing.assert_allclose(res.aggregate, [10.0], atol=1e-4)


def test_norm_bounding_clips_each_update_then_averages() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.5]])
    res = make_rule("norm_bounding", 2, max_norm=1.0)(x)
    np.testing.assert_allclose(res.aggregate, [0.3, 0.65])
    assert res.info["clipped"] == [0]
    # Adaptive bound: the median norm (2.75) of the round.
    res = make_rule("norm_bounding", 2)(x)
    assert res.info["norm_bound"] == pytest.approx(2.75)


def test_centered_clipping_clips_around_the_state_and_returns_it() -> None:
    x = np.array([[3.0, 0.0], [0.0, 0.5]])
    rule = make_rule("centered_clipping", 2, tau=1.0)
    first = rule(x)  # reference 0: [3, 0] is clipped to [1, 0]
    np.testing.assert_allclose(first.aggregate, [0.5, 0.25])
    np.testing.assert_allclose(first.state, first.aggregate)
    second = rule(x, state=first.state)
    d1 = np.array([2.5, -0.25]) / np.hypot(2.5, 0.25)  # clipped to norm 1
    d2 = np.array([-0.5, 0.25])  # norm 0.56 < 1: kept
    np.testing.assert_allclose(second.aggregate, [0.5, 0.25] + (d1 + d2) / 2)
    with pytest.raises(AggregationError, match="state must be a finite vector of shape"):
        rule(x, state=np.zeros(3))


# ---------------------------------------------------------------------------------------------------
# preconditions and configuration errors
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n", "f", "params", "message"),
    [
        ("krum", 6, 2, {}, "krum needs n > 2f+2, got n=6, f=2"),
        ("multi_krum", 4, 1, {}, "multi_krum needs n > 2f+2, got n=4, f=1"),
        ("bulyan", 10, 2, {}, "bulyan needs n >= 4f+3, got n=10, f=2"),
        ("median", 4, 2, {}, "median needs n > 2f, got n=4, f=2"),
        ("geometric_median", 6, 3, {}, "geometric_median needs n > 2f, got n=6, f=3"),
        ("centered_clipping", 2, 1, {}, "centered_clipping needs n > 2f, got n=2, f=1"),
        ("trimmed_mean", 10, 3, {"beta": 0.2}, "trimmed_mean needs beta >= f/n, got beta=0.2, n=10, f=3"),
        ("trimmed_mean", 10, 1, {"beta": 0.5}, "trimmed_mean needs 0 <= beta < 0.5"),
        ("trimmed_mean", 4, 2, {}, "trimmed_mean needs 2*k < n"),
        ("multi_krum", 7, 2, {"m": 6}, "multi_krum needs 1 <= m <= n - f, got m=6, n=7, f=2"),
        ("fedavg", 3, 3, {}, "fedavg needs f < n"),
    ],
)
def test_preconditions_are_refused_at_construction(
    name: str, n: int, f: int, params: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("+", r"\+")) as err:
        make_rule(name, n, f, **params)
    assert isinstance(err.value, ValueError)
    assert err.value.field.startswith("aggregator")


@pytest.mark.parametrize(
    ("name", "n", "f"), [("krum", 7, 2), ("bulyan", 11, 2), ("median", 5, 2), ("trimmed_mean", 5, 2)]
)
def test_boundary_of_each_precondition_is_accepted(name: str, n: int, f: int) -> None:
    assert make_rule(name, n, f).n_malicious == f


def test_precondition_is_rechecked_when_fewer_updates_arrive() -> None:
    rule = make_rule("krum", 7, 2)
    with pytest.raises(AggregationError, match="krum needs n > 2f\\+2, got n=6, f=2"):
        rule(np.ones((6, 3)))


def test_robust_rules_are_refused_with_protocols_that_hide_updates() -> None:
    class SumOnly(PlaintextProtocol):
        """Stands in for a summing protocol (CKKS, SecAgg): the server sees only the aggregate."""

        name = "sum_only"
        reveals_individual_updates = False

    check_protocol_compatible(make_rule("krum", 7, 2), PlaintextProtocol(4))
    check_protocol_compatible(make_rule("fedavg", 7), SumOnly(4))
    with pytest.raises(ConfigError, match="krum needs the individual updates, but protocol 'sum_only'"):
        check_protocol_compatible(make_rule("krum", 7, 2), SumOnly(4))


def test_unknown_rule_and_parameter_name_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"unknown aggregation rule 'krumm' \(did you mean 'krum'\?\); "
                                          "known: bulyan, centered_clipping"):
        make_rule("krumm", 7, 1)
    with pytest.raises(ConfigError, match="krum does not take parameter\\(s\\) beta; allowed: huge_abs, huge_ratio"):
        make_rule("krum", 7, 1, beta=0.1)
    with pytest.raises(ConfigError, match=r"aggregator\.n_clients: must be an integer >= 1"):
        make_rule("median", True, 0)
    with pytest.raises(ConfigError, match=r"aggregator\.tau: must be a positive finite number"):
        make_rule("centered_clipping", 5, 1, tau=-1.0)


def test_bad_round_input_is_refused() -> None:
    rule = make_rule("fedavg", 3)
    with pytest.raises(AggregationError, match="shape \\(n, d\\)"):
        rule(np.ones(3))
    with pytest.raises(AggregationError, match="weights must have shape \\(3,\\)"):
        rule(np.ones((3, 2)), np.ones(2))
    with pytest.raises(AggregationError, match="weights must be finite and >= 0"):
        rule(np.ones((3, 2)), np.array([1.0, -1.0, 1.0]))
    with pytest.raises(AggregationError, match="all have weight 0"):
        rule(np.ones((3, 2)), np.zeros(3))


def test_register_rule_makes_a_user_rule_buildable() -> None:
    class FirstRow(AggregationRule):
        """Test rule: always the first usable row."""

        name = "first_row"

        def _aggregate(self, x, w, f, state):  # type: ignore[no-untyped-def]
            return x[0].copy(), {}, None

    register_rule(FirstRow)
    try:
        res = make_rule("first_row", 3)(np.array([[np.nan], [2.0], [3.0]]))
        np.testing.assert_allclose(res.aggregate, [2.0])
        with pytest.raises(ConfigError, match="already registered"):
            register_rule(type("Other", (FedAvg,), {"name": "first_row"}))
    finally:
        RULES.unregister("first_row")


# ---------------------------------------------------------------------------------------------------
# safety: NaN, Inf and huge rows are never used, the output is always finite
# ---------------------------------------------------------------------------------------------------

N, F, D = 15, 3, 6  # bulyan needs n >= 4f + 3 = 15


def _honest(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(1.0, 0.1, size=(N, D))


@pytest.mark.parametrize("name", sorted(RULES))
def test_nan_inf_and_huge_rows_are_dropped_for_every_rule(name: str) -> None:
    x = _honest(0)
    x[0, 2] = np.nan
    x[4] = np.inf
    x[6, 0] = -np.inf
    x[9] = 1e30  # finite but absurd
    x[12, 5] = 1e200  # squaring this overflows float64
    bad = {0, 4, 6, 9, 12}
    res = make_rule(name, N, F)(x, np.ones(N))
    assert set(res.dropped) == bad
    assert not bad & set(res.included)
    assert not bad & set(res.info.get("selected", []))
    assert np.all(np.isfinite(res.aggregate))
    honest_mean = np.delete(x, sorted(bad), axis=0).mean(axis=0)
    # Every rule lands near the honest cluster (spread 0.1 per coordinate); centred clipping starts at 0
    # with the median distance as radius, so it recovers the mean of the honest rows exactly.
    assert np.linalg.norm(res.aggregate - honest_mean) < 0.5


@pytest.mark.parametrize("name", sorted(RULES))
def test_a_single_huge_row_never_moves_the_aggregate(name: str) -> None:
    x = _honest(1)
    x[3] *= 1e9  # a scaled row: 1e9 times the median norm, beyond huge_ratio = 1e6
    res = make_rule(name, N, F)(x)
    assert 3 in res.dropped and "median norm" in res.dropped[3]
    assert res.info["f_effective"] == F - 1
    assert np.all(np.isfinite(res.aggregate))
    assert np.linalg.norm(res.aggregate - np.delete(x, 3, axis=0).mean(axis=0)) < 0.5


def test_only_unusable_rows_is_an_error_not_a_nan() -> None:
    x = np.full((5, 3), np.nan)
    with pytest.raises(AggregationError, match="all 5 updates were dropped"):
        make_rule("median", 5, 1)(x)


def test_huge_row_is_dropped_even_when_every_honest_update_is_zero() -> None:
    x = np.zeros((5, 2))
    x[2] = 1e30
    res = make_rule("fedavg", 5)(x)
    assert 2 in res.dropped and "huge_abs" in res.dropped[2]
    np.testing.assert_array_equal(res.aggregate, [0.0, 0.0])
