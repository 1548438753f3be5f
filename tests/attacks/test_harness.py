"""The evaluation harness: invalid combinations become labelled cells, and a tiny run writes its tables and plots."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest

from attacks.cli import register, run
from attacks.harness import MatrixConfig, _cell_config, aggregate, load_matrix_config, markdown, run_matrix
from securefrl.configtools import from_dict
from securefrl.errors import ConfigError

TINY_BASE = {
    "env": {"name": "cartpole", "heterogeneity": 0.5},
    "agent": {"name": "ppo", "params": {"hidden": [16], "n_envs": 2, "n_steps": 32}},
    "federation": {"n_clients": 5, "rounds": 2, "local_steps": 64, "eval_episodes": 1},
}


def _matrix(tmp_path: Path, **kw) -> MatrixConfig:  # type: ignore[no-untyped-def]
    data = {"name": "tiny", "output_dir": str(tmp_path), "seeds": [0], "base": TINY_BASE, "tail_rounds": 1,
            "protocol_attacks": [], **kw}
    return from_dict(MatrixConfig, data)


def test_invalid_combinations_are_labelled_cells_not_crashes(tmp_path: Path) -> None:
    m = _matrix(tmp_path, attacks=["sign_flip"], defences=["fedavg", "median", "krum"],
                protocols=["plaintext", "secagg"], n_malicious=2)
    rows = run_matrix(m, log=lambda s: None)
    cells = {(r["defence"], r["protocol"]): r for r in rows}
    assert cells[("fedavg", "plaintext")]["status"] == "ok"
    assert cells[("fedavg", "secagg")]["status"] == "ok"
    assert cells[("median", "plaintext")]["status"] == "ok"
    # A robust rule needs individual updates, which SecAgg hides: refused at config time, labelled.
    assert cells[("median", "secagg")]["status"] == "invalid"
    assert "reveals only the aggregate" in cells[("median", "secagg")]["reason"]
    # Krum needs n > 2f + 2: with n=5, f=2 it is invalid under every protocol.
    for p in ("plaintext", "secagg"):
        assert cells[("krum", p)]["status"] == "invalid"
        assert "n > 2f+2" in cells[("krum", p)]["reason"]
    md = markdown(aggregate(rows, m), m)
    assert "*invalid:" in md and "median needs each client's update" in md


def test_cell_config_maps_defences(tmp_path: Path) -> None:
    m = _matrix(tmp_path, n_malicious=1, defence_params={"clip": {"clip_norm": 0.5}, "trimmed_mean": {"beta": 0.2}})
    cfg, pipe = _cell_config(m, "alie", "clip", "plaintext", 3)
    assert cfg.federation.clip_norm == 0.5 and pipe is None and cfg.seed == 3
    assert cfg.attack.params == {"n_clients": 5, "n_malicious": 1}
    cfg, _ = _cell_config(m, "none", "trimmed_mean", "plaintext", 0)
    assert cfg.federation.aggregator_params == {"n_malicious": 1, "beta": 0.2} and cfg.attack.name == "none"
    _, pipe = _cell_config(m, "none", "dp", "secagg", 0)
    assert pipe is not None and "local_noise" in pipe.name
    with pytest.raises(ConfigError):
        _cell_config(_matrix(tmp_path, defence_params={"clip": {"bogus": 1}}), "none", "clip", "plaintext", 0)


def test_matrix_config_refuses_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown defence"):
        _matrix(tmp_path, defences=["moat"])
    with pytest.raises(ConfigError, match="unknown attack"):
        _matrix(tmp_path, attacks=["telepathy"])
    with pytest.raises(ConfigError, match="unknown protocol"):
        _matrix(tmp_path, protocols=["carrier_pigeon"])
    with pytest.raises(ConfigError, match="unknown inference"):
        _matrix(tmp_path, inference=["astrology"])
    alias = _matrix(tmp_path, attacks=["ipm_big"], attack_params={"ipm_big": {"attack": "ipm", "epsilon": 5.0}})
    assert alias.attacks == ["ipm_big"]


def test_tiny_run_writes_csv_markdown_and_png(tmp_path: Path) -> None:
    toml = tmp_path / "matrix.toml"
    toml.write_text(f"""
name = "tiny"
output_dir = "{tmp_path}"
seeds = [0]
attacks = ["none", "sign_flip", "backdoor"]
defences = ["fedavg", "median"]
protocols = ["plaintext"]
n_malicious = 1
tail_rounds = 1
backdoor_episodes = 1
inference = ["property"]
inference_protocols = ["plaintext", "ckks"]
dp = ["none"]
[base.env]
heterogeneity = 1.0
[base.agent]
name = "ppo"
params = {{hidden = [16], n_envs = 2, n_steps = 32}}
[base.federation]
n_clients = 5
rounds = 2
local_steps = 64
eval_episodes = 1
[inference_params.property]
n_shadow = 6
""")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["attack-matrix", "--config", str(toml), "--quiet"])
    assert run(args) == 0
    (out,) = (tmp_path / "tiny").iterdir()  # one timestamped folder per matrix run
    for name in ("cells.csv", "summary.md", "summary.json", "relative_return.png", "backdoor.png", "inference.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with open(out / "cells.csv") as fh:
        rows = list(csv.DictReader(fh))
    pois = [r for r in rows if r["kind"] == "poisoning"]
    assert len(pois) == 3 * 2 and all(r["status"] == "ok" for r in pois)
    assert {r["attack"] for r in pois if r["asr"]} == {"backdoor"}
    # every backdoor cell also carries the honest-only model's success rate under the same trigger
    assert all(0.0 <= float(r["reference_asr"]) <= 1.0 for r in pois if r["attack"] == "backdoor")
    honest = next(r for r in pois if r["attack"] == "none" and r["defence"] == "fedavg")
    assert float(honest["relative_return"]) == 1.0
    inf = [r for r in rows if r["kind"] == "inference"]
    assert {r["protocol"] for r in inf} == {"plaintext", "ckks"}
    md = (out / "summary.md").read_text()
    assert "## Relative return under `plaintext`" in md and "backdoor" in md and "property.pole_length" in md


def test_cli_lists_and_describes(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert run(parser.parse_args(["attack-matrix", "--list"])) == 0
    out = capsys.readouterr().out
    assert "backdoor" in out and "krum" in out and "membership" in out
    assert run(parser.parse_args(["attack-matrix", "--describe"])) == 0
    assert "keep_fraction" in capsys.readouterr().out


def test_overrides_apply(tmp_path: Path) -> None:
    m = load_matrix_config(None, ["seeds=[1,2]", "base.federation.rounds=7", f"output_dir={tmp_path}"])
    assert m.seeds == [1, 2] and m.base["federation"]["rounds"] == 7
    assert m.base["federation"]["n_clients"] == 6  # the rest of the small default base is kept


def test_protocol_section_runs_each_attack_against_weakened_and_default(tmp_path: Path) -> None:
    from attacks.harness import write_outputs

    m = _matrix(tmp_path, attacks=[], defences=[], protocol_attacks=["secagg_replay", "weight_amplification"])
    rows = run_matrix(m, log=lambda s: None)
    got = {(r["attack"], r["defence"]): r for r in rows if r["kind"] == "protocol"}
    assert set(got) == {(a, t) for a in ("secagg_replay", "weight_amplification") for t in ("weakened", "default")}
    assert all(got[(a, "weakened")]["succeeded"] and not got[(a, "default")]["succeeded"]
               for a in ("secagg_replay", "weight_amplification"))
    folder = write_outputs(rows, m)
    md = (folder / "summary.md").read_text()
    assert "## Protocol attacks" in md and "SignatureError" in md
