"""Clipping (fixed, adaptive) and Gaussian noise placements of :mod:`securefrl.privacy`.

Statistical tests state seed and tolerance. Standard-deviation checks over n = 10^6 samples use a 2%
tolerance; the estimator's relative standard error is 1/sqrt(2n) ~ 0.07%, so 2% is ~28 standard errors.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from securefrl.errors import ConfigError, UpdateRejectedError
from securefrl.privacy import (
    AdaptiveClipState,
    InsufficientSurvivorsError,
    SeededNoiseWarning,
    adaptive_clip_update,
    adaptive_effective_noise_multiplier,
    adaptive_update_noise_multiplier,
    add_central_noise,
    add_distributed_noise,
    add_local_noise,
    clip_by_l2_norm,
    clip_with_indicator,
    distributed_noise_std,
    dp_client_pipeline,
    gaussian_noise,
    noisy_unclipped_fraction,
    secure_gaussian,
    survivor_noise_multiplier,
)
from securefrl.privacy import noise as noise_module

N_COORDS = 10**6
STD_TOL = 0.02

pytestmark = pytest.mark.filterwarnings("ignore::securefrl.privacy.SeededNoiseWarning")


# ---------------------------------------------------------------- clipping


@pytest.mark.parametrize("clip", [1e-3, 0.7, 5.0])
def test_every_clipped_update_has_norm_at_most_clip(clip: float) -> None:
    rng = np.random.default_rng(11)
    transform = clip_by_l2_norm(clip)
    pipeline = dp_client_pipeline("central", clip, 1.0)
    state = pipeline.init(64)
    for scale in [1e-8, 1e-2, 1.0, 1e3, 1e12]:
        for _ in range(50):
            update = rng.normal(size=int(rng.integers(1, 200))) * scale * rng.uniform(0.1, 10.0)
            out, _ = transform.update(update, None, rng)
            piped, _ = pipeline.update(update, state, rng)
            indicated, _ = clip_with_indicator(update, clip)
            for vec in (out, piped, indicated):
                assert np.linalg.norm(vec) <= clip * (1 + 1e-6)


def test_clipping_leaves_short_updates_unchanged_and_keeps_direction() -> None:
    rng = np.random.default_rng(12)
    short = np.array([0.3, -0.4])  # norm 0.5
    long = rng.normal(size=10) * 100
    out_short, _ = clip_by_l2_norm(1.0).update(short, None, rng)
    out_long, _ = clip_by_l2_norm(1.0).update(long, None, rng)
    np.testing.assert_array_equal(out_short, short)
    np.testing.assert_allclose(out_long, long / np.linalg.norm(long), rtol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_updates_are_rejected_before_clipping(bad: float) -> None:
    # Clipping alone would pass NaN through (NaN > C is False) and turn Inf into NaN; rejection must come first.
    rng = np.random.default_rng(13)
    update = np.ones(8)
    update[3] = bad
    with pytest.raises(UpdateRejectedError):
        clip_by_l2_norm(1.0).update(update, None, rng)
    with pytest.raises(UpdateRejectedError):
        clip_with_indicator(update, 1.0)
    for placement in ("central", "distributed", "local"):
        pipeline = dp_client_pipeline(placement, 1.0, 1.0, min_survivors=4)
        with pytest.raises(UpdateRejectedError):
            pipeline.update(update, pipeline.init(8), rng)
    with pytest.raises(UpdateRejectedError):
        add_central_noise(update, 1.0, 1.0, rng)


def test_clip_indicator_is_centred_bit() -> None:
    _, inside = clip_with_indicator(np.array([0.6, 0.8]), 1.0)  # norm exactly 1: counts as unclipped
    _, outside = clip_with_indicator(np.array([3.0, 4.0]), 1.0)
    assert (inside, outside) == (0.5, -0.5)


# ---------------------------------------------------------------- adaptive clipping


def test_adaptive_noise_multiplier_formula_matches_andrew_et_al() -> None:
    # z = (z_delta^-2 + (2 sigma_b)^-2)^-1/2 ; z=1, sigma_b=5 -> z_delta = (1 - 1/100)^-1/2.
    z_delta = adaptive_update_noise_multiplier(1.0, 5.0)
    assert z_delta == pytest.approx(0.99**-0.5, rel=1e-12)
    assert adaptive_effective_noise_multiplier(z_delta, 5.0) == pytest.approx(1.0, rel=1e-12)
    assert adaptive_effective_noise_multiplier(1.0, 5.0) < 1.0  # the count costs budget


def test_adaptive_noise_refuses_count_noise_too_small_for_target() -> None:
    with pytest.raises(ConfigError) as err:
        adaptive_update_noise_multiplier(2.0, 1.0)  # 2 sigma_b == z leaves nothing for the updates
    assert err.value.field == "count_stddev"


def test_adaptive_clip_tracks_target_quantile_of_update_norms() -> None:
    # Norms ~ lognormal(mean=0, sigma=0.5): median 1.0, 80% quantile exp(0.5 * 0.8416) = 1.523.
    # Paper defaults (eta=0.2, sigma_b = m/20); after 300 rounds C should sit within 15% of the quantile.
    rng = np.random.default_rng(21)
    clients_per_round = 100
    for quantile, expected in [(0.5, 1.0), (0.8, math.exp(0.5 * 0.8416212335729143))]:
        state = AdaptiveClipState(clip_norm=0.1, count_stddev=clients_per_round / 20, target_quantile=quantile)
        history = []
        for _ in range(300):
            bits = 0.0
            for _ in range(clients_per_round):
                update = rng.normal(size=4)
                update *= rng.lognormal(0.0, 0.5) / np.linalg.norm(update)
                _, bit = clip_with_indicator(update, state.clip_norm)
                bits += bit
            frac = noisy_unclipped_fraction(bits, clients_per_round, state.count_stddev, rng, secure=False)
            state = adaptive_clip_update(state, frac)
            history.append(state.clip_norm)
        assert np.mean(history[-50:]) == pytest.approx(expected, rel=0.15)


def test_adaptive_clip_update_direction_and_step_bound() -> None:
    state = AdaptiveClipState(clip_norm=1.0, count_stddev=5.0)
    assert adaptive_clip_update(state, 0.9).clip_norm < 1.0  # too many unclipped: shrink
    assert adaptive_clip_update(state, 0.1).clip_norm > 1.0  # too many clipped: grow
    assert adaptive_clip_update(state, 1.5).clip_norm == pytest.approx(math.exp(-0.2 * 1.0))
    with pytest.raises(UpdateRejectedError):
        adaptive_clip_update(state, float("nan"))


def test_adaptive_clip_state_json_round_trip_and_validation() -> None:
    state = AdaptiveClipState(clip_norm=0.37, count_stddev=2.5, target_quantile=0.7, learning_rate=0.1)
    assert AdaptiveClipState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    with pytest.raises(ConfigError) as err:
        AdaptiveClipState(clip_norm=1.0, count_stddev=1.0, target_quantile=1.0)
    assert err.value.field == "target_quantile"
    with pytest.raises(ConfigError):
        AdaptiveClipState(clip_norm=-1.0, count_stddev=1.0)


# ---------------------------------------------------------------- noise


def test_local_noise_std_within_2_percent_of_z_times_clip() -> None:
    clip, z = 0.5, 1.3
    transform = add_local_noise(clip, z, secure=False)  # seeded: the statistical tests state their seed
    out, _ = transform.update(np.zeros(N_COORDS), None, np.random.default_rng(31))
    assert out.std() == pytest.approx(z * clip, rel=STD_TOL)
    assert abs(out.mean()) < 5 * z * clip / math.sqrt(N_COORDS)


def test_central_noise_std_within_2_percent() -> None:
    clip, z = 2.0, 0.8
    total = np.full(N_COORDS, 3.0)
    noised = add_central_noise(total, clip, z, np.random.default_rng(32), secure=False)
    assert (noised - total).std() == pytest.approx(z * clip, rel=STD_TOL)


def test_secure_noise_std_within_2_percent_and_not_reproducible() -> None:
    # Not seeded by design; the 2% tolerance is ~28 standard errors, so a false failure is not a practical risk.
    std = 1.7
    sample = secure_gaussian(std, N_COORDS)
    assert sample.std() == pytest.approx(std, rel=STD_TOL)
    assert abs(sample.mean()) < 5 * std / math.sqrt(N_COORDS)
    # Gaussian shape, not just scale: fourth standardised moment 3 (its std error is ~0.005 here).
    assert np.mean((sample / sample.std()) ** 4) == pytest.approx(3.0, abs=0.05)
    assert not np.array_equal(secure_gaussian(std, 16), secure_gaussian(std, 16))
    out = add_local_noise(1.0, 1.0, secure=True).update(np.zeros(16), None, np.random.default_rng(0))[0]
    again = add_local_noise(1.0, 1.0, secure=True).update(np.zeros(16), None, np.random.default_rng(0))[0]
    assert not np.array_equal(out, again)  # secure mode ignores the seeded generator


def test_seeded_noise_is_reproducible() -> None:
    a = gaussian_noise(1.0, 32, np.random.default_rng(5), secure=False)
    b = gaussian_noise(1.0, 32, np.random.default_rng(5), secure=False)
    np.testing.assert_array_equal(a, b)
    # Only by asking: the default is the OS CSPRNG, and the generator is then ignored.
    assert not np.array_equal(gaussian_noise(1.0, 32, np.random.default_rng(5)),
                              gaussian_noise(1.0, 32, np.random.default_rng(5)))


def test_distributed_shares_sum_to_full_variance_and_report_survivor_multiplier() -> None:
    clip, z, m_min = 1.0, 1.1, 5
    rng = np.random.default_rng(33)
    share = add_distributed_noise(clip, z, m_min, secure=False)
    assert distributed_noise_std(clip, z, m_min) == pytest.approx(z * clip / math.sqrt(m_min))
    for survivors in (m_min, m_min + 4):
        total = np.zeros(N_COORDS)
        for _ in range(survivors):
            noised, _ = share.update(np.zeros(N_COORDS), None, rng)
            total += noised
        z_eff = survivor_noise_multiplier(z, survivors, m_min)
        assert z_eff == pytest.approx(z * math.sqrt(survivors / m_min))
        assert total.std() == pytest.approx(z_eff * clip, rel=STD_TOL)


def test_fewer_survivors_than_calibrated_are_refused_unless_allowed() -> None:
    with pytest.raises(InsufficientSurvivorsError):
        survivor_noise_multiplier(1.0, 3, 4)
    assert survivor_noise_multiplier(1.0, 3, 4, allow_fewer=True) == pytest.approx(math.sqrt(3 / 4))


def test_noise_transform_refuses_unclipped_input() -> None:
    with pytest.raises(ConfigError) as err:
        add_local_noise(1.0, 1.0).update(np.full(4, 10.0), None, np.random.default_rng(0))
    assert err.value.field == "pipeline"


def test_seeded_noise_warns_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(noise_module, "_seeded_warning_issued", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        secure_gaussian(1.0, 4)
        assert not caught  # secure noise does not warn
        gaussian_noise(1.0, 4, np.random.default_rng(0))
        assert not caught  # nor does the default, which is secure
        gaussian_noise(1.0, 4, np.random.default_rng(0), secure=False)
        gaussian_noise(1.0, 4, np.random.default_rng(1), secure=False)
    assert [w.category for w in caught] == [SeededNoiseWarning]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: gaussian_noise(1.0, 4, None, secure=False), "rng"),
        (lambda: add_local_noise(0.0, 1.0), "clip"),
        (lambda: add_distributed_noise(1.0, -1.0, 3), "noise_multiplier"),
        (lambda: add_distributed_noise(1.0, 1.0, 0), "min_survivors"),
        (lambda: dp_client_pipeline("distributed", 1.0, 1.0), "min_survivors"),
        (lambda: dp_client_pipeline("global", 1.0, 1.0), "placement"),  # type: ignore[arg-type]
        (lambda: add_central_noise(np.zeros(3), 1.0, float("nan"), np.random.default_rng(0)), "noise_multiplier"),
    ],
)
def test_bad_noise_configuration_raises_config_error(call, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        call()
    assert err.value.field == field


def test_distributed_noise_is_sized_for_colluding_clients_that_withhold_their_share() -> None:
    from securefrl.privacy.noise import distributed_noise_std, survivor_noise_multiplier

    # 10 survivors, 2 may withhold: the 8 honest shares alone must carry the full (z C)^2.
    std = distributed_noise_std(1.0, 2.0, 10, max_colluding=2)
    assert 8 * std**2 == pytest.approx(4.0)
    assert survivor_noise_multiplier(2.0, 10, 10, max_colluding=2) == pytest.approx(2.0)
    assert survivor_noise_multiplier(2.0, 6, 10, allow_fewer=True, max_colluding=2) == pytest.approx(
        2.0 * math.sqrt(4 / 8))
    with pytest.raises(ConfigError):
        distributed_noise_std(1.0, 2.0, 3, max_colluding=3)
