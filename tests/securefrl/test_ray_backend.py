"""Ray backend: the same seed gives the same metrics as the local backend; only bytes/primitives cross Ray."""

import io

import numpy as np
import pytest
import torch
from test_axes import METHOD_EXTRA, PERSONALIZATION, assert_rows_match  # tests/securefrl/test_axes.py

from securefrl.config import load_config
from securefrl.executors import LocalExecutor
from securefrl.experiment import run_experiment
from securefrl.federation import Federation, make_federation
from securefrl.results import read_jsonl
from securefrl.seeding import derive_seed, eval_seed
from securefrl.vectorized import VectorizedExecutor

ray = pytest.importorskip("ray")

from securefrl.ray_backend import (  # noqa: E402  (needs ray)
    RayExecutor,
    VectorizedRayExecutor,
    agent_payload,
    task_payload,
    train_client,
)

TINY = ["federation.n_clients=3", "federation.rounds=2", "federation.local_steps=64", "federation.eval_episodes=1",
        "federation.client_fraction=0.6", "env.heterogeneity=1.0", "agent.params={n_envs: 2, n_steps: 16}"]
TIMES = ("round_time",)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the module, shut down afterwards."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


def _without_times(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if not k.startswith("time_") and k not in TIMES}


def test_ray_backend_gives_the_same_metrics_as_local(local_ray):
    # Arrange
    local = Federation(load_config(overrides=TINY))
    remote = make_federation(load_config(overrides=[*TINY, "federation.backend=ray"]))
    assert isinstance(remote.executor, RayExecutor) and not remote.started_ray  # joined the fixture's instance
    for _ in range(2):
        # Act
        a, b = local.run_round(), remote.run_round()
        # Assert: every client row and the round summary are equal, bit for bit (timings aside).
        assert a.clients == b.clients
        assert _without_times(a.summary) == _without_times(b.summary)
        assert np.array_equal(local.global_params, remote.global_params)
    assert a.summary["n_sampled"] == 2 and all("train_policy_loss" in r for r in a.clients if r["sampled"])


def test_task_payloads_are_bytes_and_primitives():
    # Arrange: what the driver sends for client 0, round 0; and the local path from the same start.
    fed, ref = Federation(load_config(overrides=TINY)), Federation(load_config(overrides=TINY))
    client = fed.clients[0]
    buf = io.BytesIO()
    torch.save(client.agent.state_dict(), buf)
    (task,) = fed.algorithm.train_tasks(client, 0)
    args = (agent_payload(fed.config), client.env_spec.to_dict(),
            task_payload(task, derive_seed(fed.config.seed, "agent", 0), eval_seed(fed.config.seed, "local", 0, 0)),
            buf.getvalue())
    # Act: run the task body in this process (what a Ray worker runs), and the local update.
    out = train_client(*args)
    delta, stats = ref.local_update(ref.clients[0], 0)
    # Assert: bytes and plain numbers only; the state loads with weights_only=True and equals the local result.
    assert isinstance(out["state"], bytes) and isinstance(out["return_local"], float)
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in out["stats"].items())
    client.agent.load_state_dict(torch.load(io.BytesIO(out["state"]), weights_only=True))
    assert np.array_equal(client.agent.get_flat(), ref.clients[0].agent.get_flat())
    assert np.abs(delta).max() > 0
    assert {"train_" + k: v for k, v in out["stats"].items()} == stats


def _rounds_jsonl(overrides: list[str], tmp_path, name: str, executor: type) -> list[dict]:
    run = run_experiment(load_config(overrides=[*overrides, f"output_dir={tmp_path}", f"name={name}"]), progress=False)
    assert type(run.federation.executor) is executor
    run.federation.close()  # joined the fixture's Ray instance: it stays up
    return [{k: v for k, v in row.items() if not k.startswith("time_") and k not in TIMES}
            for row in read_jsonl(run.path / "rounds.jsonl")]


def test_personalization_x_vectorized_x_ray_x_ckks_gives_the_loops_rounds(local_ray, tmp_path):
    # Arrange: FedPer under CKKS, its batched training in Ray workers (2 chunks of the sampled clients).
    over = ["federation.n_clients=3", "federation.rounds=2", "federation.local_steps=32", "federation.eval_episodes=1",
            "env.heterogeneity=1.0", "agent.params={n_envs: 2, n_steps: 16, n_epochs: 1, n_minibatches: 2}",
            "personalization.method=fedper", "protocol.name=ckks", "federation.ray_num_cpus=2"]
    vec_ray = [*over, "federation.simulation=vectorized", "federation.backend=ray"]
    # Act
    loop = _rounds_jsonl(over, tmp_path, "loop", LocalExecutor)
    vec = _rounds_jsonl([*over, "federation.simulation=vectorized"], tmp_path, "vec", VectorizedExecutor)
    ray_rows = _rounds_jsonl(vec_ray, tmp_path, "vecray", VectorizedRayExecutor)
    # Assert: returns exactly; training statistics and norms within float rounding (batched matmuls sum in
    # another order than nn.Linear, and CKKS decodes approximately), like the vectorized-vs-loop test.
    assert len(loop) == len(ray_rows) == 2
    for want, got, local_vec in zip(loop, ray_rows, vec, strict=True):
        assert got == local_vec  # Ray workers compute what the in-process population computes
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, float) and not key.startswith("return"):
                assert got[key] == pytest.approx(value, rel=1e-3, abs=1e-5, nan_ok=True), key
            else:
                assert got[key] == value, key


def test_vectorized_x_ray_runs_an_application_family_as_in_process(local_ray, tmp_path):
    # The Ray workers rebuild each chunk's batch from the family registry, so app families run there too.
    over = ["env.name=edge_caching", "federation.n_clients=3", "federation.rounds=2", "federation.local_steps=32",
            "federation.eval_episodes=1", "agent.params={n_envs: 2, n_steps: 16, n_epochs: 1, n_minibatches: 2}",
            "federation.ray_num_cpus=2", "federation.simulation=vectorized"]
    vec = _rounds_jsonl(over, tmp_path, "vec", VectorizedExecutor)
    ray_rows = _rounds_jsonl([*over, "federation.backend=ray"], tmp_path, "vecray", VectorizedRayExecutor)
    assert len(vec) == 2 and ray_rows == vec


@pytest.mark.parametrize("method", PERSONALIZATION)
def test_personalization_on_vectorized_ray_gives_the_in_process_rounds(local_ray, tmp_path, method):
    # Arrange: every method (proximal terms, frozen phases, embedded networks and a second population included),
    # trained in 2 Ray chunks.
    over = ["federation.n_clients=3", "federation.rounds=2", "federation.local_steps=32", "federation.eval_episodes=1",
            "env.heterogeneity=1.0", "agent.params={n_envs: 2, n_steps: 16, n_epochs: 1, n_minibatches: 2}",
            f"personalization.method={method}", *METHOD_EXTRA.get(method, []), "federation.ray_num_cpus=2",
            "federation.simulation=vectorized"]
    # Act
    vec = _rounds_jsonl(over, tmp_path, "vec", VectorizedExecutor)
    ray_rows = _rounds_jsonl([*over, "federation.backend=ray"], tmp_path, "vecray", VectorizedRayExecutor)
    # Assert: the Ray workers compute what the in-process population computes, which equals the loop
    # (tests/securefrl/test_axes.py): round rows and returns exactly; losses and norms within float rounding, since a
    # chunk's batched matmul over fewer clients may sum in another order (measured: 7e-9 on parameters, C=1 vs 3).
    assert len(vec) == 2 and ray_rows == vec and vec[-1]["method"] == method
    clients = [[{k: v for k, v in r.items() if not k.startswith("time_")}
                for r in read_jsonl(next((tmp_path / name).rglob("clients.jsonl")))] for name in ("vec", "vecray")]
    assert_rows_match(clients[0], clients[1])
    assert all("return_personal" in r for r in clients[0]) and any(k.startswith("train_") for k in clients[0][0])


@pytest.mark.parametrize("method", PERSONALIZATION)
def test_personalization_on_ray_gives_the_same_metrics_as_local(local_ray, method):
    # Arrange: every method as Ray tasks: Ditto (a second agent per client, proximal term), FedRep (frozen phases),
    # environment embeddings (the worker rebuilds the embedded networks), the rest plain training.
    over = [*TINY, f"personalization.method={method}", *METHOD_EXTRA.get(method, [])]
    local = Federation(load_config(overrides=over))
    remote = Federation(load_config(overrides=[*over, "federation.backend=ray"]))
    for _ in range(2):
        # Act
        a, b = local.run_round(), remote.run_round()
        # Assert: bit for bit, personal returns included.
        assert a.clients == b.clients and _without_times(a.summary) == _without_times(b.summary)
    assert np.array_equal(local.global_params, remote.global_params)
    assert all("return_personal" in r for r in b.clients)


def test_federation_close_shuts_down_only_a_ray_it_started(local_ray):
    fed = Federation(load_config(overrides=[*TINY, "federation.backend=ray"]))
    fed.close()  # joined the fixture's instance: stays up
    assert local_ray.is_initialized() and not fed.started_ray
