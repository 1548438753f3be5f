"""Record-level DP-SGD helper: Opacus per-sample clipping and noise around an agent's torch module."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from securefrl.errors import ConfigError
from securefrl.privacy.dpsgd import GRAD_SAMPLE_MODES, make_dp_sgd

pytestmark = [
    pytest.mark.filterwarnings("ignore::securefrl.privacy.SeededNoiseWarning"),
    # Opacus's hooks fire on module outputs when the inputs do not require grad; harmless here.
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
]

BATCH = 16


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 5, generator=g), torch.randn(BATCH, 3, generator=g)


def _dp_step(net: torch.nn.Module, mode: str, noise: float, clip: float, lr: float = 0.1) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    gsm, dp_opt = make_dp_sgd(net, opt, BATCH, noise, clip, np.random.default_rng(0), grad_sample_mode=mode,  # type: ignore[arg-type]
                              secure=False)
    x, y = _batch(1)
    dp_opt.zero_grad()
    ((gsm(x) - y) ** 2).mean().backward()
    dp_opt.step()


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_zero_noise_and_infinite_clip_equal_plain_sgd(mode: str) -> None:
    plain, private = _mlp(0), _mlp(0)
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    x, y = _batch(1)
    opt.zero_grad()
    ((plain(x) - y) ** 2).mean().backward()
    opt.step()
    _dp_step(private, mode, noise=0.0, clip=float("inf"))
    for p, q in zip(plain.parameters(), private.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_zero_noise_step_is_mean_of_per_sample_clipped_gradients() -> None:
    clip, lr = 0.05, 0.1
    reference, private = _mlp(2), _mlp(2)
    x, y = _batch(1)
    summed = [torch.zeros_like(p) for p in reference.parameters()]
    for i in range(BATCH):  # per-sample gradients the slow, obvious way
        reference.zero_grad()
        ((reference(x[i : i + 1]) - y[i : i + 1]) ** 2).mean().backward()
        grads = [p.grad.detach().clone() for p in reference.parameters()]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        assert norm > clip  # the test must actually exercise clipping
        for s, g in zip(summed, grads, strict=True):
            s += g * min(1.0, clip / float(norm))
    expected = [p.detach() - lr * s / BATCH for p, s in zip(reference.parameters(), summed, strict=True)]
    _dp_step(private, "hooks", noise=0.0, clip=clip, lr=lr)
    for p, e in zip(private.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-4, atol=1e-7)


def test_noise_std_on_parameters_is_lr_z_clip_over_batch() -> None:
    # Zero loss -> zero gradients, so the parameter change is pure noise: std lr * z * C / B per coordinate.
    # 10,100 coordinates: the std estimate's relative error is ~0.7%; tolerance 5%. Seeded through rng.
    torch.manual_seed(3)
    net = torch.nn.Linear(100, 100)
    before = copy.deepcopy(net)
    lr, z, clip = 0.5, 1.2, 0.8
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    gsm, dp_opt = make_dp_sgd(net, opt, BATCH, z, clip, np.random.default_rng(4), secure=False)
    dp_opt.zero_grad()
    (gsm(torch.randn(BATCH, 100)) * 0.0).sum().backward()
    dp_opt.step()
    delta = torch.cat([(p - q).detach().flatten() for p, q in zip(net.parameters(), before.parameters(), strict=True)])
    assert float(delta.std()) == pytest.approx(lr * z * clip / BATCH, rel=0.05)


def test_bad_dpsgd_configuration() -> None:
    net = _mlp(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ConfigError) as err:
        make_dp_sgd(net, opt, BATCH, 1.0, 1.0, np.random.default_rng(0), grad_sample_mode="ghost")  # type: ignore[arg-type]
    assert err.value.field == "grad_sample_mode"
    with pytest.raises(ConfigError) as err:
        make_dp_sgd(net, opt, BATCH, 1.0, 1.0, None, secure=False)  # seeded noise needs the generator
    assert err.value.field == "rng"
    with pytest.raises(ConfigError) as err:
        make_dp_sgd(net, opt, BATCH, 1.0, float("inf"), np.random.default_rng(0))
    assert err.value.field == "max_grad_norm"


def _noise_of_one_step(secure: bool, seed: int, width: int = 4000) -> torch.Tensor:
    """The noise DP-SGD adds to a zero gradient of a wide linear layer (clip 1, z = 1, one record)."""
    net = torch.nn.Linear(width, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    gsm, dp_opt = make_dp_sgd(net, opt, 1, 1.0, 1.0, None if secure else np.random.default_rng(seed), secure=secure)
    dp_opt.zero_grad()
    gsm(torch.zeros(1, width)).sum().backward()  # zero input: the per-sample gradient is 0
    dp_opt.step()
    return -net.weight.detach().ravel()  # lr 1 from 0: minus the noised gradient


def test_secure_dpsgd_draws_fresh_os_noise_of_the_right_scale() -> None:
    # Seeded: the same seed regenerates the noise (why it is not for deployment). Secure: never repeats.
    assert torch.equal(_noise_of_one_step(False, 3), _noise_of_one_step(False, 3))
    a, b = _noise_of_one_step(True, 3), _noise_of_one_step(True, 3)
    assert not torch.equal(a, b)
    for noise in (a, b):  # N(0, (z C)^2) with z = C = 1: 4,000 draws pin the std to about +-3.4%
        assert abs(float(noise.mean())) < 0.07 and 0.93 < float(noise.std()) < 1.07

