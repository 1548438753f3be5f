"""Gradient mode (``federation.update = "gradient"``): FedSGD / DD-PPO on the client-algorithm axis.

In delta mode (:class:`securefrl.algorithm.FedAvg`) every client runs its own optimizer for a round and sends
``local - global``. In gradient mode every *optimizer step* is federated: each sampled client computes the
gradient of its agent's loss on its own minibatch at the server's current parameters, the mean gradient goes
through the same update pipeline as a delta (clipping, DP, ``protocol.protect`` / ``combine`` / ``open`` or a
robust rule: a gradient is a vector too) and the server steps Adam on it, with the agent's learning rate and
eps. This is FedSGD (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data") and, for PPO, Decentralized Distributed PPO (Wijmans et al. 2020, "DD-PPO"): K clients
make one large-batch PPO whose rollout is spread over the federation. One client equals the single agent step
for step (``tests/securefrl/test_gradient_mode.py``).

**What a round is.** A round is what a delta round is, ``federation.local_steps`` environment steps per
sampled client, with every optimizer step its agent would make on them, each step one protocol aggregation:

- PPO: rollouts of ``n_envs x n_steps`` acting with the server's parameters; after each rollout its
  ``n_epochs x n_minibatches`` minibatch gradients, one server step each (with ``round_batch`` = one rollout
  per client, a round is one rollout phase);
- DQN: collect until a training phase is due (``train_freq``), then ``gradient_steps`` gradients on the
  client's own replay buffer; the target network is server state, synchronised every
  ``target_update_interval`` server steps;
- SAC: the same cadence (``learning_starts``, ``train_freq``, ``gradient_steps``); one step's vector is the
  actor-loss gradient and the q1/q2 critic-loss gradient, both at the server's parameters on the client's
  replay minibatch (disjoint blocks of one vector, one Adam step, SAC's one ``lr``): the single agent with
  ``agent.params.actor_on_updated_critic = false`` (the default None means exactly that in gradient mode;
  an explicit true is refused). The target critics are
  server state, Polyak-averaged after every server step; the temperature stays local (each client steps its
  own ``log_alpha`` on its own minibatch's alpha loss), as in delta mode.

So ``rounds.jsonl`` keeps one row per client per round, evaluated at the round's end, and
``env_steps_per_client`` counts the same environment steps as in delta mode. The round's first step goes
through the federation's own aggregation (protocol round id ``r``); the further steps run, after it, through
the same :meth:`Federation._aggregate` under protocol round ids :func:`step_round_id` (unique per step, so
no SecAgg mask or CKKS round binding is ever reused). The row columns (``update_norm``, ``bytes_up``,
``rejected``) describe the first step; the summary adds ``grad_steps`` (aggregations made), ``grad_steps_aborted``
and ``bytes_up_steps`` (upload bytes of the further steps). A round in which no agent makes a step (DQN's
``learning_starts``) aggregates zeros once and leaves the model and Adam untouched.

The server's Adam (torch's, with bias correction) and any server-side agent state (DQN's target, SAC's
target critics) live in ``Federation.server_opt.state`` under ``fedsgd_*`` keys, so checkpoints carry them and
a resumed run continues bit-identically. ``federation.estimator = "fedpg-br"`` replaces PPO's minibatch
gradient by FedPG-BR's variance-reduced estimator (:mod:`securefrl.fedpg`).

Limits (refused by :func:`check_gradient`): personalization methods, record-level DP-SGD, Poisson batches,
DP budget calibration (``target_epsilon`` / ``epsilon_budget`` count one release per round, gradient mode makes
one per step; a fixed ``noise_multiplier`` is accounted per step, and the round's ``epsilon`` is the one after
its last step), adaptive clipping, executors without in-process tasks (vectorized, Ray), agents without the
``gradient`` capability, ``client_fraction < 1`` for ``off_policy`` agents (DQN, SAC: their training
phases follow each client's own step count, in lock step only if every client is in every round), SAC with an
explicit ``actor_on_updated_critic = true`` (its actor step would need the critics after the server's step). Not done:
resuming a DP run in gradient mode (the resume check rebuilds one accountant step per round row and refuses
the checkpoint).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from securefrl.algorithm import ClientAlgorithm
from securefrl.errors import ConfigError
from securefrl.seeding import train_seed
from securefrl.tasks import TrainResult, TrainTask

if TYPE_CHECKING:
    from securefrl.config import ExperimentConfig
    from securefrl.federation import Client

__all__ = ["FedSGD", "adam_step", "check_gradient", "step_round_id"]

_DP_KEYS = ("epsilon", "epsilon_server", "epsilon_outsiders", "noise_multiplier", "clip_norm", "dp_noise")
STEP_ID_BASE = 1 << 48
"""Protocol round ids of a round's further gradient steps start here (far above any round number)."""
_STEP_BITS = 24


def step_round_id(round_id: int, step: int) -> int:
    """The protocol round id of gradient step ``step`` >= 1 of round ``round_id`` (step 0 uses ``round_id``)."""
    if not 1 <= step < (1 << _STEP_BITS):
        raise ValueError(f"gradient step {step} out of range [1, {1 << _STEP_BITS})")
    return STEP_ID_BASE + (round_id << _STEP_BITS) + step


def adam_step(state: dict[str, np.ndarray], params: np.ndarray, grad: np.ndarray, lr: float, eps: float,
              betas: tuple[float, float] = (0.9, 0.999), prefix: str = "fedsgd_adam_") -> np.ndarray:
    """One step of torch's Adam (Kingma & Ba 2015, bias-corrected) on ``grad``; ``state`` is updated in place."""
    b1, b2 = betas
    g = np.asarray(grad, dtype=np.float64)
    m = b1 * state.get(prefix + "m", np.zeros_like(g)) + (1 - b1) * g
    v = b2 * state.get(prefix + "v", np.zeros_like(g)) + (1 - b2) * g * g
    t = int(state.get(prefix + "t", np.zeros(1))[0]) + 1
    state[prefix + "m"], state[prefix + "v"], state[prefix + "t"] = m, v, np.array([t], dtype=np.float64)
    denom = np.sqrt(v) / np.sqrt(1 - b2**t) + eps
    return (params.astype(np.float64) - (lr / (1 - b1**t)) * m / denom).astype(np.float32)


class FedSGD(ClientAlgorithm):
    """Every optimizer step federated: mean minibatch gradient, server-side Adam (see the module docstring)."""

    def __init__(self, federation: Any) -> None:
        super().__init__(federation)
        self._sampled: list[int] = []
        self._remaining: dict[int, int] = {}
        self._done: dict[int, int] = {}
        self._grads: dict[int, np.ndarray] = {}
        self._ids: list[int] = []
        self._round_stats: dict[str, Any] = {}

    # --- server-side state (checkpointed inside server_opt.state) -----------------------------------
    @property
    def _state(self) -> dict[str, np.ndarray]:
        return self.fed.server_opt.state

    def _agent_state(self) -> dict[str, np.ndarray]:
        """The agent's server-side state (DQN: the target network), under ``fedsgd_agent_*`` keys."""
        pre = "fedsgd_agent_"
        if pre + "init" not in self._state:  # first use: the agent's initial server state
            init = self.fed.clients[0].agent.grad_server_init(self.fed.global_params)  # type: ignore[attr-defined]
            self._put_agent_state(init)
        return {k[len(pre):]: v for k, v in self._state.items() if k.startswith(pre) and k != pre + "init"}

    def _put_agent_state(self, state: dict[str, np.ndarray]) -> None:
        self._state["fedsgd_agent_init"] = np.ones(1)
        for k, v in state.items():
            self._state["fedsgd_agent_" + k] = v

    # --- client side: one work item per aggregation -------------------------------------------------
    def _work(self, cid: int, agent: Any) -> dict[str, float]:
        """Collect until the agent has a gradient step queued (or its budget is spent), then compute one."""
        while agent.grad_pending() == 0 and self._remaining[cid] > 0:
            n = agent.grad_collect(self.fed.global_params, self._remaining[cid])
            self._remaining[cid] -= n
            self._done[cid] += n
        if agent.grad_pending() > 0:
            self._grads[cid] = self._gradient(cid, agent)
        return {}

    def _gradient(self, cid: int, agent: Any) -> np.ndarray:
        return np.asarray(agent.grad_compute(self.fed.global_params, self._agent_state()), dtype=np.float64)

    def _busy(self, cid: int) -> bool:
        agent = self.fed.clients[cid].agent
        return agent.grad_pending() > 0 or self._remaining[cid] > 0  # type: ignore[attr-defined]

    def select(self, sampled: list[int], round_id: int) -> dict[int, dict[str, Any]]:
        """A new round: its sampled clients, their budgets and the round's step counters."""
        self._sampled, self._grads, self._ids = list(sampled), {}, []
        self._round_stats = {"grad_steps": 0, "grad_steps_aborted": 0, "bytes_up_steps": 0}
        return {}

    def train_tasks(self, client: Client, round_id: int) -> list[TrainTask]:
        cid = client.client_id
        steps = self.config.federation.local_steps
        self._remaining[cid], self._done[cid] = steps, 0
        client.agent.grad_round_start()  # type: ignore[attr-defined]
        return [TrainTask(cid, round_id, steps, train_seed(self.config.seed, round_id, cid),
                          run=partial(self._work, cid))]

    def update(self, client: Client, round_id: int, results: list[TrainResult]) -> tuple[np.ndarray, dict[str, Any]]:
        cid = client.client_id
        grad = self._grads.pop(cid, None)
        if grad is not None:
            self._ids.append(cid)
        stats = client.agent.grad_round_stats(self._done[cid])  # type: ignore[attr-defined]
        if grad is None:
            grad = np.zeros(self.update_dim())
        return grad, {"train_" + k: float(v) for k, v in stats.items()}

    def _lr(self, ids: list[int]) -> float:
        return float(np.mean([self.fed.clients[c].agent.grad_lr() for c in ids]))  # type: ignore[attr-defined]

    def apply_mean(self, mean: np.ndarray) -> np.ndarray:
        """Server Adam on the mean gradient of clients ``_ids`` (none: a round without steps leaves the model)."""
        ids = self._ids
        if not ids:
            return self.fed.global_params
        agent: Any = self.fed.clients[ids[0]].agent
        params = adam_step(self._state, self.fed.global_params, mean, self._lr(ids), agent.grad_adam_eps)
        steps = int(self._state["fedsgd_adam_t"][0])
        agent_state = self._agent_state()
        agent.grad_server_step(agent_state, params, steps)
        self._put_agent_state(agent_state)
        self._round_stats["grad_steps"] += 1
        return params

    # --- the round's further steps, after its first aggregation ---------------------------------------
    def before_eval(self, round_id: int) -> None:
        from protocols.errors import RoundAbortedError

        fed = self.fed
        assert fed.protocol is not None
        step = 1
        while True:
            busy = [c for c in self._sampled if self._busy(c)]
            if not busy:
                break
            fed.executor.train([TrainTask(c, round_id, 0, None, run=partial(self._work, c)) for c in busy])
            grads = {c: self._grads.pop(c) for c in busy if c in self._grads}
            if not grads:
                continue
            sub = step_round_id(round_id, step)
            step += 1
            self._ids = sorted(grads)
            try:
                fed.protocol.begin_round(sub, self._ids)
            except RoundAbortedError:
                self._round_stats["grad_steps_aborted"] += 1
                continue
            rows: dict[int, dict[str, Any]] = {c: {} for c in grads}
            times = {"protect": 0.0, "combine": 0.0, "open": 0.0}
            _, extra, aborted = fed._aggregate(sub, grads, rows, times, None)  # the round's own pipeline
            if aborted or not extra.get("n_included"):
                self._round_stats["grad_steps_aborted"] += 1
            # DP: the round reports the accountant after its last step, not after its first
            self._round_stats.update({k: v for k, v in extra.items() if k in _DP_KEYS})
            self._round_stats["bytes_up_steps"] += int(sum(r.get("bytes_up", 0) for r in rows.values()))

    def summary_extras(self) -> dict[str, Any]:
        return {"update": "gradient", "estimator": self.config.federation.estimator, **self._round_stats}


def check_gradient(config: ExperimentConfig) -> None:
    """Refuse what gradient mode does not implement, naming the field to change (see the module docstring)."""
    fed, priv = config.federation, config.privacy
    if config.personalization.method not in ("none", "fedsgd", "fedpg-br"):
        raise ConfigError("federation.update", f"gradient mode federates every optimizer step of one shared model; "
                          f"personalization.method={config.personalization.method!r} needs update=delta")
    if fed.server_optimizer != "fedavg":
        raise ConfigError("federation.server_optimizer", "gradient mode steps the agent's own optimizer (Adam, the "
                          "agent's lr) on the mean gradient; leave server_optimizer at fedavg (it applies to deltas)")
    if priv.dpsgd:
        raise ConfigError("privacy.dpsgd", "record-level DP-SGD runs in delta mode only; use federation.update=delta")
    from securefrl.agents.registry import agent_capabilities, agent_config_class
    from securefrl.configtools import from_dict

    agent_cfg: Any = from_dict(agent_config_class(config.agent.name), config.agent.params, "agent.params")
    if getattr(agent_cfg, "batch_sampling", None) == "poisson":
        raise ConfigError("agent.params.batch_sampling", "gradient mode draws the agent's shuffled (uniform) "
                          "minibatches; Poisson batches need federation.update=delta")
    if priv.placement != "none" and (priv.target_epsilon > 0 or priv.epsilon_budget > 0 or priv.adaptive_clipping):
        raise ConfigError("privacy.target_epsilon", "gradient mode releases one aggregate per optimizer step, while "
                          "target_epsilon, epsilon_budget and adaptive clipping are calibrated per round; use a fixed "
                          "privacy.noise_multiplier (every step is accounted)")
    if "off_policy" in agent_capabilities(config.agent.name) and fed.client_fraction < 1:
        raise ConfigError("federation.client_fraction", f"gradient-mode {config.agent.name} needs every client in "
                          "every round (client_fraction=1): clients reach their training phases in lock step only then")
    if getattr(agent_cfg, "actor_on_updated_critic", None) is True:
        raise ConfigError("agent.params.actor_on_updated_critic", "gradient mode takes the actor and critic "
                          "gradients at the same server parameters (one vector, one server step); leave "
                          "agent.params.actor_on_updated_critic unset or false (its single-agent counterpart)")
    if fed.estimator == "fedpg-br" or config.personalization.method == "fedpg-br":
        from securefrl.fedpg import check_estimator

        check_estimator(config)
