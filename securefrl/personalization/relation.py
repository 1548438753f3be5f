"""Client-relation personalization: the server learns which clients are related and mixes their models.

The survey's third family of personalized FRL (Wu et al.'s DPFed: related clients collaborate more).
The server keeps one model per client and builds each client's next model as a weighted average of the
clients' locally trained models, with weights learned from how similar their updates are:

* FedAMP (Huang et al. 2021, "Personalized Cross-Silo Federated Learning on Non-IID Data", AAAI): the
  server's message passing ``u_i = sum_j xi_ij w_j``, a per-client convex combination whose weights grow
  with the similarity of clients ``i`` and ``j``;
* pFedGraph (Ye et al. 2023, "Personalized Federated Learning with Inferred Collaboration Graphs",
  ICML): the weights of client ``i`` solve a small quadratic programme over the probability simplex,
  trading closeness to the size prior ``p`` against similarity:

      a_i = argmin_{a in simplex}  ||a - p||^2 - alpha * sum_j a_j s_ij  =  Proj_simplex(p + alpha/2 * s_i)

  (completing the square), with ``s_ij`` the cosine similarity of the updates of ``i`` and ``j``, kept as
  an exponential moving average over the rounds (the learned relation graph).

A client's similarity to itself is taken to be that of its closest peer, ``s_ii = max_{j != i} s_ij``,
not 1. Why: local RL updates are mostly noise, so the cosine of two clients' updates is small even when
they need the same policy (measured on edge caching with two client types, 8 clients: 0.03-0.11 within a
type, -0.01-0.06 across); with ``s_ii = 1`` the projection gave every client 0.95 of its own model at the
default alpha and the method was local-only training (``test_a_client_is_as_related_to_itself_as_to_its_
closest_peer``). With the peer rule the weights follow the *differences* between peers' similarities:
uniform (FedAvg) when every peer looks alike, concentrated on the like clients when some are.

Properties (tested): if every client sends the same update, ``s_i`` is constant, the projection returns
``p`` and the round is exactly FedAvg; ``alpha = 0`` is FedAvg whatever the updates; with two clusters of
opposite update directions the weights concentrate within each cluster as ``alpha`` grows.

What it needs: the server uses *each* client's update, so it runs only with protocols that reveal
individual updates (``reveals_individual_updates``, i.e. plaintext). Under CKKS or SecAgg the server
sees only the sum; :func:`check_relation` refuses the configuration and names the methods that work.
With client-level DP only ``local`` noise is allowed: each update is then differentially private by
itself and the weighting is post-processing; central and distributed noise cover the released *sum*
only, not per-client weighted averages computed from individual (under-noised) updates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from securefrl.algorithm import train_stats
from securefrl.errors import ConfigError
from securefrl.personalization.algorithms import Personalized
from securefrl.seeding import train_seed
from securefrl.tasks import TrainResult, TrainTask

if TYPE_CHECKING:
    from securefrl.behaviour import ServerView
    from securefrl.config import ExperimentConfig
    from securefrl.envs import EnvSpec
    from securefrl.federation import Client

__all__ = [
    "Relation",
    "RelationFederation",
    "RelationRound",
    "check_relation",
    "cosine_similarity",
    "project_to_simplex",
    "relation_round",
    "relation_weights",
]

#: Protocol name -> whether it reveals individual updates (the protocols' own class attribute, without
#: building them). A protocol not listed here is checked on the built instance.
_REVEALS = {"plaintext": True, "ckks": False, "secagg": False}

#: Methods that personalize without individual updates (they work under CKKS and SecAgg).
AGGREGATE_ONLY_METHODS = ("finetune", "fedprox", "ditto", "fedper", "fedrep", "embedding", "group", "ifca", "local")


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row of ``v`` onto the probability simplex (Duchi et al. 2008, Fig. 1)."""
    x = np.atleast_2d(np.asarray(v, dtype=np.float64))
    n = x.shape[1]
    u = -np.sort(-x, axis=1)
    css = np.cumsum(u, axis=1) - 1.0
    k = np.arange(1, n + 1)
    rho = np.sum(u - css / k > 0, axis=1)  # number of positive coordinates of the projection (>= 1)
    tau = css[np.arange(x.shape[0]), rho - 1] / rho
    out = np.maximum(x - tau[:, None], 0.0)
    return out.reshape(np.shape(v))


def cosine_similarity(updates: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``(n, n)`` cosine similarities of the rows of ``updates``; a zero row is similar (1) to everything.

    Treating a zero update as similar to all keeps "every client sent nothing new" a FedAvg round.
    """
    u = np.asarray(updates, dtype=np.float64)
    norms = np.linalg.norm(u, axis=1)
    zero = norms <= eps
    unit = np.where(zero[:, None], 0.0, u / np.where(zero, 1.0, norms)[:, None])
    sim = unit @ unit.T
    sim[zero, :] = 1.0
    sim[:, zero] = 1.0
    return np.clip(sim, -1.0, 1.0)


def relation_weights(similarity: np.ndarray, alpha: float, prior: np.ndarray | None = None) -> np.ndarray:
    """Row-stochastic ``(n, n)`` weights: row ``i`` is ``Proj_simplex(prior + alpha/2 * s_i)``, where ``s`` is
    ``similarity`` with each diagonal entry replaced by the row's largest off-diagonal one (see the module)."""
    s = np.array(similarity, dtype=np.float64)
    n = s.shape[0]
    if s.shape != (n, n):
        raise ValueError(f"similarity must be square, got shape {s.shape}")
    if n > 1:
        np.fill_diagonal(s, np.max(np.where(np.eye(n, dtype=bool), -np.inf, s), axis=1))
    if not alpha >= 0.0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    p = np.full(n, 1.0 / n) if prior is None else np.asarray(prior, dtype=np.float64)
    if p.shape != (n,) or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise ValueError("prior must be n non-negative weights summing to 1")
    return project_to_simplex(p[None, :] + 0.5 * alpha * s)


@dataclass(frozen=True)
class RelationRound:
    """One server step: every participant's new model, the weights used and the similarity kept."""

    models: np.ndarray
    """``(n, d)`` new per-client models, row ``i`` = ``models_i + lr * (sum_j weights[i, j] * (models_j + updates_j)
    - models_i)`` (``lr = 1``: the weighted average itself)."""
    weights: np.ndarray
    """``(n, n)`` row-stochastic mixing weights."""
    similarity: np.ndarray
    """``(n, n)`` similarity after this round's moving-average step (feed it back as ``previous``)."""


def relation_round(models: np.ndarray, updates: np.ndarray, alpha: float, ema: float = 1.0,
                   previous: np.ndarray | None = None, prior: np.ndarray | None = None,
                   lr: float = 1.0) -> RelationRound:
    """The server math of one round over the ``n`` participating clients.

    Parameters
    ----------
    models
        ``(n, d)``: the model each participant started the round from (its personalized model).
    updates
        ``(n, d)``: each participant's update (locally trained model minus ``models``).
    alpha
        Strength of the similarity term (0 = FedAvg).
    ema
        Weight of this round's cosine similarities in the moving average (1 = forget the past).
    previous
        ``(n, n)`` similarity of these participants from earlier rounds, or None.
    prior
        FedAvg weights (default uniform).
    lr
        Server step size toward each client's weighted average (``federation.server_lr``): with identical
        updates the round is then FedAvg with that server learning rate (Reddi et al. 2021's ``eta``).
    """
    m = np.asarray(models, dtype=np.float64)
    u = np.asarray(updates, dtype=np.float64)
    if m.ndim != 2 or m.shape != u.shape:
        raise ValueError(f"models and updates must both be (n, d), got {m.shape} and {u.shape}")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(u))):
        raise ValueError("models and updates must be finite")
    if not 0.0 < ema <= 1.0:
        raise ValueError(f"ema must lie in (0, 1], got {ema}")
    if not lr > 0.0:
        raise ValueError(f"lr must be > 0, got {lr}")
    sim = cosine_similarity(u)
    if previous is not None:
        prev = np.asarray(previous, dtype=np.float64)
        if prev.shape != sim.shape:
            raise ValueError(f"previous similarity must be {sim.shape}, got {prev.shape}")
        sim = ema * sim + (1.0 - ema) * prev
    weights = relation_weights(sim, alpha, prior)
    mixed = weights @ (m + u)
    # lr 1 returns the average itself: m + (mixed - m) would round differently and change every earlier run
    return RelationRound(mixed if lr == 1.0 else m + lr * (mixed - m), weights, sim)


def protocol_reveals_individual_updates(name: str) -> bool | None:
    """Whether protocol ``name`` reveals individual updates; None if unknown here (checked when built)."""
    return _REVEALS.get(name)


def check_relation(config: ExperimentConfig) -> None:
    """Refuse ``relation`` where its math or its threat model does not hold, naming what works instead."""
    protocol = config.protocol.name
    if protocol_reveals_individual_updates(protocol) is False:
        raise ConfigError(
            "personalization.method",
            f"relation weighs each client's update by its similarity to the others, so the server needs the "
            f"individual updates, but protocol {protocol!r} reveals only their aggregate. Methods that work under "
            f"{protocol}: {', '.join(AGGREGATE_ONLY_METHODS)}; or use relation with protocol=plaintext",
        )
    placement = config.privacy.placement
    if placement in ("central", "distributed"):
        raise ConfigError(
            "privacy.placement",
            f"{placement} noise protects the released sum, not per-client weighted averages of individual "
            "updates (with distributed noise each update carries only a share of it); use placement=local "
            "(every update private by itself, the weighting is post-processing) or none",
        )
    if config.federation.aggregator != "fedavg":
        raise ConfigError("federation.aggregator", "relation replaces the aggregation rule by per-client weighted "
                          "averages; use aggregator=fedavg")
    if config.federation.server_optimizer != "fedavg":
        raise ConfigError("federation.server_optimizer", "relation steps each client's model toward its weighted "
                          "average by server_lr; it keeps no server momentum or adaptive state per client, so use "
                          "server_optimizer=fedavg (server_lr sets the step)")


class Relation(Personalized):
    """One model per client on the server, mixed each round by :func:`relation_round` (a client algorithm).

    A sampled client trains from its own server-side model and sends its update as in FedAvg; the server,
    which sees the individual updates (plaintext only), sets each participant's next model to its
    similarity-weighted average of the participants' trained models. ``global_params`` stays the FedAvg
    model of the same updates (for reference; clients deploy their own). Clients not sampled keep theirs.
    Its train tasks are plain training, so it runs on every executor.
    """

    def __init__(self, federation: Any) -> None:
        super().__init__(federation)
        # The server's step runs on what the server saw this round, before the round's evaluation.
        federation.observers.insert(0, self._relate)
        self._start: dict[int, np.ndarray] = {}

    def initial_global(self, specs: list[EnvSpec], agent_cfg: Any) -> np.ndarray:
        init = super().initial_global(specs, agent_cfg)
        self.models = np.tile(init.astype(np.float32), (len(specs), 1))
        self.similarity = np.ones((len(specs), len(specs)))
        self.last_weights: dict[int, dict[int, float]] = {}
        return init

    def client_model(self, client: Client) -> np.ndarray:
        return self.models[client.client_id]

    def train_tasks(self, client: Client, round_id: int) -> list[TrainTask]:
        """Train from the client's own server-side model; the update is relative to it."""
        cid = client.client_id
        self._start[cid] = self.models[cid].copy()
        seed = train_seed(self.config.seed, round_id, cid)
        return [TrainTask(cid, round_id, self.config.federation.local_steps, seed, params=self._start[cid])]

    def update(self, client: Client, round_id: int, results: list[TrainResult]) -> tuple[np.ndarray, dict[str, Any]]:
        start = self._start.pop(client.client_id)
        return results[0].params.astype(np.float64) - start.astype(np.float64), train_stats(results[0])

    def _relate(self, view: ServerView) -> None:
        individual = view.individual_updates
        if individual is None:
            raise ConfigError("protocol.name", f"relation needs individual updates; protocol {view.protocol!r} "
                              f"hides them. Methods that work: {', '.join(AGGREGATE_ONLY_METHODS)}")
        ids = sorted(c for c in view.included if c in individual)
        if not ids:
            return
        s = self.settings
        result = relation_round(self.models[ids], np.stack([individual[c] for c in ids]), s.relation_alpha,
                                s.relation_ema, self.similarity[np.ix_(ids, ids)],
                                lr=self.config.federation.server_lr)
        self.models[ids] = result.models.astype(np.float32)
        self.similarity[np.ix_(ids, ids)] = result.similarity
        self.last_weights = {c: {ids[j]: float(w) for j, w in enumerate(result.weights[i])} for i, c in enumerate(ids)}

    def client_extras(self, client: Client) -> dict[str, Any]:
        row = self.last_weights.get(client.client_id)
        if row is None:
            return {}
        return {"relation_self_weight": row[client.client_id],
                "relation_top": max((w, j) for j, w in row.items() if j != client.client_id)[1] if len(row) > 1
                else client.client_id}

    def state_dict(self) -> dict[str, Any]:
        import torch

        return {"models": torch.from_numpy(self.models.copy()), "similarity": torch.from_numpy(self.similarity.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.models = state["models"].numpy().astype(np.float32)
        self.similarity = state["similarity"].numpy().astype(np.float64)


RelationFederation = Relation
"""The name this method had before it became a client algorithm."""
