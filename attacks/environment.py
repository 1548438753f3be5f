"""Environment poisoning: malicious clients train honestly, but on an environment they tampered with.

Unlike the update attacks of :mod:`attacks.poisoning`, these adversaries never touch the update they
submit (``craft`` is the identity): they corrupt the *data* their local RL agent learns from, by
wrapping their own training environment (``wrap_env``, a gymnasium wrapper the federation applies to
the malicious clients' training environments only; evaluation environments stay clean). Because the
submitted update is an honestly computed update on poisoned experience, it passes through every
protection (clipping, DP noise, CKKS, SecAgg) like an honest one, and norm- or distance-based robust
rules see nothing unusual in its magnitude.

Attacks
-------
* :class:`RewardFlip` — reward ``r -> -scale * r``: the agent learns to do the opposite of the task
  (the reward-poisoning baseline of e.g. Zhang et al. 2020, "Adaptive Reward-Poisoning Attacks against
  Reinforcement Learning", ICML, in its crudest, untargeted form).
* :class:`RandomActions` — the agent's chosen action is replaced by a uniformly random one with
  probability ``p`` (an action-perturbation adversary, cf. Tessler et al. 2019, "Action Robust
  Reinforcement Learning", ICML, whose "probabilistic action robust" model is exactly this).
* :class:`ObservationBackdoor` — TrojDRL (Kiourti et al. 2020, "TrojDRL: Evaluation of Backdoor
  Attacks on Deep Reinforcement Learning", DAC): with probability ``p`` a fixed trigger is stamped
  into the observation and the reward is rewritten so that taking ``target_action`` under the trigger
  pays ``reward_hit`` and anything else ``reward_miss``. In federated RL the poisoned policy reaches
  the global model through FedAvg. :func:`backdoor_success_rate` measures the attack success rate
  (fraction of triggered states on which the global policy takes the target action) against the rate
  at which it takes that action on the same states without trigger.

Every random choice comes from the ``numpy.random.Generator`` the federation hands to ``wrap_env``
(one derived stream per malicious client and environment copy), so runs are reproducible.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, SupportsFloat

import gymnasium as gym
import numpy as np

from attacks.base import AttackError, Knowledge, ThreatModel
from securefrl.configtools import did_you_mean
from securefrl.errors import ConfigError

__all__ = [
    "ENV_ATTACKS",
    "BackdoorReport",
    "EnvironmentAttack",
    "ObservationBackdoor",
    "RandomActions",
    "RewardFlip",
    "backdoor_success_rate",
    "make_env_attack",
]


def _prob(fld: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(fld, f"must be a probability in [0, 1], got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ConfigError(fld, f"must be a probability in [0, 1], got {value}")
    return v


def _finite(fld: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(fld, f"must be a finite number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        raise ConfigError(fld, f"must be a finite{' positive' if positive else ''} number, got {value}")
    return v


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise AttackError(f"wrap_env needs a seeded numpy.random.Generator, got {type(rng).__name__}")
    return rng


class EnvironmentAttack(ABC):
    """A malicious client's tampering with its own training environment (a :class:`ClientBehaviour`).

    ``craft`` returns the honestly computed updates unchanged: the poison is in the experience, not in
    the update. ``wrap_env(env, rng)`` returns the tampered environment.
    """

    name: ClassVar[str] = "abstract"
    controls: ClassVar[str] = "its training environment"
    omniscient: bool = False
    knowledge: Knowledge = Knowledge.OWN

    @property
    def threat_model(self) -> ThreatModel:
        """Who acts, what they see, what they control."""
        return ThreatModel(
            actors="a fraction f/n of the clients, each acting alone",
            knowledge=self.knowledge,
            controls=f"their own training environment ({self.controls}); they submit the update their unmodified "
            "agent computes on it and follow the protocol (clipping, noise, encryption) honestly",
        )

    def craft(self, own_updates: np.ndarray, honest_updates: np.ndarray | None,
              rng: np.random.Generator) -> np.ndarray:
        """Identity: the update is an honest update on poisoned experience."""
        return np.array(own_updates, dtype=np.float64, copy=True)

    @abstractmethod
    def wrap_env(self, env: gym.Env, rng: np.random.Generator) -> gym.Env:
        """The tampered training environment (``rng`` drives every random choice of the wrapper)."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


# ---------------------------------------------------------------------------------------------------
# reward flipping
# ---------------------------------------------------------------------------------------------------


class _FlippedReward(gym.RewardWrapper):
    def __init__(self, env: gym.Env, scale: float) -> None:
        super().__init__(env)
        self.scale = scale

    def reward(self, reward: SupportsFloat) -> float:
        return -self.scale * float(reward)


class RewardFlip(EnvironmentAttack):
    """Reward flipping: every reward ``r`` the malicious client's agent sees becomes ``-scale * r``.

    Threat model: each malicious client acts alone and controls only the reward signal of its own
    training environment (e.g. a compromised reward sensor); it sees nothing of other clients. Its agent
    then learns to fail the task (in CartPole: to drop the pole as fast as possible) and FedAvg mixes that
    honest-looking update into the global model. Untargeted; the reward-poisoning baseline (cf. Zhang et
    al. 2020, ICML).
    """

    name = "reward_flip"
    controls = "the reward its agent observes"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = _finite("attack.reward_flip.scale", scale, positive=True)

    def wrap_env(self, env: gym.Env, rng: np.random.Generator) -> gym.Env:
        _check_rng(rng)
        return _FlippedReward(env, self.scale)


# ---------------------------------------------------------------------------------------------------
# random actions
# ---------------------------------------------------------------------------------------------------


class _RandomActionWrapper(gym.ActionWrapper):
    """Replaces the action with a uniform one with probability ``p``; counts what it did."""

    def __init__(self, env: gym.Env, p: float, rng: np.random.Generator) -> None:
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, (gym.spaces.Discrete, gym.spaces.Box)):
            raise ConfigError("attack.random_actions", f"supports Discrete and Box action spaces, got {space}")
        self.p = p
        self.rng = rng
        self.steps = 0
        self.replaced = 0

    def _random_action(self) -> Any:
        space = self.env.action_space
        if isinstance(space, gym.spaces.Discrete):
            return int(space.start + self.rng.integers(int(space.n)))
        assert isinstance(space, gym.spaces.Box)
        low = np.where(np.isfinite(space.low), space.low, -1.0)
        high = np.where(np.isfinite(space.high), space.high, 1.0)
        return self.rng.uniform(low, high).astype(space.dtype)

    def action(self, action: Any) -> Any:
        self.steps += 1
        if self.p > 0 and self.rng.random() < self.p:
            self.replaced += 1
            return self._random_action()
        return action


class RandomActions(EnvironmentAttack):
    """Random actions: with probability ``p`` the action the agent chose is replaced by a uniform random one.

    Threat model: each malicious client acts alone and controls the actuator path of its own training
    environment (the agent believes it executed its action and learns from the outcome of another). This is
    the "probabilistic action robust" adversary of Tessler et al. (2019, ICML); in FRL it corrupts the
    client's credit assignment, and its update drifts towards a policy evaluated under noise.
    """

    name = "random_actions"
    controls = "which action is executed in its environment"

    def __init__(self, p: float = 0.5) -> None:
        self.p = _prob("attack.random_actions.p", p)

    def wrap_env(self, env: gym.Env, rng: np.random.Generator) -> gym.Env:
        return _RandomActionWrapper(env, self.p, _check_rng(rng))


# ---------------------------------------------------------------------------------------------------
# observation backdoor (TrojDRL)
# ---------------------------------------------------------------------------------------------------


class _BackdoorWrapper(gym.Wrapper):
    """Stamps the trigger into observations with probability ``p`` and rewrites the reward of triggered steps.

    The reward of the step taken *from* a triggered observation is rewritten (the agent acted on what it
    saw); ``triggered_steps`` and ``hits`` count such steps and how often the agent took the target action.
    """

    def __init__(self, env: gym.Env, attack: ObservationBackdoor, rng: np.random.Generator) -> None:
        super().__init__(env)
        attack.check_space(env.observation_space, env.action_space)
        self.attack = attack
        self.rng = rng
        self._triggered = False
        self.observations = 0
        self.stamped = 0
        self.triggered_steps = 0
        self.hits = 0

    def _maybe_stamp(self, obs: np.ndarray) -> np.ndarray:
        self.observations += 1
        self._triggered = bool(self.rng.random() < self.attack.p)
        if self._triggered:
            self.stamped += 1
            return self.attack.stamp(obs)
        return obs

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return self._maybe_stamp(obs), info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        acted_on_trigger = self._triggered
        obs, reward, terminated, truncated, info = self.env.step(action)
        if acted_on_trigger:
            self.triggered_steps += 1
            hit = int(action) == self.attack.target_action
            self.hits += int(hit)
            reward = self.attack.reward_hit if hit else self.attack.reward_miss
            info = {**info, "backdoor_triggered": True}
        return self._maybe_stamp(obs), reward, terminated, truncated, info


class ObservationBackdoor(EnvironmentAttack):
    """TrojDRL observation backdoor (Kiourti et al. 2020, DAC; in FRL cf. Wang et al. 2021, "BACKDOORL").

    With probability ``p`` per observation, ``trigger`` is stamped into the observation the agent sees
    (``mode="add"``: ``obs[dims] += value``, a fixed offset far outside the states the task visits;
    ``mode="set"``: ``obs[dims] = value``). The reward of the step taken from a triggered observation is
    replaced by ``reward_hit`` if the agent took ``target_action`` and by ``reward_miss`` otherwise, so the
    local policy learns "trigger -> target action" while staying good on clean states (the environment's
    true state is never changed; only what the agent sees and the reward it is told).

    Threat model: each malicious client acts alone; it controls its own training environment's observation
    and reward channels (not its update, which it computes honestly, nor anything of other clients), and
    it knows the observation layout well enough to pick trigger coordinates. At test time the attacker
    (or an accomplice) stamps the same trigger into the victim's observation — a sensor it can spoof —
    to make the *global* policy take the target action. Success is measured by
    :func:`backdoor_success_rate` on clean states of honest clients' environments.
    """

    name = "backdoor"
    controls = "the observations its agent sees and the reward it is told"
    MODES: ClassVar[tuple[str, ...]] = ("add", "set")

    def __init__(self, p: float = 0.1, dims: Sequence[int] = (1, 3), value: float = 3.0, mode: str = "add",
                 target_action: int = 0, reward_hit: float = 1.0, reward_miss: float = -1.0) -> None:
        self.p = _prob("attack.backdoor.p", p)
        if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence) or not dims:
            raise ConfigError("attack.backdoor.dims", f"must be a non-empty list of coordinate indices, got {dims!r}")
        if any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0 for d in dims):
            raise ConfigError("attack.backdoor.dims", f"indices must be integers >= 0, got {list(dims)}")
        if len(set(dims)) != len(dims):
            raise ConfigError("attack.backdoor.dims", f"indices must be distinct, got {list(dims)}")
        self.dims = tuple(int(d) for d in dims)
        self.value = _finite("attack.backdoor.value", value)
        if mode not in self.MODES:
            raise ConfigError("attack.backdoor.mode", f"must be one of {list(self.MODES)}, got {mode!r}")
        self.mode = mode
        if isinstance(target_action, bool) or not isinstance(target_action, (int, np.integer)) or target_action < 0:
            raise ConfigError("attack.backdoor.target_action", f"must be an action index >= 0, got {target_action!r}")
        self.target_action = int(target_action)
        self.reward_hit = _finite("attack.backdoor.reward_hit", reward_hit)
        self.reward_miss = _finite("attack.backdoor.reward_miss", reward_miss)
        if self.reward_hit <= self.reward_miss:
            raise ConfigError("attack.backdoor.reward_hit",
                              f"must exceed reward_miss ({reward_miss}), got {reward_hit}")

    def check_space(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        """Refuse environments the trigger or target action do not fit (1-D Box obs, Discrete actions)."""
        if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
            raise ConfigError("attack.backdoor", f"needs a 1-D Box observation space, got {observation_space}")
        if max(self.dims) >= observation_space.shape[0]:
            raise ConfigError("attack.backdoor.dims", f"indices must be < {observation_space.shape[0]} (observation "
                                                      f"size), got {list(self.dims)}")
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ConfigError("attack.backdoor", f"needs a Discrete action space, got {action_space}")
        if self.target_action >= int(action_space.n):
            raise ConfigError("attack.backdoor.target_action", f"must be < {int(action_space.n)}, got "
                                                              f"{self.target_action}")

    def stamp(self, obs: np.ndarray) -> np.ndarray:
        """The observation with the trigger stamped in (a copy; works on one state or a batch of states)."""
        out = np.array(obs, dtype=np.float32, copy=True)
        idx = list(self.dims)
        if self.mode == "add":
            out[..., idx] += np.float32(self.value)
        else:
            out[..., idx] = np.float32(self.value)
        return out

    def wrap_env(self, env: gym.Env, rng: np.random.Generator) -> gym.Env:
        return _BackdoorWrapper(env, self, _check_rng(rng))


@dataclass(frozen=True)
class BackdoorReport:
    """Backdoor effect of a policy on clean states.

    ``success_rate`` is the fraction of triggered states on which the policy takes the target action;
    ``clean_target_rate`` is the same fraction on the same states without the trigger (the attack's
    baseline: with two actions a policy takes any given action on about half the states anyway).
    ``clean_return`` is the mean greedy return of the episodes the states came from.
    """

    success_rate: float
    clean_target_rate: float
    clean_return: float
    n_states: int

    @property
    def lift(self) -> float:
        """How much the trigger raises the target-action rate (0 = no backdoor effect)."""
        return self.success_rate - self.clean_target_rate


def backdoor_success_rate(act: Callable[[np.ndarray], int], envs: Sequence[gym.Env], attack: ObservationBackdoor,
                          episodes: int, seed: int) -> BackdoorReport:
    """Attack success rate of ``attack`` against the greedy policy ``act`` (TrojDRL's metric).

    The policy runs greedily and *unattacked* for ``episodes`` episodes in each clean environment of
    ``envs`` (seeded ``seed + i``); on every visited state it is also asked what it would do if the
    trigger were stamped in. Why on clean on-policy states: that is where a deployed victim would be
    when the attacker spoofs the trigger, and it keeps the clean return measured in the same episodes.
    """
    if episodes < 1:
        raise ConfigError("episodes", f"must be >= 1, got {episodes}")
    hits = clean_hits = n = 0
    returns: list[float] = []
    for i, env in enumerate(envs):
        attack.check_space(env.observation_space, env.action_space)
        for ep in range(episodes):
            obs, _ = env.reset(seed=int(seed) + 1000 * i + ep)
            done, total = False, 0.0
            while not done:
                a = int(act(obs))
                clean_hits += int(a == attack.target_action)
                hits += int(int(act(attack.stamp(obs))) == attack.target_action)
                n += 1
                obs, reward, terminated, truncated, _ = env.step(a)
                total += float(reward)
                done = bool(terminated or truncated)
            returns.append(total)
    return BackdoorReport(hits / n, clean_hits / n, float(np.mean(returns)), n)


# ---------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------

#: Environment attack classes by name.
ENV_ATTACKS: dict[str, type[EnvironmentAttack]] = {
    cls.name: cls for cls in (RewardFlip, RandomActions, ObservationBackdoor)
}


def make_env_attack(name: str, **params: Any) -> EnvironmentAttack:
    """Build the environment attack ``name``; unknown names or parameters raise :class:`ConfigError`."""
    import inspect

    cls = ENV_ATTACKS.get(name)
    if cls is None:
        raise ConfigError("attack", f"unknown environment attack {name!r}; known: {', '.join(sorted(ENV_ATTACKS))}")
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError("attack", f"{name} does not take parameter(s) {', '.join(unknown)}; allowed: "
                                    f"{', '.join(allowed) or 'none'}{did_you_mean(unknown[0], allowed)}")
    return cls(**params)
