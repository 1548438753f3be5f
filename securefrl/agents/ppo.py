"""Proximal Policy Optimization (Schulman et al. 2017) with GAE (Schulman et al. 2016).

On-policy actor-critic for discrete actions: rollouts over several copies of the client's
environment, generalised advantage estimates, the clipped surrogate objective, a value loss
and an entropy bonus, optimised for a few epochs of shuffled minibatches. Implementation
details follow Huang et al. (2022, "The 37 Implementation Details of PPO"): orthogonal init,
Adam eps 1e-5, advantage normalisation per minibatch, global gradient clipping, linear LR
annealing; time-limit truncations bootstrap from the critic (Pardo et al. 2018).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from securefrl.agents.base import Agent, EnvFn
from securefrl.agents.common import (
    Streams,
    episode_stats,
    flat_gradient,
    init_generator,
    load_flat,
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


def _explained_variance(data: dict[str, torch.Tensor], size: int) -> dict[str, float]:
    """1 - Var(returns - values) / Var(returns) over a rollout (NaN when the returns do not vary)."""
    var_y = float(data["returns"].var()) if size > 1 else 0.0
    return {"explained_variance": (float("nan") if var_y == 0 else
                                   1.0 - float((data["returns"] - data["values"]).var()) / var_y)}


class PPOAgent(Agent):
    """PPO for discrete action spaces; ``federated_parameters`` are the actor and the critic.

    Each :meth:`learn` call ends with an update on whatever it collected (a shorter last
    rollout, bootstrapped from the critic), so no half-filled rollout of an old policy leaks
    into the next federated round. Budgets that are multiples of ``n_envs * n_steps`` avoid
    short rollouts altogether.
    """

    name = "ppo"
    capabilities = frozenset({"proximal", "freeze", "embedding", "dpsgd", "batched", "discrete", "actor_critic",
                              "gradient", "policy"})
    checkpointed = ("actor", "critic", "optimizer")
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
        self.grad_round_start()
        self.reseed(seed)
        self.pool.reset(self.streams.env_seeds)  # once: episodes then run on across learn() calls and rounds

    # --- federation hooks ---------------------------------------------------------------
    def federated_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [*((f"actor.{n}", p) for n, p in self.actor.named_parameters()),
                *((f"critic.{n}", p) for n, p in self.critic.named_parameters())]

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor, "critic": self.critic}

    def policy_logits(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)

    def state_values(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

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

    def _rollout_data(self, t: int) -> dict[str, torch.Tensor]:
        """GAE over the first ``t`` vector steps of the rollout, as flat tensors (one row per transition)."""
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
        return data

    def _minibatches(self, size: int) -> list[torch.Tensor]:
        """The shuffled minibatch indices of every epoch, drawn from the agent's numpy stream in epoch order."""
        n_mb = min(self.config.n_minibatches, size)
        out: list[torch.Tensor] = []
        for _ in range(self.config.n_epochs):
            perm = torch.from_numpy(self.streams.numpy.permutation(size))
            out.extend(torch.tensor_split(perm, n_mb))
        return out

    def _update(self, t: int) -> dict[str, float]:
        """GAE over the first ``t`` vector steps of the rollout, then the PPO epochs."""
        cfg = self.config
        data = self._rollout_data(t)
        for group in self.optimizer.param_groups:
            group["lr"] = self.current_lr()
        size = t * cfg.n_envs
        infos = []
        if cfg.batch_sampling == "poisson":  # Poisson minibatches, with or without DP-SGD (securefrl.agents.dp)
            infos = self._poisson_epochs(data, size)
        else:
            for idx in self._minibatches(size):
                infos.append(self._update_batch({k: v[idx] for k, v in data.items()}))
                self.num_updates += 1
        out = {k: float(np.mean([i[k] for i in infos])) for k in (infos[0] if infos else {})}
        out.update(_explained_variance(data, size))
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

    def _collect(self, env_steps: int) -> tuple[int, int]:
        """At most one rollout: vector steps until ``n_steps`` of them or ``env_steps`` transitions (rounded up).

        Returns (transitions collected, vector steps ``t`` stored in the rollout buffers).
        """
        cfg, pool = self.config, self.pool
        n = cfg.n_envs
        done, t = 0, 0
        while done < env_steps and t < cfg.n_steps:
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
        return done, t

    def learn(self, env_steps: int) -> dict[str, float]:
        """Collect ``env_steps`` transitions (rounded up to whole vector steps) in rollouts, updating after each."""
        done = 0
        infos: list[dict[str, float]] = []
        while done < env_steps:
            collected, t = self._collect(env_steps - done)
            done += collected
            infos.append(self._update(t))
        return self._learn_stats(done, infos)

    def _learn_stats(self, done: int, infos: list[dict[str, float]]) -> dict[str, float]:
        stats = episode_stats(self.pool.drain())
        stats.update(env_steps=float(done), total_env_steps=float(self.num_timesteps), updates=float(self.num_updates),
                     lr=self.current_lr())
        if infos:
            stats.update({k: float(np.mean([i[k] for i in infos])) for k in infos[-1]})
        return stats

    # --- gradient mode (FedSGD / DD-PPO: securefrl.gradient) --------------------------------
    # One rollout at the server's parameters, then its n_epochs x n_minibatches minibatches, each one gradient
    # at the server's current parameters: exactly the single agent's steps with the optimizer on the server.
    grad_adam_eps = 1e-5
    """eps of the Adam the server steps with (the agent's own optimizer's)."""

    def grad_collect(self, params: np.ndarray, env_steps: int) -> int:
        """Act with ``params`` for at most one rollout of ``env_steps`` transitions; queue its minibatch steps."""
        load_flat(self, params)
        done, t = self._collect(env_steps)
        data = self._rollout_data(t)
        self._grad_lr = self.current_lr()
        self._grad_queue = [{k: v[idx] for k, v in data.items()} for idx in self._minibatches(t * self.config.n_envs)]
        self._grad_stats.update(_explained_variance(data, t * self.config.n_envs))
        return done

    def grad_pending(self) -> int:
        """Gradient steps queued from the last collected rollout."""
        return len(getattr(self, "_grad_queue", ()))

    def grad_compute(self, params: np.ndarray, server_state: dict[str, np.ndarray]) -> np.ndarray:
        """Flat, clipped gradient of the PPO loss on the next queued minibatch at ``params``."""
        load_flat(self, params)
        loss, info = self.compute_loss(self._grad_queue.pop(0))
        self._grad_infos.append(info)
        self.num_updates += 1
        return flat_gradient(self, loss, self.config.max_grad_norm)

    def grad_lr(self) -> float:
        """The learning rate of the queued steps (the annealed one, at the rollout's end)."""
        return float(getattr(self, "_grad_lr", self.current_lr()))

    def grad_server_init(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """Server-side state the gradient needs besides the parameters: none for PPO."""
        return {}

    def grad_server_step(self, state: dict[str, np.ndarray], params: np.ndarray, steps: int) -> None:
        """Update the server-side state after server step number ``steps``: nothing for PPO."""

    def grad_round_start(self) -> None:
        """Reset the round's gradient statistics."""
        self._grad_infos: list[dict[str, float]] = []
        self._grad_stats: dict[str, float] = {}

    def grad_round_stats(self, done: int) -> dict[str, float]:
        """The round's statistics, as :meth:`learn` reports them."""
        infos = getattr(self, "_grad_infos", [])
        out = self._learn_stats(done, [])
        if infos:
            out.update({k: float(np.mean([i[k] for i in infos])) for k in infos[-1]})
        out.update(getattr(self, "_grad_stats", {}))
        return out
