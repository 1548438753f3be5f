"""Proximal Policy Optimization (Schulman et al. 2017) with GAE (Schulman et al. 2016).

On-policy actor-critic for discrete actions: rollouts over several copies of the client's
environment, generalised advantage estimates, the clipped surrogate objective, a value loss
and an entropy bonus, optimised for a few epochs of shuffled minibatches. Implementation
details follow Huang et al. (2022, "The 37 Implementation Details of PPO"): orthogonal init,
Adam eps 1e-5, advantage normalisation per minibatch, global gradient clipping, linear LR
annealing; time-limit truncations bootstrap from the critic (Pardo et al. 2018).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from securefrl.agents.base import Agent, EnvFn
from securefrl.agents.common import (
    Streams,
    check_checkpoint,
    config_state,
    episode_stats,
    init_generator,
    load_envs,
    obs_dim_of,
)
from securefrl.agents.configs import PPOConfig
from securefrl.agents.networks import mlp
from securefrl.agents.vecenv import EnvPool
from securefrl.errors import ConfigError


def compute_gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_value: np.ndarray, gamma: float,
                lam: float) -> np.ndarray:
    """Generalised advantage estimates (Schulman et al. 2016) over time-major arrays ``(t, ...)``.

    ``last_value`` bootstraps the step after the rollout; shared by the per-client and the batched
    (vectorized) PPO so both compute the same advantages.
    """
    adv = np.zeros_like(rewards)
    gae = np.zeros(rewards.shape[1:], dtype=np.float32)
    next_value = last_value
    for i in reversed(range(rewards.shape[0])):
        nonterminal = 1.0 - dones[i]
        delta = rewards[i] + gamma * next_value * nonterminal - values[i]
        gae = delta + gamma * lam * nonterminal * gae
        adv[i] = gae
        next_value = values[i]
    return adv


def ppo_loss(cfg: PPOConfig, logits: torch.Tensor, values: torch.Tensor,
             mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate + (clipped) value loss - entropy bonus (Schulman et al. 2017), per minibatch.

    The one PPO loss of the project, shared by :class:`PPOAgent` and the batched population
    (:mod:`securefrl.vectorized.ppo`): samples lie along the last axis, any leading axes (the population's
    clients) are kept, so ``logits`` is ``(..., n, actions)`` and ``values`` / every ``mb`` entry ``(..., n)``.
    Returns the loss per leading index and its terms (``ratio`` and ``log_ratio`` for the diagnostics).
    """
    def mean(x: torch.Tensor) -> torch.Tensor:  # over the samples; a full reduction for one client, as before
        return x.mean() if x.dim() == 1 else x.mean(dim=-1)

    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, mb["actions"].unsqueeze(-1)).squeeze(-1)
    entropy = mean(-(logp_all.exp() * logp_all).sum(dim=-1))
    log_ratio = logp - mb["logprobs"]
    ratio = log_ratio.exp()
    adv = mb["advantages"]
    if cfg.norm_adv and adv.shape[-1] > 1:
        if adv.dim() == 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        else:
            adv = (adv - adv.mean(dim=-1, keepdim=True)) / (adv.std(dim=-1, keepdim=True) + 1e-8)
    pg_loss = mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)))
    if cfg.clip_vloss:
        clipped = mb["values"] + (values - mb["values"]).clamp(-cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * mean(torch.max((values - mb["returns"]) ** 2, (clipped - mb["returns"]) ** 2))
    else:
        v_loss = 0.5 * mean((values - mb["returns"]) ** 2)
    loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
    with torch.no_grad():
        terms = {"policy_loss": pg_loss.detach(), "value_loss": v_loss.detach(), "entropy": entropy.detach(),
                 "approx_kl": mean((ratio - 1) - log_ratio),
                 "clipfrac": mean(((ratio - 1).abs() > cfg.clip_coef).float())}
    return loss, terms


class PPOAgent(Agent):
    """PPO for discrete action spaces; ``federated_parameters`` are the actor and the critic.

    Each :meth:`learn` call ends with an update on whatever it collected (a shorter last
    rollout, bootstrapped from the critic), so no half-filled rollout of an old policy leaks
    into the next federated round. Budgets that are multiples of ``n_envs * n_steps`` avoid
    short rollouts altogether.
    """

    name = "ppo"
    capabilities = frozenset({"proximal", "freeze", "embedding", "dpsgd", "batched", "discrete"})
    supports_proximal = True

    def __init__(self, env_fn: EnvFn, config: PPOConfig | None = None, seed: int = 0) -> None:
        self.config = cfg = config if config is not None else PPOConfig()
        cfg.validate()
        self.pool = EnvPool(env_fn, cfg.n_envs)
        if not isinstance(self.pool.action_space, gym.spaces.Discrete):
            raise ConfigError("env", f"PPO here needs a Discrete action space, got {self.pool.action_space}")
        self.obs_dim = obs_dim_of(self.pool.observation_space, "PPO")
        self.n_actions = int(self.pool.action_space.n)
        gen = init_generator(seed)
        self.actor = mlp(self.obs_dim, self.n_actions, cfg.hidden, gen, "tanh", orthogonal=True, out_gain=0.01)
        self.critic = mlp(self.obs_dim, 1, cfg.hidden, gen, "tanh", orthogonal=True, out_gain=1.0)
        self.optimizer = torch.optim.Adam([*self.actor.parameters(), *self.critic.parameters()], lr=cfg.lr, eps=1e-5,
                                          fused=True)
        t, n = cfg.n_steps, cfg.n_envs
        self._obs = np.zeros((t, n, self.obs_dim), dtype=np.float32)
        self._actions = np.zeros((t, n), dtype=np.int64)
        self._logprobs = np.zeros((t, n), dtype=np.float32)
        self._rewards = np.zeros((t, n), dtype=np.float32)
        self._dones = np.zeros((t, n), dtype=np.float32)
        self._values = np.zeros((t, n), dtype=np.float32)
        self.num_timesteps = 0
        self.num_updates = 0
        self.reseed(seed)
        self.pool.reset(self.streams.env_seeds)  # once: episodes then run on across learn() calls and rounds

    # --- federation hooks ---------------------------------------------------------------
    def federated_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [*((f"actor.{n}", p) for n, p in self.actor.named_parameters()),
                *((f"critic.{n}", p) for n, p in self.critic.named_parameters())]

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor, "critic": self.critic}

    def reseed(self, seed: int) -> None:
        """New action/minibatch streams from ``seed``; the environments continue their episodes."""
        self.streams = Streams(seed, self.config.n_envs)

    # --- acting ---------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Categorical sample by inverse CDF on the agent's numpy stream; returns (actions, log-probs)."""
        logp_all = torch.log_softmax(logits, dim=-1).numpy()
        cdf = np.cumsum(np.exp(logp_all.astype(np.float64)), axis=1)
        u = self.streams.numpy.random(len(cdf))[:, None] * cdf[:, -1:]
        actions = np.minimum((cdf <= u).sum(axis=1), self.n_actions - 1)
        return actions, logp_all[np.arange(len(actions)), actions]

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> int:
        """Most likely action, or a sample from the policy (agent's numpy stream) if not deterministic."""
        logits = self.actor(torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(1, -1)))
        if deterministic:
            return int(logits.argmax(dim=1)[0])
        return int(self._sample(logits)[0][0])

    # --- learning -------------------------------------------------------------------------
    def compute_loss(self, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Clipped surrogate + (clipped) value loss - entropy bonus on one minibatch (:func:`ppo_loss`)."""
        loss, terms = ppo_loss(self.config, self.actor(mb["obs"]), self.critic(mb["obs"]).squeeze(1), mb)
        return loss, {k: float(v) for k, v in terms.items()}

    def _update_batch(self, mb: dict[str, torch.Tensor]) -> dict[str, float]:
        """One gradient step on one minibatch (the unit DP-SGD wraps)."""
        loss, info = self.compute_loss(mb)
        prox = self.proximal_loss()  # FedProx / Ditto, if set
        if prox is not None:
            loss = loss + prox
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([*self.actor.parameters(), *self.critic.parameters()],
                                           self.config.max_grad_norm)
        self.optimizer.step()
        return info

    def current_lr(self) -> float:
        cfg = self.config
        if cfg.anneal_steps == 0:
            return cfg.lr
        frac = max(cfg.lr_final_fraction, 1.0 - self.num_timesteps / cfg.anneal_steps)
        return cfg.lr * frac

    def _update(self, t: int) -> dict[str, float]:
        """GAE over the first ``t`` vector steps of the rollout, then the PPO epochs."""
        cfg = self.config
        with torch.no_grad():
            last_value = self.critic(torch.from_numpy(self.pool.obs)).squeeze(1).numpy()
        rewards, values, dones = self._rewards[:t], self._values[:t], self._dones[:t]
        adv = compute_gae(rewards, values, dones, last_value, cfg.gamma, cfg.gae_lambda)
        data = {
            "obs": torch.from_numpy(self._obs[:t].reshape(-1, self.obs_dim)),
            "actions": torch.from_numpy(self._actions[:t].reshape(-1)),
            "logprobs": torch.from_numpy(self._logprobs[:t].reshape(-1)),
            "advantages": torch.from_numpy(adv.reshape(-1)),
            "returns": torch.from_numpy((adv + values).reshape(-1)),
            "values": torch.from_numpy(values.reshape(-1).copy()),
        }
        for group in self.optimizer.param_groups:
            group["lr"] = self.current_lr()
        size = t * cfg.n_envs
        n_mb = min(cfg.n_minibatches, size)
        infos = []
        if cfg.batch_sampling == "poisson":  # Poisson minibatches, with or without DP-SGD (securefrl.agents.dp)
            infos = self._poisson_epochs(data, size)
        else:
            for _ in range(cfg.n_epochs):
                perm = torch.from_numpy(self.streams.numpy.permutation(size))
                for idx in torch.tensor_split(perm, n_mb):
                    infos.append(self._update_batch({k: v[idx] for k, v in data.items()}))
                    self.num_updates += 1
        out = {k: float(np.mean([i[k] for i in infos])) for k in (infos[0] if infos else {})}
        var_y = float(data["returns"].var()) if size > 1 else 0.0
        out["explained_variance"] = (float("nan") if var_y == 0 else
                                     1.0 - float((data["returns"] - data["values"]).var()) / var_y)
        return out

    def _poisson_epochs(self, data: dict[str, torch.Tensor], size: int) -> list[dict[str, float]]:
        """``n_epochs * n_minibatches`` steps, each on a Poisson sample of the rollout at rate 1 / n_minibatches."""
        from securefrl.agents.dp import poisson_indices, poisson_step

        cfg = self.config
        q = 1.0 / cfg.n_minibatches
        if self.dpsgd is not None:
            self.dpsgd.new_dataset()  # a fresh rollout: earlier rollouts' transitions are not in it
        params = [*self.actor.parameters(), *self.critic.parameters()]
        secure = self.dpsgd is not None and self.dpsgd.settings.secure  # the sample must be secret too
        infos: list[dict[str, float]] = []
        for _ in range(cfg.n_epochs * cfg.n_minibatches):
            idx = torch.from_numpy(poisson_indices(size, q, self.streams.numpy, secure))
            mb = {k: v[idx] for k, v in data.items()}
            box: list[dict[str, float]] = []

            def loss_fn(mb: dict[str, torch.Tensor] = mb, box: list[dict[str, float]] = box) -> torch.Tensor:
                loss, info = self.compute_loss(mb)
                box.append(info)
                return loss

            poisson_step(self, loss_fn, len(idx), q, q * size, params, cfg.max_grad_norm)
            infos.extend(box)
            self.num_updates += 1
        return infos

    def learn(self, env_steps: int) -> dict[str, float]:
        """Collect ``env_steps`` transitions (rounded up to whole vector steps) in rollouts, updating after each."""
        cfg, pool = self.config, self.pool
        n = cfg.n_envs
        done, t = 0, 0
        infos: list[dict[str, float]] = []
        while done < env_steps:
            obs = pool.obs.copy()
            with torch.no_grad():
                obs_t = torch.from_numpy(obs)
                actions, logp = self._sample(self.actor(obs_t))
                values = self.critic(obs_t).squeeze(1).numpy()
            step = pool.step(actions)
            rewards = step.rewards
            cut = step.truncated & ~step.terminated
            if cut.any():
                with torch.no_grad():
                    boot = self.critic(torch.from_numpy(step.next_obs[cut])).squeeze(1).numpy()
                rewards = rewards.copy()
                rewards[cut] += cfg.gamma * boot
            self._obs[t], self._actions[t], self._logprobs[t] = obs, actions, logp
            self._rewards[t], self._values[t] = rewards, values
            self._dones[t] = step.terminated | step.truncated
            t += 1
            done += n
            self.num_timesteps += n
            if t == cfg.n_steps or done >= env_steps:
                infos.append(self._update(t))
                t = 0
        stats = episode_stats(pool.drain())
        stats.update(env_steps=float(done), total_env_steps=float(self.num_timesteps), updates=float(self.num_updates),
                     lr=self.current_lr())
        if infos:
            stats.update({k: float(np.mean([i[k] for i in infos])) for k in infos[-1]})
        return stats

    # --- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "algo": self.name,
            "config": config_state(self.config),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "counters": {"num_timesteps": self.num_timesteps, "num_updates": self.num_updates},
            "rng": self.streams.state_dict(),
            "envs": self.pool.state_dict(),
            "dpsgd": self.dpsgd.state_dict() if self.dpsgd is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_checkpoint(state, self.name, self.config)
        if (self.dpsgd is None) != (state.get("dpsgd") is None):
            raise ValueError("checkpoint and agent differ in record-level DP-SGD (on in one, off in the other)")
        if self.dpsgd is not None:
            self.dpsgd.load_state_dict(state["dpsgd"])
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        c = state["counters"]
        self.num_timesteps, self.num_updates = int(c["num_timesteps"]), int(c["num_updates"])
        self.streams.load_state_dict(state["rng"])
        load_envs(self.pool, state)
