"""Client-level DP in the federation loop: the pipeline, the noise, the accountants and the budget.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models"): each
sampled client clips its update to ``C``; Gaussian noise of std ``z C`` on the sum is added

* ``central``: by the aggregator after combining (it sees the noise-free sum: plaintext or SecAgg
  server only; refused under any protocol whose server cannot open the sum, such as threshold CKKS);
* ``distributed``: as shares ``N(0, (zC)^2 / (m_min - k))`` by every client, so any ``m >= m_min``
  surviving shares carry the full noise even if ``k = privacy.max_colluding`` of them withhold theirs,
  and no party ever sees the noise-free aggregate;
* ``local``: in full by each client on its own update (private even against the server).

With DP the aggregate is an unweighted mean (every client's weight is 1), so one client moves the
sum by at most ``C``.

Two epsilons, because two adversaries (both reported every round; the rows, the summary and the plots
label them):

* ``epsilon_server`` -- against the server. It samples the clients and receives their messages, so it
  knows who took part: no amplification by sampling, every round is accounted with ``q = 1``. This holds
  for every placement here (for central noise the server also learns the sample).
* ``epsilon_outsiders`` -- against observers of the released models who do not know the sample:
  ``q`` = clients per round / total clients (Poisson-sampling analysis applied to a fixed-size seeded
  sample, an approximation; see :mod:`securefrl.privacy.accounting`).

``epsilon`` (the headline) is the one ``privacy.calibrate_against`` names -- the server by default --
and ``target_epsilon`` and ``epsilon_budget`` are calibrated and enforced against it. Each round is
recorded with the noise multiplier the released aggregate really carried (for distributed noise after
dropouts and colluders, ``z sqrt((survivors - k) / (m_min - k))``).

Noise: client-level noise comes from the OS CSPRNG under every protocol and placement unless the
experiment flag ``privacy.seeded_noise_experiment`` is set; seeded noise is regenerable by anyone who has
the config's seed (the server has the config), which is why such runs are marked ``dp_noise = "seeded"``
(attack plug-in ``dp_noise_regeneration``). Under SecAgg the protocol's
per-coordinate clip must leave room for the noise (at least ``C + 6`` share standard deviations), or it
would clip the noise and the sum would carry less than accounted. Clipping can adapt to a quantile of
update norms (Andrew et al. 2021) with central noise.
"""

from __future__ import annotations

import math
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
from securefrl.privacy.noise import (
    add_central_noise,
    distributed_noise_std,
    dp_client_pipeline,
    survivor_noise_multiplier,
)
from securefrl.protocol_factory import PROTOCOLS
from securefrl.transforms import UpdateTransform

#: Standard deviations of a noise share that the protocol's coordinate clip must leave above C.
NOISE_CLIP_SIGMAS = 6.0


@dataclass
class ClientLevelDP:
    """DP state of one run: builds the client pipeline, noises the aggregate, accounts every round."""

    section: PrivacySection
    protocol: str
    n_clients: int
    clients_per_round: int
    rounds: int
    accountant: PrivacyAccountant = field(init=False)
    """Against the server (q = 1)."""
    accountant_outsiders: PrivacyAccountant = field(init=False)
    """Against observers of the released models who do not know the sample (q = clients per round / clients)."""
    clip_state: AdaptiveClipState | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        s = self.section
        protocol = PROTOCOLS.get(self.protocol)
        if s.placement == "central" and not protocol.server_can_open:
            raise ConfigError(
                "privacy.placement",
                f"central noise needs a trusted aggregator that sees the noise-free sum, but under {self.protocol} the "
                "server cannot open it (threshold decryption releases only what the clients' partials reveal, and "
                "the IND-CPA-D caveat asks that decrypted aggregates already carry noise). Use "
                "placement=distributed (each client adds a share) or placement=local.",
            )
        # Seeded noise needs the experiment flag under every protocol: anyone with the seed (the server, which
        # holds the config) could remove it, and it is the server that local and distributed noise hide from.
        self.secure = s.noise_is_secure
        self.accountant = PrivacyAccountant(s.accountant)
        self.accountant_outsiders = PrivacyAccountant(s.accountant)
        self.sample_rate = self.clients_per_round / self.n_clients
        self.server_sample_rate = 1.0  # the server knows who took part
        self.min_survivors = s.min_survivors or self.clients_per_round
        if self.min_survivors > self.clients_per_round:
            raise ConfigError("privacy.min_survivors", f"must be at most the {self.clients_per_round} clients "
                                                       f"sampled per round, got {self.min_survivors}")
        self.max_colluding = int(s.max_colluding)
        if s.placement == "distributed" and self.max_colluding >= self.min_survivors:
            raise ConfigError("privacy.max_colluding", f"must be below min_survivors={self.min_survivors}: the "
                                                       "honest survivors' shares carry the noise")
        self.z = s.noise_multiplier
        if s.target_epsilon > 0:
            self.z = noise_multiplier_for(s.target_epsilon, s.delta, self._budget_rate(), self.rounds, s.accountant)
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

    def _budget_rate(self) -> float:
        return self.server_sample_rate if self.section.calibrate_against == "server" else self.sample_rate

    @property
    def headline(self) -> PrivacyAccountant:
        """The accountant ``epsilon``, the target and the budget refer to (``privacy.calibrate_against``)."""
        return self.accountant if self.section.calibrate_against == "server" else self.accountant_outsiders

    @property
    def clip_norm(self) -> float:
        return self.clip_state.clip_norm if self.clip_state is not None else self.section.clip_norm

    @property
    def noise_label(self) -> str:
        """``"secure"`` (OS CSPRNG) or ``"seeded"`` (regenerable from the config's seed: experiments only)."""
        return "secure" if self.secure else "seeded"

    def client_noise_std(self) -> float:
        """Per-coordinate std of the noise one client adds (0 for central noise)."""
        s = self.section
        if s.placement == "distributed":
            return distributed_noise_std(self.clip_norm, self.z_updates, self.min_survivors, self.max_colluding)
        if s.placement == "local":
            return self.z_updates * self.clip_norm
        return 0.0

    def required_coordinate_clip(self) -> float:
        """Smallest per-coordinate clip of a protocol that leaves the client's noise unclipped: C + 6 std."""
        return self.clip_norm + NOISE_CLIP_SIGMAS * self.client_noise_std()

    def check_protocol(self, protocol: Any) -> None:
        """Refuse a protocol whose per-coordinate clip would clip the noise (SecAgg's ``clip``)."""
        clip = getattr(protocol, "mean_bound", None)
        need = self.required_coordinate_clip()
        if clip is not None and self.client_noise_std() > 0 and clip < need:
            raise ConfigError(
                "protocol.params.clip",
                f"the protocol clips every coordinate to [-{clip:g}, {clip:g}] after the noise is added, which would "
                f"clip the noise (C={self.clip_norm:g} plus a share std of {self.client_noise_std():.4g}); set it to "
                f"at least C + {NOISE_CLIP_SIGMAS:g} std = {need:.4g}, or leave it unset to get that",
            )

    def pipeline(self) -> UpdateTransform:
        """The client transform chain for this round's clip bound and placement."""
        placement = self.section.placement
        return dp_client_pipeline(placement, self.clip_norm, self.z_updates,  # type: ignore[arg-type]
                                  min_survivors=self.min_survivors if placement == "distributed" else None,
                                  secure=self.secure, max_colluding=self.max_colluding)

    def planned_noise_multiplier(self) -> float:
        """The z a round will be accounted with in the worst case the config allows."""
        return self.z

    def would_exceed_budget(self) -> bool:
        b = self.section.epsilon_budget
        if b <= 0:
            return False
        return self.headline.epsilon_after(self.section.delta, self.planned_noise_multiplier(),
                                           self._budget_rate()) > b

    def finish_round(self, mean: np.ndarray, n_included: int, unclipped_bits: list[float],
                     rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """Noise the mean where the placement is central, account the round; return (mean, metrics)."""
        s = self.section
        z_eff = self.z
        if s.placement == "central":
            noisy_sum = add_central_noise(mean * n_included, self.clip_norm, self.z_updates, rng,
                                          secure=self.secure)
            mean = noisy_sum / n_included
            if self.clip_state is not None:
                frac = noisy_unclipped_fraction(float(sum(unclipped_bits)), self.clients_per_round,
                                                self.count_stddev, rng, secure=self.secure)
                z_eff = adaptive_effective_noise_multiplier(self.z_updates, self.count_stddev)
                self.clip_state = adaptive_clip_update(self.clip_state, frac)
        elif s.placement == "distributed":
            z_eff = survivor_noise_multiplier(self.z, n_included, self.min_survivors, allow_fewer=True,
                                              max_colluding=self.max_colluding)
        self.accountant.step(z_eff, self.server_sample_rate)
        self.accountant_outsiders.step(z_eff, self.sample_rate)
        eps_server = self.accountant.epsilon(s.delta)
        eps_out = self.accountant_outsiders.epsilon(s.delta)
        return mean, {"epsilon": eps_server if s.calibrate_against == "server" else eps_out,
                      "epsilon_server": eps_server, "epsilon_outsiders": eps_out, "noise_multiplier": z_eff,
                      "clip_norm": self.clip_norm, "dp_noise": self.noise_label}

    def check_resume(self, round_rows: list[dict[str, Any]]) -> None:
        """Refuse a checkpoint whose accountant history disagrees with the run's ``rounds.jsonl``.

        The rows record the noise multiplier of every accounted round; the checkpoint's server history must be
        exactly those steps (at q = 1) and its epsilon the last one reported. An edited checkpoint (say, half
        the history, so half the epsilon) is refused. Not covered: an adversary that edits both files
        consistently; keep the results folder where only the experimenter can write.
        """
        accounted = [r for r in round_rows if r.get("noise_multiplier") is not None and not r.get("aborted")]
        rebuilt = PrivacyAccountant(self.section.accountant)
        for r in accounted:
            rebuilt.step(float(r["noise_multiplier"]), self.server_sample_rate)
        if list(rebuilt.history) != [tuple(e) for e in self.accountant.history] or \
                self.accountant_outsiders.steps != self.accountant.steps:
            raise ConfigError("resume", f"the checkpoint's privacy accountant ({self.accountant.steps} steps) "
                                        f"disagrees with rounds.jsonl ({len(accounted)} accounted rounds); refusing "
                                        "to resume from an edited or mismatched checkpoint")
        if accounted:
            last = accounted[-1].get("epsilon_server", accounted[-1].get("epsilon"))
            now = self.accountant.epsilon(self.section.delta)
            if last is not None and not math.isclose(float(last), now, rel_tol=1e-9, abs_tol=1e-12):
                raise ConfigError("resume", f"the checkpoint's epsilon {now:.6g} disagrees with the {last:.6g} "
                                            "rounds.jsonl reports; refusing to resume")

    def state_dict(self) -> dict[str, Any]:
        return {"accountant": self.accountant.state_dict(),
                "accountant_outsiders": self.accountant_outsiders.state_dict(),
                "clip": self.clip_state.to_dict() if self.clip_state is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accountant = PrivacyAccountant.from_state_dict(state["accountant"])
        if "accountant_outsiders" not in state:
            raise ConfigError("resume", "checkpoint predates the two-accountant DP state (server and outsiders)")
        self.accountant_outsiders = PrivacyAccountant.from_state_dict(state["accountant_outsiders"])
        if state["clip"] is not None:
            self.clip_state = AdaptiveClipState.from_dict(state["clip"])
