"""Soft Actor-Critic (Haarnoja et al. 2018, "SAC: Off-Policy Maximum Entropy Deep RL"; and
"SAC Algorithms and Applications", 2018, for the learned temperature).

Off-policy actor-critic for continuous (Box) actions: a tanh-squashed Gaussian policy, twin
Q-networks with clipped double-Q targets (Fujimoto et al. 2018), Polyak-averaged target
critics, and automatic entropy tuning towards ``-dim(A)``. Actions are stored in the
squashed [-1, 1] space and rescaled to the environment's bounds when stepping.
"""

from __future__ import annotations

import math
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
from securefrl.agents.configs import SACConfig
from securefrl.agents.networks import frozen_copy, hard_update, mlp, soft_update
from securefrl.agents.replay import ReplayBuffer
from securefrl.agents.vecenv import EnvPool
from securefrl.errors import ConfigError
from securefrl.params import ParamSpec, set_flat

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class SACAgent(OffPolicyGradient, Agent):
    """SAC for Box action spaces; ``federated_parameters`` are the actor and both critics.

    The temperature stays local: it adapts to each client's own policy entropy.

    Gradient mode (``federation.update = "gradient"``, :mod:`securefrl.gradient`; FedSGD, McMahan et al.
    2017): one federated step is the vector [actor-loss gradient | critic-loss gradient of q1, q2], both at
    the server's current parameters on the client's own replay minibatch (disjoint parameter sets, so one
    vector), followed by one server Adam step with ``lr`` (SAC has one lr for actor and critics, and Adam
    is per coordinate, so this is exactly the single agent's two Adams). Since both gradients are taken at
    the same parameters, the single-agent counterpart is ``actor_on_updated_critic = False``, which gradient
    mode requires (with the default True the actor's loss would need the critics after the server's step,
    one more aggregation per update). The target critics are server state, Polyak-averaged (``tau``) after
    every server step. The temperature stays local in gradient mode too: each client steps its own
    ``log_alpha`` with its own optimizer on the alpha loss of its minibatch, and its critic target and actor
    loss use its own alpha. Collection follows :meth:`learn` (``learning_starts``, ``train_freq``,
    ``gradient_steps``), so clients reach their training phases in lock step only if every client is in
    every round (capability ``off_policy``: client_fraction must be 1).
    """

    name = "sac"
    capabilities = frozenset({"continuous", "gradient", "off_policy"})
    checkpointed = ("actor", "q1", "q2", "q1_target", "q2_target", "log_alpha", "actor_optimizer", "critic_optimizer",
                    "alpha_optimizer", "replay")
    counters: ClassVar[dict[str, str]] = {**Agent.counters, "since_train": "_since_train"}

    def __init__(self, env_fn: EnvFn, config: SACConfig | None = None, seed: int = 0) -> None:
        self.config = cfg = config if config is not None else SACConfig()
        cfg.validate()
        self.pool = EnvPool(env_fn, cfg.n_envs)
        space = self.pool.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1 or not np.all(np.isfinite(space.low)) \
                or not np.all(np.isfinite(space.high)):
            raise ConfigError("env", f"SAC needs a bounded 1-D Box action space, got {space}")
        self.obs_dim = obs_dim_of(self.pool.observation_space, "SAC")
        self.act_dim = int(space.shape[0])
        self._act_low = space.low.astype(np.float32)
        self._act_scale = ((space.high - space.low) / 2.0).astype(np.float32)
        gen = init_generator(seed)
        self.actor = mlp(self.obs_dim, 2 * self.act_dim, cfg.hidden, gen)
        self.q1 = mlp(self.obs_dim + self.act_dim, 1, cfg.hidden, gen)
        self.q2 = mlp(self.obs_dim + self.act_dim, 1, cfg.hidden, gen)
        self.q1_target, self.q2_target = frozen_copy(self.q1), frozen_copy(self.q2)
        self.log_alpha = torch.nn.Parameter(torch.tensor(math.log(cfg.init_alpha), dtype=torch.float32))
        self.target_entropy = float(-self.act_dim if cfg.target_entropy is None else cfg.target_entropy)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, fused=True)
        self.critic_optimizer = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=cfg.lr, fused=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=cfg.lr, fused=True)
        self.replay = ReplayBuffer(cfg.buffer_size, self.obs_dim, (self.act_dim,), np.float32)
        self.num_timesteps = 0
        self.num_updates = 0
        self._since_train = 0
        self.reseed(seed)
        self.pool.reset(self.streams.env_seeds)  # once: episodes then run on across learn() calls and rounds

    # --- federation hooks ---------------------------------------------------------------
    def federated_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [*((f"actor.{n}", p) for n, p in self.actor.named_parameters()),
                *((f"q1.{n}", p) for n, p in self.q1.named_parameters()),
                *((f"q2.{n}", p) for n, p in self.q2.named_parameters())]

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor, "q1": self.q1, "q2": self.q2}

    def after_set_parameters(self) -> None:
        """New global critics: restart the Polyak targets from them, not from stale local ones."""
        hard_update(self.q1_target, self.q1)
        hard_update(self.q2_target, self.q2)

    def reseed(self, seed: int) -> None:
        """New action/minibatch streams from ``seed``; the environments continue their episodes."""
        self.streams = Streams(seed, self.config.n_envs)

    # --- policy ---------------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def _policy(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Squashed action in [-1, 1] and its log-density (reparameterised, noise from the torch stream)."""
        mean, log_std = self.actor(obs).chunk(2, dim=-1)
        if deterministic:
            return torch.tanh(mean), torch.zeros(len(obs))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1.0)
        eps = torch.randn(mean.shape, generator=self.streams.torch)
        u = mean + log_std.exp() * eps
        # log N(u) - log|d tanh(u)/du|, with log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)).
        logp = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp = logp - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), logp

    def _to_env(self, squashed: np.ndarray) -> np.ndarray:
        return self._act_low + (squashed + 1.0) * self._act_scale

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Mean action (deterministic) or a policy sample (agent's torch stream), in env bounds."""
        a, _ = self._policy(torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(1, -1)), deterministic)
        return self._to_env(a.numpy()[0])

    # --- learning -------------------------------------------------------------------------
    def critic_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Soft Bellman residual of both critics against the clipped double-Q soft target."""
        with torch.no_grad():
            next_a, next_logp = self._policy(batch["next_obs"])
            next_in = torch.cat([batch["next_obs"], next_a], dim=1)
            next_q = torch.min(self.q1_target(next_in), self.q2_target(next_in)).squeeze(1)
            target = batch["rewards"] + self.config.gamma * (1.0 - batch["terminated"]) * (
                next_q - self.alpha * next_logp)
        q_in = torch.cat([batch["obs"], batch["actions"]], dim=1)
        return F.mse_loss(self.q1(q_in).squeeze(1), target) + F.mse_loss(self.q2(q_in).squeeze(1), target)

    def actor_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """KL to the Boltzmann policy of the soft Q-function; also returns log-probs for the temperature."""
        a, logp = self._policy(batch["obs"])
        q_in = torch.cat([batch["obs"], a], dim=1)
        q = torch.min(self.q1(q_in), self.q2(q_in)).squeeze(1)
        return (self.alpha * logp - q).mean(), logp

    def _actor_loss_frozen_critics(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`actor_loss` with the critics frozen: its gradient flows through them into the actor only."""
        critic_params = [*self.q1.parameters(), *self.q2.parameters()]
        for p in critic_params:
            p.requires_grad_(False)
        try:
            return self.actor_loss(batch)
        finally:
            for p in critic_params:
                p.requires_grad_(True)

    def _alpha_step(self, logp: torch.Tensor) -> None:
        """One step of the temperature towards ``target_entropy`` (its own local optimizer)."""
        if self.config.autotune_alpha:
            alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()

    def _update_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One gradient step of critics, actor and temperature on one minibatch (the unit DP-SGD wraps)."""
        sequential = self.config.actor_on_updated_critic is not False  # None: the usual sequential order
        c_loss = self.critic_loss(batch)
        self.critic_optimizer.zero_grad(set_to_none=True)
        c_loss.backward()
        if sequential:
            self.critic_optimizer.step()
        a_loss, logp = self._actor_loss_frozen_critics(batch)
        self.actor_optimizer.zero_grad(set_to_none=True)
        a_loss.backward()
        if not sequential:  # both gradients at the same parameters: step the critics only now
            self.critic_optimizer.step()
        self.actor_optimizer.step()
        self._alpha_step(logp)
        soft_update(self.q1_target, self.q1, self.config.tau)
        soft_update(self.q2_target, self.q2, self.config.tau)
        return self._update_info(c_loss, a_loss, logp)

    @staticmethod
    def _update_info(c_loss: torch.Tensor, a_loss: torch.Tensor, logp: torch.Tensor) -> dict[str, float]:
        return {"critic_loss": float(c_loss.detach()), "actor_loss": float(a_loss.detach()),
                "entropy": float(-logp.detach().mean())}

    def _collect(self, env_steps: int) -> tuple[int, bool]:
        """Vector steps until a training phase is due or ``env_steps`` transitions; returns (transitions, due)."""
        cfg, pool = self.config, self.pool
        n = cfg.n_envs
        done = 0
        while done < env_steps:
            obs = pool.obs.copy()
            if self.num_timesteps < cfg.learning_starts:
                squashed = self.streams.numpy.uniform(-1.0, 1.0, size=(n, self.act_dim)).astype(np.float32)
            else:
                with torch.no_grad():
                    squashed = self._policy(torch.from_numpy(obs))[0].numpy()
            step = pool.step(self._to_env(squashed))
            self.replay.add(obs, squashed, step.rewards, step.next_obs, step.terminated)
            done += n
            self.num_timesteps += n
            self._since_train += n
            if self.num_timesteps >= cfg.learning_starts and self._since_train >= cfg.train_freq:
                self._since_train = 0
                return done, True
        return done, False

    def learn(self, env_steps: int) -> dict[str, float]:
        """Collect ``env_steps`` transitions (rounded up to whole vector steps), training as it goes."""
        cfg = self.config
        done = 0
        infos: list[dict[str, float]] = []
        while done < env_steps:
            collected, due = self._collect(env_steps - done)
            done += collected
            if due:
                for _ in range(cfg.gradient_steps):
                    infos.append(self._update_batch(self.replay.sample(cfg.batch_size, self.streams.numpy)))
                    self.num_updates += 1
        return self._learn_stats(done, infos)

    def _learn_stats(self, done: int, infos: list[dict[str, float]]) -> dict[str, float]:
        stats = episode_stats(self.pool.drain())
        stats.update(env_steps=float(done), total_env_steps=float(self.num_timesteps), updates=float(self.num_updates),
                     alpha=self.alpha)
        if infos:
            stats.update({k: float(np.mean([i[k] for i in infos])) for k in infos[-1]})
        return stats

    # --- gradient mode (FedSGD: securefrl.gradient) -------------------------------------------
    # Collect until a training phase is due (acting with the server's actor), then gradient_steps steps, each one
    # vector [actor gradient, q1 + q2 gradient] on the client's own replay minibatch at the server's current
    # parameters -- the single agent with actor_on_updated_critic=False, whose two Adams (one lr) are one
    # Adam over the concatenation. The target critics are server state (Polyak-averaged after every server
    # step); the temperature stays local, stepped by each client on its own alpha loss, as in delta mode.
    grad_adam_eps = 1e-8
    """eps of the Adam the server steps with (torch's default, what the agent's own optimizers use)."""

    def _critic_slice(self) -> slice:
        """Where q1 and q2 sit in the flat federated vector (after the actor, see federated_parameters)."""
        n_actor = sum(p.numel() for p in self.actor.parameters())
        return slice(n_actor, None)

    def grad_compute(self, params: np.ndarray, server_state: dict[str, np.ndarray]) -> np.ndarray:
        """Flat gradient of actor + critic loss on a fresh replay minibatch at ``params`` (server targets).

        The critic loss reaches only q1/q2 (its next actions are sampled without gradient) and the actor loss
        only the actor (critics frozen), so their sum's gradient is the two gradients side by side. The local
        temperature steps here, on this minibatch's log-probabilities, as the single agent's does.
        """
        if self.config.actor_on_updated_critic is True:
            raise ConfigError("agent.params.actor_on_updated_critic", "gradient mode computes the actor and "
                              "critic gradients at the same parameters; set it to false")
        load_flat(self, params)
        targets = [*self.q1_target.parameters(), *self.q2_target.parameters()]
        set_flat(targets, self._target_spec(), server_state["target"])
        batch = self.replay.sample(self.config.batch_size, self.streams.numpy)
        c_loss = self.critic_loss(batch)
        a_loss, logp = self._actor_loss_frozen_critics(batch)
        self._alpha_step(logp)
        self._grad_infos.append(self._update_info(c_loss, a_loss, logp))
        self._grad_left -= 1
        self.num_updates += 1
        return flat_gradient(self, c_loss + a_loss, 0.0)

    def _target_spec(self) -> ParamSpec:
        return ParamSpec.from_named([*self.q1_target.named_parameters(prefix="q1"),
                                     *self.q2_target.named_parameters(prefix="q2")])

    def grad_server_init(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """The server's target critics start at the initial critics."""
        return {"target": np.asarray(params, dtype=np.float32)[self._critic_slice()].copy()}

    def grad_server_step(self, state: dict[str, np.ndarray], params: np.ndarray, steps: int) -> None:
        """Polyak-average the target critics towards the new critics after every server step (``tau``)."""
        target = np.asarray(state["target"], dtype=np.float32)
        critics = np.asarray(params, dtype=np.float32)[self._critic_slice()]
        tau = np.float32(self.config.tau)
        # torch's lerp_ (the single agent's soft_update), both of its branches, so one client matches it exactly
        state["target"] = target + tau * (critics - target) if tau < 0.5 else critics - (critics - target) * (1 - tau)

    def grad_round_start(self) -> None:
        self._grad_infos: list[dict[str, float]] = []

    def grad_round_stats(self, done: int) -> dict[str, float]:
        return self._learn_stats(done, getattr(self, "_grad_infos", []))
