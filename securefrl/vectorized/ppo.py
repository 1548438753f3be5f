"""PPO for a whole population of clients as one batched computation, each client's state kept apart.

Every tensor of :class:`~securefrl.agents.ppo.PPOAgent`'s actor and critic is stored stacked, shape
``(n_clients, *shape)``; a forward pass over the sampled clients is one ``torch.baddbmm`` per layer
(a batched matmul, client ``c``'s inputs against client ``c``'s weights only). The per-client losses
are summed before ``backward``: client ``c``'s loss depends on client ``c``'s parameters only, so the
gradient of the sum *is* each client's own gradient. Gradient-norm clipping and Adam (Kingma & Ba
2015, written as ``torch.optim.Adam``'s single-tensor step) are applied per client over the stacked
tensors: a client's moments, step count, learning-rate schedule and clip factor are its own.

The algorithm is :mod:`securefrl.agents.ppo` step for step (Schulman et al. 2017; GAE, Schulman et
al. 2016; details of Huang et al. 2022), including its random streams: each client draws its
actions and minibatch permutations from its own :class:`~securefrl.agents.common.Streams`, in the
same order, so a vectorized client sees exactly the environment trajectory the per-client agent
sees, and ends with the same parameters up to floating-point reduction order (batched matmuls sum in
another order than ``nn.Linear``; see ``tests/securefrl/test_vectorized.py`` for the tolerance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from securefrl.agents.common import Streams, episode_stats
from securefrl.agents.ppo import PPOConfig, compute_gae, ppo_loss
from securefrl.envs.batched import BatchedEnv
from securefrl.params import ParamSpec
from securefrl.vectorized.cartpole import CartPoleBatch

ADAM_BETAS = (0.9, 0.999)
"""torch.optim.Adam's defaults, which PPOAgent uses."""
ADAM_EPS = 1e-5
"""PPOAgent's Adam eps (Huang et al. 2022)."""


class _Tanh(torch.autograd.Function):
    """``tanh`` computed by numpy: on the development CPU (AMD EPYC, AVX-512) torch 2.13's CPU tanh kernel
    took ~10x longer than ``numpy.tanh`` on the same float32 array and dominated a batched update.
    Both are accurate to about one ulp; the backward is torch's ``tanh_backward``, ``g * (1 - y^2)``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.from_numpy(np.tanh(x.detach().contiguous().numpy()))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.addcmul(grad, grad * y, y, value=-1.0)


def batched_mlp(layers: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``tanh`` MLP with stacked weights: ``layers = [W0, b0, W1, b1, ...]``, ``W (C, out, in)``, ``x (C, B, in)``."""
    n = len(layers) // 2
    for i in range(n):
        w, b = layers[2 * i], layers[2 * i + 1]
        x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        if i < n - 1:
            x = _Tanh.apply(x)
    return x


class PPOPopulation:
    """The PPO state of ``n_clients`` clients: stacked parameters, Adam moments, counters.

    Parameters
    ----------
    config
        Every client's PPO hyperparameters (one config: the batch needs equal shapes).
    spec
        Names and shapes of the federated parameters (``PPOAgent.parameter_spec()``): the actor's
        layers, then the critic's, in ``nn.Sequential`` order.
    n_clients
        Population size.
    envs
        The clients' environments for training: a :class:`~securefrl.envs.batched.BatchedEnv` with one copy per
        client (any batched family), or per-client CartPole physics and the episode limit
        (``cartpole.physics_of``). Also settable later with :meth:`set_envs`.
    """

    def __init__(self, config: PPOConfig, spec: ParamSpec, n_clients: int,
                 envs: BatchedEnv | tuple[dict[str, np.ndarray], int] | None = None) -> None:
        config.validate()
        self.config, self.spec, self.n = config, spec, int(n_clients)
        n_layers = len(config.hidden) + 1
        if len(spec.names) != 4 * n_layers or not all(
                name.startswith("actor.") for name in spec.names[:2 * n_layers]):
            raise ValueError(f"spec {spec.names} is not PPOAgent's actor + critic MLPs")
        self.n_actor = 2 * n_layers
        self.flat = torch.zeros((self.n, spec.dim))
        """Every client's parameters as one row each; :attr:`params` are per-tensor views of it."""
        self.params = self.views(self.flat)
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.adam_steps = np.zeros(self.n, dtype=np.int64)
        self.num_timesteps = np.zeros(self.n, dtype=np.int64)
        self.num_updates = np.zeros(self.n, dtype=np.int64)
        # Every client's environment copies persist across learn() calls (PPOAgent resets its pool once, when
        # built): episode state, time-limit counter, running episode statistics and each copy's generator.
        self.client_envs: BatchedEnv | None = None
        """One environment copy per client (its parameters): evaluation batches are drawn from it."""
        self.envs: BatchedEnv | None = None
        """``n_envs`` copies per client (client ``c`` owns copies ``c*n_envs ..``), the training environments."""
        if envs is not None:
            self.set_envs(envs)
        self.env_seeds = [int(c) for c in range(self.n)]
        """Per client, the agent seed whose ``Streams.env_seeds`` reset its copies at their first use."""
        self.last_rollout: tuple[np.ndarray, np.ndarray] | None = None
        """Observations and actions ``(t, C, n_envs, ...)`` of the last rollout :meth:`learn` trained on."""

    def set_envs(self, envs: BatchedEnv | tuple[dict[str, np.ndarray], int]) -> None:
        """Give the clients their environments: one copy per client, or CartPole ``(physics, limit)``."""
        batch = CartPoleBatch(*envs) if isinstance(envs, tuple) else envs
        if batch.n != self.n:
            raise ValueError(f"need one environment copy per client ({self.n}), got {batch.n}")
        self.client_envs = batch
        self.envs = batch.subset(np.repeat(np.arange(self.n), self.config.n_envs))

    @property
    def physics(self) -> BatchedEnv | None:
        """The one-copy-per-client batch (assigning CartPole ``(physics, limit)`` or a batch calls :meth:`set_envs`)."""
        return self.client_envs

    @physics.setter
    def physics(self, envs: BatchedEnv | tuple[dict[str, np.ndarray], int]) -> None:
        self.set_envs(envs)

    # --- parameters as flat vectors ---------------------------------------------------------
    def views(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Per-tensor views ``(C, *shape)`` of flat rows ``(C, dim)`` (the flat layout of :class:`ParamSpec`).

        Keeping each client's parameters in one row lets clipping and Adam run as a handful of
        operations over one ``(C, dim)`` tensor instead of a loop over a dozen small ones.
        """
        c = rows.shape[0]
        return [rows[:, sl].view(c, *shape) for sl, shape in zip(self.spec.slices().values(), self.spec.shapes,
                                                                  strict=True)]

    def get_rows(self, ids: Sequence[int]) -> np.ndarray:
        """Clients ``ids``' parameters as flat float32 vectors, shape ``(len(ids), dim)``."""
        return self.flat[torch.as_tensor(list(ids), dtype=torch.long)].numpy().copy()

    @torch.no_grad()
    def set_rows(self, ids: Sequence[int], flat: np.ndarray) -> None:
        """Load one flat vector (broadcast to every client in ``ids``) or one row per client."""
        idx = torch.as_tensor(list(ids), dtype=torch.long)
        src = torch.as_tensor(np.asarray(flat, dtype=np.float32))
        self.flat[idx] = src.expand(len(idx), self.spec.dim) if src.ndim == 1 else src

    def current_lr(self, ids: Sequence[int]) -> np.ndarray:
        """``PPOAgent.current_lr`` of each client (its own annealing clock)."""
        cfg = self.config
        if cfg.anneal_steps == 0:
            return np.full(len(ids), cfg.lr)
        return np.array([cfg.lr * max(cfg.lr_final_fraction, 1.0 - int(self.num_timesteps[c]) / cfg.anneal_steps)
                         for c in ids])

    # --- acting -----------------------------------------------------------------------------
    @torch.no_grad()
    def greedy_returns(self, params: Sequence[torch.Tensor], copies: int, batch: BatchedEnv,
                       seeds: Sequence[int]) -> np.ndarray:
        """Greedy episode returns, ``copies`` episodes per row of the stacked ``params``; shape ``(C, copies)``.

        ``batch`` holds one environment copy per episode (``C * copies``, client-major), ``seeds`` one reset seed
        each.
        """
        c = int(params[0].shape[0])
        actor = list(params[: self.n_actor])

        def act(obs: np.ndarray) -> np.ndarray:
            logits = batched_mlp(actor, torch.from_numpy(obs).view(c, copies, -1))
            return logits.argmax(dim=2).reshape(-1).numpy()

        return batch.greedy_returns(seeds, act).reshape(c, copies)

    # --- learning ---------------------------------------------------------------------------
    def learn(self, ids: Sequence[int], env_steps: int, seeds: Sequence[int]) -> list[dict[str, float]]:
        """Train clients ``ids`` for ``env_steps`` steps each, client ``ids[k]`` reseeded with ``seeds[k]``.

        Equivalent, client by client, to ``agent.reseed(seed); agent.learn(env_steps)`` on a
        :class:`~securefrl.agents.ppo.PPOAgent` built with seed ``env_seeds[cid]``: the environments continue
        the episodes the client's last call left running. Returns each client's ``learn`` statistics.
        """
        if self.envs is None:
            raise ValueError("this population has no environments to train in (set_envs)")
        cfg = self.config
        ids = [int(i) for i in ids]
        c, n = len(ids), cfg.n_envs
        idx = torch.as_tensor(ids, dtype=torch.long)
        work = self.flat[idx].clone()
        # Leaf tensors that share ``work``'s storage: gradients come per layer (no slice-backward
        # zero-fills of the whole row), while Adam updates ``work`` in place as one tensor.
        leaves = [v.detach().requires_grad_(True) for v in self.views(work)]
        adam = _BatchedAdam(self.exp_avg[idx], self.exp_avg_sq[idx], self.adam_steps[ids].copy())
        streams = [Streams(int(s), n) for s in seeds]
        env = self._load_envs(ids)
        rows = self._copies(ids)
        obs_dim, n_actions = int(self.spec.shapes[0][1]), int(self.spec.shapes[self.n_actor - 1][0])
        t_max = cfg.n_steps
        buf_obs = np.zeros((t_max, c, n, obs_dim), dtype=np.float32)
        buf_actions = np.zeros((t_max, c, n), dtype=np.int64)
        buf_logp = np.zeros((t_max, c, n), dtype=np.float32)
        buf_rewards = np.zeros((t_max, c, n), dtype=np.float32)
        buf_dones = np.zeros((t_max, c, n), dtype=np.float32)
        buf_values = np.zeros((t_max, c, n), dtype=np.float32)
        actor, critic = leaves[: self.n_actor], leaves[self.n_actor:]
        infos: list[dict[str, np.ndarray]] = []
        done, t = 0, 0
        while done < env_steps:
            obs = env.obs.reshape(c, n, obs_dim).copy()
            with torch.no_grad():
                obs_t = torch.from_numpy(obs)
                logp_all = torch.log_softmax(batched_mlp(actor, obs_t), dim=-1).numpy()
                values = batched_mlp(critic, obs_t).squeeze(-1).numpy()
            cdf = np.cumsum(np.exp(logp_all.astype(np.float64)), axis=2)
            u = np.stack([st.numpy.random(n) for st in streams])[:, :, None] * cdf[:, :, -1:]
            actions = np.minimum((cdf <= u).sum(axis=2), n_actions - 1)
            logp = np.take_along_axis(logp_all, actions[:, :, None], axis=2)[:, :, 0]
            step = env.step(actions.reshape(-1))
            rewards = step.rewards.reshape(c, n)
            terminated, truncated = step.terminated.reshape(c, n), step.truncated.reshape(c, n)
            cut = truncated & ~terminated
            if cut.any():  # time-limit truncation: bootstrap from the critic (Pardo et al. 2018)
                with torch.no_grad():
                    boot = batched_mlp(critic, torch.from_numpy(step.next_obs.reshape(c, n, obs_dim)))
                rewards = rewards.copy()
                rewards[cut] += cfg.gamma * boot.squeeze(-1).numpy()[cut]
            buf_obs[t], buf_actions[t], buf_logp[t] = obs, actions, logp
            buf_rewards[t], buf_values[t] = rewards, values
            buf_dones[t] = terminated | truncated
            t += 1
            done += n
            self.num_timesteps[ids] += n
            if t == t_max or done >= env_steps:
                with torch.no_grad():
                    last_value = batched_mlp(critic, torch.from_numpy(env.obs.reshape(c, n, obs_dim)))
                infos.append(self._update(ids, work, leaves, adam, streams, t, last_value.squeeze(-1).numpy(),
                                          buf_obs, buf_actions, buf_logp, buf_rewards, buf_dones, buf_values))
                self.last_rollout = (buf_obs[:t], buf_actions[:t])
                t = 0
        self.envs.assign(rows, env)
        with torch.no_grad():
            self.flat[idx] = work
            self.exp_avg[idx], self.exp_avg_sq[idx] = adam.exp_avg, adam.exp_avg_sq
        self.adam_steps[ids] = adam.steps
        lrs = self.current_lr(ids)
        out = []
        for k, cid in enumerate(ids):
            stats = episode_stats(env.drain(range(k * n, (k + 1) * n)))
            stats.update(env_steps=float(done), total_env_steps=float(self.num_timesteps[cid]),
                         updates=float(self.num_updates[cid]), lr=float(lrs[k]))
            if infos:
                stats.update({key: float(np.mean([float(i[key][k]) for i in infos])) for key in infos[-1]})
            out.append(stats)
        return out

    # --- persistent environments ----------------------------------------------------------------
    def _copies(self, ids: Sequence[int]) -> np.ndarray:
        n = self.config.n_envs
        return np.concatenate([np.arange(c * n, (c + 1) * n) for c in ids])

    def _load_envs(self, ids: list[int]) -> BatchedEnv:
        """A batch of clients ``ids``' copies in the state they were left in (reset on first use, as PPOAgent)."""
        assert self.envs is not None
        n = self.config.n_envs
        env = self.envs.subset(self._copies(ids))  # the same generator objects: they advance in place
        for k, cid in enumerate(ids):
            if env.rngs[k * n] is None:  # a client's first learn(): PPOAgent.__init__ resets its pool
                env.reset(Streams(self.env_seeds[cid], n).env_seeds, range(k * n, (k + 1) * n))
        return env

    def _update(self, ids: list[int], work: torch.Tensor, leaves: list[torch.Tensor], adam: _BatchedAdam,
                streams: list[Streams],
                t: int, last_value: np.ndarray, buf_obs: np.ndarray, buf_actions: np.ndarray, buf_logp: np.ndarray,
                buf_rewards: np.ndarray, buf_dones: np.ndarray, buf_values: np.ndarray) -> dict[str, np.ndarray]:
        """GAE over the first ``t`` steps of every client's rollout, then the PPO epochs (``PPOAgent._update``)."""
        cfg = self.config
        c, n = len(ids), cfg.n_envs
        rewards, values, dones = buf_rewards[:t], buf_values[:t], buf_dones[:t]
        adv = compute_gae(rewards, values, dones, last_value, cfg.gamma, cfg.gae_lambda)

        def per_client(a: np.ndarray) -> torch.Tensor:
            """(t, C, n, ...) -> (C, t*n, ...), each client's transitions in PPOAgent's time-major order."""
            a = np.ascontiguousarray(np.moveaxis(a, 1, 0))
            return torch.from_numpy(a.reshape(c, t * n, *a.shape[3:]))

        data = {"obs": per_client(buf_obs[:t]), "actions": per_client(buf_actions[:t]),
                "logprobs": per_client(buf_logp[:t]), "advantages": per_client(adv),
                "returns": per_client(adv + values), "values": per_client(values.copy())}
        lr = self.current_lr(ids)
        size = t * n
        n_mb = min(cfg.n_minibatches, size)
        rows = torch.arange(c).unsqueeze(1)
        mb_infos: list[dict[str, torch.Tensor]] = []
        for _ in range(cfg.n_epochs):
            perm = torch.from_numpy(np.stack([st.numpy.permutation(size) for st in streams]))
            for mb_idx in torch.tensor_split(perm, n_mb, dim=1):
                mb = {k: v[rows, mb_idx] for k, v in data.items()}
                mb_infos.append(self._update_batch(work, leaves, adam, mb, lr))
        self.num_updates[ids] += cfg.n_epochs * n_mb
        out = {k: np.mean(np.stack([i[k].numpy().astype(np.float64) for i in mb_infos]), axis=0) for k in mb_infos[0]}
        returns, vals = data["returns"], data["values"]
        if size > 1:
            var_y = returns.var(dim=1).numpy().astype(np.float64)
            resid = (returns - vals).var(dim=1).numpy().astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                out["explained_variance"] = np.where(var_y == 0, np.nan, 1.0 - resid / np.where(var_y == 0, 1, var_y))
        else:
            out["explained_variance"] = np.full(c, np.nan)
        return out

    def _update_batch(self, work: torch.Tensor, leaves: list[torch.Tensor], adam: _BatchedAdam,
                      mb: dict[str, torch.Tensor], lr: np.ndarray) -> dict[str, torch.Tensor]:
        """One gradient step of every client on its own minibatch (``PPOAgent._update_batch``)."""
        cfg = self.config
        actor, critic = leaves[: self.n_actor], leaves[self.n_actor:]
        loss, terms = ppo_loss(cfg, batched_mlp(actor, mb["obs"]), batched_mlp(critic, mb["obs"]).squeeze(2), mb)
        grads = torch.autograd.grad(loss.sum(), leaves)
        grad = torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)
        if cfg.max_grad_norm > 0:  # clip_grad_norm_ per client: the norm over all of a client's tensors
            total = torch.linalg.vector_norm(grad, 2, dim=1, keepdim=True)
            grad.mul_(torch.clamp(cfg.max_grad_norm / (total + 1e-6), max=1.0))
        adam.step(work, grad, lr)
        return terms

    # --- checkpoints ------------------------------------------------------------------------
    def client_state(self, cid: int) -> dict[str, Any]:
        """Client ``cid``'s trainable state (tensors and ints; loads with ``weights_only=True``)."""
        return {"params": self.flat[cid].clone(), "exp_avg": self.exp_avg[cid].clone(),
                "exp_avg_sq": self.exp_avg_sq[cid].clone(),
                "adam_step": int(self.adam_steps[cid]), "num_timesteps": int(self.num_timesteps[cid]),
                "num_updates": int(self.num_updates[cid]), "envs": self._env_client_state(cid)}

    def _env_client_state(self, cid: int) -> dict[str, Any] | None:
        return None if self.envs is None else self.envs.get_state(self._copies([cid]))

    @torch.no_grad()
    def load_client_state(self, cid: int, state: dict[str, Any]) -> None:
        """Restore what :meth:`client_state` returned."""
        for store, key in ((self.flat, "params"), (self.exp_avg, "exp_avg"), (self.exp_avg_sq, "exp_avg_sq")):
            store[cid] = state[key]
        self.adam_steps[cid] = int(state["adam_step"])
        self.num_timesteps[cid] = int(state["num_timesteps"])
        self.num_updates[cid] = int(state["num_updates"])
        envs = state.get("envs")
        if envs is None:
            raise ValueError("checkpoint has no environment state (written before environments persisted across "
                             "rounds); it cannot be continued exactly, start a new run")
        if self.envs is None:
            raise ValueError("this population has no environments to restore the checkpoint's into (set_envs)")
        self.envs.set_state(self._copies([cid]), envs)

    def nbytes(self) -> int:
        """Bytes held by the population's tensors, counters and environment arrays (grows linearly with clients).

        Not counted: the per-copy ``numpy.random.Generator`` objects, created at a client's first training, and
        parameters the environments keep in Python lists.
        """
        envs = sum(b.nbytes() for b in (self.envs, self.client_envs) if b is not None)
        return sum(t.numel() * t.element_size() for t in (self.flat, self.exp_avg, self.exp_avg_sq)) + 3 * 8 * self.n \
            + envs


class _BatchedAdam:
    """``torch.optim.Adam`` (no weight decay) on flat ``(C, dim)`` rows, one step count and learning rate per client."""

    def __init__(self, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, steps: np.ndarray) -> None:
        self.exp_avg, self.exp_avg_sq, self.steps = exp_avg, exp_avg_sq, steps

    @torch.no_grad()
    def step(self, param: torch.Tensor, grad: torch.Tensor, lr: np.ndarray) -> None:
        beta1, beta2 = ADAM_BETAS
        self.steps = self.steps + 1
        bc1 = np.array([1 - beta1 ** float(s) for s in self.steps])
        bc2_sqrt = np.array([math.sqrt(1 - beta2 ** float(s)) for s in self.steps])
        step_size = torch.from_numpy((-(lr / bc1)).astype(np.float32)).unsqueeze(1)
        bc2 = torch.from_numpy(bc2_sqrt.astype(np.float32)).unsqueeze(1)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = self.exp_avg_sq.sqrt().div_(bc2).add_(ADAM_EPS)
        param.addcdiv_(self.exp_avg * step_size, denom)
