"""Privacy accounting with Opacus's accountants, plus a budget that refuses the step that would exceed it.

The accountants analyse the Poisson-subsampled Gaussian mechanism: RDP (Mironov 2017; Mironov, Talwar
& Zhang 2019) or PRV (Gopi, Lee & Wutschitz 2021, tighter). The same wrapper serves

* client-level DP (DP-FedAvg, McMahan et al. 2018): one step per round, ``sample_rate`` = expected
  clients per round / total clients, ``noise_multiplier`` = the aggregate noise std over the clip norm
  (after dropouts, :func:`securefrl.privacy.noise.survivor_noise_multiplier`; with adaptive clipping,
  :func:`securefrl.privacy.clipping.adaptive_effective_noise_multiplier`);
* record-level DP-SGD (Abadi et al. 2016): one step per batch, ``sample_rate`` = batch size / records.

The analysis assumes Poisson sampling (each client joins a round independently with probability q);
a fixed-size sample without replacement is a different mechanism and is only approximated. The
amplification from sampling holds only against observers who do not know who was sampled (e.g. those
who see the released models). A server running secure aggregation learns who took part: against it,
account with ``sample_rate=1``; the guarantee then covers the content of a participant's update
(zero-out neighbours), not the fact that it participated.

State is the history of ``(noise_multiplier, sample_rate, steps)`` as plain JSON-able data, so a run
resumed from a checkpoint reports exactly the same epsilon.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from securefrl.errors import ConfigError, SecureFRLError
from securefrl.privacy._validate import positive, positive_int, probability

Mechanism = Literal["rdp", "prv"]
MECHANISMS: tuple[str, ...] = ("rdp", "prv")
STATE_VERSION = 1
_CACHE_SIZE = 64  # epsilon memo: the budget asks about the same prospective history several times

_ACCOUNTANTS: dict[str, type[IAccountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}


class PrivacyBudgetExceededError(SecureFRLError):
    """The requested step would take epsilon past the budget; it was not recorded."""

    def __init__(self, epsilon_after: float, budget_epsilon: float, delta: float) -> None:
        super().__init__(
            f"the step would raise epsilon to {epsilon_after:.6g} > budget {budget_epsilon:.6g} "
            f"(delta={delta:g}); training must stop before it"
        )
        self.epsilon_after = epsilon_after
        self.budget_epsilon = budget_epsilon
        self.delta = delta


def _check_mechanism(mechanism: str) -> str:
    if mechanism not in MECHANISMS:
        raise ConfigError("accountant", f"must be one of {MECHANISMS}, got {mechanism!r}")
    return mechanism


HistoryEntry = tuple[float, float, int]


def _merged(history: list[HistoryEntry], z: float, q: float, steps: int) -> list[HistoryEntry]:
    """Append ``(z, q, steps)``, merging with the last entry when ``(z, q)`` repeat, as Opacus does."""
    out = list(history)
    if out and out[-1][0] == z and out[-1][1] == q:
        out[-1] = (z, q, out[-1][2] + steps)
    else:
        out.append((z, q, steps))
    return out


@lru_cache(maxsize=1024)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one subsampled-Gaussian step at Opacus's default orders, cached per ``(z, q)``.

    A run repeats a handful of ``(z, q)`` pairs for hundreds of rounds; RDP composes additively, so the
    epsilon of any history is ``sum(steps * rdp(z, q))`` converted once -- no recomputation per round.
    """
    vec = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                   orders=RDPAccountant.DEFAULT_ALPHAS)
    out = np.asarray(vec, dtype=np.float64)
    out.setflags(write=False)
    return out


def _epsilon_of(mechanism: str, history: list[HistoryEntry], delta: float) -> float:
    if not history:
        return 0.0
    if mechanism == "rdp":  # same analysis as Opacus's RDPAccountant.get_epsilon, with the per-(z, q) cache
        total = sum(n * _rdp_per_step(z, q) for z, q, n in history)
        eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=total, delta=delta)
        return float(eps)
    accountant = _ACCOUNTANTS[mechanism]()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta))


class PrivacyAccountant:
    """Records Gaussian-mechanism steps and reports epsilon through Opacus's RDP or PRV accountant.

    Parameters
    ----------
    mechanism:
        ``"rdp"`` (fast, slightly loose) or ``"prv"`` (tight, slower for long heterogeneous histories).
    """

    def __init__(self, mechanism: Mechanism = "rdp") -> None:
        self._mechanism = _check_mechanism(mechanism)
        self._history: list[HistoryEntry] = []
        self._cache: dict[tuple[float, tuple[HistoryEntry, ...]], float] = {}

    @property
    def mechanism(self) -> str:
        """``"rdp"`` or ``"prv"``."""
        return self._mechanism

    @property
    def history(self) -> tuple[HistoryEntry, ...]:
        """Recorded ``(noise_multiplier, sample_rate, steps)`` runs, consecutive repeats merged."""
        return tuple(self._history)

    @property
    def steps(self) -> int:
        """Total number of recorded steps."""
        return sum(n for _, _, n in self._history)

    @staticmethod
    def _validate_step(noise_multiplier: float, sample_rate: float, steps: int) -> HistoryEntry:
        return (
            positive("noise_multiplier", noise_multiplier),
            probability("sample_rate", sample_rate),
            positive_int("steps", steps),
        )

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` applications of the subsampled Gaussian mechanism with ``(z, q)``."""
        z, q, n = self._validate_step(noise_multiplier, sample_rate, steps)
        self._history = _merged(self._history, z, q, n)

    def _epsilon_for(self, history: list[HistoryEntry], delta: float) -> float:
        key = (delta, tuple(history))
        if key not in self._cache:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = _epsilon_of(self._mechanism, history, delta)
        return self._cache[key]

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (PRV: Opacus's upper bound, so a guarantee, not an estimate)."""
        return self._epsilon_for(self._history, probability("delta", delta, allow_one=False))

    def epsilon_after(self, delta: float, noise_multiplier: float, sample_rate: float, steps: int = 1) -> float:
        """Epsilon that recording ``steps`` more ``(z, q)`` steps would give, without recording them."""
        z, q, n = self._validate_step(noise_multiplier, sample_rate, steps)
        return self._epsilon_for(_merged(self._history, z, q, n), probability("delta", delta, allow_one=False))

    def state_dict(self) -> dict[str, Any]:
        """JSON-able checkpoint: mechanism and history."""
        return {
            "version": STATE_VERSION,
            "mechanism": self._mechanism,
            "history": [[z, q, n] for z, q, n in self._history],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrivacyAccountant:
        """Rebuild an accountant from :meth:`state_dict`; malformed data raises :class:`ConfigError`."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ConfigError("accountant_state", f"expected a dict with version {STATE_VERSION}")
        accountant = cls(state.get("mechanism", "?"))  # type: ignore[arg-type]
        history = state.get("history")
        if not isinstance(history, list):
            raise ConfigError("accountant_state.history", "must be a list of [noise_multiplier, sample_rate, steps]")
        for i, entry in enumerate(history):
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                raise ConfigError(f"accountant_state.history[{i}]", f"must be [z, q, steps], got {entry!r}")
            z, q, n = cls._validate_step(*entry)
            accountant._history.append((z, q, n))  # kept as saved: merging would not change epsilon anyway
        return accountant


def noise_multiplier_for(
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: Mechanism = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier (to ``epsilon_tolerance``) keeping ``steps`` steps within the target.

    Opacus's ``get_noise_multiplier`` bisection: the result gives epsilon in
    ``[target_epsilon - epsilon_tolerance, target_epsilon]``.
    """
    positive("target_epsilon", target_epsilon)
    if accountant == "rdp":  # Opacus's bisection, on the cached per-(z, q) RDP vectors
        return _rdp_noise_multiplier(positive("target_epsilon", target_epsilon),
                                     probability("target_delta", target_delta, allow_one=False),
                                     probability("sample_rate", sample_rate), positive_int("steps", steps),
                                     positive("epsilon_tolerance", epsilon_tolerance))
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=probability("target_delta", target_delta, allow_one=False),
                sample_rate=probability("sample_rate", sample_rate),
                steps=positive_int("steps", steps),
                accountant=_check_mechanism(accountant),
                epsilon_tolerance=positive("epsilon_tolerance", epsilon_tolerance),
            )
        )
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError("target_epsilon", f"unreachable with noise multiplier <= 1e6: {err}") from err


_MAX_SIGMA = 1e6


def _rdp_noise_multiplier(target: float, delta: float, q: float, steps: int, tolerance: float) -> float:
    """The bisection of Opacus's ``get_noise_multiplier`` (same steps, same result) with cached RDP vectors."""

    def eps(sigma: float) -> float:
        return _epsilon_of("rdp", [(sigma, q, steps)], delta)

    eps_high, sigma_low, sigma_high = float("inf"), 0.0, 10.0
    while eps_high > target:
        sigma_high = 2 * sigma_high
        eps_high = eps(sigma_high)
        if sigma_high > _MAX_SIGMA:
            raise ConfigError("target_epsilon", "unreachable with noise multiplier <= 1e6: the budget is too low")
    while target - eps_high > tolerance:
        sigma = (sigma_low + sigma_high) / 2
        e = eps(sigma)
        if e < target:
            sigma_high, eps_high = sigma, e
        else:
            sigma_low = sigma
    return float(sigma_high)


class PrivacyBudget:
    """An ``(epsilon, delta)`` budget over a :class:`PrivacyAccountant` that stops before it is exceeded.

    Call :meth:`spend` before each round (or batch): it records the step if epsilon stays within the
    budget and otherwise raises :class:`PrivacyBudgetExceededError` without recording, so the model is
    never released with more privacy loss than budgeted.
    """

    def __init__(self, epsilon: float, delta: float, accountant: PrivacyAccountant | None = None) -> None:
        self.epsilon = positive("epsilon", epsilon)
        self.delta = probability("delta", delta, allow_one=False)
        self.accountant = accountant if accountant is not None else PrivacyAccountant()

    def spent(self) -> float:
        """Epsilon spent so far at the budget's delta."""
        return self.accountant.epsilon(self.delta)

    def would_exceed(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> bool:
        """Whether recording ``steps`` more ``(z, q)`` steps would take epsilon past the budget."""
        return self.accountant.epsilon_after(self.delta, noise_multiplier, sample_rate, steps) > self.epsilon

    def spend(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> float:
        """Record the steps if they fit and return the new epsilon; otherwise raise and record nothing."""
        eps = self.accountant.epsilon_after(self.delta, noise_multiplier, sample_rate, steps)
        if eps > self.epsilon:
            raise PrivacyBudgetExceededError(eps, self.epsilon, self.delta)
        self.accountant.step(noise_multiplier, sample_rate, steps)
        return eps

    def remaining_steps(self, noise_multiplier: float, sample_rate: float, max_steps: int = 10**6) -> int:
        """How many more ``(z, q)`` steps fit in the budget (at most ``max_steps``), by bisection."""
        positive_int("max_steps", max_steps)
        if self.would_exceed(noise_multiplier, sample_rate, 1):
            return 0
        lo, hi = 1, 1  # lo always fits
        while hi < max_steps and not self.would_exceed(noise_multiplier, sample_rate, hi):
            lo, hi = hi, min(2 * hi, max_steps)
        if not self.would_exceed(noise_multiplier, sample_rate, hi):
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.would_exceed(noise_multiplier, sample_rate, mid):
                hi = mid
            else:
                lo = mid
        return lo

    def state_dict(self) -> dict[str, Any]:
        """JSON-able checkpoint of the budget and its accountant."""
        return {"epsilon": self.epsilon, "delta": self.delta, "accountant": self.accountant.state_dict()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrivacyBudget:
        """Inverse of :meth:`state_dict`."""
        if not isinstance(state, dict) or not {"epsilon", "delta", "accountant"} <= set(state):
            raise ConfigError("budget_state", "expected a dict with keys epsilon, delta, accountant")
        return cls(state["epsilon"], state["delta"], PrivacyAccountant.from_state_dict(state["accountant"]))
