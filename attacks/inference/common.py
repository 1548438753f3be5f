"""What curious parties observe, and how inference attacks are scored.

Views are built the way the round loop exposes them, never by reading client internals:

* :class:`ServerRecorder` is a ``Federation`` observer. Each round it keeps the :class:`ServerView`
  (exactly what the server saw: payload bytes, the combined payload, individual updates only if the
  protocol reveals them, the opened mean only if the server can open it) together with the global model
  the server broadcast before and after the round *if the server knows it* (plaintext, SecAgg: it opens
  the mean and steps the model itself; CKKS: it never sees a plaintext aggregate, so it does not).
  It also keeps the model every participating client receives (``broadcast_*``), which is what a curious
  client or anyone holding the released model sees, under every protocol.
* :class:`TrajectoryTap` records the transitions an environment emits. The *challenger* of a
  membership game uses it to know which transitions were training data; the adversary never reads it.

Scoring helpers (ROC AUC, R^2, majority-class chance, matched reconstruction error) are written out here
because the project does not depend on scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from attacks.base import AttackError
from securefrl.behaviour import ServerView
from securefrl.errors import ConfigError
from securefrl.federation import Federation
from securefrl.transforms import UpdateTransform

__all__ = [
    "DP_PLACEMENTS",
    "ObservedRound",
    "ServerRecorder",
    "TrajectoryTap",
    "Transitions",
    "dp_pipeline",
    "majority_chance",
    "matched_errors",
    "r2_score",
    "roc_auc",
    "tap_agent",
]

#: DP settings the inference studies accept: none, or Gaussian noise on every update (securefrl.privacy).
DP_PLACEMENTS: tuple[str, ...] = ("none", "local", "distributed")


def dp_pipeline(placement: str, clip: float, noise_multiplier: float, n_sampled: int, *, secure: bool = True
                ) -> UpdateTransform | None:
    """The client update pipeline of a DP setting (``None`` = the federation default, no noise).

    ``local``: every client adds ``N(0, (z C)^2)`` to its clipped update (private against the server on its
    own). ``distributed``: every client adds a ``1/n_sampled`` share of that variance, so only the *sum*
    carries the full noise — sound under SecAgg/CKKS, weak under plaintext where the server sees each
    update with its share only (Truex et al. 2019; Kairouz et al. 2021). Both come from
    :func:`securefrl.privacy.dp_client_pipeline`, with its secure default (OS CSPRNG noise); ``secure=False``
    seeds the noise from the round loop's streams (the attack matrix does, so its rows are reproducible).
    """
    from securefrl.privacy import dp_client_pipeline

    if placement not in DP_PLACEMENTS:
        raise ConfigError("dp", f"must be one of {list(DP_PLACEMENTS)}, got {placement!r}")
    if placement == "none":
        return None
    return dp_client_pipeline(placement, clip, noise_multiplier,  # type: ignore[arg-type]
                              min_survivors=n_sampled if placement == "distributed" else None, secure=secure)


@dataclass(frozen=True)
class ObservedRound:
    """One round as a curious party saw it.

    ``view`` is the server's :class:`ServerView`. ``server_model_before``/``after`` are the global model
    before and after the round *as known to the server* (``None`` under CKKS). ``broadcast_before``/
    ``after`` are the models every participating client receives (a curious client's knowledge).
    """

    view: ServerView
    server_model_before: np.ndarray | None
    server_model_after: np.ndarray | None
    broadcast_before: np.ndarray
    broadcast_after: np.ndarray

    @property
    def round(self) -> int:
        return self.view.round

    def individual_update(self, client_id: int) -> np.ndarray | None:
        """The client's update if the protocol revealed it to the server, else ``None``."""
        if self.view.individual_updates is None:
            return None
        upd = self.view.individual_updates.get(client_id)
        return None if upd is None else np.asarray(upd, dtype=np.float64)


@dataclass
class ServerRecorder:
    """``Federation`` observer that keeps an :class:`ObservedRound` per round (use :meth:`attach`)."""

    federation: Federation
    rounds: list[ObservedRound] = field(default_factory=list)

    def __post_init__(self) -> None:
        fed = self.federation
        assert fed.protocol is not None
        self._knows = bool(fed.protocol.server_can_open)
        self._broadcast = fed.global_params.astype(np.float64).copy()

    @classmethod
    def attach(cls, federation: Federation) -> ServerRecorder:
        """Record every later round of ``federation``."""
        rec = cls(federation)
        federation.observers.append(rec)
        return rec

    def __call__(self, view: ServerView) -> None:
        after = self.federation.global_params.astype(np.float64).copy()
        before = self._broadcast
        self.rounds.append(ObservedRound(view, before if self._knows else None, after if self._knows else None,
                                         before, after))
        self._broadcast = after


# ---------------------------------------------------------------------------------------------------
# ground truth of the membership game
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transitions:
    """Consecutive transitions of one environment copy: ``obs[t] --actions[t]--> next_obs[t]``."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    next_obs: np.ndarray

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def window(self, start: int, stop: int) -> Transitions:
        return Transitions(*(a[start:stop] for a in (self.obs, self.actions, self.rewards, self.terminated,
                                                      self.truncated, self.next_obs)))

    def windows(self, length: int) -> list[Transitions]:
        """Non-overlapping windows of ``length`` transitions (a trailing remainder is dropped)."""
        return [self.window(s, s + length) for s in range(0, len(self) - length + 1, length)]


class TrajectoryTap(gym.Wrapper):
    """Records every transition that passes through it; :meth:`drain` returns and clears them."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._obs: np.ndarray | None = None
        self._rows: list[tuple[np.ndarray, Any, float, bool, bool, np.ndarray]] = []

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._obs = np.asarray(obs, dtype=np.float32).copy()
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        nxt = np.asarray(obs, dtype=np.float32).copy()
        if self._obs is not None:
            self._rows.append((self._obs, action, float(reward), bool(terminated), bool(truncated), nxt))
        self._obs = nxt
        return obs, reward, terminated, truncated, info

    def drain(self) -> Transitions | None:
        rows, self._rows = self._rows, []
        if not rows:
            return None
        obs, act, rew, term, trunc, nxt = zip(*rows, strict=True)
        return Transitions(np.stack(obs), np.asarray(act), np.asarray(rew, dtype=np.float32),
                           np.asarray(term), np.asarray(trunc), np.stack(nxt))


def tap_agent(agent: Any) -> list[TrajectoryTap]:
    """Wrap the environment copies an agent trains on (its ``pool.envs``) with taps; returns the taps.

    This is the membership game's challenger labelling the training data, not an adversary capability.
    """
    pool = getattr(agent, "pool", None)
    if pool is None or not hasattr(pool, "envs"):
        raise AttackError(f"agent {type(agent).__name__} has no environment pool to tap")
    taps = []
    for i, env in enumerate(pool.envs):
        if not isinstance(env, TrajectoryTap):
            env = TrajectoryTap(env)
            obs = getattr(pool, "obs", None)
            if obs is not None:  # the pool already reset this copy: start from its current observation
                env._obs = np.asarray(obs[i], dtype=np.float32).copy()
        tap = env
        pool.envs[i] = tap
        taps.append(tap)
    return taps


# ---------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties): P(score_member > score_non)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        raise AttackError(f"AUC needs both classes, got {n1} positives and {n0} negatives")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination ``1 - SSE/SST`` (0 = predicting the truth's mean; < 0 = worse)."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    sst = float(((t - t.mean()) ** 2).sum())
    if sst == 0:
        return float("nan")
    return 1.0 - float(((t - p) ** 2).sum()) / sst


def majority_chance(labels: np.ndarray) -> float:
    """Accuracy of the best constant guess: the frequency of the most common class."""
    y = np.asarray(labels)
    _, counts = np.unique(y, return_counts=True)
    return float(counts.max() / counts.sum())


def matched_errors(estimates: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(MSE, mean cosine similarity) after matching each true state to a distinct estimate (Hungarian).

    With more estimates than true states (one candidate per neuron), each true state gets its best
    distinct candidate — the usual optimistic "best match" protocol of gradient-inversion papers; compare
    against the same protocol applied to guesses from the prior.
    """
    est = np.atleast_2d(np.asarray(estimates, dtype=np.float64))
    tru = np.atleast_2d(np.asarray(truth, dtype=np.float64))
    if est.shape[1] != tru.shape[1] or est.shape[0] < 1:
        raise AttackError(f"estimates {est.shape} and truth {tru.shape} do not match")
    cost = ((tru[:, None, :] - est[None, :, :]) ** 2).mean(axis=2)
    if est.shape[0] < tru.shape[0]:
        cols = cost.argmin(axis=1)
        rows = np.arange(tru.shape[0])
    else:
        rows, cols = linear_sum_assignment(cost)
    mse = float(cost[rows, cols].mean())
    a, b = tru[rows], est[cols]
    cos = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
    return mse, float(cos.mean())
