"""Client training and evaluation as Ray tasks (Moritz et al. 2018, "Ray: A Distributed Framework
for Emerging AI Applications"), on a local Ray instance or an existing cluster.

:class:`RayFederation` is :class:`~securefrl.federation.Federation` with the two per-client hot
paths sent to Ray: the first ``local_update`` of a round submits one task per sampled client, the
first ``_evaluate(..., "global")`` one task per chunk of clients; later calls read the results.
The driver keeps the authoritative state (agents, protocol, server optimizer, accountant), so
checkpoints, protocols and metrics are those of the local run, and the same seed gives the same
metrics: a task rebuilds the client's agent, loads its exact state, trains with the round's seed
and hands the new state back.

Only bytes and primitives cross Ray: the config as a plain dict, the client's ``EnvSpec`` as a
dict, global parameters as float32 bytes, agent state as ``torch.save`` bytes that the other side
reads with ``torch.load(weights_only=True)``, statistics as floats. No agent, protocol or model
object is pickled. Protocol payloads (``protect``/``combine``/``open``) stay in the driver, which
simulates every party of the protocol.

Workers must be able to ``import securefrl`` (a local Ray inherits this interpreter; on a cluster
install the same version of the package on every node).
"""

from __future__ import annotations

import io
import logging
import os
from typing import Any

import numpy as np
import torch

from securefrl.errors import ConfigError
from securefrl.federation import Client, Federation


def _state_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _load_state(data: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(data), weights_only=True)


def _params_from_bytes(data: bytes) -> np.ndarray:
    if len(data) % 4:
        raise ValueError(f"parameter bytes of length {len(data)} are not float32")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def train_client(config: dict[str, Any], spec: dict[str, Any], cid: int, round_id: int, global_params: bytes,
                 state: bytes) -> dict[str, Any]:
    """One client's local round, as ``Federation.local_update`` + its local evaluation would run it.

    Runs in a Ray worker (or anywhere): every argument and the result are bytes or primitives.
    """
    from securefrl.agents import make_agent
    from securefrl.config import ExperimentConfig
    from securefrl.configtools import from_dict
    from securefrl.envs import EnvSpec
    from securefrl.seeding import derive_seed

    torch.set_num_threads(1)  # as Federation does: tiny networks
    cfg = from_dict(ExperimentConfig, config)
    env_spec = EnvSpec.from_dict(spec)
    agent = make_agent(cfg.agent.name, env_spec.make, cfg.agent_config(), seed=derive_seed(cfg.seed, "agent", cid))
    agent.load_state_dict(_load_state(state))
    agent.set_flat(_params_from_bytes(global_params))
    agent.reseed(derive_seed(cfg.seed, "train", round_id, cid) % (2**31))
    stats = agent.learn(cfg.federation.local_steps)
    env = env_spec.make()
    try:
        seed = derive_seed(cfg.seed, "eval", "local", round_id, cid) % (2**31)
        ret = float(np.mean(agent.evaluate(env, cfg.federation.eval_episodes, seed)))
    finally:
        env.close()
    return {"state": _state_bytes(agent.state_dict()), "stats": {k: float(v) for k, v in stats.items()},
            "return_local": ret}


def evaluate_clients(config: dict[str, Any], specs: list[dict[str, Any]], cids: list[int], round_id: int, tag: str,
                     params: bytes) -> list[float]:
    """Mean greedy return of ``params`` in each listed client's environment (``Federation._evaluate``)."""
    from securefrl.agents import make_agent
    from securefrl.config import ExperimentConfig
    from securefrl.configtools import from_dict
    from securefrl.envs import EnvSpec
    from securefrl.seeding import derive_seed

    torch.set_num_threads(1)
    cfg = from_dict(ExperimentConfig, config)
    env_specs = [EnvSpec.from_dict(s) for s in specs]
    agent = make_agent(cfg.agent.name, env_specs[0].make, cfg.agent_config(), seed=0)  # acts with `params` only
    agent.set_flat(_params_from_bytes(params))
    out = []
    for cid, spec in zip(cids, env_specs, strict=True):
        env = spec.make()
        try:
            seed = derive_seed(cfg.seed, "eval", tag, round_id, cid) % (2**31)
            out.append(float(np.mean(agent.evaluate(env, cfg.federation.eval_episodes, seed))))
        finally:
            env.close()
    return out


def connect(address: str = "", num_cpus: int = 2) -> bool:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start a local one; True if started here."""
    try:
        import ray
    except ImportError:
        raise ConfigError("federation.backend", "backend=ray needs the ray package: pip install 'ray[default]'") \
            from None
    if ray.is_initialized():
        return False
    # A Ray cluster is one trust domain: its workers' results are unpickled in this driver, so whoever runs
    # the cluster runs code here. A config file may come from anyone; the address must come from the operator.
    trusted = os.environ.get("RAY_ADDRESS", "")
    if address and address != trusted:
        raise ConfigError("federation.ray_address", "a Ray cluster address is only taken from the RAY_ADDRESS "
                          "environment variable of the operator, not from a config file (a cluster can run code in "
                          "this process); export RAY_ADDRESS=... instead, or leave ray_address empty")
    address = trusted
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return False
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    return True


class RayFederation(Federation):
    """:class:`~securefrl.federation.Federation` whose clients train and evaluate in Ray tasks."""

    def __post_init__(self) -> None:
        fed = self.config.federation
        if fed.simulation != "loop":
            raise ConfigError("federation.backend", "backend=ray runs simulation=loop clients; the vectorized "
                              "simulation is one process (use backend=local)")
        super().__post_init__()
        if self.behaviour is not None and callable(getattr(self.behaviour, "wrap_env", None)):
            raise ConfigError("attack.name", f"{self.config.attack.name!r} wraps environments with state that lives "
                              "in the driver's agents; use backend=local")
        self.started_ray = connect(fed.ray_address, fed.ray_num_cpus)
        import ray

        self._ray = ray
        self._train = ray.remote(train_client)
        self._eval = ray.remote(evaluate_clients)
        self._config_dict = self.config.to_dict()
        self._specs = [c.env_spec.to_dict() for c in self.clients]
        self._train_cache: dict[int, tuple[dict[str, Any], float]] = {}
        self._trained_round = -1
        self._eval_cache: dict[tuple[int, str], dict[int, float]] = {}

    def close(self) -> None:
        """Shut down the local Ray instance this federation started (a joined cluster stays up)."""
        if self.started_ray and self._ray.is_initialized():
            self._ray.shutdown()
        self.started_ray = False

    def _global_bytes(self) -> bytes:
        return np.ascontiguousarray(self.global_params, dtype="<f4").tobytes()

    def local_update(self, client: Client, round_id: int) -> tuple[np.ndarray, dict[str, Any]]:
        """The first call of a round runs every sampled client's training as Ray tasks."""
        if self._trained_round != round_id:
            sampled = self.sample_clients(round_id)
            cfg_ref, params_ref = self._ray.put(self._config_dict), self._ray.put(self._global_bytes())
            futures = [self._train.remote(cfg_ref, self._specs[c], c, round_id, params_ref,
                                          _state_bytes(self.clients[c].agent.state_dict())) for c in sampled]
            results = self._ray.get(futures)
            self._train_cache = {c: (res, res["return_local"]) for c, res in zip(sampled, results, strict=True)}
            self._trained_round = round_id
        if client.client_id not in self._train_cache:
            return super().local_update(client, round_id)
        res, ret = self._train_cache.pop(client.client_id)
        client.agent.load_state_dict(_load_state(res["state"]))
        client.env_steps += self.config.federation.local_steps
        self._eval_cache.setdefault((round_id, "local"), {})[client.client_id] = ret
        delta = client.agent.get_flat().astype(np.float64) - self.global_params.astype(np.float64)
        return delta, {"train_" + k: v for k, v in res["stats"].items()}

    def _evaluate(self, client: Client, round_id: int, tag: str) -> float:
        """Local returns come back with training; global ones are evaluated in chunks of clients as Ray tasks."""
        self._eval_cache = {k: v for k, v in self._eval_cache.items() if k[0] == round_id}
        if tag == "global" and (round_id, tag) not in self._eval_cache:
            ids = [c.client_id for c in self.clients]
            n_chunks = max(1, min(len(ids), 4 * int(self._ray.cluster_resources().get("CPU", 1) or 1)))
            chunks = [list(map(int, ch)) for ch in np.array_split(np.asarray(ids), n_chunks) if len(ch)]
            cfg_ref, params_ref = self._ray.put(self._config_dict), self._ray.put(self._global_bytes())
            futures = [self._eval.remote(cfg_ref, [self._specs[c] for c in ch], ch, round_id, tag, params_ref)
                       for ch in chunks]
            self._eval_cache[(round_id, tag)] = {c: r for ch, rs in zip(chunks, self._ray.get(futures), strict=True)
                                                 for c, r in zip(ch, rs, strict=True)}
        values = self._eval_cache.get((round_id, tag), {})
        if client.client_id in values:
            return values[client.client_id]
        return super()._evaluate(client, round_id, tag)
