"""The registries of the round's plug-in axes: client algorithms and executors (importable without torch).

A round (:mod:`securefrl.federation`) is one short function over three axes:

- a **client algorithm** (:data:`ALGORITHMS`, config ``personalization.method``) says what a client trains
  and sends: it turns the server state into per-client train tasks and their results into updates;
- an **executor** (:data:`EXECUTORS`, config ``federation.simulation`` x ``federation.backend``) runs the
  train and evaluation tasks — one after another, as one batch, or as Ray tasks — knowing nothing of
  algorithms;
- the **server aggregation** (protocol open, or a robust rule where the protocol reveals updates; DP wraps
  it) is built from ``protocol`` / ``federation.aggregator`` / ``privacy``.

Entries carry their declarations as metadata, so :mod:`securefrl.compat` checks any algorithm on any
executor with one rule and without importing either:

algorithm metadata
    ``agent_needs`` (agent capabilities it uses), ``task_features`` (what its train tasks ask of an
    executor: ``proximal``, ``freeze``, ``embedding``, ``second_agent``), ``sends`` (False: nothing is
    sent), ``client_dp`` / ``robust`` (False: client-level DP / robust rules do not apply to what it
    sends), ``record_dp`` (checked with DP-SGD), ``check`` (``"module:function"`` of its own config checks).
executor metadata
    ``features`` (task features it runs, plus ``env_attacks``, ``record_dp``, ``poisson_batches``),
    ``agent_needs``, ``env_needs`` (``batched``: the env's family declares a batched implementation,
    ``EnvFamily.batched``) and ``envs`` (names it runs; None = any).
"""

from __future__ import annotations

from typing import Any

from securefrl.registry import Registry

ALGORITHMS: Registry[Any] = Registry("personalization method", "personalization.method",
                                     group="securefrl.algorithms")
"""Client algorithms by name (``none`` is FedAvg of the whole model)."""

_P = "securefrl.personalization.algorithms"
_CHECK = "securefrl.personalization.checks:check_personalization"
ALGORITHMS.register("none", "securefrl.algorithm:FedAvg", record_dp=True)
ALGORITHMS.register("local", f"{_P}:LocalOnly", sends=False)
ALGORITHMS.register("finetune", f"{_P}:FineTune", record_dp=True)
ALGORITHMS.register("fedprox", f"{_P}:FedProx", agent_needs=("proximal",), task_features=("proximal",),
                    record_dp=True)
ALGORITHMS.register("fedper", f"{_P}:Partial")
ALGORITHMS.register("fedrep", f"{_P}:Partial", agent_needs=("freeze",), task_features=("freeze",))
ALGORITHMS.register("embedding", f"{_P}:Partial", agent_needs=("embedding",), task_features=("embedding",))
ALGORITHMS.register("group", f"{_P}:Clustered", client_dp=False, robust=False, check=_CHECK)
ALGORITHMS.register("ifca", f"{_P}:Clustered", client_dp=False, robust=False, check=_CHECK)
ALGORITHMS.register("ditto", f"{_P}:Ditto", agent_needs=("proximal",), task_features=("proximal", "second_agent"))
ALGORITHMS.register("relation", "securefrl.personalization.relation:Relation", robust=False, check=_CHECK)
# gradient mode: selected by federation.update = "gradient" (securefrl.compat.algorithm_name), not by the method
ALGORITHMS.register("fedsgd", "securefrl.gradient:FedSGD", agent_needs=("gradient",), task_features=("custom",),
                    selected_by="federation.update", check="securefrl.gradient:check_gradient")
ALGORITHMS.register("fedpg-br", "securefrl.fedpg:FedPGBR", agent_needs=("gradient", "policy"),
                    task_features=("custom",), selected_by="federation.estimator",
                    check="securefrl.gradient:check_gradient")

EXECUTORS: Registry[Any] = Registry("executor", "federation.executor", group="securefrl.executors")
"""Executors by name: ``local`` (simulation=loop, backend=local), ``vectorized``, ``ray``, ``vectorized+ray``."""
EXECUTORS.register("local", "securefrl.executors:LocalExecutor",
                   features=("proximal", "freeze", "embedding", "second_agent", "custom", "env_attacks", "record_dp",
                             "poisson_batches"))
EXECUTORS.register("vectorized", "securefrl.vectorized.executor:VectorizedExecutor",
                   features=("proximal", "freeze", "embedding", "second_agent"),
                   agent_needs=("batched",), env_needs=("batched",))
EXECUTORS.register("ray", "securefrl.ray_backend:RayExecutor",
                   features=("proximal", "freeze", "embedding", "second_agent", "poisson_batches"))
EXECUTORS.register("vectorized+ray", "securefrl.ray_backend:VectorizedRayExecutor",
                   features=("proximal", "freeze", "embedding", "second_agent"),
                   agent_needs=("batched",), env_needs=("batched",))
