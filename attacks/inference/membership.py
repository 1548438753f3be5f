"""Trajectory membership inference: were these transitions in a client's training data?

The score is the loss-threshold attack of Yeom et al. (2018, "Privacy Risk in Machine Learning:
Analyzing the Connection to Overfitting", CSF) — members tend to have lower loss under a model trained on
them — applied to RL trajectories with the agent's own training loss, and calibrated by a reference model
where the adversary has one (difficulty calibration, Watson et al. 2022, "On the Importance of Difficulty
Calibration in Membership Inference Attacks", ICLR; the offline reference of Carlini et al. 2022's LiRA):
``score = L_reference(window) - L_target(window)``, i.e. how much the round's training lowered the loss on
that window. Threshold-free quality is the ROC AUC over member and non-member windows (0.5 = chance),
the metric of Shokri et al. 2017's evaluation.

Threat models (the three adversaries reported by :func:`membership_study`)
--------------------------------------------------------------------------
* ``server`` — the honest-but-curious server with its :class:`~securefrl.behaviour.ServerView`: under
  plaintext it rebuilds the client's local model ``theta_r + delta_i`` (target) against ``theta_r``
  (reference); under SecAgg it only has the new global model ``theta_{r+1}``; under CKKS it has neither
  (no plaintext model or update ever reaches it), so its score is constant: AUC 0.5.
* ``released`` — any participant holding the global models released each round (a curious client;
  every protocol releases them): target ``theta_{r+1}``, reference ``theta_r``. Secure aggregation does not
  protect the release; only DP noise on the updates does.
* ``final`` — an outsider with only the final released model, no reference: Yeom's uncalibrated
  ``-L_final(window)``.

All three see the candidate transitions (the challenge) and know the training algorithm and its
hyperparameters; none controls anything in the federation. Members are the windows of a client's real
training transitions of a round (recorded by a :class:`~attacks.inference.common.TrajectoryTap`, the
challenger's ground truth); non-members are windows collected by an identical fresh agent from the same
broadcast model, in the same client environment, with other seeds — same distribution, not trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from attacks.base import AttackError, Knowledge, ThreatModel
from attacks.inference.common import ObservedRound, ServerRecorder, Transitions, roc_auc, tap_agent
from securefrl.agents import make_agent
from securefrl.config import ExperimentConfig
from securefrl.errors import ConfigError
from securefrl.federation import Federation
from securefrl.seeding import derive_seed
from securefrl.transforms import UpdateTransform

__all__ = ["ADVERSARIES", "THREAT_MODELS", "MembershipResult", "WindowScorer", "membership_study"]

ADVERSARIES: tuple[str, ...] = ("server", "released", "final")

THREAT_MODELS: dict[str, ThreatModel] = {
    "server": ThreatModel("the honest-but-curious server", Knowledge.OWN,
                          "nothing; it scores candidate transitions with the models its view reveals"),
    "released": ThreatModel("a curious participant holding the per-round released global models", Knowledge.OWN,
                            "nothing; it scores candidates with consecutive released models"),
    "final": ThreatModel("an outsider holding only the final released model", Knowledge.OWN,
                         "nothing; uncalibrated loss threshold"),
}


class WindowScorer:
    """The agent's training loss on windows of transitions, under any flat parameter vector.

    PPO: targets as the client computed them — truncation bootstrapped and GAE returns/advantages from the
    *reference* critic — then ``0.5 (V(s) - R)^2 - policy_weight * A_norm * log pi(a|s)`` averaged over the
    window. The critic's regression loss is the part of PPO's objective that fits per-sample targets (and
    so memorises them); the surrogate's advantage-weighted log-likelihood mostly adds noise (on CartPole it
    scored AUC ~0.53 against ~0.63 for the critic loss with the same windows), hence ``policy_weight=0``.
    DQN: the Huber TD error towards ``r + gamma (1 - done) max_a Q_ref(s', a)``.
    """

    def __init__(self, config: ExperimentConfig, env_fn: Any, policy_weight: float = 0.0) -> None:
        self.policy_weight = float(policy_weight)
        self.agent = make_agent(config.agent.name, env_fn, config.agent_config(), seed=0)
        self.actor_critic = "actor_critic" in self.agent.capabilities
        if not self.actor_critic and "q_learning" not in self.agent.capabilities:
            raise ConfigError("agent.name", "membership scoring supports ppo and dqn (actor_critic or q_learning "
                              f"agents), got {config.agent.name!r}")

    def _targets(self, w: Transitions) -> dict[str, torch.Tensor]:
        a = self.agent
        obs = torch.from_numpy(np.asarray(w.obs, dtype=np.float32))
        nxt = torch.from_numpy(np.asarray(w.next_obs, dtype=np.float32))
        rew = torch.from_numpy(np.asarray(w.rewards, dtype=np.float32))
        term = torch.from_numpy(np.asarray(w.terminated, dtype=np.float32))
        trunc = torch.from_numpy(np.asarray(w.truncated, dtype=np.float32))
        with torch.no_grad():
            if self.actor_critic:
                cfg = a.config
                v = a.state_values(obs)
                v_next = a.state_values(nxt)
                rew = rew + cfg.gamma * v_next * trunc * (1 - term)  # the rollout's truncation bootstrap
                done = torch.clamp(term + trunc, max=1.0)
                adv = torch.zeros_like(rew)
                gae = torch.tensor(0.0)
                for t in reversed(range(len(rew))):
                    next_value = v_next[t] if t == len(rew) - 1 else v[t + 1]
                    delta = rew[t] + cfg.gamma * next_value * (1 - done[t]) - v[t]
                    gae = delta + cfg.gamma * cfg.gae_lambda * (1 - done[t]) * gae
                    adv[t] = gae
                return {"obs": obs, "returns": adv + v, "adv": adv / (adv.std() + 1e-8) if len(adv) > 1 else adv}
            y = rew + a.config.gamma * (1 - term) * a.q_values(nxt).max(dim=1).values
            return {"obs": obs, "y": y}

    def _loss(self, w: Transitions, tg: dict[str, torch.Tensor]) -> float:
        a = self.agent
        act = torch.from_numpy(np.asarray(w.actions, dtype=np.int64)).view(-1, 1)
        with torch.no_grad():
            if self.actor_critic:
                logp = torch.log_softmax(a.policy_logits(tg["obs"]), dim=-1).gather(1, act).squeeze(1) \
                    if self.policy_weight else torch.zeros(len(act))
                v = a.state_values(tg["obs"])
                loss = 0.5 * (v - tg["returns"]) ** 2 - self.policy_weight * tg["adv"] * logp
            else:
                q = a.q_values(tg["obs"]).gather(1, act).squeeze(1)  # q_learning
                loss = torch.nn.functional.smooth_l1_loss(q, tg["y"], reduction="none")
        return float(loss.mean())

    def scores(self, windows: Sequence[Transitions], target: np.ndarray | None,
               reference: np.ndarray | None) -> np.ndarray:
        """Membership score per window: ``L_ref - L_target`` (calibrated) or ``-L_target``; 0 without a target."""
        if target is None:
            return np.zeros(len(windows))
        ref = reference if reference is not None else target
        self.agent.set_flat(np.asarray(ref, dtype=np.float32))
        targets = [self._targets(w) for w in windows]
        base = [self._loss(w, t) for w, t in zip(windows, targets, strict=True)] if reference is not None else None
        self.agent.set_flat(np.asarray(target, dtype=np.float32))
        loss = np.array([self._loss(w, t) for w, t in zip(windows, targets, strict=True)])
        return (np.asarray(base) - loss) if base is not None else -loss


@dataclass
class MembershipResult:
    """ROC AUC of one adversary's membership scores (0.5 = chance) on ``n_members`` + ``n_nonmembers`` windows."""

    protocol: str
    adversary: str
    mode: str
    auc: float
    n_members: int
    n_nonmembers: int

    @property
    def advantage(self) -> float:
        """``2 AUC - 1``: 0 at chance, 1 for a perfect attack."""
        return 2.0 * self.auc - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "advantage": self.advantage}


def _server_models(obs: ObservedRound, client_id: int) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(target, reference, mode) of the server adversary for one client and round."""
    own = obs.individual_update(client_id)
    if own is not None and obs.server_model_before is not None:
        return obs.server_model_before + own, obs.server_model_before, "individual"
    if obs.server_model_after is not None:
        return obs.server_model_after, obs.server_model_before, "aggregate"
    return None, None, "none"


def membership_study(config: ExperimentConfig, pipeline: UpdateTransform | None = None, window: int = 16,
                     targets: Sequence[int] | None = None, seed: int = 0) -> list[MembershipResult]:
    """Run ``config``'s federation (its protocol, with ``pipeline``), then score every adversary.

    ``targets`` are the clients whose rounds are challenged (default: every honest client); each of
    their sampled rounds contributes its training windows (members) and as many windows from a fresh
    agent on the same broadcast model and environment (non-members).
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError("window", f"must be an integer >= 1, got {window!r}")
    fed = Federation(config, pipeline=pipeline)
    recorder = ServerRecorder.attach(fed)
    chosen = [c.client_id for c in fed.clients if not c.malicious] if targets is None else [int(t) for t in targets]
    taps = {cid: tap_agent(fed.clients[cid].agent) for cid in chosen}
    members: dict[tuple[int, int], list[Transitions]] = {}
    for _ in range(config.federation.rounds):
        rnd = fed.round
        fed.run_round()
        for cid, tt in taps.items():
            wins = [w for t in tt if (tr := t.drain()) is not None for w in tr.windows(window)]
            if wins:
                members[(rnd, cid)] = wins
    if not members:
        raise AttackError("no challenged client trained in any round (check targets and client_fraction)")
    agent_cfg = config.agent_config()
    nonmembers: dict[tuple[int, int], list[Transitions]] = {}
    for (rnd, cid), wins in members.items():
        spec = fed.clients[cid].env_spec
        shadow = make_agent(config.agent.name, spec.make, agent_cfg, seed=derive_seed(seed, "nonmember", rnd, cid)
                            % (2**31))
        shadow_taps = tap_agent(shadow)
        shadow.set_flat(recorder.rounds[rnd].broadcast_before.astype(np.float32))
        shadow.reseed(derive_seed(seed, "nonmember-train", rnd, cid) % (2**31))
        shadow.learn(config.federation.local_steps)
        nwins = [w for t in shadow_taps if (tr := t.drain()) is not None for w in tr.windows(window)]
        nonmembers[(rnd, cid)] = nwins[: len(wins)]
    scorer = WindowScorer(config, fed.clients[chosen[0]].env_spec.make)
    final = recorder.rounds[-1].broadcast_after
    results = []
    for adversary in ADVERSARIES:
        scores: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        modes = set()
        for key in members:
            rnd, cid = key
            obs = recorder.rounds[rnd]
            if adversary == "server":
                target, reference, mode = _server_models(obs, cid)
            elif adversary == "released":
                target, reference, mode = obs.broadcast_after, obs.broadcast_before, "released"
            else:
                target, reference, mode = final, None, "final"
            modes.add(mode)
            for lab, wins in ((1, members[key]), (0, nonmembers[key])):
                scores.append(scorer.scores(wins, target, reference))
                labels.append(np.full(len(wins), lab))
        s, y = np.concatenate(scores), np.concatenate(labels)
        results.append(MembershipResult(config.protocol.name, adversary, "/".join(sorted(modes)), roc_auc(s, y),
                                        int(y.sum()), int(len(y) - y.sum())))
    return results
