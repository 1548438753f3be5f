"""Empirical privacy audit: sound for a correctly noised mechanism, and catches under-noising."""

from __future__ import annotations

import math

import numpy as np
import pytest

from securefrl.privacy import (
    PrivacyAccountant,
    audit_gaussian_mechanism,
    clopper_pearson_upper,
    epsilon_lower_bound,
    gaussian_mechanism_epsilon,
)

pytestmark = pytest.mark.filterwarnings("ignore::securefrl.privacy.SeededNoiseWarning")

DELTA = 1e-5


def test_clopper_pearson_upper_bound_known_values() -> None:
    n, alpha = 200, 0.05
    # k = 0 has the closed form 1 - alpha^(1/n); k = n gives 1.
    assert float(clopper_pearson_upper(0, n, alpha)) == pytest.approx(1 - alpha ** (1 / n), rel=1e-10)
    assert float(clopper_pearson_upper(n, n, alpha)) == 1.0
    bounds = clopper_pearson_upper(np.arange(n + 1), n, alpha)
    assert np.all(np.diff(bounds) > 0)
    assert np.all(bounds >= np.arange(n + 1) / n)


def test_clopper_pearson_covers_true_rate_at_stated_level() -> None:
    # Seed 41; 2000 binomial experiments with p=0.1, n=100. Coverage must be >= 95% up to sampling error (3 sd).
    rng = np.random.default_rng(41)
    k = rng.binomial(100, 0.1, size=2000)
    coverage = float(np.mean(clopper_pearson_upper(k, 100, 0.05) >= 0.1))
    assert coverage >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / 2000)


def test_identical_worlds_give_no_evidence() -> None:
    rng = np.random.default_rng(42)
    eps, *_ = epsilon_lower_bound(rng.normal(size=4000), rng.normal(size=4000), DELTA)
    assert eps < 0.3


@pytest.mark.parametrize("placement", ["central", "distributed", "local"])
def test_correctly_noised_mechanism_stays_below_accountant_epsilon(placement: str) -> None:
    z = 2.0
    result = audit_gaussian_mechanism(1.0, z, 5000, np.random.default_rng(43), DELTA, placement=placement)  # type: ignore[arg-type]
    accountant = PrivacyAccountant("rdp")
    accountant.step(z, 1.0)
    assert result.claimed_epsilon == accountant.epsilon(DELTA)
    assert not result.violates
    # Sound: below the exact epsilon of the Gaussian mechanism, which is below the accountant's bound.
    assert result.epsilon_lower_bound <= gaussian_mechanism_epsilon(z, DELTA) <= result.claimed_epsilon


def test_audit_has_power_on_a_weakly_noised_mechanism() -> None:
    # z = 1: exact epsilon ~ 4.4 at delta 1e-5; the audit should prove well above 1 with 10^4 trials per world.
    result = audit_gaussian_mechanism(1.0, 1.0, 10_000, np.random.default_rng(44), DELTA)
    assert 1.0 < result.epsilon_lower_bound <= gaussian_mechanism_epsilon(1.0, DELTA)


def test_under_noised_mechanism_is_flagged_as_violating_its_claim() -> None:
    z = 2.0
    result = audit_gaussian_mechanism(
        1.0, z, 10_000, np.random.default_rng(45), DELTA, mechanism_noise_multiplier=z / 4
    )
    assert result.violates
    assert result.epsilon_lower_bound > result.claimed_epsilon


def test_explicit_claim_is_used() -> None:
    result = audit_gaussian_mechanism(1.0, 0.5, 2000, np.random.default_rng(46), DELTA, claimed_epsilon=0.1)
    assert result.claimed_epsilon == 0.1
    assert result.violates
