"""Accounting through Opacus's RDP / PRV accountants, noise calibration, budget and checkpoints."""

from __future__ import annotations

import json

import pytest

from securefrl.errors import ConfigError
from securefrl.privacy import (
    PrivacyAccountant,
    PrivacyBudget,
    PrivacyBudgetExceededError,
    gaussian_mechanism_epsilon,
    noise_multiplier_for,
)

# Opacus's own tests (opacus/tests/accountants_test.py) compare with assertAlmostEqual, i.e. 7 decimal places.
PLACES = 7


def test_rdp_golden_value_from_opacus_tests() -> None:
    # sigma=1.5, q=0.04, steps=int(90 / 0.04)=2250, delta=1e-5 -> 7.32911117143
    bulk = PrivacyAccountant("rdp")
    bulk.step(1.5, 0.04, steps=2250)
    one_by_one = PrivacyAccountant("rdp")
    for _ in range(2250):
        one_by_one.step(1.5, 0.04)
    assert round(bulk.epsilon(1e-5) - 7.32911117143, PLACES) == 0
    assert one_by_one.epsilon(1e-5) == bulk.epsilon(1e-5)
    assert one_by_one.history == ((1.5, 0.04, 2250),)


def test_prv_golden_value_from_opacus_tests() -> None:
    # Opacus's PRV test uses steps=int(90 // 0.04), which is 2249 (floor division of floats), not 2250.
    accountant = PrivacyAccountant("prv")
    accountant.step(1.5, 0.04, steps=int(90 // 0.04))
    assert accountant.steps == 2249
    assert round(accountant.epsilon(1e-5) - 6.777395712150674, PLACES) == 0


def test_prv_matches_exact_gaussian_mechanism_and_rdp_is_looser() -> None:
    # One full-participation step is the plain Gaussian mechanism, whose exact epsilon is known
    # (Balle & Wang 2018); PRV returns an upper bound within its eps_error=0.01 mesh, RDP a looser one.
    exact = gaussian_mechanism_epsilon(1.0, 1e-5)
    prv, rdp = PrivacyAccountant("prv"), PrivacyAccountant("rdp")
    for acc in (prv, rdp):
        acc.step(1.0, 1.0)
    with pytest.warns(RuntimeWarning):  # Opacus's PRV evaluates log(1 - q) = log(0) at q = 1
        eps_prv = prv.epsilon(1e-5)
    assert exact <= eps_prv <= exact + 0.03
    assert rdp.epsilon(1e-5) > eps_prv


@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
def test_epsilon_identical_after_json_save_and_restore(mechanism: str) -> None:
    accountant = PrivacyAccountant(mechanism)  # type: ignore[arg-type]
    accountant.step(1.2, 0.01, steps=300)  # client level: 10 of 1000 clients per round
    accountant.step(0.9, 0.02, steps=100)
    restored = PrivacyAccountant.from_state_dict(json.loads(json.dumps(accountant.state_dict())))
    assert restored.epsilon(1e-5) == accountant.epsilon(1e-5)
    assert restored.history == accountant.history
    # Resuming continues exactly as an uninterrupted run.
    accountant.step(0.9, 0.02, steps=50)
    restored.step(0.9, 0.02, steps=50)
    assert restored.epsilon(1e-5) == accountant.epsilon(1e-5)
    assert restored.history == ((1.2, 0.01, 300), (0.9, 0.02, 150))


# Opacus's bisection first probes sigma=20, where RDP's largest order is optimal and it says so; harmless.
@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning")
@pytest.mark.parametrize(("mechanism", "target"), [("rdp", 2.0), ("rdp", 8.0), ("prv", 3.0)])
def test_noise_multiplier_for_inverts_epsilon(mechanism: str, target: float) -> None:
    delta, q, steps, tol = 1e-5, 0.01, 1000, 0.01
    z = noise_multiplier_for(target, delta, q, steps, accountant=mechanism, epsilon_tolerance=tol)  # type: ignore[arg-type]
    accountant = PrivacyAccountant(mechanism)  # type: ignore[arg-type]
    accountant.step(z, q, steps)
    assert target - tol <= accountant.epsilon(delta) <= target


def test_budget_refuses_the_step_that_would_exceed() -> None:
    budget = PrivacyBudget(epsilon=2.0, delta=1e-5)  # client level: 20 of 1000 clients per round
    z, q = 1.0, 0.02
    allowed = budget.remaining_steps(z, q)
    assert allowed > 1
    budget.spend(z, q, steps=allowed - 1)
    assert not budget.would_exceed(z, q)
    budget.spend(z, q)
    spent = budget.spent()
    assert spent <= 2.0
    assert budget.would_exceed(z, q)
    with pytest.raises(PrivacyBudgetExceededError) as err:
        budget.spend(z, q)
    assert err.value.epsilon_after > 2.0
    assert budget.spent() == spent  # the refused step was not recorded
    assert budget.accountant.steps == allowed
    assert budget.remaining_steps(z, q) == 0


def test_budget_checkpoint_round_trip() -> None:
    budget = PrivacyBudget(epsilon=5.0, delta=1e-6, accountant=PrivacyAccountant("rdp"))
    budget.spend(1.1, 0.05, steps=40)
    restored = PrivacyBudget.from_state_dict(json.loads(json.dumps(budget.state_dict())))
    assert (restored.epsilon, restored.delta, restored.spent()) == (budget.epsilon, budget.delta, budget.spent())


def test_empty_accountant_has_spent_nothing() -> None:
    assert PrivacyAccountant().epsilon(1e-5) == 0.0


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: PrivacyAccountant("gdp"), "accountant"),  # type: ignore[arg-type]
        (lambda: PrivacyAccountant().step(0.0, 0.1), "noise_multiplier"),
        (lambda: PrivacyAccountant().step(1.0, 0.0), "sample_rate"),
        (lambda: PrivacyAccountant().step(1.0, 1.5), "sample_rate"),
        (lambda: PrivacyAccountant().step(1.0, 0.1, steps=0), "steps"),
        (lambda: PrivacyAccountant().epsilon(1.0), "delta"),
        (lambda: PrivacyBudget(epsilon=-1.0, delta=1e-5), "epsilon"),
        (lambda: PrivacyAccountant.from_state_dict({"version": 1, "mechanism": "rdp", "history": [[1, 2]]}), None),
        (lambda: noise_multiplier_for(1.0, 1e-5, 0.1, 100, accountant="moments"), "accountant"),  # type: ignore[arg-type]
    ],
)
def test_bad_accounting_input_raises_config_error(call, field: str | None) -> None:
    with pytest.raises(ConfigError) as err:
        call()
    if field is not None:
        assert err.value.field == field


def test_cached_rdp_matches_opacus_and_calibration_is_unchanged():
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    from securefrl.privacy.accounting import PrivacyAccountant, _rdp_per_step, noise_multiplier_for

    history = [(1.1, 1.0, 10), (1.3, 1.0, 5), (0.9, 0.25, 3)]
    ours = PrivacyAccountant("rdp")
    for z, q, n in history:
        ours.step(z, q, n)
    ref = RDPAccountant()
    ref.history = list(history)
    assert ours.epsilon(1e-5) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-12)
    assert _rdp_per_step.cache_info().currsize >= 3  # one RDP vector per (z, q), reused every round
    assert noise_multiplier_for(4.0, 1e-5, 1.0, 20) == get_noise_multiplier(
        target_epsilon=4.0, target_delta=1e-5, sample_rate=1.0, steps=20)
