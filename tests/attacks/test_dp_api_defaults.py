"""The Python API's DP building blocks are secure by default: the seed-regeneration attacks fail on their defaults.

The config path draws DP noise from the OS CSPRNG unless ``privacy.seeded_noise_experiment``; these tests
attack what a researcher gets by calling the building blocks directly with their default arguments
(``DPSGDSettings(1.0, 1.0)``, ``add_local_noise(clip, z)``, ...). The adversary knows the seed and every
parameter, rebuilds the same call with seeded noise (``secure=False``) from the same seeded stream and
subtracts what it regenerates -- the attacks of the plug-ins ``dp_noise_regeneration`` and
``dpsgd_noise_regeneration`` (:mod:`attacks.protocol.dp`), whose helpers are reused here. Against seeded
noise the clean value comes back to rounding error; against the defaults the residual must be of the
order of the noise std. The last test checks that seeded noise is still there for experiments, only by asking.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from attacks.protocol.dp import DPSGDNoiseRegeneration, NoiseRegeneration
from securefrl.agents.dp import DPSGDSettings, poisson_indices
from securefrl.config import PrivacySection
from securefrl.errors import ConfigError
from securefrl.privacy import SeededNoiseWarning
from securefrl.privacy.clipping import noisy_unclipped_fraction
from securefrl.privacy.dpsgd import make_dp_sgd
from securefrl.privacy.federated import ClientLevelDP
from securefrl.privacy.noise import (
    add_central_noise,
    add_distributed_noise,
    add_local_noise,
    dp_client_pipeline,
    gaussian_noise,
)
from securefrl.transforms import chain, clip_by_l2_norm

pytestmark = [
    pytest.mark.filterwarnings("ignore::securefrl.privacy.SeededNoiseWarning"),  # the adversary's seeded rebuild
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
]

SEED = 0


def not_recovered(err: float, std: float) -> bool:
    """The plug-ins' criterion, negated: the attack succeeds when the residual is below 1e-3 of the noise std."""
    return err >= 1e-3 * std


def test_dpsgd_settings_default_resists_seed_regeneration() -> None:
    # DP-SGD of a DQN client, built as DPSGDSettings(z=1, C=1) and enabled with the federation's seeded stream.
    err, std = DPSGDNoiseRegeneration.recovery_error(DPSGDSettings(1.0, 1.0), SEED)
    assert not_recovered(err, std), f"noise-free clipped gradient recovered to {err:.2g} (noise std {std:.3g})"
    assert err > 0.5 * std  # the residual is the noise itself (max over the coordinates)


def test_dpsgd_regeneration_still_recovers_explicitly_seeded_settings() -> None:
    err, std = DPSGDNoiseRegeneration.recovery_error(DPSGDSettings(1.0, 1.0, secure=False), SEED)
    assert err < 1e-3 * std  # why seeded noise is for experiments only


LOCAL = {
    "add_local_noise": lambda: chain(clip_by_l2_norm(1.0), add_local_noise(1.0, 1.0)),
    "dp_client_pipeline(local)": lambda: dp_client_pipeline("local", 1.0, 1.0),
}


@pytest.mark.parametrize("name", LOCAL)
def test_local_noise_default_resists_seed_regeneration(name: str) -> None:
    # The server sees one client's plaintext update; local noise N(0, (z C)^2), std 1, is its only protection.
    err = NoiseRegeneration.local_recovery_error(LOCAL[name](), SEED)
    assert not_recovered(err, 1.0) and err > 0.5, f"{name}: noise-free update recovered to {err:.2g}"


DISTRIBUTED = {
    "add_distributed_noise": lambda: chain(clip_by_l2_norm(1.0), add_distributed_noise(1.0, 1.0, 6)),
    "dp_client_pipeline(distributed)": lambda: dp_client_pipeline("distributed", 1.0, 1.0, min_survivors=6),
}


@pytest.mark.parametrize("name", DISTRIBUTED)
def test_distributed_noise_default_resists_seed_regeneration(name: str) -> None:
    # The server opens the SecAgg mean of 6 clients' shares; the mean's noise std is z C / 6.
    n = 6
    section = PrivacySection(placement="distributed", clip_norm=1.0, noise_multiplier=1.0)
    coordinate_clip = ClientLevelDP(section, "secagg", n, n, rounds=10).required_coordinate_clip()
    err = NoiseRegeneration.distributed_recovery_error(DISTRIBUTED[name](), coordinate_clip, SEED, n)
    std = 1.0 / n
    assert not_recovered(err, std) and err > 0.5 * std, f"{name}: noise-free mean recovered to {err:.2g}"


def _regeneration_error(victim: np.ndarray, adversary: np.ndarray, clean: np.ndarray) -> float:
    return float(np.max(np.abs(victim - adversary - clean)))


def test_central_noise_and_gaussian_noise_defaults_resist_seed_regeneration() -> None:
    # Whoever knows the seed of the aggregator's stream draws the same numbers (with seeded noise).
    total = np.random.default_rng(1).normal(0.0, 1.0, 64)
    released = add_central_noise(total, 1.0, 1.0, np.random.default_rng(SEED))
    again = add_central_noise(np.zeros(64), 1.0, 1.0, np.random.default_rng(SEED), secure=False)
    assert not_recovered(_regeneration_error(released, again, total), 1.0)
    noise = gaussian_noise(1.0, 64, np.random.default_rng(SEED))
    assert not_recovered(_regeneration_error(noise, gaussian_noise(1.0, 64, np.random.default_rng(SEED), secure=False),
                                             np.zeros(64)), 1.0)


def test_adaptive_clipping_count_noise_default_resists_seed_regeneration() -> None:
    # The noisy unclipped fraction (Andrew et al. 2021): (sum(b - 1/2) + N(0, sigma^2)) / m + 1/2.
    # One scalar per round: 16 rounds, so a secure residual below 1e-3 std by chance (p ~ 6e-4 each) cannot pass.
    bits, m, sigma = 3.0, 10.0, 2.0
    errors = []
    for r in range(16):
        released = noisy_unclipped_fraction(bits, m, sigma, np.random.default_rng([SEED, r]))
        noise = noisy_unclipped_fraction(0.0, m, sigma, np.random.default_rng([SEED, r]), secure=False) - 0.5
        errors.append(abs(released - noise - (bits / m + 0.5)))
    assert not_recovered(max(errors), sigma / m)


def _dp_sgd_release(seed: int, **kwargs: bool) -> torch.Tensor:
    """The gradient one DP-SGD step of make_dp_sgd releases for a zero gradient (noise alone, z = C = 1)."""
    net = torch.nn.Linear(256, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    gsm, dp_opt = make_dp_sgd(net, opt, 1, 1.0, 1.0, np.random.default_rng(seed), **kwargs)
    dp_opt.zero_grad()
    gsm(torch.zeros(1, 256)).sum().backward()
    dp_opt.step()
    return -net.weight.detach().ravel().double()


def test_make_dp_sgd_default_resists_seed_regeneration() -> None:
    released, regenerated = _dp_sgd_release(SEED), _dp_sgd_release(SEED, secure=False)
    assert not_recovered(float((released - regenerated).abs().max()), 1.0)


def test_poisson_sample_default_is_not_known_to_the_seed_holder() -> None:
    # Amplification by sampling assumes the adversary does not know the sample; with the seed it would.
    sample = poisson_indices(4096, 0.25, np.random.default_rng(SEED))
    guess = poisson_indices(4096, 0.25, np.random.default_rng(SEED), secure=False)
    assert not np.array_equal(sample, guess)
    overlap = len(np.intersect1d(sample, guess)) / max(len(sample), 1)
    assert overlap < 0.4  # independent samples at q = 0.25 share ~25% of their members


def test_vertical_embedding_noise_default_resists_seed_regeneration() -> None:
    from securefrl.agents import DQNConfig
    from securefrl.vertical import VFRLConfig, VFRLSystem

    dqn = DQNConfig(learning_starts=100, train_freq=50, gradient_steps=5, batch_size=16, buffer_size=2_000,
                    exploration_steps=200, target_update_interval=10)
    cfg = VFRLConfig(total_steps=400, eval_every=200, eval_episodes=1, dqn=dqn, encoder_hidden=(16,), embed_dim=8,
                     head_hidden=(16,), embedding_clip=0.5, noise_multiplier=2.0)  # noise std z C = 1
    emb = torch.full((64, 8), 0.05)  # norm 0.14 < C: released unclipped
    victim = VFRLSystem(cfg, seed=SEED)
    adversary = VFRLSystem(replace(cfg, secure_noise=False), seed=SEED)
    try:
        released = victim.parties[0].release(emb).double().numpy()
        noise = adversary.parties[0].release(torch.zeros(64, 8)).double().numpy()
    finally:
        victim.close()
        adversary.close()
    assert not_recovered(_regeneration_error(released, noise, emb.double().numpy()), 1.0)


def test_seeded_noise_needs_secure_false_and_a_generator_and_still_warns() -> None:
    import securefrl.privacy.noise as noise_mod

    with pytest.raises(ConfigError, match="rng"):
        add_local_noise(1.0, 1.0, secure=False).update(np.zeros(4), None, None)  # type: ignore[arg-type]
    a = add_local_noise(1.0, 1.0, secure=False).update(np.zeros(8), None, np.random.default_rng(3))[0]
    b = add_local_noise(1.0, 1.0, secure=False).update(np.zeros(8), None, np.random.default_rng(3))[0]
    assert np.array_equal(a, b) and math.isfinite(float(a.sum()))  # reproducible, for experiments
    noise_mod._seeded_warning_issued = False  # the warning is once per process
    with pytest.warns(SeededNoiseWarning):
        gaussian_noise(1.0, 4, np.random.default_rng(0), secure=False)
