"""The same Flower apps on Flower's simulation engine (`flwr run` against a SuperLink in simulation mode:
virtual clients in Ray actors), 3 virtual clients, 2 tiny rounds, equal to the in-process federation.

One simulation SuperLink serves every test of this module (each ``flwr run`` is a separate run on it).
Besides the protocols, the experiment features a Flower user expects the same config to honour are run
here: client-level DP (the accountant's epsilon in the rows), a malicious client poisoning its update
(the config's attack section) and ``finetune`` personalization.
"""

from __future__ import annotations

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from securefrl.config import load_config
from securefrl.experiment import run_experiment
from securefrl.flower.appdir import write_app
from securefrl.flower.local import LocalDeployment
from securefrl.results import latest_run, read_jsonl

pytestmark = pytest.mark.deployment  # separate Flower processes: `make test` runs them in its second step

TINY = ["federation.n_clients=3", "federation.rounds=2", "federation.local_steps=64", "federation.eval_episodes=1",
        "env.heterogeneity=1.0"]
METRICS = ("round", "mean_return", "min_return", "max_return", "mean_local_return", "n_sampled", "n_included",
           "bytes_up", "aborted", "bytes_down_aggregate", "env_steps_per_client")


@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    with LocalDeployment(3, tmp_path_factory.mktemp("flower-sim"), simulation=True) as sim:
        yield sim


def _flower_and_reference(sim, tmp_path, extra):
    cfg = load_config(overrides=[*TINY, f"output_dir={tmp_path}", "name=sim", *extra])
    app = write_app(cfg, tmp_path / "app", tmp_path, round_timeout=600, connect_timeout=300)
    sim.run(app, timeout=1200)
    run = latest_run(tmp_path / "sim")
    assert run is not None, f"the ServerApp wrote no run; logs in {sim.logs}"
    ref = run_experiment(load_config(overrides=[*TINY, f"output_dir={tmp_path}", "name=ref", *extra]),
                         progress=False)
    return run, ref


@pytest.mark.parametrize("protocol", ["plaintext", "secagg"])
def test_simulation_engine_equals_in_process_run(simulation, tmp_path, protocol):
    run, ref = _flower_and_reference(simulation, tmp_path, [f"protocol.name={protocol}"])
    got = read_jsonl(run / "rounds.jsonl")
    assert [{k: r[k] for k in METRICS} for r in got] == [{k: r[k] for k in METRICS} for r in ref.rounds]


# One malicious client adding Gaussian noise to its update, local DP (each client clips and noises), finetune.
FEATURES = ["attack.name=gaussian", "attack.n_malicious=1", "attack.params.sigma=5.0",
            "privacy.placement=local", "privacy.noise_multiplier=0.5", "privacy.clip_norm=1.0",
            "privacy.seeded_noise_experiment=true",  # equal to in-process needs the reproducible noise
            "personalization.method=finetune"]
DP_METRICS = ("epsilon", "epsilon_server", "epsilon_outsiders", "noise_multiplier", "clip_norm", "dp_noise",
              "method", "mean_personal_return", "min_personal_return")


def test_dp_attack_and_finetune_are_honoured_as_in_process(simulation, tmp_path):
    run, ref = _flower_and_reference(simulation, tmp_path, FEATURES)
    got = read_jsonl(run / "rounds.jsonl")
    keys = METRICS + DP_METRICS
    assert [{k: r.get(k) for k in keys} for r in got] == [{k: r.get(k) for k in keys} for r in ref.rounds]
    assert got[-1]["epsilon"] > got[0]["epsilon"] > 0  # the server's accountant ran every round
    clients = read_jsonl(run / "clients.jsonl")
    row_keys = ("round", "client", "malicious", "return_global", "return_personal", "bytes_up")
    assert [{k: c.get(k) for k in row_keys} for c in clients] == [{k: c.get(k) for k in row_keys}
                                                                  for c in ref.clients]
    # the clipped, noised (and for the malicious client crafted) update: equal up to float rounding
    norms = [(c["round"], c["client"], c.get("update_norm", -1.0)) for c in clients]
    ref_norms = [(c["round"], c["client"], c.get("update_norm", -1.0)) for c in ref.clients]
    assert [n[:2] for n in norms] == [n[:2] for n in ref_norms]
    assert [n[2] for n in norms] == pytest.approx([n[2] for n in ref_norms], rel=1e-9)
    assert sum(c["malicious"] for c in clients) == 2  # one malicious client, two rounds
    summary = __import__("json").loads((run / "summary.json").read_text())
    assert summary["epsilon"] == ref.summary["epsilon"] and summary["malicious_clients"] == ref.summary[
        "malicious_clients"]
