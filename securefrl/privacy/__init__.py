"""Differential privacy for federated RL: clipping, Gaussian noise placements, accounting and auditing.

* :mod:`.clipping` — fixed and adaptive (Andrew et al. 2021) per-client clipping for DP-FedAvg.
* :mod:`.noise` — central, distributed and local Gaussian noise; OS CSPRNG by default, seeded (experiments)
  only with ``secure=False``.
* :mod:`.accounting` — Opacus RDP / PRV accountants, noise calibration, a budget that stops training.
* :mod:`.audit` — empirical lower bounds on epsilon from a canary-client test (Jagielski et al. 2020).
* :mod:`.dpsgd` — record-level DP-SGD inside an agent through Opacus's per-sample gradients.
"""

from securefrl.privacy.accounting import (
    MECHANISMS,
    Mechanism,
    PrivacyAccountant,
    PrivacyBudget,
    PrivacyBudgetExceededError,
    noise_multiplier_for,
)
from securefrl.privacy.audit import (
    AuditResult,
    audit_gaussian_mechanism,
    clopper_pearson_upper,
    epsilon_lower_bound,
    gaussian_mechanism_epsilon,
)
from securefrl.privacy.clipping import (
    AdaptiveClipState,
    adaptive_clip_update,
    adaptive_effective_noise_multiplier,
    adaptive_update_noise_multiplier,
    check_finite,
    clip_by_l2_norm,
    clip_with_indicator,
    noisy_unclipped_fraction,
)
from securefrl.privacy.dpsgd import GRAD_SAMPLE_MODES, GradSampleMode, make_dp_sgd
from securefrl.privacy.noise import (
    PLACEMENTS,
    InsufficientSurvivorsError,
    Placement,
    SeededNoiseWarning,
    add_central_noise,
    add_distributed_noise,
    add_local_noise,
    distributed_noise_std,
    dp_client_pipeline,
    gaussian_noise,
    secure_gaussian,
    survivor_noise_multiplier,
)

__all__ = [
    "GRAD_SAMPLE_MODES",
    "MECHANISMS",
    "PLACEMENTS",
    "AdaptiveClipState",
    "AuditResult",
    "GradSampleMode",
    "InsufficientSurvivorsError",
    "Mechanism",
    "Placement",
    "PrivacyAccountant",
    "PrivacyBudget",
    "PrivacyBudgetExceededError",
    "SeededNoiseWarning",
    "adaptive_clip_update",
    "adaptive_effective_noise_multiplier",
    "adaptive_update_noise_multiplier",
    "add_central_noise",
    "add_distributed_noise",
    "add_local_noise",
    "audit_gaussian_mechanism",
    "check_finite",
    "clip_by_l2_norm",
    "clip_with_indicator",
    "clopper_pearson_upper",
    "distributed_noise_std",
    "dp_client_pipeline",
    "epsilon_lower_bound",
    "gaussian_mechanism_epsilon",
    "gaussian_noise",
    "make_dp_sgd",
    "noise_multiplier_for",
    "noisy_unclipped_fraction",
    "secure_gaussian",
    "survivor_noise_multiplier",
]
