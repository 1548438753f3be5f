"""State reconstruction from a client's shared Q-network / policy gradient (gradient inversion).

In FedSGD (McMahan et al. 2017) each client shares one gradient of its loss on a batch of its own
experience. A curious server that sees one client's gradient can recover the environment states in that
batch:

* **analytic, first fully connected layer** (Phong et al. 2017, "Privacy-Preserving Deep Learning via
  Additively Homomorphic Encryption"; Geiping et al. 2020, "Inverting Gradients", NeurIPS, Prop. D.1):
  for ``y = W x + b`` and one input ``x``, ``dL/dW[i, :] = (dL/db[i]) x``, so every neuron with
  ``dL/db[i] != 0`` gives ``x = dL/dW[i, :] / dL/db[i]`` exactly. For a batch each neuron yields a
  mixture of the batch's states weighted by their per-sample ``dL/db[i]``.
* **optimisation-based, DLG** (Zhu et al. 2019, "Deep Leakage from Gradients", NeurIPS, with the
  cosine objective of Geiping et al. 2020): optimise dummy states, soft actions and the per-sample
  learning signals (advantages and return targets for PPO, TD targets for DQN) so that the gradient of
  the client's loss on them matches the shared one.

Threat model
------------
* Who acts: the honest-but-curious server.
* What it sees: the :class:`~securefrl.behaviour.ServerView` of each round — one client's shared gradient
  under plaintext; only the mean gradient under SecAgg; ciphertext bytes under CKKS — plus the global
  model it broadcast (white box: architecture, loss, the sign/scale convention ``delta = -lr * grad``).
* What it controls: nothing in the federation (it does not send malicious models, unlike Fowl et al.
  2022's "Robbing the Fed"); its own optimisation and a prior over states from its own simulations.

:class:`GradientSharingFederation` runs the real round loop (pipeline, protocol, observers) with FedSGD
clients; the states of each shared batch are kept for scoring only (:attr:`shared_batches`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from attacks.base import AttackError, Knowledge, ThreatModel
from attacks.inference.common import ObservedRound, ServerRecorder, matched_errors
from securefrl.agents import make_agent
from securefrl.algorithm import FedAvg
from securefrl.config import ExperimentConfig
from securefrl.envs import draw_client_envs
from securefrl.errors import ConfigError
from securefrl.federation import Client, Federation
from securefrl.params import ParamSpec
from securefrl.seeding import derive_rng, derive_seed
from securefrl.tasks import TrainResult, TrainTask
from securefrl.transforms import UpdateTransform

__all__ = [
    "THREAT_MODEL",
    "GradientSharingFederation",
    "ReconstructionResult",
    "SharedBatch",
    "analytic_candidates",
    "batch_gradient",
    "collect_batch",
    "dlg_reconstruct",
    "first_layers",
    "reconstruction_study",
    "state_prior",
]

THREAT_MODEL = ThreatModel(
    actors="the honest-but-curious server",
    knowledge=Knowledge.OWN,
    controls="nothing in the federation; its own inversion (no malicious model is sent)",
)


# ---------------------------------------------------------------------------------------------------
# the client side: FedSGD on RL experience
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SharedBatch:
    """A batch of a client's transitions whose loss gradient it shares."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray


def _actor_critic(agent: Any) -> bool:
    """True for an ``actor_critic`` agent (PPO's loss), False for a ``q_learning`` one (TD loss); else refused."""
    caps = agent.capabilities
    if "actor_critic" not in caps and "q_learning" not in caps:
        raise ConfigError("agent.name", "gradient sharing supports ppo and dqn (agents declaring actor_critic or "
                          f"q_learning), got {agent.name!r}")
    return "actor_critic" in caps


def _check_agent(agent: Any) -> None:
    _actor_critic(agent)


def _policy_action(agent: Any, obs: np.ndarray, rng: np.random.Generator) -> int:
    """The agent's behaviour policy, sampled with ``rng`` (PPO: its softmax policy; DQN: epsilon-greedy)."""
    x = torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(1, -1))
    with torch.no_grad():
        if _actor_critic(agent):
            p = torch.softmax(agent.policy_logits(x), dim=-1).numpy().astype(np.float64)[0]
            return int(rng.choice(len(p), p=p / p.sum()))
        q = agent.q_values(x)
        if rng.random() < agent.exploration_rate():
            return int(rng.integers(q.shape[-1]))
        return int(q.argmax(dim=1)[0])


def collect_batch(agent: Any, env: Any, batch_size: int, rng: np.random.Generator, warmup_max: int = 50) -> SharedBatch:
    """``batch_size`` consecutive transitions of ``agent``'s behaviour policy in ``env``.

    A random number of warm-up steps (``< warmup_max``) first moves the episode away from its reset
    distribution, so reconstructed states are not trivially near the reset state.
    """
    _check_agent(agent)
    obs, _ = env.reset(seed=int(rng.integers(2**31)))
    for _ in range(int(rng.integers(warmup_max)) if warmup_max > 0 else 0):
        obs, _, term, trunc, _ = env.step(_policy_action(agent, obs, rng))
        if term or trunc:
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
    rows = []
    for _ in range(batch_size):
        action = _policy_action(agent, obs, rng)
        nxt, r, term, trunc, _ = env.step(action)
        rows.append((np.asarray(obs, dtype=np.float32), action, float(r), np.asarray(nxt, dtype=np.float32),
                     bool(term)))
        obs = nxt
        if term or trunc:
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
    o, a, r, n, t = zip(*rows, strict=True)
    return SharedBatch(np.stack(o), np.asarray(a, dtype=np.int64), np.asarray(r, dtype=np.float32), np.stack(n),
                       np.asarray(t, dtype=np.float32))


def batch_gradient(agent: Any, batch: SharedBatch) -> np.ndarray:
    """Gradient of the agent's own training loss on ``batch`` w.r.t. its federated parameters (flat, float64).

    PPO: :meth:`PPOAgent.compute_loss` on the batch with one-step TD advantages and return targets from
    its critic (the rollout's ``logprobs``/``values`` are the current ones, so the ratio is 1, as in the
    first minibatch of an epoch). DQN: :meth:`DQNAgent.compute_loss` (Huber TD loss).
    """
    obs = torch.from_numpy(batch.obs)
    actions = torch.from_numpy(batch.actions)
    if _actor_critic(agent):
        with torch.no_grad():
            logp = torch.log_softmax(agent.policy_logits(obs), dim=-1).gather(1, actions.view(-1, 1)).squeeze(1)
            values = agent.state_values(obs)
            next_v = agent.state_values(torch.from_numpy(batch.next_obs))
            returns = torch.from_numpy(batch.rewards) + agent.config.gamma * (
                1.0 - torch.from_numpy(batch.terminated)) * next_v
        mb = {"obs": obs, "actions": actions, "logprobs": logp, "advantages": returns - values, "returns": returns,
              "values": values}
        loss, _ = agent.compute_loss(mb)
    else:
        loss = agent.compute_loss({"obs": obs, "actions": actions, "rewards": torch.from_numpy(batch.rewards),
                                   "next_obs": torch.from_numpy(batch.next_obs),
                                   "terminated": torch.from_numpy(batch.terminated)})
    params = [p for _, p in agent.federated_parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return np.concatenate([(torch.zeros_like(p) if g is None else g).detach().reshape(-1).double().numpy()
                           for p, g in zip(params, grads, strict=True)])


@dataclass
class GradientSharingFederation(Federation):
    """The federation with FedSGD clients: each shares ``-client_lr * grad`` of its loss on one batch.

    Everything else — sampling, pipeline (clipping, DP noise), protocol, server optimizer, observers — is
    the ordinary round loop. ``shared_batches[(round, client)]`` keeps the batch each client used, for
    scoring reconstructions only.
    """

    batch_size: int = 1
    client_lr: float = 0.05
    warmup_max: int = 50
    shared_batches: dict[tuple[int, int], SharedBatch] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError("batch_size", f"must be an integer >= 1, got {self.batch_size!r}")
        if not self.client_lr > 0:
            raise ConfigError("client_lr", f"must be > 0, got {self.client_lr}")
        super().__post_init__()
        _check_agent(self.clients[0].agent)
        self._batch_envs = {c.client_id: c.env_spec.make() for c in self.clients}
        self.algorithm = FedSGD(self)


class FedSGD(FedAvg):
    """The FedSGD client algorithm: one custom step per client, sharing ``-client_lr * grad`` of one batch.

    Its train task carries its own ``run`` (in-process executors only); the federation's sampling,
    pipeline, protocol, server optimizer and observers are untouched.
    """

    def __init__(self, federation: GradientSharingFederation) -> None:
        super().__init__(federation)
        self.gfed = federation
        self._grads: dict[int, np.ndarray] = {}

    def train_tasks(self, client: Client, round_id: int) -> list[TrainTask]:
        fed, cid = self.gfed, client.client_id

        def step(agent: Any) -> dict[str, float]:
            rng = derive_rng(fed.config.seed, "fedsgd-batch", round_id, cid)
            batch = collect_batch(agent, fed._batch_envs[cid], fed.batch_size, rng, fed.warmup_max)
            fed.shared_batches[(round_id, cid)] = batch
            self._grads[cid] = batch_gradient(agent, batch)
            return {}

        return [TrainTask(cid, round_id, fed.batch_size, None, params=fed.global_params, run=step)]

    def update(self, client: Client, round_id: int, results: list[TrainResult]) -> tuple[np.ndarray, dict[str, Any]]:
        grad = self._grads.pop(client.client_id)
        return -self.gfed.client_lr * grad, {"train_grad_norm": float(np.linalg.norm(grad))}


# ---------------------------------------------------------------------------------------------------
# the attacks
# ---------------------------------------------------------------------------------------------------


def first_layers(spec: ParamSpec, obs_dim: int) -> list[tuple[str, str]]:
    """(weight, bias) names of every input layer (``*.0.weight`` of shape ``(h, obs_dim)`` plus its bias)."""
    shapes = dict(zip(spec.names, spec.shapes, strict=True))
    pairs = []
    for name, shape in shapes.items():
        if name.endswith("0.weight") and len(shape) == 2 and shape[1] == obs_dim:
            bias = name[: -len("weight")] + "bias"
            if shapes.get(bias) == (shape[0],):
                pairs.append((name, bias))
    if not pairs:
        raise AttackError(f"no fully connected input layer with bias taking {obs_dim} inputs in {list(spec.names)}")
    return pairs


def analytic_candidates(update: np.ndarray, spec: ParamSpec, obs_dim: int,
                        rel_tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Every neuron's input estimate ``dL/dW[i] / dL/db[i]``, most reliable (largest ``|dL/db[i]|``) first.

    The update may be any non-zero multiple of the gradient (``-lr * grad``, clipped): the ratio is
    invariant to it. Neurons with ``|dL/db[i]| <= rel_tol * max |dL/db|`` carry no usable signal.
    Returns ``(candidates (k, obs_dim), strengths (k,))``.
    """
    vec = np.asarray(update, dtype=np.float64).reshape(-1)
    if vec.shape[0] != spec.dim:
        raise AttackError(f"update has {vec.shape[0]} values, the model {spec.dim}")
    sl = spec.slices()
    cands, strength = [], []
    for w_name, b_name in first_layers(spec, obs_dim):
        w = vec[sl[w_name]].reshape(-1, obs_dim)
        b = vec[sl[b_name]]
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        if scale == 0.0:
            continue
        keep = np.abs(b) > rel_tol * scale
        cands.append(w[keep] / b[keep, None])
        strength.append(np.abs(b[keep]))
    if not cands:
        raise AttackError("the input layers' bias gradients are all zero: nothing to invert")
    c = np.concatenate(cands)
    s = np.concatenate(strength)
    order = np.argsort(-s, kind="stable")
    return c[order], s[order]


def _loss_model(agent: Any, x: torch.Tensor, action_logits: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """The attacker's model of the client's loss, with soft actions and free per-sample learning signals.

    PPO at ratio 1 (``signal[:, 0]`` advantage, ``signal[:, 1]`` return target; clipping inactive, so the
    gradient equals :meth:`PPOAgent.compute_loss`'s); DQN: Huber loss towards a free TD target
    ``signal[:, 0]``. With one-hot actions and the true signals it reproduces the client's gradient.
    """
    soft = torch.softmax(action_logits, dim=-1)
    if _actor_critic(agent):
        cfg = agent.config
        logp_all = torch.log_softmax(agent.policy_logits(x), dim=-1)
        logp = (soft * logp_all).sum(dim=1)
        ratio = torch.exp(logp - logp.detach())
        adv = signal[:, 0]
        if cfg.norm_adv and len(adv) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg = (-adv * ratio).mean()
        entropy = -(logp_all.exp() * logp_all).sum(dim=1).mean()
        v = agent.state_values(x)
        v_loss = 0.5 * ((v - signal[:, 1]) ** 2).mean()
        return pg - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
    q = (soft * agent.q_values(x)).sum(dim=1)
    return torch.nn.functional.smooth_l1_loss(q, signal[:, 0])


def dlg_reconstruct(update: np.ndarray, model: np.ndarray, template: Any, batch_size: int, prior_mean: np.ndarray,
                    prior_std: np.ndarray, generator: torch.Generator, iterations: int = 300, lr: float = 0.05,
                    restarts: int = 2) -> tuple[np.ndarray, float]:
    """DLG: dummy states whose loss gradient best matches ``update`` (cosine distance, Geiping et al. 2020).

    ``template`` is the attacker's own agent of the same architecture (white box); its parameters are set
    to ``model``, the global model the gradient was taken at. The shared update is ``-lr * grad``, so the
    target direction is ``-update``. Dummy states start at ``prior_mean + prior_std * N(0, 1)`` drawn from
    ``generator``; the best of ``restarts`` runs is returned with its final objective (0 = perfect match).
    """
    _check_agent(template)
    template.set_flat(np.asarray(model, dtype=np.float32))
    params = [p for _, p in template.federated_parameters()]
    target = -torch.as_tensor(np.asarray(update, dtype=np.float64), dtype=torch.float32)
    if not torch.isfinite(target).all() or float(target.norm()) == 0.0:
        raise AttackError("the update is zero or non-finite: nothing to match")
    d = len(prior_mean)
    with torch.no_grad():  # the discrete action count, read off the network the agent exposes
        head = template.policy_logits if _actor_critic(template) else template.q_values
        n_actions = int(head(torch.zeros(1, d)).shape[-1])
    mean = torch.as_tensor(prior_mean, dtype=torch.float32)
    std = torch.as_tensor(np.maximum(prior_std, 1e-3), dtype=torch.float32)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(max(1, restarts)):
        x = (mean + std * torch.randn(batch_size, d, generator=generator)).requires_grad_(True)
        logits = torch.zeros(batch_size, n_actions).normal_(0.0, 0.1, generator=generator).requires_grad_(True)
        signal = torch.randn(batch_size, 2, generator=generator).requires_grad_(True)
        opt = torch.optim.Adam([x, logits, signal], lr=lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(iterations * 0.6), int(iterations * 0.85)],
                                                     gamma=0.2)
        obj = torch.tensor(2.0)
        for _ in range(iterations):
            opt.zero_grad()
            grads = torch.autograd.grad(_loss_model(template, x, logits, signal), params, create_graph=True,
                                        allow_unused=True)
            g = torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1) for p, gi in zip(params, grads,
                                                                                                 strict=True)])
            obj = 1.0 - torch.nn.functional.cosine_similarity(g, target, dim=0)
            obj.backward()
            opt.step()
            sched.step()
        value = float(obj.detach())
        if best is None or value < best[0]:
            best = (value, x.detach().double().numpy().copy())
    assert best is not None
    return best[1], best[0]


def state_prior(config: ExperimentConfig, model: np.ndarray, n_states: int, seed: int) -> tuple[np.ndarray, np.ndarray,
                                                                                                  np.ndarray]:
    """The attacker's prior over states: (mean, std, samples) from its own rollouts of ``model``.

    It simulates the environment family at default physics (it does not know the clients' physics) with
    the same behaviour policy and warm-up as the clients.
    """
    spec = draw_client_envs(config.env.name, 1, 0.0, np.random.default_rng(0))[0]
    agent = make_agent(config.agent.name, spec.make, config.agent_config(), seed=seed % (2**31))
    agent.set_flat(np.asarray(model, dtype=np.float32))
    env = spec.make()
    rng = np.random.default_rng(derive_seed(seed, "prior"))
    states = np.concatenate([collect_batch(agent, env, 8, rng).obs for _ in range(max(1, n_states // 8))])
    return states.mean(axis=0), states.std(axis=0), states.astype(np.float64)


# ---------------------------------------------------------------------------------------------------
# the study: a FedSGD federation under a protocol, attacked from the server's view
# ---------------------------------------------------------------------------------------------------


@dataclass
class ReconstructionResult:
    """Reconstruction error per method, against the attacker's no-information guess.

    ``mode``: ``individual`` (plaintext: the client's own gradient), ``aggregate`` (SecAgg: the mean
    gradient of all included clients) or ``none`` (CKKS: guesses from the prior). ``mse``/``cosine`` are
    averaged over attacked (client, round) pairs after matching (see
    :func:`~attacks.inference.common.matched_errors`); ``prior_*`` apply the same matching to as many
    states drawn from the attacker's prior — the chance level.
    """

    protocol: str
    mode: str
    method: str
    batch_size: int
    n: int
    mse: float
    cosine: float
    prior_mse: float
    prior_cosine: float

    @property
    def relative_mse(self) -> float:
        """``mse / prior_mse``: << 1 means the gradient leaked the states; ~1 or more, it did not."""
        return self.mse / self.prior_mse if self.prior_mse > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "relative_mse": self.relative_mse}


def reconstruction_study(config: ExperimentConfig, batch_size: int = 1, rounds: int = 2, client_lr: float = 0.05,
                         pipeline: UpdateTransform | None = None, methods: Sequence[str] = ("analytic", "dlg"),
                         targets_per_round: int = 2, dlg_iterations: int = 300, dlg_restarts: int = 4,
                         seed: int = 0) -> list[ReconstructionResult]:
    """Run ``rounds`` FedSGD rounds of ``config`` (its protocol, with ``pipeline``) and invert from the server view.

    Per round the server attacks ``targets_per_round`` included clients with every method in ``methods``
    (``analytic``: the single most reliable neuron's estimate for batch size 1, all neurons' candidates
    best-matched for larger batches; ``dlg``). Ground truth comes from
    :attr:`GradientSharingFederation.shared_batches` and is used for scoring only.
    """
    unknown = sorted(set(methods) - {"analytic", "dlg"})
    if unknown:
        raise ConfigError("methods", f"unknown reconstruction method(s) {unknown}; choose analytic, dlg")
    fed = GradientSharingFederation(config, pipeline=pipeline, batch_size=batch_size, client_lr=client_lr)
    recorder = ServerRecorder.attach(fed)
    for _ in range(rounds):
        fed.run_round()
    spec = fed.clients[0].agent.parameter_spec()
    obs_dim = int(fed.clients[0].agent.obs_dim)  # type: ignore[attr-defined]  # every agent with a flat obs
    template = make_agent(config.agent.name, fed.clients[0].env_spec.make, config.agent_config(),
                          seed=derive_seed(seed, "attacker-template") % (2**31))
    own_model = template.get_flat()
    gen = torch.Generator().manual_seed(derive_seed(seed, "dlg") % (2**63))
    pick = np.random.default_rng(derive_seed(seed, "targets"))
    scores: dict[str, list[tuple[float, float, float, float]]] = {m: [] for m in methods}
    modes = set()
    for obs in recorder.rounds:
        targets = sorted(pick.choice(obs.view.included, size=min(targets_per_round, len(obs.view.included)),
                                     replace=False).tolist()) if obs.view.included else []
        # The prior is the attacker's: rollouts of the broadcast model where the protocol lets it know that
        # model, of its own randomly initialised one otherwise (CKKS).
        prior_model = obs.server_model_before if obs.server_model_before is not None else own_model
        p_mean, p_std, p_samples = state_prior(config, prior_model, 256, derive_seed(seed, "prior", obs.round))
        for cid in targets:
            truth = fed.shared_batches[(obs.round, int(cid))].obs.astype(np.float64)
            update, mode = _observed_gradient(obs, int(cid))
            modes.add(mode)
            for method in methods:
                # The no-information guess under the same scoring: the prior mean for one state (or DLG's
                # batch), as many prior samples as the analytic attack has candidates otherwise.
                if method == "analytic" and batch_size > 1:
                    k = min(len(p_samples), _n_neurons(spec, obs_dim))
                    guesses = p_samples[pick.choice(len(p_samples), size=k, replace=False)]
                else:
                    guesses = np.tile(p_mean, (batch_size, 1))
                if update is None:
                    est = guesses  # ciphertext only: the guess is all the attacker has
                elif method == "analytic":
                    cands, _ = analytic_candidates(update, spec, obs_dim)
                    est = cands[:1] if batch_size == 1 else cands
                else:
                    assert obs.server_model_before is not None  # a revealed update implies a known model
                    est, _ = dlg_reconstruct(update, obs.server_model_before, template, batch_size, p_mean, p_std,
                                             gen, iterations=dlg_iterations, restarts=dlg_restarts)
                mse, cos = matched_errors(est, truth)
                prior_mse, prior_cos = matched_errors(guesses, truth)
                scores[method].append((mse, cos, prior_mse, prior_cos))
    protocol = config.protocol.name
    out = []
    for method, rows in scores.items():
        if not rows:
            continue
        arr = np.array(rows)
        out.append(ReconstructionResult(protocol, "/".join(sorted(modes)), method, batch_size, len(rows),
                                        float(arr[:, 0].mean()), float(arr[:, 1].mean()), float(arr[:, 2].mean()),
                                        float(arr[:, 3].mean())))
    return out


def _n_neurons(spec: ParamSpec, obs_dim: int) -> int:
    shapes = dict(zip(spec.names, spec.shapes, strict=True))
    return sum(shapes[w][0] for w, _ in first_layers(spec, obs_dim))


def _observed_gradient(obs: ObservedRound, client_id: int) -> tuple[np.ndarray | None, str]:
    """What the server has to invert for ``client_id``: its update, the mean update, or nothing."""
    own = obs.individual_update(client_id)
    if own is not None:
        return own, "individual"
    if obs.view.revealed_mean is not None:
        return np.asarray(obs.view.revealed_mean, dtype=np.float64), "aggregate"
    return None, "none"
