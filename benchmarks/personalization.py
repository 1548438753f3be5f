"""Heterogeneity and personalization benchmark: who does one FedAvg model serve badly, and what fixes it?

For each setting x heterogeneity h in {0, 0.5, 1} x seed, in one process per run and with identical PPO
hyperparameters, client physics (drawn from the seed), per-client step budget and evaluation episodes:

* ``local``            every client trains alone (never federates), same steps
* ``fedavg``           the FedAvg global model (McMahan et al. 2017)
* ``fedavg+finetune``  the same FedAvg run; each client deploys the global model after its local training
                       (method ``finetune``: same global models as ``fedavg``, no extra steps)
* ``fedper``           shared body, personal output layers (Arivazhagan et al. 2019)
* ``embedding``        shared network fed a personal environment embedding (Jin et al. 2022)
* ``ifca``             2 cluster models, each client picks the best for it (Ghosh et al. 2020)
* ``ditto``            personal models with lambda/2 ||v - w||^2 (Li et al. 2021); trains twice the steps
* ``fedprox``          FedAvg with mu/2 ||w - w_g||^2 in local training (Li et al. 2020)

Settings: ``cartpole`` (the family's documented ranges: pole length, masses, gravity, force at 0.5-1.5x),
``acrobot`` (link lengths and masses at 0.5-1.5x) and ``cartpole-reversed``: the plain ``CartPole-v1`` id with
``env.ranges.force_mag = [-10, 10]``, i.e. at h = 1 the push force is drawn from [-10, 10] N, so some clients'
motors are wired backwards (and some are weak); at h = 0.5 from [0, 10] N. This is a deliberately wider
heterogeneity than the documented ranges, under which one policy must act oppositely for different clients.

Reported per setting, h and method, over seeds: the mean over clients of the final return of the model each
client deploys (``--final-episodes`` seeded greedy episodes in its own environment, the same episode seeds
for every method), its spread over seeds, the worst client's return (mean over seeds of the minimum over
clients), the mean of the per-round evaluations over all rounds (area under the learning curve: a
sample-efficiency measure), environment steps and upload per client. Results go to
benchmarks/results/personalization.{json,csv,md,png}.

Usage::

    python benchmarks/personalization.py                 # full grid, ~20-30 min with 2 workers on 2 busy cores
    python benchmarks/personalization.py --quick         # 1 seed, 2 rounds, a smoke test
    python benchmarks/personalization.py --from-json benchmarks/results/personalization.json  # re-tabulate
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from securefrl.personalization.benchmark import markdown_table, train_and_deploy
from securefrl.personalization.benchmark import summarize as shared_summarize

RESULTS = Path(__file__).resolve().parent / "results"

SETTINGS: dict[str, list[str]] = {
    "cartpole": ["env.name=cartpole"],
    "cartpole-reversed": ["env.name=CartPole-v1", "env.ranges.force_mag=[-10.0,10.0]"],
    "acrobot": ["env.name=acrobot"],
}
"""Config overrides of each setting."""

RUNS: dict[str, list[str]] = {
    "local": ["personalization.method=local"],
    "finetune": ["personalization.method=finetune"],  # yields fedavg and fedavg+finetune
    "fedper": ["personalization.method=fedper", "personalization.head_layers=1"],
    "embedding": ["personalization.method=embedding", "personalization.embedding_dim=4"],
    "ifca": ["personalization.method=ifca", "personalization.n_clusters=2", "personalization.selection_episodes=2"],
    "ditto": ["personalization.method=ditto", "personalization.ditto_lambda=0.1"],
    "fedprox": ["personalization.method=fedprox", "personalization.fedprox_mu=0.01"],
}
"""Config overrides of each run; ``finetune`` is measured as two methods."""

METHODS = ["local", "fedavg", "fedavg+finetune", "fedper", "embedding", "ifca", "ditto", "fedprox"]
PERSONALIZED = ["fedper", "embedding", "ifca", "ditto", "fedprox"]


def run_one(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Train one configuration and return one record per reported method (two for ``finetune``)."""
    overrides = [
        f"seed={job['seed']}", f"env.heterogeneity={job['h']}", f"federation.n_clients={job['clients']}",
        f"federation.rounds={job['rounds']}", f"federation.local_steps={job['local_steps']}",
        "federation.eval_episodes=1", *SETTINGS[job["setting"]], *RUNS[job["run"]],
    ]
    deploy = ({"fedavg": "global", "fedavg+finetune": "personal"} if job["run"] == "finetune"
              else {job["run"]: "personal"})
    common = {"setting": job["setting"], "h": job["h"], "seed": job["seed"]}
    return [{**common, **r} for r in train_and_deploy(overrides, deploy, job["final_episodes"])]


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting x h x method over seeds (the shared summary: 95% intervals, paired with local-only)."""
    return shared_summarize(records, METHODS, list(SETTINGS), key="setting")


def ifca_sign_alignment(records: list[dict[str, Any]]) -> list[str]:
    """Did IFCA's client-side choices split the clients by the sign of their push force (reversed motors)?"""
    out = []
    for setting, h in sorted({(r["setting"], r["h"]) for r in records if r["method"] == "ifca"}):
        runs = [r for r in records if (r["setting"], r["h"], r["method"]) == (setting, h, "ifca") and "final" in r]
        mixed = [r for r in runs if all("force_mag" in p for p in r["physics"])
                 and len({p["force_mag"] > 0 for p in r["physics"]}) == 2]
        if not mixed:
            continue
        aligned = 0
        for r in mixed:
            signs = [p["force_mag"] > 0 for p in r["physics"]]
            pairs = [(i, j) for i in range(len(signs)) for j in range(i + 1, len(signs))]
            aligned += all((signs[i] == signs[j]) == (r["clusters"][i] == r["clusters"][j]) for i, j in pairs)
        out.append(f"{setting}, h={h}: IFCA's clusters split the clients exactly by the sign of their force in "
                   f"{aligned} of {len(mixed)} runs with both signs present")
    return out


def findings(rows: list[dict[str, Any]]) -> list[str]:
    """Plain statements comparing FedAvg with local-only and with the best personalized method per cell."""
    out = []
    by = {(r["setting"], r["h"], r["method"]): r for r in rows}
    for setting, h in sorted({(r["setting"], r["h"]) for r in rows}, key=lambda k: (list(SETTINGS).index(k[0]), k[1])):
        fa, lo = by.get((setting, h, "fedavg")), by.get((setting, h, "local"))
        if fa is None or lo is None or "mean" not in fa or "mean" not in lo:
            continue
        pers = [by[(setting, h, m)] for m in PERSONALIZED if (setting, h, m) in by and "mean" in by[(setting, h, m)]]
        best = max(pers, key=lambda r: r["mean"]) if pers else None
        best_w = max(pers, key=lambda r: r["worst"]) if pers else None
        line = (f"{setting}, h={h}: fedavg mean {fa['mean']:.1f} (worst client {fa['worst']:.1f}) "
                f"vs local-only {lo['mean']:.1f} (worst {lo['worst']:.1f}); "
                f"area under curve fedavg {fa['curve_mean']:.1f} vs local {lo['curve_mean']:.1f}")
        if best is not None and best_w is not None:
            line += (f"; best personalized mean: {best['method']} {best['mean']:.1f}, best worst client: "
                     f"{best_w['method']} {best_w['worst']:.1f}")
        out.append(line)
    return out


def write_outputs(records: list[dict[str, Any]], args: argparse.Namespace, wall: float, suffix: str) -> None:
    rows = summarize(records)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "wall_seconds": wall,
            "args": vars(args)}
    notes = findings(rows) + ifca_sign_alignment(records)
    (RESULTS / f"personalization{suffix}.json").write_text(json.dumps(
        {"meta": meta, "summary": rows, "findings": notes, "runs": records}, indent=1) + "\n")
    with open(RESULTS / f"personalization{suffix}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        w.writeheader()
        w.writerows(rows)
    lines = [
        "# Personalization under environment heterogeneity",
        "",
        f"PPO, {args.clients} clients, {args.rounds} rounds x {args.local_steps} local steps, {args.seeds} seeds; "
        f"final return = mean of {args.final_episodes} greedy episodes per client of the model it deploys; ± = 95% "
        "t-interval over seeds. Worst = the lowest client (mean over seeds). AUC = mean per-round evaluation over all "
        "rounds (1 episode per client per round).",
        "",
        "| setting | h | method | mean return | worst client | worse than local | penalty vs local | AUC "
        "| env steps/client | KB up/client/round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for line, r in zip(markdown_table(rows, key="setting")[2:], rows, strict=True):
        extra = (" | | |" if "refused" in r else
                 f" {r['curve_mean']:.1f} | {r['env_steps_per_client']:.0f} | {r['kb_up_per_client_round']:.1f} |")
        lines.append(line + extra)
    lines += ["", "## Measured comparisons", "", *[f"- {f}" for f in notes], "",
              f"Wall time {wall / 60:.1f} min.", ""]
    (RESULTS / f"personalization{suffix}.md").write_text("\n".join(lines))
    plot(rows, records, RESULTS / f"personalization{suffix}.png")


def plot(rows: list[dict[str, Any]], records: list[dict[str, Any]], out: Path) -> None:
    """Per setting: mean and worst-client final return against h, and learning curves at the widest h."""
    from matplotlib.figure import Figure  # no pyplot: no global backend switch
    from matplotlib.ticker import MaxNLocator

    settings = [s for s in SETTINGS if any(r["setting"] == s for r in rows)]
    fig = Figure(figsize=(15, 3.6 * len(settings)), dpi=100)
    axes = fig.subplots(len(settings), 3, squeeze=False)
    styles = {m: ("k" if m in ("local", "fedavg") else None, "--" if m == "local" else "-") for m in METHODS}
    for i, s in enumerate(settings):
        for m in METHODS:
            rs = sorted((r for r in rows if r["setting"] == s and r["method"] == m and "mean" in r),
                        key=lambda r: r["h"])
            if not rs:
                continue
            color, ls = styles[m]
            hs = [r["h"] for r in rs]
            lw = 2.4 if m in ("local", "fedavg") else 1.3
            axes[i][0].plot(hs, [r["mean"] for r in rs], ls, color=color, lw=lw, marker="o", label=m)
            axes[i][1].plot(hs, [r["worst"] for r in rs], ls, color=color, lw=lw, marker="o", label=m)
            h_max = max(hs)
            curves = [r["curve"] for r in records if r["setting"] == s and r["method"] == m and r["h"] == h_max]
            if curves:
                axes[i][2].plot(np.arange(1, len(curves[0]) + 1), np.mean(curves, axis=0), ls, color=color, lw=lw,
                                label=m)
        axes[i][0].set_title(f"{s}: mean final return over clients")
        axes[i][1].set_title(f"{s}: worst client's final return")
        axes[i][2].set_title(f"{s}: mean return per round at h={max(r['h'] for r in rows)}")
        for ax in axes[i][:2]:
            ax.set_xlabel("heterogeneity h")
        axes[i][0].set_ylabel("final return (mean over clients)")
        axes[i][1].set_ylabel("final return (worst client)")
        axes[i][2].set_ylabel("mean return")
        axes[i][2].set_xlabel("round")
        axes[i][2].xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in axes[i]:
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--levels", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--local-steps", type=int, default=1024)
    ap.add_argument("--final-episodes", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 rounds x 256 steps, 1 final episode")
    ap.add_argument("--from-json", type=Path, help="rewrite the table, findings and plot from a saved result")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        args = argparse.Namespace(**{**saved["meta"]["args"], "from_json": None})
        write_outputs(saved["runs"], args, saved["meta"]["wall_seconds"], "_quick" if args.quick else "")
        print("\n".join(saved["findings"]))
        return
    suffix = ""
    if args.quick:
        args.seeds, args.rounds, args.local_steps, args.final_episodes = 1, 2, 256, 1
        suffix = "_quick"
    jobs = [{"setting": s, "h": h, "run": run, "seed": seed, "clients": args.clients, "rounds": args.rounds,
             "local_steps": args.local_steps, "final_episodes": args.final_episodes}
            for s in args.settings for h in args.levels for run in args.runs for seed in range(args.seeds)]
    jobs.sort(key=lambda j: j["run"] != "ditto")  # longest first keeps both workers busy to the end
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        for n, recs in enumerate(pool.map(run_one, jobs), 1):
            records.extend(recs)
            for r in recs:
                print(f"[{n}/{len(jobs)} {time.perf_counter() - t0:6.0f}s] {r['setting']:<17} h={r['h']:<4} "
                      f"{r['method']:<16} seed {r['seed']}: "
                      f"{np.round(r['final'], 0).tolist() if 'final' in r else 'refused: ' + r['refused'][:60]}",
                      file=sys.stderr, flush=True)
    write_outputs(records, args, time.perf_counter() - t0, suffix)
    print("\n".join(findings(summarize(records)) + ifca_sign_alignment(records)))


if __name__ == "__main__":
    main()
