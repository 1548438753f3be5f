"""Record-level DP-SGD inside an agent (Abadi et al. 2016) through Opacus's per-sample gradients.

:func:`make_dp_sgd` wraps a torch module in Opacus's ``GradSampleModule`` (per-sample gradients) and
the optimizer in ``DPOptimizer`` (per-sample clipping to ``max_grad_norm`` + Gaussian noise of std
``noise_multiplier * max_grad_norm`` on the summed gradient, divided by the expected batch size).
Account each optimizer step with :class:`securefrl.privacy.PrivacyAccountant` at
``sample_rate = batch_size / records``; that analysis assumes Poisson-sampled batches, so fixed-size
batches (e.g. from a replay buffer) are an approximation.

Grad-sample modes, measured side by side on a tiny MLP (8-64-64-2, tanh, batch 64, one CPU thread,
torch 2.13 / Opacus 1.6): ``"hooks"`` 0.92 ms/step, ``"ew"`` (expanded weights) 1.26 ms, ``"functorch"``
(``torch.func.vmap``) 3.1 ms, plain SGD 0.17 ms. Hence the default ``"hooks"``; the others support more
layer types.
"""

from __future__ import annotations

import math
import sys
from typing import Literal

import numpy as np
import torch
from opacus.grad_sample import AbstractGradSampleModule
from opacus.grad_sample.utils import prepare_module
from opacus.optimizers import DPOptimizer

from securefrl.errors import ConfigError
from securefrl.privacy._validate import non_negative, positive_int
from securefrl.privacy.noise import _warn_seeded_once

GradSampleMode = Literal["hooks", "functorch", "ew"]
GRAD_SAMPLE_MODES: tuple[str, ...] = ("hooks", "functorch", "ew")


def _secure_torch_generator() -> torch.Generator:
    try:
        import torchcsprng  # type: ignore[import-not-found]
    except ImportError as err:
        raise ConfigError(
            "secure",
            "secure DP-SGD needs the torchcsprng package (a CSPRNG torch generator, as Opacus's secure_mode); "
            "it is not installed. torch's own generator is a Mersenne Twister and is not cryptographically secure",
        ) from err
    return torchcsprng.create_random_device_generator("/dev/urandom")


def make_dp_sgd(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    noise_multiplier: float,
    max_grad_norm: float,
    rng: np.random.Generator | None,
    *,
    grad_sample_mode: GradSampleMode = "hooks",
    secure: bool = False,
) -> tuple[AbstractGradSampleModule, DPOptimizer]:
    """Wrap ``module`` / ``optimizer`` for DP-SGD; returns ``(grad_sample_module, dp_optimizer)``.

    Train with the returned module (it shares parameters with ``module``) and call
    ``dp_optimizer.zero_grad()`` / ``loss.backward()`` / ``dp_optimizer.step()`` as usual; the loss must
    be a *mean* over the batch. Seeded mode draws the noise from a torch generator seeded from ``rng``
    (warns once: not for deployment); ``secure=True`` uses Opacus's secure mode with ``torchcsprng``
    and refuses to run without it rather than pretend.
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError("grad_sample_mode", f"must be one of {GRAD_SAMPLE_MODES}, got {grad_sample_mode!r}")
    batch_size = positive_int("batch_size", batch_size)
    z = non_negative("noise_multiplier", noise_multiplier)
    clip = float(max_grad_norm)
    if not clip > 0:
        raise ConfigError("max_grad_norm", f"must be > 0, got {max_grad_norm!r}")
    if math.isinf(clip):  # "no clipping": only meaningful without noise (a baseline), since the std would be z * inf
        if z > 0:
            raise ConfigError("max_grad_norm", "must be finite when noise_multiplier > 0 (noise std is z * clip)")
        clip = sys.float_info.max  # Opacus computes z * clip; 0 * inf would be NaN
    if secure:
        generator = _secure_torch_generator()
    else:
        if not isinstance(rng, np.random.Generator):
            raise ConfigError("rng", "seeded DP-SGD needs an explicit numpy.random.Generator (or secure=True)")
        _warn_seeded_once()
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
    gsm = prepare_module(module, grad_sample_mode, batch_first=True, loss_reduction="mean")
    dp_optimizer = DPOptimizer(
        optimizer,
        noise_multiplier=z,
        max_grad_norm=clip,
        expected_batch_size=batch_size,
        loss_reduction="mean",
        generator=generator,
        secure_mode=secure,
    )
    return gsm, dp_optimizer
