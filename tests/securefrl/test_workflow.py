"""The researcher's workflow (issue 16): run folders, resume/extend, evaluate, logs, parsing, sweep, plots.

Each test is one reproduction of the issue; all run on tiny budgets (2 clients, 1-2 rounds).
"""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import securefrl
from securefrl.cli import main
from securefrl.config import load_config
from securefrl.errors import ConfigError
from securefrl.experiment import run_experiment
from securefrl.results import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
TINY = ["federation.n_clients=2", "federation.rounds=1", "federation.local_steps=32", "federation.eval_episodes=1",
        "env.heterogeneity=1.0"]


def find_runs(root):
    from securefrl.results import find_runs as find  # imported late: each test fails on its own on old code

    return find(root)


def tiny(tmp_path, *extra, name="run"):
    return load_config(overrides=[*TINY, f"output_dir={tmp_path}", f"name={name}", *extra])


def cli_sets(tmp_path, *extra):
    args = []
    for s in [*TINY, f"output_dir={tmp_path}", *extra]:
        args += ["--set", s]
    return args


# 1. every run gets its own folder ---------------------------------------------------------------------------
def test_two_runs_of_one_config_never_overwrite_each_other(tmp_path):
    a = run_experiment(tiny(tmp_path), progress=False)
    b = run_experiment(tiny(tmp_path), progress=False)
    assert a.path != b.path
    assert a.path.parent == b.path.parent == tmp_path / "run"
    assert (a.path / "summary.json").is_file() and (b.path / "summary.json").is_file()
    assert [r.path for r in find_runs(tmp_path)] == [a.path, b.path]


def test_out_refuses_to_overwrite_a_run_unless_asked(tmp_path, capsys):
    out = tmp_path / "mine"
    assert main(["run", "-q", "--out", str(out), *cli_sets(tmp_path)]) == 0
    assert (out / "summary.json").is_file()
    assert main(["run", "-q", "--out", str(out), *cli_sets(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["run", "-q", "--out", str(out), "--overwrite", *cli_sets(tmp_path)]) == 0
    assert len(read_jsonl(out / "rounds.jsonl")) == 1


def test_runs_lists_and_compare_plots_and_tabulates(tmp_path, capsys):
    a = run_experiment(tiny(tmp_path, name="alpha"), progress=False)
    b = run_experiment(tiny(tmp_path, "seed=1", name="beta"), progress=False)
    assert main(["runs", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert str(a.path) in listing and str(b.path) in listing and "cartpole" in listing
    out = tmp_path / "cmp"
    assert main(["compare", str(a.path), str(b.path), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "alpha" in table and "beta" in table and "final" in table
    assert (out / "compare.png").stat().st_size > 1000
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["run"] for r in rows] == [str(a.path), str(b.path)]


# 6. resume, extend, evaluate ---------------------------------------------------------------------------------
def test_resume_extends_a_finished_run_and_names_the_differing_field(tmp_path, capsys):
    assert main(["run", "-q", *cli_sets(tmp_path)]) == 0
    (run,) = find_runs(tmp_path)
    assert main(["run", "-q", "--resume", str(run.path), "--set", "federation.rounds=2"]) == 0
    assert [r["round"] for r in read_jsonl(run.path / "rounds.jsonl")] == [0, 1]
    assert json.loads((run.path / "summary.json").read_text())["rounds_completed"] == 2
    assert main(["run", "-q", "--resume", str(run.path), "--set", "federation.local_steps=16"]) == 2
    assert "federation.local_steps" in capsys.readouterr().err
    assert len(find_runs(tmp_path)) == 1  # resuming never starts a new folder


def test_evaluate_a_trained_model_from_the_cli_and_in_two_lines_of_python(tmp_path, capsys):
    res = run_experiment(tiny(tmp_path), progress=False)
    returns = securefrl.load_run(res.path).evaluate(client=1, episodes=2)
    assert len(returns) == 2 and all(np.isfinite(returns))
    assert returns == securefrl.load_run(res.path).evaluate(client=1, episodes=2)  # seeded
    gif = tmp_path / "watch.gif"
    assert main(["evaluate", str(res.path), "--client", "1", "--episodes", "2", "--render", "rgb_array",
                 "--video", str(gif)]) == 0
    out = capsys.readouterr().out
    assert f"{np.mean(returns):.1f}" in out
    assert gif.stat().st_size > 1000
    assert main(["evaluate", str(res.path), "--client", "5"]) == 2
    assert "client" in capsys.readouterr().err


# 3 / 8 / 10. config parsing -----------------------------------------------------------------------------------
def test_scientific_notation_in_set_and_in_yaml(tmp_path):
    assert load_config(overrides=["privacy.delta=1e-6"]).privacy.delta == 1e-6
    f = tmp_path / "c.yaml"
    f.write_text("privacy:\n  delta: 1e-6\n  noise_multiplier: 2E0\n")
    cfg = load_config(f)
    assert cfg.privacy.delta == 1e-6 and cfg.privacy.noise_multiplier == 2.0


def test_toml_inline_table_in_set():
    cfg = load_config(overrides=["env.overrides={pole_length=0.7, masscart=2}"])
    assert cfg.env.overrides == {"pole_length": 0.7, "masscart": 2.0}
    assert load_config(overrides=['env.overrides={"pole_length": 0.6}']).env.overrides == {"pole_length": 0.6}
    assert load_config(overrides=["agent.name=dqn"]).agent.name == "dqn"


@pytest.mark.parametrize("override, field, hint", [
    ("federaton.rounds=3", "federaton", "did you mean 'federation'"),
    ("federation.round=3", "federation.round", "did you mean 'rounds'"),
    ("privacy.secure_nosie=true", "privacy.secure_nosie", "did you mean 'secure_noise'"),
    ("agent.params.n_epoch=3", "agent.params.n_epoch", "did you mean 'n_epochs'"),
])
def test_unknown_keys_get_a_did_you_mean(override, field, hint):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert info.value.field == field and hint in str(info.value)


@pytest.mark.parametrize("overrides, hint", [
    (["attack.name=ipm", "attack.n_malicious=1", "attack.params.epsilom=1"], "did you mean 'epsilon'"),
    (["federation.aggregator=trimmed_mean", "federation.aggregator_params.beat=0.2"], "did you mean 'beta'"),
])
def test_plugin_parameters_get_a_did_you_mean(overrides, hint):
    with pytest.raises(ConfigError, match=hint):
        load_config(overrides=overrides)


def test_ckks_parameters_can_be_set_flat_or_nested(tmp_path):
    from securefrl.federation import make_federation

    for form in ("protocol.params.poly_modulus_degree=8192", "protocol.params={params={poly_modulus_degree=8192}}"):
        fed = make_federation(tiny(tmp_path, "protocol.name=ckks", form))
        assert fed.protocol.params.poly_modulus_degree == 8192, form
    with pytest.raises(ConfigError) as info:
        make_federation(tiny(tmp_path, "protocol.name=ckks", "protocol.params.poly_modulus_degre=8192"))
    assert info.value.field == "protocol.params.poly_modulus_degre"
    assert "did you mean 'poly_modulus_degree'" in str(info.value) and "prime_bits" in str(info.value)
    with pytest.raises(ConfigError) as info:
        make_federation(tiny(tmp_path, "protocol.name=ckks", "protocol.params.poly_modulus_degree=abc"))
    assert info.value.field == "protocol.params.poly_modulus_degree" and "integer" in str(info.value)


def test_config_lists_a_protocols_parameters(capsys):
    assert main(["config", "--protocol", "ckks"]) == 0
    out = capsys.readouterr().out
    from protocols.ckks import CKKSParams

    assert re.search(rf"protocol\.params\.poly_modulus_degree +\= {CKKSParams().poly_modulus_degree}\b", out)
    assert main(["config", "--protocol", "secagg"]) == 0
    out = capsys.readouterr().out
    assert "protocol.params.threshold" in out
    assert "rng" not in out and "identities" not in out  # Python objects (a Generator, keys) cannot come from a config


def test_protocol_parameter_errors_are_typed_before_any_training(tmp_path, capsys):
    assert main(["run", "-q", *cli_sets(tmp_path, "protocol.name=secagg", "protocol.params.treshold=2")]) == 2
    err = capsys.readouterr().err
    assert "protocol.params.treshold" in err and "threshold" in err and "Traceback" not in err


# 9. logs, stdout, version, licence, make clean -------------------------------------------------------------
def test_progress_goes_to_stdout_one_plain_line_per_round_when_redirected(tmp_path, capfd):
    res = run_experiment(tiny(tmp_path, "federation.rounds=2"), progress=True)
    out, err = capfd.readouterr()
    assert "\r" not in out
    rows = [ln for ln in out.splitlines() if re.match(r"^\s+\d+\s+[-\d.]+\s", ln)]
    assert len(rows) == 2, out
    assert str(res.path) in out
    assert "round" not in err


def test_csv_logs_beside_json_lines(tmp_path):
    res = run_experiment(tiny(tmp_path, "federation.rounds=2"), progress=False)
    rounds = list(csv.DictReader(open(res.path / "rounds.csv")))
    clients = list(csv.DictReader(open(res.path / "clients.csv")))
    assert [int(r["round"]) for r in rounds] == [0, 1]
    assert len(clients) == 4
    assert float(rounds[1]["mean_return"]) == pytest.approx(res.rounds[1]["mean_return"], rel=1e-6)


def test_tensorboard_is_optional(tmp_path, capsys):
    from securefrl.results import tensorboard_available

    res = run_experiment(tiny(tmp_path), progress=False, tensorboard=True)
    if tensorboard_available():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(res.path / "tensorboard"))
        events.Reload()
        (point,) = events.Scalars("federation/mean_return")
        assert point.step == 0 and point.value == pytest.approx(res.rounds[0]["mean_return"])
    else:
        assert not (res.path / "tensorboard").exists()
        assert "pip install tensorboard" in capsys.readouterr().err


def test_version_licence_and_make_clean(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert securefrl.__version__ in capsys.readouterr().out
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0" in licence
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()
    clean = re.search(r"^clean:.*?(?=^\S|\Z)", (ROOT / "Makefile").read_text(), re.S | re.M).group(0)
    assert "results" not in clean


def test_seeded_noise_warning_names_the_config_key():
    import warnings

    from securefrl.privacy import noise

    noise._seeded_warning_issued = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        noise._warn_seeded_once()
    assert "privacy.seeded_noise_experiment" in str(caught[0].message)


# 7. any gymnasium id, missing extras ----------------------------------------------------------------------
def test_missing_box2d_names_the_package_to_install(tmp_path, capsys):
    try:
        import Box2D  # noqa: F401
        pytest.skip("Box2D is installed")
    except ImportError:
        pass
    assert main(["run", "-q", *cli_sets(tmp_path, "env.name=LunarLander-v3")]) == 2  # at the default h
    err = capsys.readouterr().err
    assert "gymnasium[box2d]" in err and "Traceback" not in err


# 5. sweep --------------------------------------------------------------------------------------------------
def test_sweep_validates_its_grid_before_running_anything(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", "--noise", "1", "-1", "--seeds", "0", "--out", str(out), *cli_sets(tmp_path)]) == 2
    assert "noise_multiplier" in capsys.readouterr().err
    assert not (out / "runs").exists()
    assert main(["sweep", "--epsilon", "0", "--seeds", "0", "--out", str(out), *cli_sets(tmp_path)]) == 2
    assert "epsilon" in capsys.readouterr().err
    assert not (out / "runs").exists()


def test_sweep_intervals_are_honest():
    from securefrl.sweep import SweepPoint

    one = SweepPoint("z=1", 1.0, None, 2.0, [100.0])
    assert one.ci is None and "n/a" in one.describe()
    three = SweepPoint("z=1", 1.0, None, 2.0, [9.0, 10.0, 500.0])
    lo, hi = three.ci
    assert 9.0 <= lo <= three.mean <= hi <= 500.0


def test_sweep_prints_an_eta(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", "--noise", "1", "--seeds", "0", "--out", str(out), *cli_sets(tmp_path)]) == 0
    assert "ETA" in capsys.readouterr().out


# 11. plots --------------------------------------------------------------------------------------------------
def test_returns_plot_names_run_env_and_heterogeneity_with_integer_rounds(tmp_path):
    from securefrl.results import returns_figure

    res = run_experiment(tiny(tmp_path, "federation.rounds=2", name="titled"), progress=False)
    fig = returns_figure(res.clients, res.rounds, config=res.federation.config, run=res.path)
    ax = fig.axes[0]
    assert "titled" in ax.get_title() and "cartpole" in ax.get_title() and "heterogeneity 1" in ax.get_title()
    assert all(float(t).is_integer() for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1])
    assert "(global model)" in ax.get_ylabel()
    pers = load_config(overrides=[*TINY, "personalization.method=fedper"])
    fig = returns_figure(res.clients, res.rounds, config=pers, run=res.path)
    assert "global model" not in fig.axes[0].get_ylabel()


def test_library_modules_never_switch_the_matplotlib_backend():
    code = ("import matplotlib; matplotlib.use('module://matplotlib_inline.backend_inline'); "
            "import securefrl.results, securefrl.sweep, attacks.harness, securefrl.experiment; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout
    assert "inline" in out
    for path in ("securefrl/results.py", "securefrl/sweep.py", "attacks/harness.py"):
        assert "matplotlib.use(" not in (ROOT / path).read_text(), path


def test_attack_heatmaps_have_axis_titles(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from attacks.harness import MatrixConfig, aggregate, plot, run_matrix
    from securefrl.configtools import from_dict

    base = {"agent": {"name": "ppo", "params": {"hidden": [8], "n_envs": 1, "n_steps": 16}},
            "federation": {"n_clients": 3, "rounds": 1, "local_steps": 16, "eval_episodes": 1}}
    m = from_dict(MatrixConfig, {"name": "hm", "output_dir": str(tmp_path), "seeds": [0], "base": base,
                                 "tail_rounds": 1, "attacks": ["none", "sign_flip"], "defences": ["fedavg"]})
    saved = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), real(self, *a, **k))[1])
    plot(aggregate(run_matrix(m, log=lambda s: None), m), m, tmp_path)
    axes = [ax for fig in saved for ax in fig.axes if ax.get_title()]  # colorbars have no title
    assert axes and all(ax.get_xlabel() and ax.get_ylabel() for ax in axes)


def test_personalization_benchmark_grid_labels_every_axis(tmp_path, monkeypatch):
    import importlib.util

    from matplotlib.figure import Figure

    spec = importlib.util.spec_from_file_location("bench_pers", ROOT / "benchmarks" / "personalization.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    setting = next(iter(bench.SETTINGS))
    rows = [{"setting": setting, "method": m, "h": h, "mean_return": 10.0 + h, "worst_client_return": 5.0 + h}
            for m in ("fedavg", "local") for h in (0.0, 1.0)]
    records = [{"setting": setting, "method": m, "h": 1.0, "curve": [1.0, 2.0, 3.0]} for m in ("fedavg", "local")]
    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self))
    bench.plot(rows, records, tmp_path / "p.png")
    (fig,) = saved
    assert all(ax.get_ylabel() and ax.get_xlabel() for ax in fig.axes)
