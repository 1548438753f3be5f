"""Update-poisoning attacks: malicious clients replace their honest update with a crafted one.

Every attack works on flat update vectors. ``craft`` receives the honest updates the ``m`` malicious
clients computed this round (``own_updates``, shape ``(m, d)``) and, for omniscient attacks, the
honest clients' updates (``honest_updates``, shape ``(h, d)``); it returns the ``m`` updates the
malicious clients submit. Attacks that estimate benign statistics can run with ``knowledge="partial"``
(the colluders pool their own honest updates, Shejwalkar and Houmansadr 2021) instead of
``"omniscient"``.

The registry :data:`ATTACKS` and :func:`make_attack` build attacks by name, for configs and the CLI.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from statistics import NormalDist
from typing import Any, ClassVar

import numpy as np

from attacks.base import AttackError, Knowledge, ThreatModel
from securefrl.configtools import did_you_mean
from securefrl.errors import ConfigError

__all__ = [
    "ALIE",
    "ATTACKS",
    "IPM",
    "GaussianNoise",
    "MinMax",
    "ScalingAttack",
    "SignFlip",
    "UpdateAttack",
    "alie_z",
    "make_attack",
    "min_max_gamma",
    "register_attack",
]


def _number(fld: str, value: Any, *, positive: bool = False, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(fld, f"must be a finite number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(fld, f"must be a finite number, got {value}")
    if positive and v <= 0:
        raise ConfigError(fld, f"must be > 0, got {value}")
    if nonnegative and v < 0:
        raise ConfigError(fld, f"must be >= 0, got {value}")
    return v


def _integer(fld: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(fld, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_matrix(name: str, arr: Any, d: int | None = None) -> np.ndarray:
    x = np.asarray(arr, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise AttackError(f"{name} must have shape (rows, d) with rows, d >= 1, got {x.shape}")
    if d is not None and x.shape[1] != d:
        raise AttackError(f"{name} must have d={d} columns like own_updates, got {x.shape[1]}")
    if not np.all(np.isfinite(x)):
        raise AttackError(f"{name} holds NaN or Inf")
    return x


class UpdateAttack(ABC):
    """A poisoning strategy of colluding malicious clients, with its threat model.

    Subclasses set ``name`` and implement :meth:`_craft`; ``omniscient`` says whether ``craft`` needs
    the honest clients' updates of the round.
    """

    name: ClassVar[str] = "abstract"
    knowledge: Knowledge = Knowledge.OWN

    @property
    def omniscient(self) -> bool:
        """True if :meth:`craft` needs ``honest_updates``."""
        return self.knowledge is Knowledge.OMNISCIENT

    @property
    def threat_model(self) -> ThreatModel:
        """Who acts, what they see, what they control (stated apart from the mechanics)."""
        return ThreatModel(
            actors="a fraction f/n of the sampled clients, "
            + ("each acting alone" if self.knowledge is Knowledge.OWN else "colluding (they pool what they see)"),
            knowledge=self.knowledge,
            controls="their own submitted updates only (not the server, not honest clients' updates)",
        )

    def craft(
        self, own_updates: np.ndarray, honest_updates: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        """Return the ``(m, d)`` updates the malicious clients submit instead of ``own_updates``."""
        own = _as_matrix("own_updates", own_updates)
        honest = None
        if self.omniscient:
            if honest_updates is None:
                raise AttackError(f"{self.name} is omniscient: it needs honest_updates of the round")
            honest = _as_matrix("honest_updates", honest_updates, own.shape[1])
        if not isinstance(rng, np.random.Generator):
            raise AttackError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        out = self._craft(own, honest, rng)
        return np.asarray(out, dtype=np.float64)

    def _benign(self, own: np.ndarray, honest: np.ndarray | None, minimum: int) -> np.ndarray:
        """The benign updates the adversary can see: the honest clients' (omniscient) or its own (partial)."""
        benign = honest if self.knowledge is Knowledge.OMNISCIENT else own
        assert benign is not None  # craft() checked it for omniscient attacks
        if benign.shape[0] < minimum:
            source = "honest_updates" if self.knowledge is Knowledge.OMNISCIENT else "own_updates (partial knowledge)"
            raise AttackError(
                f"{self.name} needs at least {minimum} benign updates to estimate their spread, got "
                f"{benign.shape[0]} in {source}"
            )
        return benign

    @abstractmethod
    def _craft(self, own: np.ndarray, honest: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """Validated-input version of :meth:`craft`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(knowledge={self.knowledge.value!r})"


def _knowledge(value: Any, name: str) -> Knowledge:
    allowed = (Knowledge.PARTIAL, Knowledge.OMNISCIENT)
    try:
        k = Knowledge(value)
    except ValueError:
        k = None
    if k not in allowed:
        raise ConfigError(
            f"attack.{name}.knowledge", f"must be one of {[a.value for a in allowed]}, got {value!r}"
        )
    return k


class SignFlip(UpdateAttack):
    """Sign flipping: submit ``-scale * own_update`` (a classic Byzantine baseline, e.g. Li et al. 2019,
    "RSA: Byzantine-Robust Stochastic Aggregation Methods", AAAI).

    Threat model: each malicious client acts alone, sees only its own honest update, and controls its
    submitted update. Against the mean it drags the aggregate by ``2 f/n`` of the honest direction;
    robust rules that count clients (median, Krum) discard it because it sits far from the honest cluster.
    """

    name = "sign_flip"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = _number("attack.sign_flip.scale", scale, positive=True)

    def _craft(self, own: np.ndarray, honest: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        return -self.scale * own


class ScalingAttack(UpdateAttack):
    """Model replacement by boosting (Bagdasaryan et al. 2020, "How To Backdoor Federated Learning",
    AISTATS): submit ``gamma * own_update`` with ``gamma = n / eta``, so that after FedAvg with server
    learning rate ``eta`` over ``n`` clients the global model is (approximately) replaced by the attacker's.

    Threat model: each malicious client acts alone, sees only its own (typically backdoored) update and
    the public round parameters ``n`` and ``eta``, and controls its submitted update. Give either
    ``factor`` (gamma directly) or ``n_clients`` (and optionally ``server_lr``). Norm bounding
    (Sun et al. 2019) is the matching defence.
    """

    name = "scaling"

    def __init__(
        self, factor: float | None = None, n_clients: int | None = None, server_lr: float = 1.0
    ) -> None:
        if (factor is None) == (n_clients is None):
            raise ConfigError(
                "attack.scaling", f"give exactly one of factor or n_clients, got factor={factor}, n_clients={n_clients}"
            )
        lr = _number("attack.scaling.server_lr", server_lr, positive=True)
        if factor is not None:
            self.factor = _number("attack.scaling.factor", factor, positive=True)
        else:
            self.factor = _integer("attack.scaling.n_clients", n_clients, 1) / lr

    def _craft(self, own: np.ndarray, honest: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        return self.factor * own


class GaussianNoise(UpdateAttack):
    """Gaussian attack: submit ``N(0, sigma^2 I)`` noise instead of the update (``additive=False``, the
    Byzantine "Gaussian" baseline of Blanchard et al. 2017, NeurIPS) or ``own + N(0, sigma^2 I)``
    (``additive=True``).

    Threat model: each malicious client acts alone, sees only its own update, controls its submitted
    update; the noise comes from the explicit ``rng`` only.
    """

    name = "gaussian"

    def __init__(self, sigma: float = 1.0, additive: bool = False) -> None:
        self.sigma = _number("attack.gaussian.sigma", sigma, positive=True)
        if not isinstance(additive, bool):
            raise ConfigError("attack.gaussian.additive", f"must be true or false, got {additive!r}")
        self.additive = additive

    def _craft(self, own: np.ndarray, honest: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        noise = rng.normal(0.0, self.sigma, size=own.shape)
        return own + noise if self.additive else noise


def alie_z(n_clients: int, n_malicious: int) -> float:
    """The ALIE perturbation size ``z`` of Baruch et al. (2019), Algorithm 1.

    ``s = floor(n/2 + 1) - f`` honest "supporters" are needed for a majority; ``z`` is the largest value
    with ``Phi(z) < (n - s) / n``, i.e. ``z = Phi^{-1}((n - s)/n)``, so that the crafted value is still
    closer to the mean than ``s`` honest values are expected to be.
    """
    n = _integer("attack.alie.n_clients", n_clients, 2)
    f = _integer("attack.alie.n_malicious", n_malicious, 1)
    s = n // 2 + 1 - f
    if s < 1:
        raise ConfigError(
            "attack.alie.n_malicious",
            f"alie needs f <= floor(n/2) so that s = floor(n/2+1) - f >= 1, got n={n}, f={f}",
        )
    return NormalDist().inv_cdf((n - s) / n)


class ALIE(UpdateAttack):
    """"A Little Is Enough" (Baruch, Baruch and Goldberg 2019, NeurIPS): every malicious client submits
    ``mu - z * sigma``, where ``mu`` and ``sigma`` are the coordinate-wise mean and (population) standard
    deviation of the benign updates and ``z = alie_z(n, f)``.

    Threat model: ``f`` of ``n`` clients collude; they see the benign updates' mean and std (omniscient:
    the honest clients' updates; partial: estimated from their own honest updates) and control their
    submitted updates. The shift hides inside the honest spread, so rules that rely on outlyingness
    (Krum, median, trimmed mean, Bulyan) keep it; Krum even *selects* it, since the ``f`` identical
    copies are each other's nearest neighbours. Give ``z`` directly or ``n_clients`` and ``n_malicious``.
    """

    name = "alie"

    def __init__(
        self,
        n_clients: int | None = None,
        n_malicious: int | None = None,
        z: float | None = None,
        knowledge: str = "omniscient",
    ) -> None:
        if z is None:
            if n_clients is None or n_malicious is None:
                raise ConfigError("attack.alie", "give z, or n_clients and n_malicious to derive it")
            self.z = alie_z(n_clients, n_malicious)
        else:
            if n_clients is not None or n_malicious is not None:
                raise ConfigError("attack.alie", "give either z or (n_clients, n_malicious), not both")
            self.z = _number("attack.alie.z", z, nonnegative=True)
        self.knowledge = _knowledge(knowledge, self.name)

    def _craft(self, own: np.ndarray, honest: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        benign = self._benign(own, honest, 2)
        crafted = benign.mean(axis=0) - self.z * benign.std(axis=0)
        return np.tile(crafted, (own.shape[0], 1))


class IPM(UpdateAttack):
    """Inner product manipulation (Xie, Koyejo and Gupta, "Fall of Empires: Breaking Byzantine-tolerant
    SGD by Inner Product Manipulation", UAI 2019, PMLR 115, 2020): every malicious client submits
    ``-epsilon * mean(benign)`` so that the aggregate's inner product with the true mean turns negative.

    The paper tunes ``epsilon`` to the defence: small (``0.1``) against Krum, whose selection the
    identical, near-origin copies win when the honest variance dominates the mean; large (``100``)
    against the mean, which it drags across zero, and coordinate-wise median-type rules, whose every
    coordinate it pushes against the honest sign (enough to flip the inner product in the paper's
    high-dimensional, high-variance setting, not in every single round).

    Threat model: colluding malicious clients see the benign mean (omniscient: honest clients'
    updates; partial: their own) and control their submitted updates.
    """

    name = "ipm"

    def __init__(self, epsilon: float = 0.1, knowledge: str = "omniscient") -> None:
        self.epsilon = _number("attack.ipm.epsilon", epsilon, positive=True)
        self.knowledge = _knowledge(knowledge, self.name)

    def _craft(self, own: np.ndarray, honest: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        benign = self._benign(own, honest, 1)
        return np.tile(-self.epsilon * benign.mean(axis=0), (own.shape[0], 1))


def min_max_gamma(
    benign: np.ndarray, perturbation: np.ndarray, gamma_init: float = 10.0, tol: float = 1e-5, max_steps: int = 200
) -> float:
    """Largest ``gamma >= 0`` with ``max_i ||mu + gamma p - x_i|| <= max_{i,j} ||x_i - x_j||`` (MinMax).

    The constraint holds at ``gamma = 0`` (the mean is in the hull of the ``x_i``) and its left side is
    convex in ``gamma``, so the feasible gammas form an interval ``[0, gamma*]``. Shejwalkar and
    Houmansadr's binary search halves a step from ``gamma_init``; it cannot exceed ``2 gamma_init``, so
    this version first doubles ``gamma`` until the constraint fails (bracketing ``gamma*`` for any update
    scale) and then bisects down to ``tol`` relative to the bracket.
    """
    x = np.asarray(benign, dtype=np.float64)
    p = np.asarray(perturbation, dtype=np.float64)
    mu = x.mean(axis=0)
    # One row at a time: O(h^2 d) time but only O(h d) memory for large models.
    max_pair = max(float(np.max(np.linalg.norm(x - row, axis=1))) for row in x)
    if not np.any(p) or max_pair == 0.0:
        return 0.0

    def feasible(g: float) -> bool:
        return float(np.max(np.linalg.norm(mu + g * p - x, axis=1))) <= max_pair

    lo, hi = 0.0, float(gamma_init)
    steps = 0
    while feasible(hi):
        lo, hi = hi, 2.0 * hi
        steps += 1
        if steps > max_steps:  # p is non-zero, so the distance grows without bound; unreachable in practice
            raise AttackError("min_max: could not bracket gamma")
    while hi - lo > tol * max(hi, 1e-300) and steps < max_steps:
        mid = 0.5 * (lo + hi)
        if feasible(mid):
            lo = mid
        else:
            hi = mid
        steps += 1
    return lo


class MinMax(UpdateAttack):
    """MinMax (Shejwalkar and Houmansadr 2021, "Manipulating the Byzantine: Optimizing Model Poisoning
    Attacks and Defenses for Federated Learning", NDSS): submit ``mu + gamma * p`` with ``gamma`` as large
    as possible while the crafted update's largest distance to any benign update stays within the
    largest benign pairwise distance (so distance-based defences cannot tell it apart).

    ``perturbation`` is the paper's ``p``: ``"unit_vec"`` (``-mu / ||mu||``), ``"std"`` (``-sigma``,
    coordinate-wise) or ``"sign"`` (``-sign(mu)``). ``gamma`` comes from :func:`min_max_gamma`.

    Threat model: colluding malicious clients see the benign updates (omniscient: the honest clients'
    updates, the paper's full knowledge; partial: their own honest updates) and control their submitted
    updates; all submit the same crafted vector.
    """

    name = "min_max"
    PERTURBATIONS: ClassVar[tuple[str, ...]] = ("unit_vec", "std", "sign")

    def __init__(
        self, perturbation: str = "unit_vec", gamma_init: float = 10.0, tol: float = 1e-5, knowledge: str = "omniscient"
    ) -> None:
        if perturbation not in self.PERTURBATIONS:
            raise ConfigError(
                "attack.min_max.perturbation", f"must be one of {list(self.PERTURBATIONS)}, got {perturbation!r}"
            )
        self.perturbation = perturbation
        self.gamma_init = _number("attack.min_max.gamma_init", gamma_init, positive=True)
        self.tol = _number("attack.min_max.tol", tol, positive=True)
        self.knowledge = _knowledge(knowledge, self.name)
        #: gamma found by the last :meth:`craft` call (diagnostic only).
        self.last_gamma: float | None = None

    def perturbation_vector(self, benign: np.ndarray) -> np.ndarray:
        """The direction ``p`` the crafted update moves along, away from the benign mean."""
        mu = benign.mean(axis=0)
        if self.perturbation == "unit_vec":
            norm = float(np.linalg.norm(mu))
            return -mu / norm if norm > 0 else np.zeros_like(mu)
        if self.perturbation == "std":
            return -benign.std(axis=0)
        return -np.sign(mu)

    def _craft(self, own: np.ndarray, honest: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        benign = self._benign(own, honest, 2)
        p = self.perturbation_vector(benign)
        gamma = min_max_gamma(benign, p, self.gamma_init, self.tol)
        self.last_gamma = gamma
        return np.tile(benign.mean(axis=0) + gamma * p, (own.shape[0], 1))


# ----------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------

#: Attack classes by name; :func:`register_attack` adds user attacks.
ATTACKS: dict[str, type[UpdateAttack]] = {
    cls.name: cls for cls in (SignFlip, ScalingAttack, GaussianNoise, ALIE, IPM, MinMax)
}


def register_attack(cls: type[UpdateAttack]) -> type[UpdateAttack]:
    """Add an attack class to :data:`ATTACKS` under ``cls.name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, UpdateAttack)):
        raise ConfigError("attack", f"can only register UpdateAttack subclasses, got {cls!r}")
    if cls.name in ATTACKS and ATTACKS[cls.name] is not cls:
        raise ConfigError("attack", f"an attack named {cls.name!r} is already registered ({ATTACKS[cls.name]!r})")
    ATTACKS[cls.name] = cls
    return cls


def make_attack(name: str, **params: Any) -> UpdateAttack:
    """Build the attack registered as ``name``; unknown names or parameters raise :class:`ConfigError`."""
    cls = ATTACKS.get(name)
    if cls is None:
        raise ConfigError("attack", f"unknown attack {name!r}; known attacks: {', '.join(sorted(ATTACKS))}")
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            "attack", f"{name} does not take parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed) or 'none'}"
            + did_you_mean(unknown[0], allowed)
        )
    return cls(**params)
