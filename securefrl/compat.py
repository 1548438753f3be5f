"""Every cross-section compatibility rule of an experiment config, in one place.

:meth:`securefrl.config.ExperimentConfig.validate` calls :func:`check_experiment`. The rules read the
capabilities that plug-ins declare in their registries (:mod:`securefrl.registry`) — a protocol's
``reveals_individual_updates`` / ``server_can_open``, an agent's ``capabilities``, a client algorithm's
``agent_needs`` / ``task_features``, an executor's ``features`` — never their names, so a new plug-in that
declares its capabilities is checked like the built-in ones. Each refusal names the field to change and
what would work instead. This module imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from securefrl.errors import ConfigError

if TYPE_CHECKING:
    from securefrl.config import ExperimentConfig


def executor_name(config: ExperimentConfig) -> str:
    """The executor ``federation.simulation`` x ``federation.backend`` select (see :data:`securefrl.axes.EXECUTORS`)."""
    fed = config.federation
    if fed.executor:
        return fed.executor
    if fed.simulation == "vectorized":
        return "vectorized" if fed.backend == "local" else f"vectorized+{fed.backend}"
    return "local" if fed.backend == "local" else fed.backend


def algorithm_name(config: ExperimentConfig) -> str:
    """The client algorithm of :data:`securefrl.axes.ALGORITHMS` the config selects.

    ``personalization.method`` names it, except that ``federation.update = "gradient"`` selects gradient mode
    (``fedsgd``, :mod:`securefrl.gradient`, or with ``federation.estimator = "fedpg-br"`` FedPG-BR's
    ``fedpg-br``, :mod:`securefrl.fedpg`; naming either as ``personalization.method`` is the same), whose own
    check refuses a personalization method next to it.
    """
    fed = config.federation
    if fed.update != "gradient":
        return config.personalization.method
    return "fedpg-br" if fed.estimator == "fedpg-br" else "fedsgd"


def protocol_class(config: ExperimentConfig) -> Any:
    from securefrl.protocol_factory import PROTOCOLS

    return PROTOCOLS.get(config.protocol.name)


def check_experiment(config: ExperimentConfig) -> None:
    """Refuse a config whose sections cannot work together (raises :class:`ConfigError`)."""
    from securefrl.agents.registry import AGENTS, agent_capabilities, agent_config_class
    from securefrl.axes import ALGORITHMS, EXECUTORS
    from securefrl.configtools import from_dict
    from securefrl.envs import resolve_env
    from securefrl.server_opt import SERVER_OPTIMIZERS

    resolve_env(config.env.name, field="env.name")
    AGENTS.check(config.agent.name)
    agent_cfg: Any = from_dict(agent_config_class(config.agent.name), config.agent.params, "agent.params")
    protocol = protocol_class(config)
    SERVER_OPTIMIZERS.check(config.federation.server_optimizer)
    ALGORITHMS.check(config.personalization.method)
    method = algorithm_name(config)
    _check_attack(config)
    rule = make_rule(config)
    if rule is not None and rule.requires_individual_updates and not protocol.reveals_individual_updates:
        fed = config.federation
        raise ConfigError(
            "federation.aggregator",
            f"{fed.aggregator} needs each client's update, but protocol {config.protocol.name!r} reveals only the "
            "aggregate. Alternatives that work: aggregator=fedavg with federation.clip_norm (client-side norm "
            "bounding) under this protocol, or a protocol that reveals individual updates (plaintext) with this rule.",
        )
    if rule is not None and not ALGORITHMS.meta(method).get("robust", True):
        raise ConfigError("federation.aggregator", f"{method} averages inside one protected "
                          "sum of k-slot vectors; a robust rule would see slot vectors, not updates. Use "
                          "aggregator=fedavg")
    _check_dp(config, protocol)
    # --- the three axes: client algorithm x executor x agent, one rule --------------------------------
    alg = ALGORITHMS.meta(method)
    alg_field = alg.get("selected_by", "personalization.method")
    what = (f"personalization method {method!r}" if "selected_by" not in alg
            else f"{method} (selected by {alg_field})")
    ex_name = executor_name(config)
    if config.federation.executor:
        EXECUTORS.check(ex_name)
    if ex_name not in EXECUTORS:
        raise ConfigError("federation.backend", f"no executor runs simulation={config.federation.simulation} with "
                          f"backend={config.federation.backend}; executors: {', '.join(EXECUTORS.names())}")
    ex = EXECUTORS.meta(ex_name)
    caps = agent_capabilities(config.agent.name)
    need = set(alg.get("agent_needs", ())) - caps
    if need:
        able = [n for n in AGENTS.names() if set(alg.get("agent_needs", ())) <= agent_capabilities(n)]
        raise ConfigError(alg_field, f"{what} needs an agent with {', '.join(sorted(need))} (agents: "
                          f"{', '.join(able) or 'none'}); agent {config.agent.name!r} declares "
                          f"{', '.join(sorted(caps)) or 'nothing'}")
    need = set(ex.get("agent_needs", ())) - caps
    if need:
        raise ConfigError("federation.simulation", f"executor {ex_name} needs an agent with "
                          f"{', '.join(sorted(need))}, not {config.agent.name!r}; use federation.simulation=loop")
    if "batched" in ex.get("env_needs", ()):
        from securefrl.envs.families import batched_families, batched_target

        if not batched_target(config.env.name):
            raise ConfigError("federation.simulation", f"executor {ex_name} needs an environment with a batched "
                              f"implementation, which {config.env.name!r} has not; batched families: "
                              f"{', '.join(batched_families())}; use federation.simulation=loop")
    envs = ex.get("envs")
    if envs is not None and config.env.name not in envs:
        raise ConfigError("federation.simulation", f"executor {ex_name} runs env {' or '.join(envs)} only, not "
                          f"{config.env.name!r}; use federation.simulation=loop")
    field = "federation.simulation" if config.federation.simulation != "loop" else "federation.backend"
    offers = set(ex.get("features", ()))
    need = set(alg.get("task_features", ())) - offers
    if need:
        raise ConfigError(field, f"{what} needs {', '.join(sorted(need))} in local "
                          f"training, which executor {ex_name} does not run; use federation.simulation=loop and "
                          "federation.backend=local")
    if config.attack.name != "none" and _attack_kind(config.attack.name) == "environment" \
            and "env_attacks" not in offers:
        raise ConfigError("attack.name", f"{config.attack.name!r} changes the malicious clients' environments, which "
                          f"executor {ex_name} does not model; use federation.simulation=loop, backend=local")
    if config.privacy.dpsgd and "record_dp" not in offers:
        raise ConfigError(field, f"record-level DP-SGD runs on the local executor only, not {ex_name}; use "
                          "federation.simulation=loop and federation.backend=local")
    if getattr(agent_cfg, "batch_sampling", None) == "poisson" and "poisson_batches" not in offers:
        raise ConfigError("agent.params.batch_sampling", f"executor {ex_name} implements PPO's shuffled minibatches "
                          "only; use federation.simulation=loop for Poisson batches")
    if config.privacy.dpsgd:
        if not alg.get("record_dp", False):
            dp_ok = [n for n in ALGORITHMS.names() if ALGORITHMS.meta(n).get("record_dp")]
            raise ConfigError("personalization.method", f"record-level DP-SGD is checked with personalization "
                              f"methods {tuple(dp_ok)}, not {method!r}")
        if "dpsgd" not in caps:
            raise ConfigError("privacy.dpsgd", f"agent {config.agent.name!r} does not implement record-level DP-SGD")
        from securefrl.agents.dp import DPSGDSettings, check_agent_for_dp_sgd  # deferred: torch, only with DP-SGD

        DPSGDSettings.from_privacy(config.privacy).validate()
        check_agent_for_dp_sgd(config.agent.name, agent_cfg)
    check = alg.get("check")
    if check is not None:  # the algorithm's own settings (group_by, n_clusters, ...)
        from securefrl.registry import load_target

        (load_target(check) if isinstance(check, str) else check)(config)


def derive_local_steps(config: ExperimentConfig) -> None:
    """With ``federation.round_batch``: each sampled client's ``local_steps``, whole vector steps of its agent."""
    fed = config.federation
    if fed.round_batch <= 0:
        return
    from securefrl.agents.registry import AGENTS, agent_config_class
    from securefrl.configtools import from_dict
    from securefrl.seeding import sample_size

    AGENTS.check(config.agent.name)
    agent_cfg: Any = from_dict(agent_config_class(config.agent.name), config.agent.params, "agent.params")
    n_envs = int(getattr(agent_cfg, "n_envs", 1))
    fed.local_steps = n_envs * -(-fed.round_batch // (sample_size(fed.n_clients, fed.client_fraction) * n_envs))


def make_rule(config: ExperimentConfig) -> Any:
    """The robust aggregation rule the config names (None for plain FedAvg)."""
    fed = config.federation
    if fed.aggregator == "fedavg":
        return None
    from securefrl.aggregators import make_rule as build
    from securefrl.seeding import sample_size

    params = dict(fed.aggregator_params)
    f = params.pop("n_malicious", config.attack.n_malicious)
    return build(fed.aggregator, sample_size(fed.n_clients, fed.client_fraction), f, **params)


def _attack_kind(name: str) -> str:
    from securefrl.behaviour import attack_kind

    return attack_kind(name)


def _check_attack(config: ExperimentConfig) -> None:
    from securefrl.configtools import check_range

    check_range("attack.n_malicious", config.attack.n_malicious, 0, config.federation.n_clients - 1)
    if config.attack.name == "none":
        return
    if config.attack.n_malicious == 0:
        raise ConfigError("attack.n_malicious", f"attack {config.attack.name!r} needs a malicious client")
    from securefrl.axes import ALGORITHMS
    from securefrl.behaviour import make_behaviour

    make_behaviour(config.attack.name, **config.attack.params)
    if not ALGORITHMS.meta(algorithm_name(config)).get("sends", True):
        raise ConfigError("attack.name", f"{algorithm_name(config)} clients send nothing to poison; use "
                          "attack.name=none")


def _check_dp(config: ExperimentConfig, protocol: Any) -> None:
    from securefrl.axes import ALGORITHMS

    placement = config.privacy.placement
    if placement == "none":
        return
    method = algorithm_name(config)
    alg = ALGORITHMS.meta(method)
    if not alg.get("sends", True):
        raise ConfigError("privacy.placement", f"{method} clients send nothing, so there is nothing to make "
                          "differentially private; use placement=none")
    if not alg.get("client_dp", True):
        raise ConfigError("privacy.placement", f"{method} protects k slots per client whose noise calibration is "
                          "not implemented; use placement=none (or a non-clustered method with DP)")
    if config.federation.clip_norm > 0:
        raise ConfigError("federation.clip_norm", "with differential privacy the clip bound is privacy.clip_norm; "
                          "leave federation.clip_norm at 0")
    if placement == "central" and not protocol.server_can_open:
        raise ConfigError(
            "privacy.placement",
            f"central noise needs a trusted aggregator that sees the noise-free sum, but under protocol "
            f"{config.protocol.name!r} the server cannot open the aggregate (and the IND-CPA-D caveat asks that "
            "decrypted aggregates already carry noise). Use placement=distributed (each client adds a share) or "
            "placement=local.",
        )
