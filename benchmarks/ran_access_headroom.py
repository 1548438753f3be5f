"""RAN access: how far each heterogeneity-benchmark method is from each site's greedy rule.

For every site a ``heterogeneity.py`` run recorded (its ``capacity_centre``, ``capacity_contrast`` and
``mean_session``), the hand-written rule :func:`securefrl.envs.ran_access.greedy_policy` (attach each user to the
cell of highest rate, knowing the site's cell bandwidths) is played on ``--episodes`` seeded episodes of the
site's own environment. The gap ``greedy - method`` (mean over clients, paired by seed, 95% t-interval over
seeds) says how much a method leaves on the table against the rule that knows the site. The greedy rule is
myopic, so it is a reference, not a bound: a method may beat it. The episodes are not the ones the methods were
evaluated on (5 per client), so a gap carries that evaluation noise too.

Usage::

    python benchmarks/ran_access_headroom.py benchmarks/results/heterogeneity_ran.jsonl

Writes ``<records stem>_headroom.json`` next to the records and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from securefrl.envs.ran_access import RANAccessEnv, greedy_policy
from securefrl.personalization.benchmark import HETEROGENEITY_METHODS, t_interval
from securefrl.seeding import derive_seed

PARAMS = ("capacity_centre", "capacity_contrast", "mean_session")


def greedy_return(params: dict[str, float], episodes: int, seed: int) -> float:
    """Mean return of the greedy rule of one site (``params``: the family's parameters) on seeded episodes."""
    env = RANAccessEnv()
    for name in PARAMS:
        setattr(env, name, float(params[name]))
    act = greedy_policy(env)
    returns = []
    for e in range(episodes):
        obs, _ = env.reset(seed=derive_seed(seed, "ran-access-headroom", e) % (2**31))
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def headroom(records: list[dict[str, Any]], episodes: int, seed: int) -> list[dict[str, Any]]:
    """One row per h x method: the greedy reference (mean, worst client) and the paired gap ``greedy - method``."""
    done = [r for r in records if r.get("family") == "ran_access" and "final" in r]
    cache: dict[tuple[float, ...], float] = {}

    def ref(p: dict[str, float]) -> float:
        key = tuple(float(p[n]) for n in PARAMS)
        if key not in cache:
            cache[key] = greedy_return(dict(zip(PARAMS, key, strict=True)), episodes, seed)
        return cache[key]

    rows = []
    for h in sorted({float(r["h"]) for r in done}):
        for method in HETEROGENEITY_METHODS:
            rs = [r for r in done if float(r["h"]) == h and r["method"] == method]
            if not rs:
                continue
            greedy = [[ref(p) for p in r["physics"]] for r in rs]
            g_mean, g_ci = t_interval([float(np.mean(g)) for g in greedy])
            gap, gap_ci = t_interval([float(np.mean(g) - np.mean(r["final"])) for g, r in zip(greedy, rs, strict=True)])
            rows.append({"h": h, "method": method, "seeds": len(rs), "greedy_mean": g_mean, "greedy_ci95": g_ci,
                         "greedy_worst": float(np.mean([np.min(g) for g in greedy])),
                         "method_mean": float(np.mean([np.mean(r["final"]) for r in rs])),
                         "gap": gap, "gap_ci95": gap_ci})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("records", type=Path, help="a heterogeneity{suffix}.jsonl written by heterogeneity.py")
    ap.add_argument("--episodes", type=int, default=200, help="episodes per client for the greedy rule")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    records = [json.loads(line) for line in args.records.read_text().splitlines() if line.strip()]
    rows = headroom(records, args.episodes, args.seed)
    out = args.records.with_name(args.records.stem + "_headroom.json")
    out.write_text(json.dumps({"records": str(args.records), "episodes": args.episodes, "rows": rows}, indent=1) + "\n")
    print("| h | method | seeds | greedy mean / worst client | method mean | greedy - method (± 95%) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['h']:g} | {r['method']} | {r['seeds']} | {r['greedy_mean']:.1f} / {r['greedy_worst']:.1f} | "
              f"{r['method_mean']:.1f} | {r['gap']:.1f} ± {r['gap_ci95']:.1f} |")


if __name__ == "__main__":
    main()
