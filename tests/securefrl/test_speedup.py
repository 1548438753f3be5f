"""``securefrl speedup``: the speed-up study's small slice writes its JSON, table and plot for both modes."""

from __future__ import annotations

import json

from securefrl.cli import main


def test_speedup_subcommand_writes_json_table_and_plot(tmp_path, capsys) -> None:
    out = tmp_path / "speed"
    # a threshold every policy reaches, so each run stops after three evaluations (gradient mode: the loop)
    code = main(["speedup", "--ks", "1", "2", "--modes", "gradient", "--seeds", "0", "--sweep", "--client", "1x16:1",
                 "--threshold", "5", "--eval-every", "32", "--budget", "320", "--budget-k1", "320", "--out", str(out)])
    assert code == 0
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["mode"], r["k"]): r for r in result["federations"]}
    assert set(rows) == {("gradient", 1), ("gradient", 2)}
    assert all(r["three"]["values"] == [32.0] and r["three"]["misses"] == 0 for r in rows.values())
    assert rows[("gradient", 2)]["speedup_vs_k1"][0] == 1.0  # both hit at the same grid step
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| gradient | 2 | 1 |" in out.with_suffix(".md").read_text()
    assert "| gradient | 2 | 1 |" in capsys.readouterr().out


def test_speedup_runs_delta_mode_of_a_batched_family_vectorized(tmp_path) -> None:
    """Acrobot has a batched implementation, so its delta-mode federations take the vectorized executor."""
    out = tmp_path / "acro"
    code = main(["speedup", "--env", "acrobot", "--ks", "2", "--modes", "delta", "--seeds", "0", "--sweep",
                 "--client", "1x16:1", "--threshold", "-600", "--eval-every", "16", "--budget-k1", "160",
                 "--out", str(out)])
    assert code == 0
    run = json.loads(out.with_suffix(".json").read_text())["runs"]["federation"]["delta:2"][0]
    assert run["simulation"] == "vectorized"
    assert run["three"] == 16  # every Acrobot return is >= -500 > -600: hits from the first grid point on


def test_speedup_needs_a_threshold_for_an_unknown_env(tmp_path, capsys) -> None:
    assert main(["speedup", "--env", "pendulum", "--out", str(tmp_path / "x")]) == 2
    assert "--threshold" in capsys.readouterr().err
