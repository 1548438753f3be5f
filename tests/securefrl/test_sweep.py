"""The privacy-utility sweep writes its table and plot, with a no-DP baseline and epsilons that fall with noise."""

import csv

import pytest

from securefrl.cli import main


def test_sweep_cli_writes_table_and_plot(tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", "--placement", "central", "--noise", "0.8", "3.0", "--seeds", "0", "1", "--out", str(out)]
    for s in ["federation.n_clients=2", "federation.rounds=2", "federation.local_steps=64",
              "federation.eval_episodes=1", f"output_dir={tmp_path}"]:
        args += ["--set", s]
    assert main(args) == 0
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [r["setting"] for r in rows] == ["no DP", "z=0.8", "z=3"]
    assert rows[0]["epsilon"] == ""
    assert float(rows[1]["epsilon"]) > float(rows[2]["epsilon"]) > 0
    assert all(r["seeds"] == "2" for r in rows)
    assert (out / "sweep.png").stat().st_size > 1000
    assert "no DP" in (out / "sweep.md").read_text()


def test_sweep_refuses_an_empty_seed_list(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sweep", "--noise", "1.0", "--seeds"])
    assert info.value.code == 2
    assert "--seeds" in capsys.readouterr().err
