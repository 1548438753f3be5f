"""Ray backend: the same seed gives the same metrics as the local backend; only bytes/primitives cross Ray."""

import io

import numpy as np
import pytest
import torch

from securefrl.config import load_config
from securefrl.errors import ConfigError
from securefrl.federation import Federation, make_federation
from securefrl.seeding import derive_seed, eval_seed

ray = pytest.importorskip("ray")

from securefrl.ray_backend import RayExecutor, agent_payload, task_payload, train_client  # noqa: E402  (needs ray)

TINY = ["federation.n_clients=3", "federation.rounds=2", "federation.local_steps=64", "federation.eval_episodes=1",
        "federation.client_fraction=0.6", "env.heterogeneity=1.0", "agent.params={n_envs: 2, n_steps: 16}"]
TIMES = ("round_time",)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (1 CPU) for the module, shut down afterwards."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
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


def test_ray_backend_refuses_vectorized():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["federation.simulation=vectorized", "federation.backend=ray"])
    assert err.value.field == "federation.backend"


@pytest.mark.parametrize("method", ["ditto", "fedrep"])
def test_personalization_on_ray_gives_the_same_metrics_as_local(local_ray, method):
    # Arrange: Ditto (a second agent per client, proximal term) and FedRep (frozen phases) as Ray tasks.
    over = [*TINY, f"personalization.method={method}"]
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
