"""benchmarks/headroom.py: the reference returns it measures and the paired gap it reports (fast, < 3 s)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from securefrl.envs.edge_caching import popularity

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_headroom", ROOT / "benchmarks" / "headroom.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_edge_caching_reference_is_the_top_c_mass_minus_the_warm_up():
    bench = _bench()
    mass = float(np.sort(popularity(12, 0.5, 1.0))[::-1][:3].sum())  # EdgeCachingEnv defaults: F=12, C=3, T=100
    default = {"popularity_centre": 0.5, "zipf_exponent": 1.0}
    got = bench.reference_return("edge_caching", default, episodes=30, seed=0)
    # the cache starts random, so the first misses of top items cost a few hits; steady state is the top-C mass
    assert 100 * mass - 5 < got < 100 * mass + 2
    assert got == bench.reference_return("edge_caching", default, episodes=30, seed=0)  # seeded
    flat = {"popularity_centre": 0.5, "zipf_exponent": 0.6}
    assert bench.reference_return("edge_caching", flat, episodes=30, seed=0) < got - 5  # fewer hits


EDGE = [[{"popularity_centre": 0.5, "zipf_exponent": 1.0}, {"popularity_centre": 0.0, "zipf_exponent": 1.4}],
        [{"popularity_centre": 0.25, "zipf_exponent": 0.6}, {"popularity_centre": 0.5, "zipf_exponent": 1.0}]]
RAN = [[{"capacity_centre": 0.5, "capacity_contrast": 1.0, "mean_session": 10.0},
        {"capacity_centre": 0.0, "capacity_contrast": 1.5, "mean_session": 6.0}]] * 2


@pytest.mark.parametrize("family, phys", [("edge_caching", EDGE), ("ran_access", RAN)])
def test_headroom_pairs_each_seed_with_its_own_clients(family, phys):
    bench = _bench()
    ref = [[bench.reference_return(family, p, 4, 0) for p in ps] for ps in phys]
    records = [{"family": family, "h": 1.0, "seed": s, "method": m, "physics": phys[s],
                "final": [o - shift for o in ref[s]]}
               for s in range(2) for m, shift in (("local", 0.0), ("fedavg", 3.0))]
    records.append({"family": "mec_offloading", "h": 1.0, "seed": 0, "method": "local", "final": [0.0]})  # ignored
    rows = {r["method"]: r for r in bench.headroom(family, records, episodes=4, seed=0)}
    assert set(rows) == {"local", "fedavg"}
    assert rows["local"]["gap"] == pytest.approx(0.0) and rows["local"]["gap_ci95"] == pytest.approx(0.0)
    assert rows["fedavg"]["gap"] == pytest.approx(3.0)
    assert rows["fedavg"]["reference_worst"] == pytest.approx(np.mean([min(o) for o in ref]))


def test_every_reference_knows_its_client(tmp_path, capsys):
    bench = _bench()
    low = {"channel_gain_db": -10.0, "local_cpu_ghz": 1.7, "server_cpu_ghz": 0.5, "task_size_mbit": 0.5,
           "arrival_rate": 1.0}
    assert bench.reference_return("mec_offloading", low, 2, 0) == bench.reference_return("mec_offloading", low, 2, 0)
    stream = tmp_path / "h.jsonl"
    stream.write_text(json.dumps({"family": "mec_offloading", "h": 1.0, "seed": 0, "method": "local",
                                  "final": [-50.0], "physics": [low]}) + "\n")
    bench.main(["mec_offloading", str(stream), "--episodes", "2"])
    assert "| 1 | local | 1 |" in capsys.readouterr().out
    assert (tmp_path / "h_headroom_mec_offloading.json").exists()


def test_every_application_family_registers_its_reference_and_others_are_refused():
    bench = _bench()
    from securefrl.envs import FAMILIES

    apps = sorted(n for n, f in FAMILIES.items() if f.kind == "application")
    assert bench.REFERENCE_FAMILIES == apps  # the benchmark reads the registry, no list of its own
    with pytest.raises(ValueError, match=r"no reference policy.*edge_caching"):
        bench.reference_return("cartpole", {}, 1, 0)
