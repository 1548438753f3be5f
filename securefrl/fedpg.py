"""FedPG-BR's variance-reduced policy gradient, as gradient mode's estimator (``federation.estimator = "fedpg-br"``).

Fan, Ma, Dai, Jing, Tan and Low (NeurIPS 2021), "Fault-Tolerant Federated Reinforcement Learning with
Theoretical Guarantee": every round (their iteration ``t``) is an SCSG / SVRPG loop (Lei & Jordan 2017;
Papini et al. 2018, "Stochastic Variance-Reduced Policy Gradient"):

1. **anchor**: every sampled client samples ``B = federation.fedpg_batch`` episodes with the server's
   policy ``theta_0`` and sends ``mu_k``, the mean GPOMDP gradient over them (Baxter & Bartlett 2001);
   the server aggregates them, with FedPG-BR's Byzantine filter (``federation.aggregator = "fedpg_br"``,
   :class:`securefrl.aggregators.FedPGBRFilter`) or any other rule / protocol, into ``mu``;
2. **inner loop**: ``N ~ Geometric(b / (B + b))`` steps (mean ``(B + b) / b``, drawn from the seeded stream
   ``("fedpg-br", round)``). Step ``n`` moves along ``v_n = mu + mean_j [g(tau_j | theta_n) -
   w(tau_j) g(tau_j | theta_0)]`` over ``b = federation.fedpg_minibatch`` fresh episodes ``tau_j`` of
   ``theta_n``, with the importance weight ``w(tau) = prod_h pi_0(a_h | s_h) / pi_n(a_h | s_h)``; at
   ``n = 0``, ``theta_n = theta_0`` and the correction is exactly zero, so ``v_0 = mu``.

Adaptation to a server without an environment (ours): FedPG-BR's server samples the inner-loop episodes
itself. Here every sampled client samples ``b`` of them and sends its correction, which goes through the
same pipeline as the anchor (clip, DP, protocol or robust rule); the server adds ``mu``. The step is the
gradient mode's server Adam (the agent's lr) on ``-v_n`` (we minimise the negative return), where the paper
states plain gradient ascent; ``w`` is capped at ``exp(+-MAX_LOG_WEIGHT)`` against the product's blow-up on
long episodes. Episodes are sampled from freshly reset environments (seeded from the agent's stream), so
the environments do not persist across rounds here. The estimator trains the actor of the PPO agent only
(REINFORCE-style; the critic gets a zero gradient and stays put).

A round's environment steps are what its episodes took, counted in ``env_steps`` as in every mode.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from securefrl.errors import ConfigError
from securefrl.gradient import FedSGD
from securefrl.seeding import derive_rng, train_seed
from securefrl.tasks import TrainResult, TrainTask

if TYPE_CHECKING:
    from securefrl.config import ExperimentConfig
    from securefrl.federation import Client

__all__ = ["MAX_LOG_WEIGHT", "FedPGBR", "check_estimator", "gpomdp_surrogate", "sample_episodes"]

MAX_LOG_WEIGHT = float(np.log(100.0))
"""Cap on ``|log w(tau)|`` of an importance weight (ours; the paper leaves the product unbounded)."""


def sample_episodes(agent: Any, n_episodes: int) -> tuple[list[dict[str, np.ndarray]], int]:
    """``n_episodes`` whole episodes of ``agent``'s stochastic policy from freshly reset env copies.

    Returns the episodes (``obs``, ``actions``, ``rewards``) and the environment steps taken, including those
    of episodes still running when enough had finished (they are discarded, but were paid for).
    """
    import torch

    pool = agent.pool
    pool.reset([int(s) for s in agent.streams.numpy.integers(0, 2**31 - 1, size=pool.n)])
    running: list[list[tuple[np.ndarray, int, float]]] = [[] for _ in range(pool.n)]
    done: list[dict[str, np.ndarray]] = []
    steps = 0
    while len(done) < n_episodes:
        obs = pool.obs.copy()
        with torch.no_grad():
            actions, _ = agent._sample(agent.actor(torch.from_numpy(obs)))
        step = pool.step(actions)
        steps += pool.n
        for i in range(pool.n):
            running[i].append((obs[i], int(actions[i]), float(step.rewards[i])))
            if step.terminated[i] or step.truncated[i]:
                ep = running[i]
                done.append({"obs": np.stack([o for o, _, _ in ep]).astype(np.float32),
                             "actions": np.array([a for _, a, _ in ep], dtype=np.int64),
                             "rewards": np.array([r for _, _, r in ep], dtype=np.float64)})
                running[i] = []
    agent.num_timesteps += steps
    return done[:n_episodes], steps


def _logp(agent: Any, ep: dict[str, np.ndarray]) -> Any:
    """Log-probabilities of an episode's actions under the agent's current actor (a differentiable tensor)."""
    import torch

    logits = agent.actor(torch.from_numpy(ep["obs"]))
    return torch.log_softmax(logits, dim=-1).gather(1, torch.from_numpy(ep["actions"]).view(-1, 1)).squeeze(1)


def gpomdp_surrogate(agent: Any, episodes: list[dict[str, np.ndarray]], gamma: float,
                     weights: np.ndarray | None = None) -> Any:
    """``-mean_i w_i sum_h log pi(a_h | s_h) sum_{t >= h} gamma^t r_t``: its gradient is (minus) GPOMDP's."""
    import torch

    total = torch.zeros(())
    for i, ep in enumerate(episodes):
        disc = gamma ** np.arange(len(ep["rewards"])) * ep["rewards"]
        to_go = torch.from_numpy(np.cumsum(disc[::-1])[::-1].astype(np.float32).copy())
        w = 1.0 if weights is None else float(weights[i])
        total = total - w * (_logp(agent, ep) * to_go).sum()
    return total / max(len(episodes), 1)


def _log_weights(agent: Any, episodes: list[dict[str, np.ndarray]], theta_0: np.ndarray,
                 theta_n: np.ndarray) -> np.ndarray:
    """``log prod_h pi_0(a_h | s_h) / pi_n(a_h | s_h)`` per episode, capped at ``+-MAX_LOG_WEIGHT``."""
    import torch

    from securefrl.agents.common import load_flat

    out = np.zeros(len(episodes))
    with torch.no_grad():
        for params, sign in ((theta_0, 1.0), (theta_n, -1.0)):
            load_flat(agent, params)
            out += sign * np.array([float(_logp(agent, ep).double().sum()) for ep in episodes])
    return np.clip(out, -MAX_LOG_WEIGHT, MAX_LOG_WEIGHT)


class FedPGBR(FedSGD):
    """Gradient mode with FedPG-BR's SCSG estimator (see the module docstring)."""

    def select(self, sampled: list[int], round_id: int) -> dict[int, dict[str, Any]]:
        out = super().select(sampled, round_id)
        fed = self.config.federation
        p = fed.fedpg_minibatch / (fed.fedpg_batch + fed.fedpg_minibatch)
        self._n_steps = int(derive_rng(self.config.seed, "fedpg-br", round_id).geometric(p))
        self._theta_0 = self.fed.global_params.copy()
        self._left = {c: self._n_steps for c in sampled}
        self._anchor = True
        self._mu: np.ndarray | None = None
        self._episodes: dict[int, list[float]] = {c: [] for c in sampled}
        return out

    def train_tasks(self, client: Client, round_id: int) -> list[TrainTask]:
        cid = client.client_id
        task = TrainTask(cid, round_id, 0, train_seed(self.config.seed, round_id, cid))
        task.run = partial(self._work_task, cid, task)
        return [task]

    def _work_task(self, cid: int, task: TrainTask, agent: Any) -> dict[str, float]:
        task.steps = self._sample_and_estimate(cid, agent)  # the federation counts the anchor's steps
        return {}

    def _busy(self, cid: int) -> bool:
        return self._left[cid] > 0

    def _work(self, cid: int, agent: Any) -> dict[str, float]:  # an inner step
        self.fed.clients[cid].env_steps += self._sample_and_estimate(cid, agent)
        return {}

    def _sample_and_estimate(self, cid: int, agent: Any) -> int:
        """One client's anchor gradient (first call of the round) or inner-loop correction."""
        from securefrl.agents.common import flat_gradient, load_flat

        fed, gamma = self.config.federation, agent.config.gamma
        theta_n = self.fed.global_params
        anchor = self._left[cid] == self._n_steps
        self._left[cid] -= 1
        load_flat(agent, theta_n)
        episodes, steps = sample_episodes(agent, fed.fedpg_batch if anchor else fed.fedpg_minibatch)
        self._episodes[cid].extend(float(ep["rewards"].sum()) for ep in episodes)
        grad_n = flat_gradient(agent, gpomdp_surrogate(agent, episodes, gamma), 0.0).astype(np.float64)
        if anchor:
            self._grads[cid] = grad_n
        else:
            w = np.exp(_log_weights(agent, episodes, self._theta_0, theta_n))
            load_flat(agent, self._theta_0)
            grad_0 = flat_gradient(agent, gpomdp_surrogate(agent, episodes, gamma, w), 0.0).astype(np.float64)
            load_flat(agent, theta_n)
            self._grads[cid] = grad_n - grad_0
        return steps

    def update(self, client: Client, round_id: int, results: list[TrainResult]) -> tuple[np.ndarray, dict[str, Any]]:
        cid = client.client_id
        self._ids.append(cid)
        rets = self._episodes[cid]
        return self._grads.pop(cid), {"train_episodes": float(len(rets)),
                                      "train_mean_return": float(np.mean(rets)) if rets else float("nan"),
                                      "train_inner_steps": float(self._n_steps - 1)}

    def apply_mean(self, mean: np.ndarray) -> np.ndarray:
        """The anchor's mean is ``mu`` (step ``v_0 = mu``); an inner step's mean is a correction to ``mu``."""
        if self._anchor:
            self._mu, self._anchor = np.asarray(mean, dtype=np.float64).copy(), False
            return super().apply_mean(self._mu)
        assert self._mu is not None
        return super().apply_mean(self._mu + mean)

    def summary_extras(self) -> dict[str, Any]:
        return {**super().summary_extras(), "fedpg_inner_steps": self._n_steps}


def check_estimator(config: ExperimentConfig) -> None:
    """FedPG-BR needs a stochastic discrete policy it can sample whole episodes from (capability ``policy``)."""
    from securefrl.agents.registry import agent_capabilities

    fed = config.federation
    if fed.estimator == "fedpg-br":
        if "policy" not in agent_capabilities(config.agent.name):
            raise ConfigError("federation.estimator", f"fedpg-br samples episodes of a stochastic discrete policy "
                              f"(agent capability 'policy': ppo); agent {config.agent.name!r} has none")
