"""benchmarks/edge_caching_headroom.py: the optimum it measures and the paired gap it reports (fast, < 2 s)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from securefrl.envs.edge_caching import popularity

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_headroom", ROOT / "benchmarks" / "edge_caching_headroom.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_optimum_is_the_top_c_mass_minus_the_warm_up():
    bench = _bench()
    mass = float(np.sort(popularity(12, 0.5, 1.0))[::-1][:3].sum())  # EdgeCachingEnv defaults: F=12, C=3, T=100
    got = bench.optimum_return(0.5, 1.0, episodes=30, seed=0)
    # the cache starts random, so the first misses of top items cost a few hits; steady state is the top-C mass
    assert 100 * mass - 5 < got < 100 * mass + 2
    assert got == bench.optimum_return(0.5, 1.0, episodes=30, seed=0)  # seeded
    assert bench.optimum_return(0.5, 0.6, episodes=30, seed=0) < got - 5  # flatter popularity, fewer hits


def test_headroom_pairs_each_seed_with_its_own_clients():
    bench = _bench()
    phys = [[{"popularity_centre": 0.5, "zipf_exponent": 1.0}, {"popularity_centre": 0.0, "zipf_exponent": 1.4}],
            [{"popularity_centre": 0.25, "zipf_exponent": 0.6}, {"popularity_centre": 0.5, "zipf_exponent": 1.0}]]
    opt = [[bench.optimum_return(p["popularity_centre"], p["zipf_exponent"], 10, 0) for p in ps] for ps in phys]
    records = [{"family": "edge_caching", "h": 1.0, "seed": s, "method": m, "physics": phys[s],
                "final": [o - shift for o in opt[s]]}
               for s in range(2) for m, shift in (("local", 0.0), ("fedavg", 3.0))]
    records.append({"family": "mec_offloading", "h": 1.0, "seed": 0, "method": "local", "final": [0.0]})  # ignored
    rows = {r["method"]: r for r in bench.headroom(records, episodes=10, seed=0)}
    assert set(rows) == {"local", "fedavg"}
    assert rows["local"]["gap"] == pytest.approx(0.0) and rows["local"]["gap_ci95"] == pytest.approx(0.0)
    assert rows["fedavg"]["gap"] == pytest.approx(3.0)
    assert rows["fedavg"]["optimum_worst"] == pytest.approx(np.mean([min(o) for o in opt]))
