"""Configuration of a vertical FRL run and validation of the observation partition.

Vertical FRL (Zhuo et al. 2019, "Federated Deep Reinforcement Learning", FedRL; Qi et al. 2021,
"Federated Reinforcement Learning: Techniques, Applications, and Open Challenges", §3.2) splits one
environment's *feature space* between parties, as vertical federated learning does for tabular data
(Liu et al. 2019, "A Communication Efficient Collaborative Learning Framework for Distributed Features").
The partition says which observation indices each party's sensors read; everything else about the run
(DQN hyperparameters, embedding protection) lives in :class:`VFRLConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import gymnasium as gym

from securefrl.agents.dqn import DQNConfig
from securefrl.configtools import check_range
from securefrl.errors import ConfigError

Partition = tuple[tuple[int, ...], ...]


def _default_dqn() -> DQNConfig:
    """DQN settings shared by VFRL and both baselines: the library's tuned CartPole defaults."""
    return DQNConfig()


@dataclass
class VFRLConfig:
    """Everything that defines a vertical FRL run (and its single-agent baselines) apart from the seed."""

    env_id: str = "CartPole-v1"
    """Registered gymnasium id of the shared environment (1-D Box observations, Discrete actions)."""
    partition: Partition = ((0, 1), (2, 3))
    """Observation indices each party observes, one tuple per party (party ids are 1, 2, ... in this order).
    Must be non-empty, in range and pairwise disjoint; indices nobody observes are allowed unless
    ``require_cover``. Default (CartPole): party 1 sees cart position and velocity, party 2 pole angle and
    angular velocity."""
    require_cover: bool = False
    """Refuse a partition that leaves some observation index unobserved."""
    encoder_hidden: tuple[int, ...] = (128,)
    """Hidden layer widths (ReLU) of every party's encoder MLP; ``()`` makes the encoder linear. With the
    default head this gives the Q-function as many hidden layers as the 128x128 DQN baseline."""
    embed_dim: int = 32
    """Width of the embedding each party sends to the Q-network agent."""
    embedding_norm: Literal["layernorm", "tanh", "none"] = "layernorm"
    """Last layer of every encoder. ``layernorm`` (no learned scale) gives each embedding zero mean and unit
    variance across its coordinates, so its L2 norm is ~sqrt(embed_dim) whatever the encoder weights do;
    ``tanh`` squashes each coordinate into (-1, 1); ``none`` leaves the embedding linear. Why: with ``none``
    the encoders and the head scaled up together and the TD loss diverged in our CartPole runs (embedding
    norms ~10 -> ~400, returns collapsing to ~10); ``tanh`` stopped that but saturated and stopped learning.
    LayerNorm is what Gallici et al. 2024 ("Simplifying Deep Temporal Difference Learning") show keeps TD
    learning with function approximation from diverging."""
    combine: Literal["concat", "sum"] = "concat"
    """How the Q-network agent merges the parties' embeddings: concatenate them (head input
    ``n_parties * embed_dim``), or sum them (head input ``embed_dim``; reveals less about which party
    contributed what to the head, at some cost in capacity)."""
    head_hidden: tuple[int, ...] = (128,)
    """Hidden layer widths (ReLU) of the Q-network agent's head that maps combined embeddings to Q-values."""
    dqn: DQNConfig = field(default_factory=_default_dqn)
    """DQN hyperparameters (lr, gamma, replay, schedule, target sync, exploration, Double DQN, gradient clip)
    used by the VFRL parties and Q-network agent alike; ``dqn.hidden`` is the network of the single-agent
    baselines only. ``dqn.n_envs`` must be 1 for VFRL."""
    total_steps: int = 50_000
    """Environment steps of training (for VFRL and for each baseline)."""
    eval_every: int = 10_000
    """Environment steps between greedy evaluations recorded in the learning curve (0: final only)."""
    eval_episodes: int = 10
    """Greedy episodes per evaluation (seeded, identical seeds for VFRL and the baselines)."""
    embedding_clip: float | None = None
    """If set, every embedding row a party releases is first scaled to L2 norm at most this value."""
    noise_multiplier: float = 0.0
    """Gaussian noise ``N(0, (noise_multiplier * embedding_clip)^2)`` added per coordinate to every released
    (clipped) embedding; needs ``embedding_clip``. The privacy unit is one partial observation in one
    release; repeated releases of the same observation are counted, not composed into an epsilon."""
    secure_noise: bool = True
    """Draw embedding noise from the OS CSPRNG (the default, as everywhere in securefrl); ``False`` draws it from
    the generator seeded from the run's seed (experiments: reproducible, but whoever knows the seed regenerates
    the noise and removes it)."""
    max_message_bytes: int = 1 << 24
    """Largest wire message any node accepts; checked before parsing."""

    def validate(self, path: str = "vfrl") -> None:
        """Refuse out-of-range values with the field name and the allowed values (no environment needed)."""
        if not isinstance(self.env_id, str) or self.env_id not in gym.registry:
            raise ConfigError(f"{path}.env_id", f"{self.env_id!r} is not a registered gymnasium id")
        check_partition(self.partition, None, self.require_cover, f"{path}.partition")
        if any(not isinstance(h, int) or h < 1 for h in self.encoder_hidden):
            raise ConfigError(f"{path}.encoder_hidden",
                              f"layer widths must be positive integers, got {self.encoder_hidden}")
        if not self.head_hidden or any(not isinstance(h, int) or h < 1 for h in self.head_hidden):
            raise ConfigError(f"{path}.head_hidden", f"need at least one positive layer width, got {self.head_hidden}")
        check_range(f"{path}.embed_dim", self.embed_dim, 1, None)
        if self.embedding_norm not in ("layernorm", "tanh", "none"):
            raise ConfigError(f"{path}.embedding_norm",
                              f"{self.embedding_norm!r} is not allowed; choose 'layernorm', 'tanh' or 'none'")
        if self.combine not in ("concat", "sum"):
            raise ConfigError(f"{path}.combine", f"{self.combine!r} is not allowed; choose 'concat' or 'sum'")
        if not isinstance(self.dqn, DQNConfig):
            raise ConfigError(f"{path}.dqn", f"expected a DQNConfig, got {type(self.dqn).__name__}")
        self.dqn.validate(f"{path}.dqn")
        sampling = getattr(self.dqn, "batch_sampling", "uniform")
        if sampling != "uniform":
            raise ConfigError(f"{path}.dqn.batch_sampling",
                              f"the Q-network agent samples replay ids uniformly; must be 'uniform', got {sampling!r}")
        if self.dqn.n_envs != 1:
            raise ConfigError(f"{path}.dqn.n_envs",
                              f"VFRL steps one shared environment; must be 1, got {self.dqn.n_envs}")
        check_range(f"{path}.total_steps", self.total_steps, 1, None)
        check_range(f"{path}.eval_every", self.eval_every, 0, None)
        check_range(f"{path}.eval_episodes", self.eval_episodes, 1, None)
        if self.embedding_clip is not None:
            check_range(f"{path}.embedding_clip", self.embedding_clip, 0.0, None, lo_open=True)
        check_range(f"{path}.noise_multiplier", self.noise_multiplier, 0.0, None)
        if self.noise_multiplier > 0 and self.embedding_clip is None:
            raise ConfigError(f"{path}.noise_multiplier",
                              "noise is calibrated to the clip norm; set embedding_clip as well")
        check_range(f"{path}.max_message_bytes", self.max_message_bytes, 1024, None)


def check_partition(partition: Sequence[Sequence[int]], obs_dim: int | None, require_cover: bool = False,
                    path: str = "partition") -> Partition:
    """Check a partition of observation indices and return it as a tuple of tuples.

    Each party must observe at least one index; indices are non-negative integers, below ``obs_dim``
    when it is known, and no index belongs to two parties (or appears twice for one party): a shared
    feature would let two parties learn the same raw value, which is not a vertical split.
    """
    if isinstance(partition, (str, bytes)) or not isinstance(partition, Sequence) or len(partition) == 0:
        raise ConfigError(path, f"need a non-empty list of index lists (one per party), got {partition!r}")
    owner: dict[int, int] = {}
    out: list[tuple[int, ...]] = []
    for p, part in enumerate(partition):
        where = f"{path}[{p}]"
        if isinstance(part, (str, bytes)) or not isinstance(part, Sequence) or len(part) == 0:
            raise ConfigError(where, f"party {p + 1} must observe a non-empty list of indices, got {part!r}")
        for idx in part:
            if isinstance(idx, bool) or not isinstance(idx, int):
                raise ConfigError(where, f"indices must be integers, got {idx!r}")
            if idx < 0 or (obs_dim is not None and idx >= obs_dim):
                allowed = "non-negative" if obs_dim is None else f"0..{obs_dim - 1}"
                raise ConfigError(where, f"index {idx} is out of range; allowed: {allowed}")
            if idx in owner:
                other = owner[idx]
                who = "twice by the same party" if other == p else f"by parties {other + 1} and {p + 1}"
                raise ConfigError(where, f"index {idx} is observed {who}; parties must observe disjoint indices")
            owner[idx] = p
        out.append(tuple(int(i) for i in part))
    if require_cover and obs_dim is not None:
        missing = sorted(set(range(obs_dim)) - set(owner))
        if missing:
            raise ConfigError(path, f"indices {missing} are observed by no party (require_cover is set)")
    return tuple(out)
