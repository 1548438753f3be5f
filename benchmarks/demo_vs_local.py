"""Does the default demo learn in fewer steps per client than its clients would alone? (issue 12, item 4)

Both sides are the demo's own config (``securefrl run`` defaults: 8 CartPole PPO clients at heterogeneity 0.5,
15 rounds of 2,048 steps) and differ only in ``personalization.method``: ``none`` (FedAvg, the demo) against
``local`` (every client trains alone on its own environment with the same agent, the same resets and the
same random streams: eight single agents). The evaluation grid is the demo's: after every round, greedy
episodes on each client's own environment. The metric is environment steps per client until the mean return
over clients reaches ``--threshold`` (first hit, and first of three consecutive rounds); a run that never gets
there counts as its budget and the row says how many missed (the mean is then a lower bound). Mean and 95%
Student-t interval over seeds; the speed-up is local / FedAvg, a ratio of means with a bootstrap interval.

Runs on the vectorized simulation (the loop's results up to float rounding, tested). Usage::

    python benchmarks/demo_vs_local.py                      # 5 seeds, ~5 min on 2 cores
    python benchmarks/demo_vs_local.py --seeds 0 1 --set federation.rounds=10
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from securefrl.speedup import hits
from securefrl.stats import bootstrap_ratio, t_interval

METHODS = {"fedavg (demo)": "none", "local (single agents)": "local"}


def run_one(method: str, seed: int, extra: list[str], work: Path) -> dict[str, Any]:
    from securefrl.config import load_config
    from securefrl.experiment import run_experiment

    cfg = load_config(overrides=[f"seed={seed}", f"personalization.method={method}", "federation.simulation=vectorized",
                                 f"output_dir={work}", f"name={method}-{seed}", *extra])
    res = run_experiment(cfg, progress=False)
    curve = [(int(r["env_steps_per_client"]), float(r["mean_return"])) for r in res.rounds]
    return {"seed": seed, "curve": curve, "budget": curve[-1][0], "final": curve[-1][1]}


def summarize(runs: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, idx in (("first", 0), ("three", 1)):
        steps = [hits(r["curve"], threshold)[idx] for r in runs]
        values = [s if s is not None else r["budget"] for s, r in zip(steps, runs, strict=True)]
        mean, ci = t_interval(values)
        out[key] = {"steps": values, "mean": mean, "ci95": ci, "missed": sum(s is None for s in steps)}
    out["final"] = t_interval([r["final"] for r in runs])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--threshold", type=float, default=475.0)
    p.add_argument("--set", action="append", default=[], help="extra config override for both sides")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo_vs_local")
    args = p.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:  # both sides of a seed one after the other, so machine load hits them alike
            for label, method in METHODS.items():
                runs[label].append(run_one(method, seed, args.set, Path(tmp)))
                print(f"seed {seed} {label}: first >= {args.threshold:g} at "
                      f"{hits(runs[label][-1]['curve'], args.threshold)[0]}", flush=True)
    stats = {label: summarize(rs, args.threshold) for label, rs in runs.items()}
    fed, loc = (stats[label] for label in METHODS)
    speedup = {k: bootstrap_ratio(loc[k]["steps"], fed[k]["steps"]) for k in ("first", "three")}
    lines = [f"Steps per client to a mean return >= {args.threshold:g} ({len(args.seeds)} seeds, 95% t-intervals; "
             "a miss counts as the budget)", "",
             "| side | first hit | first of 3 consecutive | final return |", "|---|---|---|---|"]
    for label, s in stats.items():
        cells = [f"{s[k]['mean']:,.0f} ± {s[k]['ci95']:,.0f}"
                 + (f" ({s[k]['missed']} missed)" if s[k]["missed"] else "") for k in ("first", "three")]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {s['final'][0]:.1f} ± {s['final'][1]:.1f} |")
    lines += ["", "Speed-up (local / fedavg steps per client): " + "; ".join(
        f"{k} {r:.2f}x [{lo:.2f}, {hi:.2f}]" for k, (r, lo, hi) in speedup.items())]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"args": {**vars(args), "out": str(args.out)}, "runs": runs,
                                                         "stats": stats, "speedup": speedup}, indent=1))
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
