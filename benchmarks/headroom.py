"""How far each heterogeneity-benchmark method is from each client's hand-written reference policy.

For every client a ``heterogeneity.py`` run recorded (its drawn parameters), the family's reference policy — one
that *knows* the client's parameters — is played on ``--episodes`` seeded episodes of the client's own
environment. The gap ``reference - method`` (mean over clients, paired by seed, 95% t-interval over seeds) says
how much a method leaves on the table: if local-only training is already near the reference, no personalization
method can beat it by much; if it is not, the headroom exists and the question is why collaboration does not
reach it. The episodes are not the ones the methods were evaluated on, so a gap carries that noise too.

References (``EnvFamily.reference`` of each family that has one, :data:`REFERENCE_FAMILIES`):

* ``edge_caching``: :func:`securefrl.envs.edge_caching.reference_policy` — admit a missed item iff it is among
  the client's top-C items, evict the least popular cached one (optimal for i.i.d. requests);
* ``ran_access``: :func:`securefrl.envs.ran_access.greedy_policy` — attach each user to the cell of highest
  rate, knowing the site's bandwidths (myopic, so a reference, not a bound: a method may beat it);
* ``mec_offloading``: :func:`securefrl.envs.mec_offloading.myopic_policy` — the cheaper choice for each task,
  knowing the device's parameters (myopic as well).

Usage::

    python benchmarks/headroom.py edge_caching benchmarks/results/heterogeneity_s4.jsonl

Writes ``<records stem>_headroom_<family>.json`` next to the records and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from securefrl.envs import FAMILIES, EnvSpec, get_family, policy_returns
from securefrl.personalization.benchmark import HETEROGENEITY_METHODS, t_interval
from securefrl.seeding import derive_seed

REFERENCE_FAMILIES = sorted(name for name, fam in FAMILIES.items() if fam.reference is not None)
"""The families whose registry entry names a reference policy."""


def reference_return(family: str, params: dict[str, float], episodes: int, seed: int) -> float:
    """Mean return of the reference policy of the client with ``params`` on ``episodes`` seeded episodes."""
    fam = get_family(family)
    if fam.reference is None:
        raise ValueError(f"family {family!r} has no reference policy; families with one: {REFERENCE_FAMILIES}")
    env: gym.Env = EnvSpec(fam.env_id, dict(params), family).make()
    try:
        seeds = [derive_seed(seed, f"{family}-headroom", e) % (2**31) for e in range(episodes)]
        return float(np.mean(policy_returns(env, fam.reference(env.unwrapped), seeds)))
    finally:
        env.close()


def headroom(family: str, records: list[dict[str, Any]], episodes: int, seed: int) -> list[dict[str, Any]]:
    """One row per h x method: the reference (mean, worst client) and the paired gap ``reference - method``."""
    done = [r for r in records if r.get("family") == family and "final" in r]
    cache: dict[tuple[tuple[str, float], ...], float] = {}

    def ref(p: dict[str, float]) -> float:
        key = tuple(sorted((k, float(v)) for k, v in p.items()))
        if key not in cache:
            cache[key] = reference_return(family, dict(key), episodes, seed)
        return cache[key]

    rows = []
    for h in sorted({float(r["h"]) for r in done}):
        for method in HETEROGENEITY_METHODS:
            rs = [r for r in done if float(r["h"]) == h and r["method"] == method]
            if not rs:
                continue
            refs = [[ref(p) for p in r["physics"]] for r in rs]
            r_mean, r_ci = t_interval([float(np.mean(g)) for g in refs])
            gap, gap_ci = t_interval([float(np.mean(g) - np.mean(r["final"])) for g, r in zip(refs, rs, strict=True)])
            rows.append({"h": h, "method": method, "seeds": len(rs), "reference_mean": r_mean, "reference_ci95": r_ci,
                         "reference_worst": float(np.mean([np.min(g) for g in refs])),
                         "method_mean": float(np.mean([np.mean(r["final"]) for r in rs])),
                         "gap": gap, "gap_ci95": gap_ci})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("family", choices=REFERENCE_FAMILIES)
    ap.add_argument("records", type=Path, help="a heterogeneity{suffix}.jsonl written by heterogeneity.py")
    ap.add_argument("--episodes", type=int, default=200, help="episodes per client for the reference policy")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    records = [json.loads(line) for line in args.records.read_text().splitlines() if line.strip()]
    rows = headroom(args.family, records, args.episodes, args.seed)
    out = args.records.with_name(f"{args.records.stem}_headroom_{args.family}.json")
    out.write_text(json.dumps({"records": str(args.records), "family": args.family, "episodes": args.episodes,
                               "rows": rows}, indent=1) + "\n")
    print("| h | method | seeds | reference mean / worst client | method mean | reference - method (± 95%) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['h']:g} | {r['method']} | {r['seeds']} | {r['reference_mean']:.1f} / "
              f"{r['reference_worst']:.1f} | {r['method_mean']:.1f} | {r['gap']:.1f} ± {r['gap_ci95']:.1f} |")


if __name__ == "__main__":
    main()
