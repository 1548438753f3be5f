"""Environment-property inference: a curious server infers a client's physics from what it sees.

The attack follows the shadow-model recipe of property inference (Ganju et al. 2018, "Property
Inference Attacks on Fully Connected Neural Networks using Permutation Invariant Representations", CCS;
Melis et al. 2019, "Exploiting Unintended Feature Leakage in Collaborative Learning", S&P, passive
property inference from updates): the attacker trains *shadow clients* in environments whose property it
chose, from the same global model and with the same local training as the real clients, and fits a
regressor from shadow updates to the property. Applied to a real client's update it predicts that
client's property (e.g. CartPole's pole length).

Threat model
------------
* Who acts: the honest-but-curious aggregation server (it follows the protocol).
* What it sees: per round, the :class:`~securefrl.behaviour.ServerView` of the protocol — individual
  updates under plaintext; only the opened mean under SecAgg; only ciphertext bytes under CKKS — and
  the global model when it knows it (plaintext, SecAgg). It knows the public training configuration:
  agent, hyperparameters, local steps, update pipeline (clip norm, noise multiplier), environment family
  and the heterogeneity range. It does not know the clients' other physics parameters (nuisances).
* What it controls: nothing in the federation; its own shadow simulations and seeds.

What each protocol leaves it (the results show this):
* plaintext: one prediction per client and round from the client's own update;
* SecAgg: the predictor applied to the revealed mean update estimates the *mean* property of the
  included clients; every client gets that population estimate;
* CKKS: no plaintext at all — not even the global model — so the attacker can only fall back on its
  prior (the mean of the property's public range) for every client: chance level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from attacks.base import AttackError, Knowledge, ThreatModel
from attacks.inference.common import ObservedRound, majority_chance, r2_score
from securefrl.agents import make_agent
from securefrl.config import ExperimentConfig
from securefrl.envs import draw_client_envs, resolve_env
from securefrl.errors import ConfigError
from securefrl.seeding import derive_seed
from securefrl.transforms import UpdateTransform

__all__ = ["PropertyInference", "PropertyInferenceResult", "RidgeRegressor"]

THREAT_MODEL = ThreatModel(
    actors="the honest-but-curious server",
    knowledge=Knowledge.OWN,
    controls="its own shadow clients (environments with chosen properties); nothing in the federation",
)


class RidgeRegressor:
    """Ridge regression on standardised features, solved in the dual (n_samples << n_features).

    Why dual: update vectors have thousands of coordinates and the attacker has tens of shadow
    updates, so ``K = X X^T`` (n x n) is the cheap system. ``alpha`` is relative to ``trace(K)/n``,
    making it insensitive to the update scale.
    """

    def __init__(self, alpha: float = 0.1) -> None:
        if not alpha > 0:
            raise ConfigError("alpha", f"must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def fit(self, x: np.ndarray, y: np.ndarray) -> RidgeRegressor:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
            raise AttackError(f"need at least 2 samples with features (n, d), got x {x.shape}, y {y.shape}")
        self.mu = x.mean(axis=0)
        sd = x.std(axis=0)
        self.sd = np.where(sd > 0, sd, 1.0)
        self.y_mean = float(y.mean())
        z = (x - self.mu) / self.sd
        k = z @ z.T
        lam = self.alpha * max(float(np.trace(k)) / len(k), 1e-300)
        dual = np.linalg.solve(k + lam * np.eye(len(k)), y - self.y_mean)
        self.coef = z.T @ dual
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(np.asarray(x, dtype=np.float64)) - self.mu) / self.sd
        return z @ self.coef + self.y_mean


@dataclass
class PropertyInferenceResult:
    """Per-client predictions of the property and their quality against chance.

    ``mode`` is what the view allowed: ``individual`` (plaintext), ``aggregate`` (SecAgg: only the mean)
    or ``none`` (CKKS: a prior guess). ``r2`` is over (client, round) pairs; ``accuracy`` classifies
    "above/below ``threshold``" and ``chance`` is the majority-class rate, the best a constant guess
    achieves. ``population_error`` (aggregate mode) compares the estimated mean property of the
    included clients with the truth; ``prior_population_error`` is the prior guess's error.
    """

    protocol: str
    mode: str
    prop: str
    n: int
    r2: float
    accuracy: float
    chance: float
    mae: float
    prior_mae: float
    threshold: float
    population_error: float | None = None
    prior_population_error: float | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def advantage(self) -> float:
        """Accuracy above chance (<= 0 means the attack learnt nothing a constant guess would not)."""
        return self.accuracy - self.chance

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("predictions")
        out["advantage"] = self.advantage
        return out


class PropertyInference:
    """Shadow-client property inference against a federation's server views.

    Parameters
    ----------
    config:
        The federation's public configuration (agent, local steps, environment family, heterogeneity).
    prop:
        Physics parameter of the environment family to infer (default CartPole ``pole_length``).
    n_shadow:
        Shadow clients; each trains every attacked round from the broadcast model, like a real client.
    alpha:
        Ridge regularisation (relative).
    shadow_pipeline:
        The public update pipeline (clip, noise) applied to shadow updates, with the attacker's own RNG.
    seed:
        Seeds the shadow environments and training (the attacker's randomness, independent of the run's).
    """

    threat_model = THREAT_MODEL

    def __init__(self, config: ExperimentConfig, prop: str = "pole_length", n_shadow: int = 32, alpha: float = 0.1,
                 shadow_pipeline: UpdateTransform | None = None, seed: int = 0) -> None:
        family = resolve_env(config.env.name, "env.name")
        if family is None:
            raise ConfigError("env.name", f"property inference needs an environment family, got {config.env.name!r}")
        family.param(prop, "attack.property")
        if config.env.heterogeneity == 0 or prop in config.env.overrides:
            raise ConfigError("attack.property", f"{prop} is the same for every client under this config; there is "
                                                 "nothing to infer (raise env.heterogeneity)")
        if isinstance(n_shadow, bool) or not isinstance(n_shadow, int) or n_shadow < 4:
            raise ConfigError("attack.n_shadow", f"must be an integer >= 4, got {n_shadow!r}")
        self.config = config
        self.prop = prop
        self.n_shadow = n_shadow
        self.alpha = alpha
        self.shadow_pipeline = shadow_pipeline
        self.seed = int(seed)
        rng = np.random.default_rng(derive_seed(self.seed, "property-shadow-envs"))
        ranges = {k: (v[0], v[1]) for k, v in config.env.ranges.items()} or None
        self.shadow_specs = draw_client_envs(config.env.name, n_shadow, config.env.heterogeneity, rng,
                                             overrides=config.env.overrides or None, ranges=ranges)
        self.labels = np.array([s.params[prop] for s in self.shadow_specs], dtype=np.float64)
        self.prior = float(self.labels.mean())
        self.threshold = float(np.median(self.labels))
        self._agents: list[Any] | None = None
        self._pipe_states: list[Any] = []

    # --- shadow clients ------------------------------------------------------------------
    def _shadow_agents(self) -> list[Any]:
        if self._agents is None:
            cfg = self.config
            agent_cfg = cfg.agent_config()
            self._agents = [make_agent(cfg.agent.name, spec.make, agent_cfg, seed=derive_seed(self.seed, "shadow", i)
                                       % (2**31)) for i, spec in enumerate(self.shadow_specs)]
            if self.shadow_pipeline is not None:
                dim = int(self._agents[0].get_flat().shape[0])
                self._pipe_states = [self.shadow_pipeline.init(dim) for _ in self._agents]
        return self._agents

    def shadow_updates(self, model: np.ndarray, round_id: int) -> np.ndarray:
        """Updates of every shadow client trained one round from ``model`` (rows align with ``labels``)."""
        local_steps = self.config.federation.local_steps
        out = []
        for i, agent in enumerate(self._shadow_agents()):
            agent.set_flat(np.asarray(model, dtype=np.float32))
            agent.reseed(derive_seed(self.seed, "shadow-train", round_id, i) % (2**31))
            agent.learn(local_steps)
            delta = agent.get_flat().astype(np.float64) - np.asarray(model, dtype=np.float32).astype(np.float64)
            if self.shadow_pipeline is not None:
                rng = np.random.default_rng(derive_seed(self.seed, "shadow-pipeline", round_id, i))
                delta, self._pipe_states[i] = self.shadow_pipeline.update(delta, self._pipe_states[i], rng)
            out.append(delta)
        return np.stack(out)

    # --- the attack ------------------------------------------------------------------------
    def run(self, observed: Sequence[ObservedRound], truth: Mapping[int, float],
            rounds: Sequence[int] | None = None) -> PropertyInferenceResult:
        """Attack every client of the given rounds (all observed rounds by default).

        ``truth`` maps client id to its true property value; it is used for scoring only.
        """
        chosen = [o for o in observed if rounds is None or o.round in rounds]
        if not chosen:
            raise AttackError("no observed round to attack")
        protocol = chosen[0].view.protocol
        rows: list[dict[str, Any]] = []
        pop_err: list[float] = []
        pop_prior: list[float] = []
        modes = set()
        for obs in chosen:
            included = [c for c in obs.view.included if c in truth]
            if not included:
                continue
            individual = obs.view.individual_updates
            if individual is not None and obs.server_model_before is not None:
                mode = "individual"
                reg = RidgeRegressor(self.alpha).fit(self.shadow_updates(obs.server_model_before, obs.round),
                                                     self.labels)
                updates = {c: obs.individual_update(c) for c in included}
                preds = {c: float(reg.predict(u)[0]) for c, u in updates.items() if u is not None}
            elif obs.view.revealed_mean is not None and obs.server_model_before is not None:
                mode = "aggregate"
                reg = RidgeRegressor(self.alpha).fit(self.shadow_updates(obs.server_model_before, obs.round),
                                                     self.labels)
                estimate = float(reg.predict(np.asarray(obs.view.revealed_mean, dtype=np.float64))[0])
                preds = dict.fromkeys(included, estimate)
                true_mean = float(np.mean([truth[c] for c in included]))
                pop_err.append(abs(estimate - true_mean))
                pop_prior.append(abs(self.prior - true_mean))
            else:
                mode = "none"  # ciphertext only: no feature to regress on, the prior is all there is
                preds = dict.fromkeys(included, self.prior)
            modes.add(mode)
            rows.extend({"round": obs.round, "client": c, "true": float(truth[c]), "pred": p} for c, p in preds.items())
        if not rows:
            raise AttackError("no client of the attacked rounds has a known true property")
        y = np.array([r["true"] for r in rows])
        p = np.array([r["pred"] for r in rows])
        cls_true = y > self.threshold
        return PropertyInferenceResult(
            protocol=protocol,
            mode="/".join(sorted(modes)),
            prop=self.prop,
            n=len(rows),
            r2=r2_score(y, p),
            accuracy=float(np.mean((p > self.threshold) == cls_true)),
            chance=majority_chance(cls_true),
            mae=float(np.mean(np.abs(p - y))),
            prior_mae=float(np.mean(np.abs(self.prior - y))),
            threshold=self.threshold,
            population_error=float(np.mean(pop_err)) if pop_err else None,
            prior_population_error=float(np.mean(pop_prior)) if pop_prior else None,
            predictions=rows,
        )
