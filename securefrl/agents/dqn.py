"""Deep Q-Network (Mnih et al. 2015) with Double-DQN targets (van Hasselt et al. 2016).

Off-policy value learning for discrete actions: epsilon-greedy exploration, a uniform replay
buffer, a periodically synchronised target network and a Huber TD loss. Training happens in
phases (``gradient_steps`` updates every ``train_freq`` environment steps), as in the tuned
Stable-Baselines3 zoo settings for CartPole, which keeps per-step overhead low.
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from securefrl.agents.base import Agent, EnvFn
from securefrl.agents.common import (
    OffPolicyGradient,
    Streams,
    episode_stats,
    flat_gradient,
    init_generator,
    load_flat,
    obs_dim_of,
)
from securefrl.agents.configs import DQNConfig
from securefrl.agents.networks import frozen_copy, hard_update, mlp
from securefrl.agents.replay import ReplayBuffer
from securefrl.agents.vecenv import EnvPool
from securefrl.errors import ConfigError
from securefrl.params import set_flat


class DQNAgent(OffPolicyGradient, Agent):
    """DQN for discrete action spaces; ``federated_parameters`` is the online Q-network."""

    name = "dqn"
    capabilities = frozenset({"proximal", "freeze", "embedding", "dpsgd", "discrete", "q_learning", "gradient",
                              "off_policy"})
    checkpointed = ("q_net", "target_net", "optimizer", "replay")
    counters: ClassVar[dict[str, str]] = {**Agent.counters, "since_train": "_since_train"}
    supports_proximal = True

    def __init__(self, env_fn: EnvFn, config: DQNConfig | None = None, seed: int = 0) -> None:
        self.config = cfg = config if config is not None else DQNConfig()
        cfg.validate()
        self.pool = EnvPool(env_fn, cfg.n_envs)
        if not isinstance(self.pool.action_space, gym.spaces.Discrete):
            raise ConfigError("env", f"DQN needs a Discrete action space, got {self.pool.action_space}")
        self.obs_dim = obs_dim_of(self.pool.observation_space, "DQN")
        self.n_actions = int(self.pool.action_space.n)
        self.q_net = mlp(self.obs_dim, self.n_actions, cfg.hidden, init_generator(seed))
        self.target_net = frozen_copy(self.q_net)
        self.optimizer = torch.optim.Adam(self.q_net.parameters(), lr=cfg.lr, fused=True)
        self.replay = ReplayBuffer(cfg.buffer_size, self.obs_dim, (), np.int64)
        self.num_timesteps = 0
        self.num_updates = 0
        self._since_train = 0
        self.reseed(seed)
        self.pool.reset(self.streams.env_seeds)  # once: episodes then run on across learn() calls and rounds

    # --- federation hooks ---------------------------------------------------------------
    def federated_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(f"q.{n}", p) for n, p in self.q_net.named_parameters()]

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"q_net": self.q_net}

    def replace_network(self, name: str, module: torch.nn.Module) -> None:
        super().replace_network(name, module)
        self.target_net = frozen_copy(self.q_net)  # the target mirrors the (new) Q-network

    def after_set_parameters(self) -> None:
        """New global Q-values: bootstrap from them, not from the stale local target."""
        hard_update(self.target_net, self.q_net)

    def reseed(self, seed: int) -> None:
        """New action/minibatch streams from ``seed``; the environments continue their episodes."""
        self.streams = Streams(seed, self.config.n_envs)

    # --- acting ---------------------------------------------------------------------------
    def epsilon(self) -> float:
        """Linear schedule over the total step count, so it continues across learn() calls."""
        cfg = self.config
        if cfg.exploration_steps == 0:
            return cfg.exploration_final_eps
        frac = min(1.0, self.num_timesteps / cfg.exploration_steps)
        return cfg.exploration_initial_eps + frac * (cfg.exploration_final_eps - cfg.exploration_initial_eps)

    def exploration_rate(self) -> float:
        return self.epsilon()

    def q_values(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q_net(obs)

    @torch.no_grad()
    def _greedy(self, obs: np.ndarray) -> np.ndarray:
        return self.q_net(torch.from_numpy(obs)).argmax(dim=1).numpy()

    def act(self, obs: np.ndarray, deterministic: bool = True) -> int:
        """Greedy action, or epsilon-greedy (current epsilon, agent's numpy stream) if not deterministic."""
        if not deterministic and self.streams.numpy.random() < self.epsilon():
            return int(self.streams.numpy.integers(self.n_actions))
        return int(self._greedy(np.asarray(obs, dtype=np.float32).reshape(1, -1))[0])

    # --- learning -------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Huber TD loss against (Double-)DQN targets from the frozen target network."""
        q = self.q_net(batch["obs"]).gather(1, batch["actions"].view(-1, 1)).squeeze(1)
        with torch.no_grad():
            next_q_target = self.target_net(batch["next_obs"])
            if self.config.double_dqn:
                next_a = self.q_net(batch["next_obs"]).argmax(dim=1, keepdim=True)
                next_q = next_q_target.gather(1, next_a).squeeze(1)
            else:
                next_q = next_q_target.max(dim=1).values
            target = batch["rewards"] + self.config.gamma * (1.0 - batch["terminated"]) * next_q
        return F.smooth_l1_loss(q, target)

    def _update_batch(self, batch: dict[str, torch.Tensor]) -> float:
        """One gradient step on one minibatch (the unit DP-SGD wraps)."""
        if self.config.batch_sampling == "poisson":  # Poisson batch, with or without DP-SGD (securefrl.agents.dp)
            from securefrl.agents.dp import poisson_step, replay_rate

            q, expected = replay_rate(self.config.batch_size, len(self.replay))
            return poisson_step(self, lambda: self.compute_loss(batch), len(batch["obs"]), q, expected,
                                list(self.q_net.parameters()), self.config.max_grad_norm)
        loss = self.compute_loss(batch)
        prox = self.proximal_loss()  # FedProx / Ditto, if set
        if prox is not None:
            loss = loss + prox
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.q_net.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return float(loss.detach())

    def _sample_batch(self) -> dict[str, torch.Tensor]:
        """A replay minibatch: uniform with replacement, or a Poisson sample (``batch_sampling``)."""
        if self.config.batch_sampling == "poisson":
            from securefrl.agents.dp import poisson_replay_batch

            secure = self.dpsgd is not None and self.dpsgd.settings.secure  # the sample must be secret too
            return poisson_replay_batch(self.replay, self.config.batch_size, self.streams.numpy, secure)
        return self.replay.sample(self.config.batch_size, self.streams.numpy)

    def _train_phase(self) -> float:
        cfg = self.config
        total = 0.0
        for _ in range(cfg.gradient_steps):
            total += self._update_batch(self._sample_batch())
            self.num_updates += 1
            if self.num_updates % cfg.target_update_interval == 0:
                hard_update(self.target_net, self.q_net)
        return total / cfg.gradient_steps

    def _collect(self, env_steps: int) -> tuple[int, bool]:
        """Vector steps until a training phase is due or ``env_steps`` transitions; returns (transitions, due)."""
        cfg, pool, rng = self.config, self.pool, self.streams.numpy
        n = cfg.n_envs
        done = 0
        while done < env_steps:
            obs = pool.obs.copy()
            eps = self.epsilon()
            explore = rng.random(n) < eps
            if explore.all():
                actions = rng.integers(0, self.n_actions, size=n)
            else:
                actions = self._greedy(obs)
                if explore.any():
                    actions = np.where(explore, rng.integers(0, self.n_actions, size=n), actions)
            step = pool.step(actions)
            self.replay.add(obs, actions, step.rewards, step.next_obs, step.terminated)
            done += n
            self.num_timesteps += n
            self._since_train += n
            if self.num_timesteps >= cfg.learning_starts and self._since_train >= cfg.train_freq:
                self._since_train = 0
                return done, True
        return done, False

    def learn(self, env_steps: int) -> dict[str, float]:
        """Collect ``env_steps`` transitions (rounded up to whole vector steps), training as it goes."""
        done, losses = 0, []
        while done < env_steps:
            collected, due = self._collect(env_steps - done)
            done += collected
            if due:
                losses.append(self._train_phase())
        return self._learn_stats(done, losses)

    def _learn_stats(self, done: int, losses: list[float]) -> dict[str, float]:
        stats = episode_stats(self.pool.drain())
        stats.update(env_steps=float(done), total_env_steps=float(self.num_timesteps), updates=float(self.num_updates),
                     epsilon=self.epsilon(), loss=float(np.mean(losses)) if losses else float("nan"))
        return stats

    # --- gradient mode (FedSGD: securefrl.gradient) -------------------------------------------
    # Collect until a training phase is due (acting with the server's Q-network), then gradient_steps gradients
    # on the client's own replay buffer, each at the server's current parameters; the target network is
    # server-side state (synchronised every target_update_interval server steps), as in the single agent.
    grad_adam_eps = 1e-8
    """eps of the Adam the server steps with (torch's default, what the agent's own optimizer uses)."""

    def grad_compute(self, params: np.ndarray, server_state: dict[str, np.ndarray]) -> np.ndarray:
        """Flat, clipped gradient of the TD loss on a fresh replay minibatch at ``params`` (server target)."""
        load_flat(self, params)
        set_flat(list(self.target_net.parameters()), self.parameter_spec(), server_state["target"])
        loss = self.compute_loss(self._sample_batch())
        self._grad_losses.append(float(loss.detach()))
        self._grad_left -= 1
        self.num_updates += 1
        return flat_gradient(self, loss, self.config.max_grad_norm)

    def grad_server_init(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """The server's target network starts at the initial parameters."""
        return {"target": np.asarray(params, dtype=np.float32).copy()}

    def grad_server_step(self, state: dict[str, np.ndarray], params: np.ndarray, steps: int) -> None:
        """Synchronise the target every ``target_update_interval`` server steps (the single agent's schedule)."""
        if steps % self.config.target_update_interval == 0:
            state["target"] = np.asarray(params, dtype=np.float32).copy()

    def grad_round_start(self) -> None:
        self._grad_losses: list[float] = []

    def grad_round_stats(self, done: int) -> dict[str, float]:
        losses = getattr(self, "_grad_losses", [])
        stats = self._learn_stats(done, [])
        stats["loss"] = float(np.mean(losses)) if losses else float("nan")
        return stats
