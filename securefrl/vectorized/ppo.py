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

What personalization asks of local training is here too, as the per-client agent does it: a proximal term per
client (FedProx, Li et al. 2020; Ditto, Li et al. 2021), phases with frozen tensors (FedRep, Collins et al.
2021; Adam's step count is kept per client and tensor, since ``torch.optim.Adam`` skips a tensor without a
gradient), and networks with an environment-embedding input (Jin et al. 2022; :func:`net_forward`).
"""

from __future__ import annotations

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


def batched_mlp(layers: Sequence[torch.Tensor], x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """``tanh`` MLP with stacked weights: ``layers = [W0, b0, W1, b1, ...]``, ``W (C, out, in)``, ``x (C, B, in)``.

    ``shift`` ``(C, out0)`` is added to the first layer's output (an environment embedding's term, see
    :func:`net_forward`).
    """
    n = len(layers) // 2
    for i in range(n):
        w, b = layers[2 * i], layers[2 * i + 1]
        bias = b if i or shift is None else b + shift
        x = torch.baddbmm(bias.unsqueeze(1), x, w.transpose(1, 2))
        if i < n - 1:
            x = _Tanh.apply(x)
    return x


def net_forward(layers: Sequence[torch.Tensor], x: torch.Tensor, embedding_scale: float | None = None) -> torch.Tensor:
    """One stacked network: a plain :func:`batched_mlp`, or with ``embedding_scale`` one whose ``layers`` start with
    an environment embedding ``e (C, d)`` and its input weight ``W_e (C, out0, d)``.

    The embedded network is :class:`securefrl.personalization.parts.EnvEmbeddingInput` (Jin et al. 2022): the first
    layer computes ``W_obs obs + b + W_e (scale * e)``, here by adding the batched ``W_e (scale * e)`` to the bias.
    """
    if embedding_scale is None:
        return batched_mlp(layers, x)
    e, w_e = layers[0], layers[1]
    shift = torch.bmm(w_e, (embedding_scale * e).unsqueeze(2)).squeeze(2)
    return batched_mlp(layers[2:], x, shift)


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
    embedding
        ``(dim, scale)``: every network takes an environment embedding (``spec`` is then that of a ``PPOAgent``
        after :func:`securefrl.personalization.parts.attach_env_embedding`; see :meth:`enable_embedding`).
    """

    def __init__(self, config: PPOConfig, spec: ParamSpec, n_clients: int,
                 envs: BatchedEnv | tuple[dict[str, np.ndarray], int] | None = None,
                 embedding: tuple[int, float] | None = None) -> None:
        config.validate()
        self.config, self.n = config, int(n_clients)
        self._layout(spec, embedding)
        self.flat = torch.zeros((self.n, spec.dim))
        """Every client's parameters as one row each; :attr:`params` are per-tensor views of it."""
        self.params = self.views(self.flat)
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.adam_steps = np.zeros((self.n, len(spec.names)), dtype=np.int64)
        """Adam's step count per client and tensor (``torch.optim.Adam`` skips a tensor with no gradient, so
        FedRep's frozen phases leave the frozen tensors' counts behind)."""
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

    def _layout(self, spec: ParamSpec, embedding: tuple[int, float] | None) -> None:
        """Check ``spec`` is PPOAgent's actor + critic (with embeddings if given); set :attr:`n_actor`."""
        n_layers = len(self.config.hidden) + 1
        per_net = 2 * n_layers + (2 if embedding is not None else 0)
        if len(spec.names) != 2 * per_net or not all(name.startswith("actor.") for name in spec.names[:per_net]):
            raise ValueError(f"spec {spec.names} is not PPOAgent's actor + critic MLPs"
                             + (" with environment embeddings" if embedding is not None else ""))
        self.spec, self.n_actor = spec, per_net
        self.embedding = None if embedding is None else (int(embedding[0]), float(embedding[1]))
        """``(dim, scale)`` of the networks' environment embeddings, or None."""

    @torch.no_grad()
    def enable_embedding(self, spec: ParamSpec, dim: int, scale: float) -> None:
        """Give every client's networks an environment-embedding input (personalization ``embedding``).

        ``spec`` is the embedded agent's; tensors the old layout had keep their rows, the new ones start at
        zero (the federation loads every client's full model before training). Only before any training:
        Adam moments and counters are reset. Calling it again with the same ``(dim, scale)`` does nothing.
        """
        if self.embedding is not None:
            if self.embedding != (int(dim), float(scale)):
                raise ValueError(f"the population's embedding is {self.embedding}, not {(dim, scale)}")
            return
        if self.num_timesteps.any():
            raise ValueError("environment embeddings are attached before any training")
        old = dict(zip(self.spec.names, self.params, strict=True))
        self._layout(spec, (dim, scale))
        self.flat = torch.zeros((self.n, spec.dim))
        self.params = self.views(self.flat)
        for name, view in zip(spec.names, self.params, strict=True):
            if name in old and old[name].shape == view.shape:
                view.copy_(old[name])
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.adam_steps = np.zeros((self.n, len(spec.names)), dtype=np.int64)

    def forward(self, layers: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The stacked actor's or critic's output ``(C, B, out)`` (:func:`net_forward` with this layout)."""
        return net_forward(layers, x, None if self.embedding is None else self.embedding[1])

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
            logits = self.forward(actor, torch.from_numpy(obs).view(c, copies, -1))
            return logits.argmax(dim=2).reshape(-1).numpy()

        return batch.greedy_returns(seeds, act).reshape(c, copies)

    # --- learning ---------------------------------------------------------------------------
    def learn(self, ids: Sequence[int], env_steps: int, seeds: Sequence[int],
              proximal: tuple[np.ndarray, np.ndarray] | None = None,
              phases: Sequence[tuple[Sequence[str], int, str]] | None = None) -> list[dict[str, float]]:
        """Train clients ``ids`` for ``env_steps`` steps each, client ``ids[k]`` reseeded with ``seeds[k]``.

        Equivalent, client by client, to ``agent.reseed(seed); agent.learn(env_steps)`` on a
        :class:`~securefrl.agents.ppo.PPOAgent` built with seed ``env_seeds[cid]``: the environments continue
        the episodes the client's last call left running. Returns each client's ``learn`` statistics.

        ``proximal = (references, mu)`` (references ``(C, dim)`` or one ``(dim,)`` row, ``mu`` per client; 0: no
        term) adds ``mu/2 ||w - ref||^2`` to every gradient step, as ``agent.set_proximal`` does (FedProx, Li et
        al. 2020; Ditto, Li et al. 2021). ``phases`` replaces ``env_steps`` with consecutive ``learn`` calls of
        ``(frozen tensor names, steps, stats prefix)`` on the same streams, as the loop's ``run_train`` runs them
        under ``frozen`` (FedRep, Collins et al. 2021): frozen tensors get no gradient, no Adam step and no part
        in the clipping norm.
        """
        streams = [Streams(int(s), self.config.n_envs) for s in seeds]
        prox = None
        if proximal is not None:
            ref = torch.as_tensor(np.asarray(proximal[0], dtype=np.float32))
            mu = torch.as_tensor(np.asarray(proximal[1], dtype=np.float32)).reshape(-1, 1)
            if mu.shape[0] != len(ids):
                raise ValueError(f"need one proximal coefficient per client ({len(ids)}), got {mu.shape[0]}")
            prox = (ref.expand(len(ids), self.spec.dim) if ref.ndim == 1 else ref, mu)
        if phases is None:
            return self._learn([int(i) for i in ids], env_steps, streams, prox, ())
        out: list[dict[str, float]] = [{} for _ in ids]
        for names, steps, prefix in phases:
            for acc, stats in zip(out, self._learn([int(i) for i in ids], int(steps), streams, prox, names),
                                  strict=True):
                acc.update({prefix + k: v for k, v in stats.items()})
        return out

    def _learn(self, ids: list[int], env_steps: int, streams: list[Streams],
               proximal: tuple[torch.Tensor, torch.Tensor] | None, frozen: Sequence[str]) -> list[dict[str, float]]:
        """One ``learn`` call of every client in ``ids`` on its ``streams`` (see :meth:`learn`)."""
        if self.envs is None:
            raise ValueError("this population has no environments to train in (set_envs)")
        cfg = self.config
        c, n = len(ids), cfg.n_envs
        idx = torch.as_tensor(ids, dtype=torch.long)
        work = self.flat[idx].clone()
        # Leaf tensors that share ``work``'s storage: gradients come per layer (no slice-backward
        # zero-fills of the whole row), while Adam updates ``work`` in place as one tensor.
        leaves = [v.detach().requires_grad_(True) for v in self.views(work)]
        trainable = ~np.isin(np.asarray(self.spec.names), list(frozen)) if frozen else None
        adam = _BatchedAdam(self.exp_avg[idx], self.exp_avg_sq[idx], self.adam_steps[ids].copy(), self.spec.sizes,
                            trainable)
        ctx = _Step(work, leaves, adam, proximal)
        env = self._load_envs(ids)
        rows = self._copies(ids)
        first = 2 if self.embedding is not None else 0  # the first Linear's weight, after an embedding's two tensors
        obs_dim, n_actions = int(self.spec.shapes[first][1]), int(self.spec.shapes[self.n_actor - 1][0])
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
                logp_all = torch.log_softmax(self.forward(actor, obs_t), dim=-1).numpy()
                values = self.forward(critic, obs_t).squeeze(-1).numpy()
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
                    boot = self.forward(critic, torch.from_numpy(step.next_obs.reshape(c, n, obs_dim)))
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
                    last_value = self.forward(critic, torch.from_numpy(env.obs.reshape(c, n, obs_dim)))
                infos.append(self._update(ids, ctx, streams, t, last_value.squeeze(-1).numpy(),
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

    def _update(self, ids: list[int], ctx: _Step, streams: list[Streams],
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
                mb_infos.append(self._update_batch(ctx, mb, lr))
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

    def _update_batch(self, ctx: _Step, mb: dict[str, torch.Tensor], lr: np.ndarray) -> dict[str, torch.Tensor]:
        """One gradient step of every client on its own minibatch (``PPOAgent._update_batch``)."""
        cfg = self.config
        actor, critic = ctx.leaves[: self.n_actor], ctx.leaves[self.n_actor:]
        loss, terms = ppo_loss(cfg, self.forward(actor, mb["obs"]), self.forward(critic, mb["obs"]).squeeze(2), mb)
        grads = torch.autograd.grad(loss.sum(), ctx.leaves)
        grad = torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)
        if ctx.proximal is not None:  # d/dw mu/2 ||w - ref||^2 = mu (w - ref), before clipping (as the loss term)
            ref, mu = ctx.proximal
            grad.add_((ctx.work - ref) * mu)
        if ctx.adam.live is not None:  # a frozen tensor has no gradient: out of the norm and of Adam
            grad.mul_(ctx.adam.live)
        if cfg.max_grad_norm > 0:  # clip_grad_norm_ per client: the norm over all of a client's tensors
            total = torch.linalg.vector_norm(grad, 2, dim=1, keepdim=True)
            grad.mul_(torch.clamp(cfg.max_grad_norm / (total + 1e-6), max=1.0))
        ctx.adam.step(ctx.work, grad, lr)
        return terms

    # --- checkpoints ------------------------------------------------------------------------
    def client_state(self, cid: int) -> dict[str, Any]:
        """Client ``cid``'s trainable state (tensors and ints; loads with ``weights_only=True``)."""
        return {"params": self.flat[cid].clone(), "exp_avg": self.exp_avg[cid].clone(),
                "exp_avg_sq": self.exp_avg_sq[cid].clone(),
                "adam_step": torch.from_numpy(self.adam_steps[cid].copy()),
                "num_timesteps": int(self.num_timesteps[cid]),
                "num_updates": int(self.num_updates[cid]), "envs": self._env_client_state(cid)}

    def _env_client_state(self, cid: int) -> dict[str, Any] | None:
        return None if self.envs is None else self.envs.get_state(self._copies([cid]))

    @torch.no_grad()
    def load_client_state(self, cid: int, state: dict[str, Any]) -> None:
        """Restore what :meth:`client_state` returned."""
        for store, key in ((self.flat, "params"), (self.exp_avg, "exp_avg"), (self.exp_avg_sq, "exp_avg_sq")):
            store[cid] = state[key]
        self.adam_steps[cid] = np.asarray(state["adam_step"], dtype=np.int64)  # an int (older checkpoints): all
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
        tensors = sum(t.numel() * t.element_size() for t in (self.flat, self.exp_avg, self.exp_avg_sq))
        return tensors + self.adam_steps.nbytes + 2 * 8 * self.n + envs


class _Step:
    """What one gradient step of a :meth:`PPOPopulation._learn` call works on."""

    def __init__(self, work: torch.Tensor, leaves: list[torch.Tensor], adam: _BatchedAdam,
                 proximal: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        self.work, self.leaves, self.adam, self.proximal = work, leaves, adam, proximal


class _BatchedAdam:
    """``torch.optim.Adam`` (no weight decay) on flat ``(C, dim)`` rows, one learning rate per client and one step
    count per client and tensor; ``trainable`` (per tensor, None: all) leaves frozen tensors untouched, as Adam
    skips a parameter whose gradient is None."""

    def __init__(self, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, steps: np.ndarray, sizes: Sequence[int],
                 trainable: np.ndarray | None = None) -> None:
        self.exp_avg, self.exp_avg_sq, self.steps = exp_avg, exp_avg_sq, steps
        self.sizes = torch.as_tensor(list(sizes), dtype=torch.long)
        self.trainable = None if trainable is None or trainable.all() else trainable.astype(bool)
        self.live: torch.Tensor | None = None
        """``(1, dim)``: 1 in the trainable tensors' columns, 0 in the frozen ones' (None: nothing frozen)."""
        if self.trainable is not None:
            self.live = torch.repeat_interleave(torch.as_tensor(self.trainable, dtype=torch.float32),
                                                self.sizes).unsqueeze(0)

    def _per_column(self, values: np.ndarray) -> torch.Tensor:
        """``(C, T)`` per-tensor values as ``(C, 1)`` when every tensor agrees, else ``(C, dim)``."""
        if (values == values[:, :1]).all():
            return torch.from_numpy(values[:, :1].astype(np.float32))
        return torch.repeat_interleave(torch.from_numpy(values.astype(np.float32)), self.sizes, dim=1)

    @torch.no_grad()
    def step(self, param: torch.Tensor, grad: torch.Tensor, lr: np.ndarray) -> None:
        beta1, beta2 = ADAM_BETAS
        self.steps = self.steps + (1 if self.trainable is None else self.trainable.astype(np.int64))
        steps = np.maximum(self.steps, 1).astype(np.float64)  # a never-stepped tensor is frozen: its update is 0
        step_size = self._per_column(-(lr[:, None] / (1 - beta1 ** steps)))
        bc2 = self._per_column(np.sqrt(1 - beta2 ** steps))
        live = self.live
        if live is None:
            self.exp_avg.lerp_(grad, 1 - beta1)
            self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        else:  # frozen columns (zero gradient) keep their moments and parameters bit for bit: weight 0, decay 1, step 0
            self.exp_avg.lerp_(grad, (1 - beta1) * live)
            self.exp_avg_sq.mul_(1 - (1 - beta2) * live).addcmul_(grad, grad, value=1 - beta2)
            step_size = step_size * live
        denom = self.exp_avg_sq.sqrt().div_(bc2).add_(ADAM_EPS)
        param.addcdiv_(self.exp_avg * step_size, denom)
