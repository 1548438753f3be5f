"""Edge caching: how far each heterogeneity-benchmark method is from each client's best static policy.

For every client a ``heterogeneity.py`` run recorded (its ``popularity_centre`` and ``zipf_exponent``), the
hand-written policy :func:`securefrl.envs.edge_caching.static_policy` (admit a missed item iff it is among the
client's top-C items, evict the least popular cached one: optimal for i.i.d. requests) is played on
``--episodes`` seeded episodes of the client's own environment. The gap ``optimum - method`` (mean over
clients, paired by seed, 95% t-interval over seeds) says how much a method leaves on the table: if local-only
training is already near the optimum, no personalization method can beat it by much; if it is not, the
headroom exists and the question is why collaboration does not reach it.

Usage::

    python benchmarks/edge_caching_headroom.py benchmarks/results/heterogeneity_s4.jsonl

Writes ``<records stem>_headroom.json`` next to the records and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from securefrl.envs.edge_caching import EdgeCachingEnv, popularity, static_policy
from securefrl.personalization.benchmark import HETEROGENEITY_METHODS, t_interval
from securefrl.seeding import derive_seed


def optimum_return(centre: float, exponent: float, episodes: int, seed: int) -> float:
    """Mean return of the optimal static policy of one client on ``episodes`` seeded episodes."""
    env = EdgeCachingEnv()
    env.popularity_centre, env.zipf_exponent = centre, exponent
    act = static_policy(popularity(env.n_items, centre, exponent), env.cache_size)
    returns = []
    for e in range(episodes):
        obs, _ = env.reset(seed=derive_seed(seed, "edge-caching-headroom", e) % (2**31))
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def headroom(records: list[dict[str, Any]], episodes: int, seed: int) -> list[dict[str, Any]]:
    """One row per h x method: the optimum (mean, worst client) and the paired gap ``optimum - method``."""
    done = [r for r in records if r.get("family") == "edge_caching" and "final" in r]
    cache: dict[tuple[float, float], float] = {}

    def opt(p: dict[str, float]) -> float:
        key = (float(p["popularity_centre"]), float(p["zipf_exponent"]))
        if key not in cache:
            cache[key] = optimum_return(*key, episodes=episodes, seed=seed)
        return cache[key]

    rows = []
    for h in sorted({float(r["h"]) for r in done}):
        for method in HETEROGENEITY_METHODS:
            rs = [r for r in done if float(r["h"]) == h and r["method"] == method]
            if not rs:
                continue
            optima = [[opt(p) for p in r["physics"]] for r in rs]
            o_mean, o_ci = t_interval([float(np.mean(o)) for o in optima])
            gap, gap_ci = t_interval([float(np.mean(o) - np.mean(r["final"])) for o, r in zip(optima, rs, strict=True)])
            rows.append({"h": h, "method": method, "seeds": len(rs), "optimum_mean": o_mean, "optimum_ci95": o_ci,
                         "optimum_worst": float(np.mean([np.min(o) for o in optima])),
                         "method_mean": float(np.mean([np.mean(r["final"]) for r in rs])),
                         "gap": gap, "gap_ci95": gap_ci})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("records", type=Path, help="a heterogeneity{suffix}.jsonl written by heterogeneity.py")
    ap.add_argument("--episodes", type=int, default=200, help="episodes per client for the optimum")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    records = [json.loads(line) for line in args.records.read_text().splitlines() if line.strip()]
    rows = headroom(records, args.episodes, args.seed)
    out = args.records.with_name(args.records.stem + "_headroom.json")
    out.write_text(json.dumps({"records": str(args.records), "episodes": args.episodes, "rows": rows}, indent=1) + "\n")
    print("| h | method | seeds | optimum mean / worst client | method mean | optimum - method (± 95%) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['h']:g} | {r['method']} | {r['seeds']} | {r['optimum_mean']:.1f} / {r['optimum_worst']:.1f} | "
              f"{r['method_mean']:.1f} | {r['gap']:.1f} ± {r['gap_ci95']:.1f} |")


if __name__ == "__main__":
    main()
