"""The same Flower apps on Flower's simulation engine (`flwr run` against a SuperLink in simulation mode:
virtual clients in Ray actors), 3 virtual clients, 2 tiny rounds, equal to the in-process federation."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from securefrl.config import load_config
from securefrl.experiment import run_experiment
from securefrl.flower.appdir import write_app
from securefrl.flower.local import LocalDeployment
from securefrl.results import read_jsonl

pytestmark = pytest.mark.deployment  # separate Flower processes: `make test` runs them in its second step

TINY = ["federation.n_clients=3", "federation.rounds=2", "federation.local_steps=64", "federation.eval_episodes=1",
        "env.heterogeneity=1.0"]
METRICS = ("round", "mean_return", "min_return", "max_return", "mean_local_return", "n_sampled", "n_included",
           "bytes_up", "aborted", "bytes_down_aggregate", "env_steps_per_client")


@pytest.mark.parametrize("protocol", ["plaintext", "secagg"])
def test_simulation_engine_equals_in_process_run(tmp_path, protocol):
    cfg = load_config(overrides=[*TINY, f"output_dir={tmp_path}", "name=sim", f"protocol.name={protocol}"])
    app = write_app(cfg, tmp_path / "app", tmp_path, round_timeout=600, connect_timeout=300)
    with LocalDeployment(3, tmp_path / "flower", simulation=True) as sim:
        sim.run(app, timeout=1200)
    got = read_jsonl(tmp_path / "sim" / "rounds.jsonl")
    ref = run_experiment(load_config(overrides=[*TINY, f"output_dir={tmp_path}", "name=ref",
                                                f"protocol.name={protocol}"]), progress=False)
    assert [{k: r[k] for k in METRICS} for r in got] == [{k: r[k] for k in METRICS} for r in ref.rounds]
