"""Experiment configuration: dataclasses with a docstring per field, loaded from TOML or YAML.

``securefrl config`` prints every field with its default and docstring. A file only needs
the keys it changes; ``--set section.key=value`` overrides a loaded file.

The config is pure data: this module imports no torch, agents or federation. Names (protocol, agent,
aggregator, server optimizer, personalization method, attack) are validated against the registries
(:mod:`securefrl.registry`), and every cross-section rule lives in :mod:`securefrl.compat`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from securefrl.configtools import apply_override, check_range, from_dict, to_dict, yaml_load
from securefrl.errors import ConfigError
from securefrl.protocol_factory import PROTOCOLS

__all__ = ["PROTOCOLS", "ExperimentConfig", "load_config", "read_config_file", "replace"]


@dataclass
class EnvConfig:
    """Which environment family every client gets, and how much the clients' physics differ."""

    name: str = "cartpole"
    """Environment family (cartpole, acrobot, mountaincar, pendulum, hopper [securefrl[mujoco]], edge_caching,
    mec_offloading, ran_access; `securefrl envs` lists them) or any registered gymnasium id."""
    heterogeneity: float = 0.5
    """0 = identical clients at default physics, 1 = the widest documented spread of parameters."""
    overrides: dict[str, float] = field(default_factory=dict)
    """Physics parameters fixed for every client (attribute name -> value), e.g. {length = 0.7}."""
    ranges: dict[str, list[float]] = field(default_factory=dict)
    """Custom [low, high] ranges at heterogeneity 1 (attribute name -> [low, high])."""
    client_types: int = 0
    """0 = every client draws its own parameters; G >= 1 = clients come in G types (client i is type i mod G):
    each type's parameters are drawn once, in its own stratum of every range, and each client's lie within
    type_spread of its type's (the grouped clients of Nadiger et al. and IFCA's clusters)."""
    type_spread: float = 0.1
    """With client_types: how far a client's parameters may lie from its type's, as a fraction of the range at
    the current heterogeneity (0 = the type's exact parameters)."""

    def validate(self, path: str) -> None:
        check_range(f"{path}.heterogeneity", self.heterogeneity, 0.0, 1.0)
        check_range(f"{path}.type_spread", self.type_spread, 0.0, 1.0)
        check_range(f"{path}.client_types", self.client_types, 0)  # an int: the loader checks field types
        for key, bounds in self.ranges.items():
            if len(bounds) != 2 or not bounds[0] <= bounds[1]:
                raise ConfigError(f"{path}.ranges.{key}", f"expected [low, high] with low <= high, got {bounds}")


@dataclass
class AgentSection:
    """The RL algorithm every client runs, and its hyperparameters."""

    name: str = "ppo"
    """Agent algorithm: dqn or ppo (discrete actions), sac (continuous actions, e.g. pendulum)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Hyperparameters overriding the agent's defaults (see `securefrl config --agent NAME`)."""


@dataclass
class ProtocolSection:
    """How client updates are protected on their way to the server."""

    name: str = "plaintext"
    """plaintext (server sees each update), ckks (homomorphic encryption), secagg (SecAgg+ masking), or any
    protocol registered in securefrl.protocol_factory.PROTOCOLS."""
    params: dict[str, Any] = field(default_factory=dict)
    """Protocol parameters (e.g. CKKS poly_modulus_degree, SecAgg threshold); defaults are secure."""


@dataclass
class FederationConfig:
    """Rounds, client sampling, local work and the server's optimizer (horizontal FRL)."""

    n_clients: int = 8
    """Number of clients, each with its own environment."""
    rounds: int = 15
    """Number of federated rounds."""
    client_fraction: float = 1.0
    """Fraction of clients sampled each round (at least one client is always sampled)."""
    local_steps: int = 2048
    """Environment steps each sampled client trains for per round (derived from round_batch when that is set)."""
    round_batch: int = 0
    """If > 0, the environment steps the whole round collects: each sampled client trains
    ceil(round_batch / sampled clients) steps, rounded up to whole vector steps of its agent, and local_steps is
    set to that. With round_batch = one single agent's rollout (PPO: n_envs * n_steps) every client makes one
    update per round on a K-th of that batch, so the federation gathers one single-agent batch per update."""
    clip_norm: float = 0.0
    """L2 clip bound on each client's update (0 = no clipping)."""
    update: Literal["delta", "gradient"] = "delta"
    """What clients send: delta = FedAvg of local parameter changes after local_steps of local training; gradient =
    FedSGD / DD-PPO, every optimizer step federated (mean minibatch gradient, server-side Adam with the agent's lr;
    a round is still local_steps environment steps per client, each of its optimizer steps one aggregation; see
    securefrl.gradient). Agents ppo, dqn and sac; loop simulation, local backend."""
    estimator: Literal["minibatch", "fedpg-br"] = "minibatch"
    """Gradient mode's gradient: minibatch = the agent's own loss on each minibatch; fedpg-br = FedPG-BR's
    variance-reduced policy gradient (Fan et al. 2021; agent ppo; securefrl.fedpg)."""
    fedpg_batch: int = 16
    """fedpg-br: episodes B each sampled client samples for a round's anchor gradient."""
    fedpg_minibatch: int = 4
    """fedpg-br: episodes b each sampled client samples per inner step (a round makes Geometric(b/(B+b)) steps)."""
    server_optimizer: str = "fedavg"
    """Server step on the mean update: FedAvg, FedAvgM (momentum) or FedAdam (Reddi et al. 2021)."""
    server_lr: float = 1.0
    """Server learning rate applied to the aggregated update."""
    server_momentum: float = 0.9
    """Momentum of FedAvgM, and beta1 of FedAdam."""
    server_beta2: float = 0.99
    """beta2 of FedAdam."""
    server_eps: float = 1e-3
    """Adaptivity (tau) of FedAdam."""
    eval_episodes: int = 3
    """Greedy evaluation episodes per client per round, for the global and the locally trained model."""
    aggregator: str = "fedavg"
    """Server rule: fedavg (any protocol) or a robust rule needing plaintext: median, trimmed_mean, krum,
    multi_krum, bulyan, geometric_median, norm_bounding, centered_clipping, fedpg_br (FedPG-BR's filter)."""
    aggregator_params: dict[str, Any] = field(default_factory=dict)
    """Parameters of the robust rule (e.g. beta of trimmed_mean); n_malicious defaults to attack.n_malicious."""
    simulation: Literal["loop", "vectorized"] = "loop"
    """loop: one agent per client, trained one after another (the reference); vectorized: all sampled clients'
    environments and PPO agents as one batched computation, same results up to float rounding (agent ppo, and an
    env family with a batched implementation: cartpole, acrobot, edge_caching, mec_offloading, ran_access)."""
    backend: Literal["local", "ray"] = "local"
    """Where clients train: local (this process) or ray (Ray tasks; needs the ray package, see ray_address)."""
    ray_address: str = ""
    """Ray cluster to join with backend=ray: must be empty or equal the operator's RAY_ADDRESS environment variable
    (a cluster is one trust domain and can run code in the driver); empty = RAY_ADDRESS, else a local Ray."""
    ray_num_cpus: int = 2
    """CPUs of the local Ray instance started when no cluster address is given."""
    executor: str = ""
    """Executor by registry name (securefrl.axes.EXECUTORS); empty = the one simulation x backend select
    (local, vectorized or ray). Set it to run a registered third-party executor."""

    def validate(self, path: str) -> None:
        check_range(f"{path}.n_clients", self.n_clients, 1)
        check_range(f"{path}.rounds", self.rounds, 1)
        check_range(f"{path}.client_fraction", self.client_fraction, 0.0, 1.0, lo_open=True)
        check_range(f"{path}.local_steps", self.local_steps, 1)
        check_range(f"{path}.round_batch", self.round_batch, 0)
        check_range(f"{path}.clip_norm", self.clip_norm, 0.0)
        check_range(f"{path}.server_lr", self.server_lr, 0.0, lo_open=True)
        check_range(f"{path}.server_momentum", self.server_momentum, 0.0, 1.0, hi_open=True)
        check_range(f"{path}.server_beta2", self.server_beta2, 0.0, 1.0, hi_open=True)
        check_range(f"{path}.server_eps", self.server_eps, 0.0, lo_open=True)
        check_range(f"{path}.eval_episodes", self.eval_episodes, 1)
        check_range(f"{path}.ray_num_cpus", self.ray_num_cpus, 1)
        check_range(f"{path}.fedpg_batch", self.fedpg_batch, 1)
        check_range(f"{path}.fedpg_minibatch", self.fedpg_minibatch, 1)
        if self.estimator != "minibatch" and self.update != "gradient":
            raise ConfigError(f"{path}.estimator", f"estimator {self.estimator!r} estimates gradient mode's "
                              "gradients; set federation.update=gradient (or estimator=minibatch)")


@dataclass
class PrivacySection:
    """Client-level differential privacy of the federation (DP-FedAvg)."""

    placement: Literal["none", "central", "distributed", "local"] = "none"
    """Where the Gaussian noise is added: none, central (aggregator), distributed (shares), local (each client)."""
    clip_norm: float = 1.0
    """L2 bound C on each client's update (the initial bound with adaptive clipping)."""
    noise_multiplier: float = 1.0
    """z: the noise on the sum has std z * C. Ignored when target_epsilon > 0."""
    target_epsilon: float = 0.0
    """If > 0, z is computed so that all configured rounds spend exactly this epsilon at delta."""
    delta: float = 1e-5
    """delta of the reported (epsilon, delta) guarantee."""
    epsilon_budget: float = 0.0
    """If > 0, training stops before a round would take epsilon past this budget."""
    accountant: Literal["rdp", "prv"] = "rdp"
    """Opacus accountant: rdp (Mironov 2017) or prv (Gopi et al. 2021, tighter)."""
    min_survivors: int = 0
    """Distributed noise: shares are calibrated for at least this many surviving clients (0 = all sampled)."""
    secure_noise: bool = True
    """DP noise (client-level and DP-SGD, every placement and protocol) comes from the OS CSPRNG. Kept so older
    configs load: false is refused, because seeded noise is removable by anyone who has the config's seed (the
    server among them); a reproducible experiment sets seeded_noise_experiment instead."""
    seeded_noise_experiment: bool = False
    """Experiment flag: draw DP noise from the seeded stream (reproducible, hence removable by anyone with the
    config, the server included); the run's rows and summary are marked dp_noise=seeded."""
    max_colluding: int = 0
    """Distributed noise: shares are sized so the sum keeps the full noise even if this many included clients
    withhold theirs (0 assumes every client adds its share honestly)."""
    calibrate_against: Literal["server", "outsiders"] = "server"
    """Whom target_epsilon and epsilon_budget hold against: the server (knows who took part: no amplification by
    sampling, q = 1) or outside observers of the released models (q = clients per round / clients)."""
    adaptive_clipping: bool = False
    """Track a quantile of update norms with the clip bound (Andrew et al. 2021); central placement only."""
    target_quantile: float = 0.5
    """Adaptive clipping: the fraction of updates that should be unclipped."""
    clip_learning_rate: float = 0.2
    """Adaptive clipping: geometric step of the clip bound per round."""
    dpsgd: bool = False
    """Record-level DP-SGD in local training (Abadi et al. 2016, via Opacus): per-transition clipping + noise on every
    gradient step, independent of placement; needs agent dqn/ppo with batch_sampling=poisson (see securefrl.agents.dp).
    Uses delta, accountant and seeded_noise_experiment above; each client reports record_epsilon."""
    dpsgd_noise_multiplier: float = 1.0
    """DP-SGD z: noise std z * dpsgd_max_grad_norm on each step's sum of clipped per-sample gradients."""
    dpsgd_max_grad_norm: float = 1.0
    """DP-SGD C: L2 bound of one transition's gradient (inf = no clipping, only with noise multiplier 0)."""
    dpsgd_grad_sample_mode: Literal["mlp", "hooks", "ew", "functorch"] = "mlp"
    """Per-sample gradients: mlp (ghost norms for the agents' Linear MLPs, fastest) or an Opacus mode."""

    @property
    def noise_is_secure(self) -> bool:
        """DP noise from the OS CSPRNG: always, unless the experiment flag ``seeded_noise_experiment`` is set."""
        return not self.seeded_noise_experiment

    def validate(self, path: str) -> None:
        check_range(f"{path}.clip_norm", self.clip_norm, 0.0, lo_open=True)
        check_range(f"{path}.noise_multiplier", self.noise_multiplier, 0.0)
        check_range(f"{path}.target_epsilon", self.target_epsilon, 0.0)
        check_range(f"{path}.delta", self.delta, 0.0, 1.0, lo_open=True, hi_open=True)
        check_range(f"{path}.epsilon_budget", self.epsilon_budget, 0.0)
        check_range(f"{path}.min_survivors", self.min_survivors, 0)
        check_range(f"{path}.max_colluding", self.max_colluding, 0)
        check_range(f"{path}.target_quantile", self.target_quantile, 0.0, 1.0, lo_open=True, hi_open=True)
        check_range(f"{path}.clip_learning_rate", self.clip_learning_rate, 0.0, lo_open=True)
        check_range(f"{path}.dpsgd_noise_multiplier", self.dpsgd_noise_multiplier, 0.0)
        check_range(f"{path}.dpsgd_max_grad_norm", self.dpsgd_max_grad_norm, 0.0, lo_open=True)
        if not self.secure_noise:
            raise ConfigError(f"{path}.secure_noise", "seeded DP noise is removable by anyone who has the config's "
                              "seed, the server included, so it is not a setting of secure_noise; for a "
                              "reproducible experiment set privacy.seeded_noise_experiment = true (the run is marked "
                              "dp_noise=seeded)")
        if self.adaptive_clipping and self.placement != "central":
            raise ConfigError(f"{path}.adaptive_clipping", "adaptive clipping is implemented for placement=central "
                              "only (the server needs the noised count of unclipped clients)")


@dataclass
class AttackSection:
    """Malicious clients and what they do (attacks are plug-ins; list them with `securefrl attack-matrix --list`)."""

    name: str = "none"
    """Attack name: none, or one offered by an installed plug-in (sign_flip, scaling, alie, ipm, ...)."""
    n_malicious: int = 0
    """How many clients are malicious (chosen with the seed, recorded in the results)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Parameters of the attack (e.g. epsilon of ipm)."""


@dataclass
class PersonalizationSection:
    """Heterogeneous clients: which parts of the model are shared and which stay on each client.

    See :mod:`securefrl.personalization` for the algorithms, the papers and what each one sends.
    """

    method: str = "none"
    """none: FedAvg of the whole model; local: clients never federate (baseline); finetune: FedAvg, each client
    deploying the global model after its own local training; fedper / fedrep: shared body,
    personal head (Arivazhagan et al. 2019 / Collins et al. 2021); embedding: shared network fed a personal environment
    embedding (Jin et al. 2022); group: one model per environment group (Nadiger et al. 2019); ifca: k cluster models,
    each client picks its best (Ghosh et al. 2020); ditto: personal models pulled towards the global one (Li et al.
    2021); fedprox: proximal term in local training (Li et al. 2020); relation: one model per client, mixed with
    learned similarity weights (FedAMP, Huang et al. 2021; pFedGraph, Ye et al. 2023; plaintext only)."""
    head_layers: int = 1
    """fedper / fedrep: how many of the last Linear layers of each network stay on the client."""
    fedrep_head_fraction: float = 0.5
    """fedrep: fraction of each round's local steps that train the head with the body frozen (then the body)."""
    embedding_dim: int = 4
    """embedding: length of each network's personal environment-embedding vector."""
    embedding_scale: float = 10.0
    """embedding: the network sees scale * embedding, so the embedding moves this many times faster under Adam."""
    n_clusters: int = 2
    """ifca: number of cluster models k (each client protects k slots)."""
    selection_episodes: int = 2
    """ifca: greedy episodes each client runs with every cluster model to pick the one that serves it best."""
    group_by: str = ""
    """group: physics parameter whose range is cut into group_bins equal bins (clients bin their own value)."""
    group_bins: int = 2
    """group: number of bins of group_by."""
    groups: list[int] = field(default_factory=list)
    """group: explicit group index per client (instead of group_by)."""
    ditto_lambda: float = 0.1
    """ditto: lambda of the proximal term lambda/2 ||v - w_global||^2 of each personal model v."""
    ditto_steps: int = 0
    """ditto: environment steps of personal-model training per round (0 = federation.local_steps)."""
    fedprox_mu: float = 0.01
    """fedprox: mu of the proximal term mu/2 ||w - w_global||^2 in local training."""
    relation_alpha: float = 8.0
    """relation: strength of the similarity term (0 = FedAvg; larger = weights concentrate on similar clients).
    8 was picked on a probe (edge caching, 8 clients in 2 types, seeds 0-2): it matched FedAvg at h=0 and beat
    local-only at h=1 there, 20 concentrated too much; other families were not tuned."""
    relation_ema: float = 0.5
    """relation: weight of the round's update similarities in the moving average that is the relation graph."""

    def validate(self, path: str) -> None:
        check_range(f"{path}.head_layers", self.head_layers, 1)
        check_range(f"{path}.fedrep_head_fraction", self.fedrep_head_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        check_range(f"{path}.embedding_dim", self.embedding_dim, 1)
        check_range(f"{path}.embedding_scale", self.embedding_scale, 0.0, lo_open=True)
        check_range(f"{path}.n_clusters", self.n_clusters, 1)
        check_range(f"{path}.selection_episodes", self.selection_episodes, 1)
        check_range(f"{path}.group_bins", self.group_bins, 1)
        for i, g in enumerate(self.groups):
            check_range(f"{path}.groups[{i}]", g, 0)
        check_range(f"{path}.ditto_lambda", self.ditto_lambda, 0.0, lo_open=True)
        check_range(f"{path}.ditto_steps", self.ditto_steps, 0)
        check_range(f"{path}.fedprox_mu", self.fedprox_mu, 0.0, lo_open=True)
        check_range(f"{path}.relation_alpha", self.relation_alpha, 0.0)
        check_range(f"{path}.relation_ema", self.relation_ema, 0.0, 1.0, lo_open=True)
        if self.method == "group" and bool(self.group_by) == bool(self.groups):
            raise ConfigError(f"{path}.group_by", "method group needs exactly one of group_by (a physics parameter "
                              "to bin) or groups (an explicit group index per client)")


@dataclass
class ExperimentConfig:
    """A whole federated RL experiment."""

    name: str = "demo"
    """Run name; each run writes a new folder <output_dir>/<name>/<timestamp> (see `securefrl runs`)."""
    seed: int = 0
    """Master seed: client physics, sampling, agents and evaluation all derive from it."""
    output_dir: str = "results"
    """Folder that receives one sub-folder per run."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Environments."""
    agent: AgentSection = field(default_factory=AgentSection)
    """Local RL agents."""
    federation: FederationConfig = field(default_factory=FederationConfig)
    """Federation."""
    protocol: ProtocolSection = field(default_factory=ProtocolSection)
    """Secure aggregation protocol."""
    privacy: PrivacySection = field(default_factory=PrivacySection)
    """Client-level differential privacy."""
    attack: AttackSection = field(default_factory=AttackSection)
    """Adversaries among the clients."""
    personalization: PersonalizationSection = field(default_factory=PersonalizationSection)
    """Personalization for heterogeneous clients."""

    def validate(self, path: str) -> None:
        check_range("seed", self.seed, 0)
        from securefrl.compat import check_experiment, derive_local_steps

        derive_local_steps(self)
        check_experiment(self)

    def make_rule(self) -> Any:
        """The robust aggregation rule (None for plain FedAvg); its protocol is checked by :meth:`validate`."""
        from securefrl.compat import make_rule

        return make_rule(self)

    def agent_config(self) -> Any:
        """The agent's hyperparameter dataclass built from ``agent.params``."""
        from securefrl.agents.registry import agent_config_class

        return from_dict(agent_config_class(self.agent.name), self.agent.params, "agent.params")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML (.toml) or YAML (.yaml/.yml) file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"no such file: {p}")
    text = p.read_text()
    if p.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError("config", f"{p} is not valid TOML: {err}") from None
    if p.suffix in (".yaml", ".yml"):
        try:
            data = yaml_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError("config", f"{p} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError("config", f"{p} must hold a mapping at top level")
        return data
    raise ConfigError("config", f"unsupported config file type {p.suffix!r}; use .toml, .yaml or .yml")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> ExperimentConfig:
    """Build a validated config from an optional file, then ``section.key=value`` overrides."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data.update(read_config_file(path))
    for ov in overrides or []:
        apply_override(data, ov)
    return from_dict(ExperimentConfig, data)


def replace(cfg: ExperimentConfig, **sections: Any) -> ExperimentConfig:
    """Copy of ``cfg`` with some top-level fields replaced, validated again."""
    return from_dict(ExperimentConfig, {**cfg.to_dict(), **{k: to_dict(v) for k, v in sections.items()}})

