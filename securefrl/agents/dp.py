"""Record-level DP-SGD inside the agents' local training (Abadi et al. 2016) through Opacus (Yousefpour et al. 2021).

Every gradient step of the networks trained on data (DQN's Q-network; PPO's actor and critic, clipped
*jointly*: one record's gradient over both networks has norm <= C) clips each record's gradient to L2
norm ``max_grad_norm`` C, sums, adds Gaussian noise of std ``noise_multiplier * C`` and divides by the
*expected* batch size. Per-sample gradients come from Opacus's ``GradSampleModule`` (modes ``hooks``,
``ew``, ``functorch``) or from ghost norms for the agents' plain MLPs (mode ``mlp``,
:func:`securefrl.privacy.dpsgd.mlp_clip_and_sum`); noise, averaging and the optimizer wrapping are Opacus's
``DPOptimizer`` (``DPOptimizerFastGradientClipping`` for ``mlp``). Global gradient-norm clipping
(``max_grad_norm`` of the agent config) and the FedProx/Ditto proximal term run *after* the noise: they
are post-processing or data-independent, so they cost no privacy.

What is protected, and under which assumptions (the accountant's claim holds only under these)
------------------------------------------------------------------------------------------------
*Privacy unit: one transition* ``(s, a, r, s', done)`` (PPO: plus the behaviour policy's log-probability
of ``a``) -- its presence or absence (add/remove neighbours, the relation Opacus's RDP and PRV
accountants analyse). Transitions of one episode are correlated; an episode of k transitions is covered
only by group privacy (roughly k times the epsilon), not by the reported number.

*Sampling: Poisson.* Every step draws its minibatch by including each record independently with
probability q (variable batch size, possibly empty); the agents implement exactly this when
``batch_sampling = "poisson"`` (:func:`poisson_indices`), and DP-SGD refuses any other sampling, since
uniform-with-replacement or shuffled fixed-size batches are different mechanisms that the accountant
would only approximate.

* **DQN.** The dataset is the replay buffer. At a step with N stored transitions, q = min(1, B / N) for
  ``batch_size`` B, so the expected batch is B. A transition may be sampled in many steps while it
  stays in the buffer, and the buffer lives across rounds; the accountant therefore composes over *every*
  gradient step the agent ever took, each with its own q (steps before a transition was stored or after
  it was evicted cost it nothing, so this is an upper bound for every transition). N is a function of
  the step count and treated as public.
* **PPO.** Each rollout is a fresh dataset, used by one update and then discarded. The update takes
  ``n_epochs * n_minibatches`` steps, each on a Poisson sample of the rollout with q = 1 / n_minibatches
  (expected minibatch = rollout size / n_minibatches; n_minibatches = 1 means q = 1, full-batch steps). A
  transition belongs to exactly one rollout, so its privacy loss composes over that rollout's steps only;
  later rollouts depend on it only through the released (noised) parameters, which is post-processing.
  The reported epsilon is the largest over the rollouts seen so far -- constant over rounds once the
  configuration is fixed. Two things in standard PPO would make one transition influence *other*
  records' per-sample gradients, breaking the per-sample sensitivity bound; DP-SGD refuses both:
  GAE with lambda > 0 (a reward enters the advantages of all earlier steps of its episode; with
  ``gae_lambda = 0`` the advantage ``r + gamma V(s') - V(s)`` depends on the transition alone) and
  per-minibatch advantage normalisation (``norm_adv``: every advantage depends on the minibatch mean/std).

The environment's later responses are new records, not functions of the protected one (the policy that
generated them is post-processing of noised parameters). Record-level DP composes with, and is separate
from, client-level DP on the federated updates (:mod:`securefrl.privacy.federated`).

Configuration
-------------
``privacy.dpsgd = true`` with ``privacy.dpsgd_noise_multiplier``, ``dpsgd_max_grad_norm`` and
``dpsgd_grad_sample_mode``; ``privacy.delta``, ``privacy.accountant`` and ``privacy.seeded_noise_experiment`` are shared
with client-level DP. The agent needs ``agent.params.batch_sampling = "poisson"`` (and, for PPO,
``gae_lambda = 0``, ``norm_adv = false``). Each client reports ``record_epsilon`` in its row of every
round it trains. Programmatically: :func:`enable_dp_sgd` on a built agent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from securefrl.errors import ConfigError

if TYPE_CHECKING:
    from securefrl.agents.base import Agent
    from securefrl.agents.replay import ReplayBuffer
    from securefrl.config import PrivacySection

DPSGD_AGENTS: tuple[str, ...] = ("dqn", "ppo")
"""Agents implementing record-level DP-SGD (SAC's critic targets use the current policy's samples); the
registry declares it as the ``dpsgd`` capability. Personalization methods checked with DP-SGD declare
``record_dp`` (:data:`securefrl.axes.ALGORITHMS`): they train each client's one agent through ``learn``."""
STATE_VERSION = 1


@dataclass(frozen=True)
class DPSGDSettings:
    """Record-level DP-SGD parameters of one agent (built from the config's ``privacy`` section).

    Secure by default, like the config path: ``DPSGDSettings(z, C)`` draws its noise from the OS CSPRNG;
    seeded noise needs ``secure=False`` explicitly (plus a seeded generator for :func:`enable_dp_sgd`).
    """

    noise_multiplier: float = 1.0
    """z: Gaussian noise of std z * C on each step's sum of clipped per-sample gradients."""
    max_grad_norm: float = 1.0
    """C: L2 bound of each record's gradient (over all privatised networks jointly); inf only with z = 0."""
    grad_sample_mode: str = "mlp"
    """Per-sample gradients: mlp (ghost norms, fastest, Linear-only networks) or Opacus's hooks, ew, functorch."""
    accountant: str = "rdp"
    """Opacus accountant of the record-level epsilon: rdp or prv."""
    delta: float = 1e-5
    """delta of the reported record-level (epsilon, delta)."""
    secure: bool = True
    """Noise (and the Poisson sample) from the OS CSPRNG, the default as on the config path; ``False`` draws them
    from a torch generator seeded from the rng given to :func:`enable_dp_sgd` (reproducible experiments only:
    whoever has the seed regenerates the noise and removes it)."""

    def validate(self, path: str = "privacy") -> None:
        """Refuse settings no step could run with, naming the config field."""
        from securefrl.privacy.accounting import MECHANISMS
        from securefrl.privacy.dpsgd import DPSGD_MODES, check_noise_and_clip

        if self.grad_sample_mode not in DPSGD_MODES:
            raise ConfigError(f"{path}.dpsgd_grad_sample_mode", f"must be one of {DPSGD_MODES}, "
                              f"got {self.grad_sample_mode!r}")
        if self.accountant not in MECHANISMS:
            raise ConfigError(f"{path}.accountant", f"must be one of {MECHANISMS}, got {self.accountant!r}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"{path}.delta", f"must lie in (0, 1), got {self.delta!r}")
        try:
            check_noise_and_clip(self.noise_multiplier, self.max_grad_norm)
        except ConfigError as err:
            raise ConfigError(f"{path}.dpsgd_{err.field}", str(err).split(": ", 1)[-1]) from None

    @classmethod
    def from_privacy(cls, privacy: PrivacySection) -> DPSGDSettings:
        """The settings ``privacy.dpsgd_*`` (plus the shared delta, accountant and noise source) describe.

        As for client-level noise, the noise comes from the OS CSPRNG under every protocol unless
        ``privacy.seeded_noise_experiment`` (seeded noise is removable by anyone with the config's seed, and
        record-level DP protects against the server, which has it: plug-in ``dpsgd_noise_regeneration``).
        """
        secure = privacy.noise_is_secure
        return cls(noise_multiplier=float(privacy.dpsgd_noise_multiplier),
                   max_grad_norm=float(privacy.dpsgd_max_grad_norm),
                   grad_sample_mode=str(privacy.dpsgd_grad_sample_mode), accountant=str(privacy.accountant),
                   delta=float(privacy.delta), secure=secure)


# --- Poisson sampling -----------------------------------------------------------------------
def poisson_indices(n: int, q: float, rng: np.random.Generator, secure: bool = True) -> np.ndarray:
    """Indices of a Poisson sample of ``range(n)``: each included independently with probability ``q``.

    The batch size is Binomial(n, q), possibly 0 -- the sampling the subsampled-Gaussian accountants analyse.
    One uniform draw per record from the OS CSPRNG (the default), or with ``secure=False`` from the agent's
    seeded numpy stream ``rng`` (experiments): amplification by sampling assumes the adversary does not know
    the sample, and a seeded sample is known to whoever has the seed.
    """
    if not 0 < q <= 1:
        raise ConfigError("sample_rate", f"must lie in (0, 1], got {q!r}")
    if secure:
        from securefrl.privacy.noise import secure_uniform

        return np.flatnonzero(secure_uniform(n) < q)
    return np.flatnonzero(rng.random(n) < q)


def replay_rate(batch_size: int, stored: int) -> tuple[float, float]:
    """``(q, expected batch size)`` of a Poisson sample with expected size ``batch_size`` from ``stored`` records."""
    q = min(1.0, batch_size / stored)
    return q, q * stored


def poisson_replay_batch(replay: ReplayBuffer, batch_size: int, rng: np.random.Generator, secure: bool = True
                         ) -> dict[str, torch.Tensor]:
    """A Poisson sample of the stored transitions, expected size ``batch_size`` (rate :func:`replay_rate`).

    Drawn from the OS CSPRNG unless ``secure=False`` (then from ``rng``), as in :func:`poisson_indices`.
    """
    q, _ = replay_rate(batch_size, len(replay))
    idx = poisson_indices(len(replay), q, rng, secure)
    return {
        "obs": torch.from_numpy(replay.obs[idx]),
        "actions": torch.from_numpy(replay.actions[idx]),
        "rewards": torch.from_numpy(replay.rewards[idx]),
        "next_obs": torch.from_numpy(replay.next_obs[idx]),
        "terminated": torch.from_numpy(replay.terminated[idx]),
    }


def poisson_step(agent: Agent, loss_fn: Callable[[], torch.Tensor], batch_len: int, sample_rate: float,
                 expected_batch_size: float, params: Sequence[torch.nn.Parameter], max_grad_norm: float) -> float:
    """One optimizer step of ``agent`` on a Poisson batch; returns the batch's mean loss (0 for an empty batch).

    The data gradient is ``sum_i grad_i / expected_batch_size`` -- the unbiased estimate of the mean gradient
    under Poisson sampling, and what Opacus releases. With ``agent.dpsgd`` set it is the DP-SGD gradient
    (per-sample clipped, noised); without, the plain gradient of the same estimate, so DP-SGD with zero noise
    and infinite clipping reproduces this step exactly. The proximal term and the global norm clip follow.
    """
    agent.optimizer.zero_grad(set_to_none=True)
    dp: RecordDPSGD | None = agent.dpsgd
    if dp is not None:
        loss = dp.backward(loss_fn, batch_len, expected_batch_size, sample_rate)
    elif batch_len > 0:
        loss = loss_fn()
        (loss * (batch_len / expected_batch_size)).backward()
    else:
        loss = None
    prox = agent.proximal_loss()
    if prox is not None:
        prox.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    agent.optimizer.step()
    return float(loss.detach()) if loss is not None else 0.0


# --- the per-agent DP-SGD engine --------------------------------------------------------------
class RecordDPSGD:
    """Per-sample clipping + noise for every gradient step of one agent, and its record-level accountant.

    Built by :func:`enable_dp_sgd`. The agent's networks stay what they were: federated parameter names,
    ``state_dict`` keys and the parameter spec do not change. Opacus modes wrap each network in a
    ``GradSampleModule`` whose hooks are enabled only inside :meth:`backward`, where the agent's network
    attributes point at the wrappers for the loss computation (needed by ``ew``, whose per-sample gradients
    come from the wrapper's forward) and are restored afterwards.
    """

    def __init__(self, agent: Agent, settings: DPSGDSettings, rng: np.random.Generator | None) -> None:
        from opacus.optimizers import DPOptimizer

        from securefrl.privacy.accounting import PrivacyAccountant
        from securefrl.privacy.dpsgd import check_noise_and_clip, dp_optimizer, mlp_linear_layers

        settings.validate()
        self.settings = settings
        self.agent = agent
        self.networks: dict[str, torch.nn.Module] = dict(agent.dp_networks())
        self.z, self.clip = check_noise_and_clip(settings.noise_multiplier, settings.max_grad_norm)
        optimizer: torch.optim.Optimizer = agent.optimizer
        trained = {id(p) for g in optimizer.param_groups for p in g["params"] if p.requires_grad}
        private = {id(p) for m in self.networks.values() for p in m.parameters() if p.requires_grad}
        if trained != private:
            raise ConfigError("privacy.dpsgd", f"agent {agent.name!r}'s optimizer trains parameters outside its "
                              f"DP-SGD networks {sorted(self.networks)}; they would be released unprotected")
        common: dict[str, Any] = {"noise_multiplier": self.z, "max_grad_norm": self.clip, "expected_batch_size": 1,
                                  "loss_reduction": "mean"}
        self.mode = settings.grad_sample_mode
        self.wrapped: dict[str, Any] = {}
        if self.mode == "mlp":
            self.layers = mlp_linear_layers(self.networks.values())
            self.optimizer: DPOptimizer = dp_optimizer(optimizer, rng, settings.secure, fast_gradient_clipping=True,
                                                       **common)
        else:
            from opacus.grad_sample.utils import prepare_module

            for name, net in self.networks.items():
                gsm = prepare_module(net, self.mode, batch_first=True, loss_reduction="mean")
                if hasattr(gsm, "disable_hooks"):
                    gsm.disable_hooks()
                self.wrapped[name] = gsm
            self.optimizer = dp_optimizer(optimizer, rng, settings.secure, **common)
        self.generator: torch.Generator | None = self.optimizer.generator  # None: OS CSPRNG noise
        self.accountant = PrivacyAccountant(settings.accountant)  # type: ignore[arg-type]
        self._closed: list[tuple[tuple[float, float, int], ...]] = []  # distinct histories of finished datasets
        self._unbounded = self.z == 0  # no noise: no finite epsilon
        self.steps = 0

    # --- one step ---------------------------------------------------------------------------
    def _set_hooks(self, on: bool) -> None:
        for gsm in self.wrapped.values():
            if hasattr(gsm, "enable_hooks"):
                gsm.enable_hooks() if on else gsm.disable_hooks()

    def backward(self, loss_fn: Callable[[], torch.Tensor], batch_len: int, expected_batch_size: float,
                 sample_rate: float) -> torch.Tensor | None:
        """Set ``.grad`` of the private parameters to the DP-SGD gradient of one Poisson batch; record the step.

        ``loss_fn`` computes the batch's *mean* loss through the agent's own ``compute_loss`` (records'
        losses must not depend on each other). The gradient is ``(sum_i clip_C(grad_i) + N(0, (zC)^2 I)) /
        expected_batch_size``; an empty batch releases noise alone. Returns the loss (None if empty).
        """
        from securefrl.privacy.dpsgd import LinearCapture, mlp_clip_and_sum

        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        opt.expected_batch_size = expected_batch_size
        loss: torch.Tensor | None = None
        if self.mode == "mlp":
            if batch_len > 0:
                with LinearCapture(self.layers) as capture:
                    loss = loss_fn()
                mlp_clip_and_sum(capture, loss, batch_len, self.clip)
            for p in opt.params:  # the clipped sum, where Opacus's fast-clipping optimizer adds noise to it
                p.summed_grad = p.grad if p.grad is not None else torch.zeros_like(p)
            opt.add_noise()  # p.grad = summed_grad + N(0, (z C)^2)
            opt.scale_grad()  # / expected batch size
            self._record(sample_rate)
            return loss
        if batch_len > 0:
            originals = {name: getattr(self.agent, name) for name in self.wrapped}
            self._set_hooks(True)
            try:
                for name, gsm in self.wrapped.items():
                    setattr(self.agent, name, gsm)
                try:
                    loss = loss_fn()
                finally:
                    for name, net in originals.items():
                        setattr(self.agent, name, net)
                loss.backward()
            finally:
                self._set_hooks(False)
        else:
            for p in opt.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
        opt.pre_step()
        self._record(sample_rate)
        return loss

    def _record(self, sample_rate: float) -> None:
        self.steps += 1
        if not self._unbounded:
            self.accountant.step(self.z, sample_rate)

    # --- accounting -------------------------------------------------------------------------
    def new_dataset(self) -> None:
        """Start a fresh dataset (a PPO rollout): records of the previous one take no part in later steps."""
        history = self.accountant.history
        if history and history not in self._closed:
            self._closed.append(history)
        self.accountant = type(self.accountant)(self.settings.accountant)  # type: ignore[arg-type]

    @property
    def history(self) -> tuple[tuple[float, float, int], ...]:
        """``(z, q, steps)`` runs of the current dataset (DQN: every step since the agent was built)."""
        return self.accountant.history

    def epsilon(self) -> float:
        """Record-level epsilon at ``settings.delta``: max over datasets (inf without noise, 0 before any step)."""
        if self._unbounded and self.steps > 0:
            return math.inf
        from securefrl.privacy.accounting import PrivacyAccountant

        eps = self.accountant.epsilon(self.settings.delta)
        for history in self._closed:
            past = PrivacyAccountant(self.settings.accountant)  # type: ignore[arg-type]
            for z, q, n in history:
                past.step(z, q, n)
            eps = max(eps, past.epsilon(self.settings.delta))
        return float(eps)

    def report(self) -> dict[str, float]:
        """What a client row carries: ``record_epsilon``, ``record_delta``, ``record_steps``."""
        return {"record_epsilon": self.epsilon(), "record_delta": self.settings.delta,
                "record_steps": float(self.steps)}

    # --- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Accountant histories, step count and (seeded mode) the noise generator's state."""
        return {
            "version": STATE_VERSION,
            "settings": {k: getattr(self.settings, k) for k in self.settings.__dataclass_fields__},
            "accountant": self.accountant.state_dict(),
            "closed": [[list(e) for e in h] for h in self._closed],
            "steps": self.steps,
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuse a checkpoint taken with other DP-SGD settings."""
        from securefrl.privacy.accounting import PrivacyAccountant

        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"DP-SGD checkpoint state must be a dict with version {STATE_VERSION}")
        mine = {k: getattr(self.settings, k) for k in self.settings.__dataclass_fields__}
        if state.get("settings") != mine:
            raise ValueError(f"checkpoint DP-SGD settings {state.get('settings')} differ from the agent's {mine}")
        self.accountant = PrivacyAccountant.from_state_dict(state["accountant"])
        self._closed = [tuple((float(z), float(q), int(n)) for z, q, n in h) for h in state["closed"]]
        self.steps = int(state["steps"])
        if state["generator"] is not None and self.generator is not None:
            self.generator.set_state(state["generator"])


# --- configuration ---------------------------------------------------------------------------
def check_agent_for_dp_sgd(name: str, agent_config: Any, path: str = "agent.params") -> None:
    """Refuse an agent configuration whose training would not meet the accountant's assumptions."""
    if name not in DPSGD_AGENTS:
        raise ConfigError("privacy.dpsgd", f"record-level DP-SGD is implemented for agents {DPSGD_AGENTS}, "
                          f"not {name!r}")
    if getattr(agent_config, "batch_sampling", None) != "poisson":
        raise ConfigError(f"{path}.batch_sampling", "DP-SGD's accounting assumes Poisson-sampled batches; set "
                          "batch_sampling = \"poisson\" (each record joins a step independently with rate q)")
    if name == "ppo":
        if agent_config.gae_lambda != 0:
            raise ConfigError(f"{path}.gae_lambda", "DP-SGD needs gae_lambda = 0: with lambda > 0 a transition's "
                              "reward enters the advantages of earlier transitions, so per-sample clipping no "
                              "longer bounds one transition's influence")
        if agent_config.norm_adv:
            raise ConfigError(f"{path}.norm_adv", "DP-SGD needs norm_adv = false: per-minibatch advantage "
                              "normalisation makes every record's loss depend on the whole minibatch")


def enable_dp_sgd(agent: Agent, settings: DPSGDSettings, rng: np.random.Generator | None) -> RecordDPSGD:
    """Turn on record-level DP-SGD for every later gradient step of ``agent``; returns (and sets) ``agent.dpsgd``.

    ``rng`` seeds the noise only with ``settings.secure=False`` (experiments); by default it is ignored and the
    noise comes from the OS CSPRNG. Call before training: steps taken
    earlier are not private and are not accounted.
    """
    check_agent_for_dp_sgd(agent.name, getattr(agent, "config", None), "config")
    if getattr(agent, "dpsgd", None) is not None:
        raise ConfigError("privacy.dpsgd", "DP-SGD is already enabled on this agent")
    agent.dpsgd = RecordDPSGD(agent, settings, rng)
    return agent.dpsgd
