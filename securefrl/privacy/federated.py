"""Client-level DP in the federation loop: the pipeline, the noise, the accountant and the budget.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models"): each
sampled client clips its update to ``C``; Gaussian noise of std ``z C`` on the sum is added

* ``central``: by the aggregator after combining (it sees the noise-free sum: plaintext or SecAgg
  server only; refused under CKKS, where nobody but the key holder may see the sum);
* ``distributed``: as shares ``N(0, (zC)^2 / m_min)`` by every client, so any ``m >= m_min``
  surviving shares carry the full noise and no party ever sees the noise-free aggregate;
* ``local``: in full by each client on its own update (private even against the server).

With DP the aggregate is an unweighted mean (every client's weight is 1), so one client moves the
sum by at most ``C``. The accountant records one step per round with ``sample_rate`` = clients per
round / total clients and the noise multiplier the released aggregate really carried (for
distributed noise after dropouts, ``z sqrt(survivors / m_min)``). Accounting assumptions are
those of :mod:`securefrl.privacy.accounting`: Poisson-sampling analysis applied to a fixed-size
seeded sample, and amplification only against observers of the released models who do not know
the sample. Clipping can adapt to a quantile of update norms (Andrew et al. 2021) with central noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from securefrl.config import PrivacySection
from securefrl.errors import ConfigError
from securefrl.privacy.accounting import PrivacyAccountant, noise_multiplier_for
from securefrl.privacy.clipping import (
    AdaptiveClipState,
    adaptive_clip_update,
    adaptive_effective_noise_multiplier,
    adaptive_update_noise_multiplier,
    noisy_unclipped_fraction,
)
from securefrl.privacy.noise import add_central_noise, dp_client_pipeline, survivor_noise_multiplier
from securefrl.transforms import UpdateTransform


@dataclass
class ClientLevelDP:
    """DP state of one run: builds the client pipeline, noises the aggregate, accounts every round."""

    section: PrivacySection
    protocol: str
    n_clients: int
    clients_per_round: int
    rounds: int
    accountant: PrivacyAccountant = field(init=False)
    clip_state: AdaptiveClipState | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        s = self.section
        if s.placement == "central" and self.protocol == "ckks":
            raise ConfigError(
                "privacy.placement",
                "central noise needs a trusted aggregator that sees the noise-free sum, but under CKKS nobody but "
                "the key holder may see it (and the IND-CPA-D caveat asks that decrypted aggregates already carry "
                "noise). Use placement=distributed (each client adds a share) or placement=local.",
            )
        self.accountant = PrivacyAccountant(s.accountant)
        self.sample_rate = self.clients_per_round / self.n_clients
        self.min_survivors = s.min_survivors or self.clients_per_round
        if self.min_survivors > self.clients_per_round:
            raise ConfigError("privacy.min_survivors", f"must be at most the {self.clients_per_round} clients "
                                                       f"sampled per round, got {self.min_survivors}")
        self.z = s.noise_multiplier
        if s.target_epsilon > 0:
            self.z = noise_multiplier_for(s.target_epsilon, s.delta, self.sample_rate, self.rounds, s.accountant)
        if self.z <= 0:
            raise ConfigError("privacy.noise_multiplier", "must be > 0 with a DP placement (or set target_epsilon)")
        # Andrew et al. 2021 recommend sigma_b = m / 20; with few clients per round that leaves the count
        # more than the whole budget (needs 2 sigma_b > z), so sigma_b is at least z.
        self.count_stddev = max(self.clients_per_round / 20.0, self.z)
        self.z_updates = self.z
        if s.adaptive_clipping:
            self.clip_state = AdaptiveClipState(s.clip_norm, self.count_stddev, s.target_quantile,
                                                s.clip_learning_rate)
            self.z_updates = adaptive_update_noise_multiplier(self.z, self.count_stddev)

    @property
    def clip_norm(self) -> float:
        return self.clip_state.clip_norm if self.clip_state is not None else self.section.clip_norm

    def pipeline(self) -> UpdateTransform:
        """The client transform chain for this round's clip bound and placement."""
        placement = self.section.placement
        return dp_client_pipeline(placement, self.clip_norm, self.z_updates,  # type: ignore[arg-type]
                                  min_survivors=self.min_survivors if placement == "distributed" else None,
                                  secure=self.section.secure_noise)

    def planned_noise_multiplier(self) -> float:
        """The z a round will be accounted with in the worst case the config allows."""
        return self.z

    def would_exceed_budget(self) -> bool:
        b = self.section.epsilon_budget
        if b <= 0:
            return False
        return self.accountant.epsilon_after(self.section.delta, self.planned_noise_multiplier(),
                                             self.sample_rate) > b

    def finish_round(self, mean: np.ndarray, n_included: int, unclipped_bits: list[float],
                     rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """Noise the mean where the placement is central, account the round; return (mean, metrics)."""
        s = self.section
        z_eff = self.z
        if s.placement == "central":
            noisy_sum = add_central_noise(mean * n_included, self.clip_norm, self.z_updates, rng,
                                          secure=s.secure_noise)
            mean = noisy_sum / n_included
            if self.clip_state is not None:
                frac = noisy_unclipped_fraction(float(sum(unclipped_bits)), self.clients_per_round,
                                                self.count_stddev, rng, secure=s.secure_noise)
                z_eff = adaptive_effective_noise_multiplier(self.z_updates, self.count_stddev)
                self.clip_state = adaptive_clip_update(self.clip_state, frac)
        elif s.placement == "distributed":
            z_eff = survivor_noise_multiplier(self.z, n_included, self.min_survivors, allow_fewer=True)
        self.accountant.step(z_eff, self.sample_rate)
        eps = self.accountant.epsilon(s.delta)
        return mean, {"epsilon": eps, "noise_multiplier": z_eff, "clip_norm": self.clip_norm}

    def state_dict(self) -> dict[str, Any]:
        return {"accountant": self.accountant.state_dict(),
                "clip": self.clip_state.to_dict() if self.clip_state is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accountant = PrivacyAccountant.from_state_dict(state["accountant"])
        if state["clip"] is not None:
            self.clip_state = AdaptiveClipState.from_dict(state["clip"])
