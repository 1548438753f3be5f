"""Heterogeneity that matters: FedAvg's penalty against local-only training, and which personalization cures it.

Jin et al. (2022, "Federated Reinforcement Learning with Environment Heterogeneity") show that FedAvg-style
FRL converges to a policy whose suboptimality grows with the heterogeneity of the clients' environments.
This benchmark measures it: for each family x heterogeneity h x method x seed, one federation is trained
with identical agent hyperparameters, client environments (drawn from the seed, so every method of a seed
sees the same clients), per-client step budget and evaluation; then every client's deployed model is
evaluated on ``--final-episodes`` greedy episodes in its own environment, on episode seeds shared by all
methods.

Methods: ``local`` (clients never federate), ``fedavg`` (the global model), ``finetune`` (the same FedAvg
run, each client deploying the global model after its local training), ``fedper``, ``embedding``, ``ifca``,
``ditto`` and ``relation`` (see :mod:`securefrl.personalization`). Methods a family's agent does not support
(e.g. fedper with SAC on hopper) are recorded as refused, with the reason.

Reported per family, h and method, over seeds (95% t-intervals over seeds): the mean over clients of the
final return, the worst client's final return, and, for fedavg, the fraction of clients for which FedAvg's
model is worse than the same client's local-only model (paired by seed and client) and the penalty
``local mean - fedavg mean``. Outputs: benchmarks/results/heterogeneity{suffix}.json and .md, and one PNG per
family (mean and worst-client return against h, one line per method).

Usage::

    python benchmarks/heterogeneity.py                                   # the full grid (hours on 2 cores)
    python benchmarks/heterogeneity.py --families edge_caching --levels 0 1 --methods local fedavg relation \\
        --seeds 3 --rounds 6                                              # a small slice
    python benchmarks/heterogeneity.py --quick                           # smoke test: 1 seed, 2 short rounds
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

FAMILIES: dict[str, list[str]] = {
    "cartpole": ["env.name=cartpole"],
    "acrobot": ["env.name=acrobot"],
    "edge_caching": ["env.name=edge_caching"],
    "mec_offloading": ["env.name=mec_offloading"],
    "hopper": ["env.name=hopper", "agent.name=sac", "agent.params.learning_starts=500"],
}
"""Config overrides of each family (the continuous hopper needs SAC and securefrl[mujoco])."""

METHODS = ["local", "fedavg", "finetune", "fedper", "embedding", "ifca", "ditto", "relation"]

RUNS: dict[str, list[str]] = {
    "local": ["personalization.method=local"],
    "finetune": ["personalization.method=finetune"],  # one run gives fedavg (global) and finetune (tuned)
    "fedper": ["personalization.method=fedper"],
    "embedding": ["personalization.method=embedding"],
    "ifca": ["personalization.method=ifca", "personalization.n_clusters=2"],
    "ditto": ["personalization.method=ditto"],
    "relation": ["personalization.method=relation"],
}
"""Config overrides of each training run."""


def runs_for(methods: list[str]) -> list[str]:
    """The training runs that produce ``methods`` (fedavg and finetune share one)."""
    out = []
    for m in methods:
        run = "finetune" if m in ("fedavg", "finetune") else m
        if run not in out:
            out.append(run)
    return out


def final_returns(fed: Any, models: list[np.ndarray], episodes: int, seed: int) -> list[float]:
    """Mean greedy return of ``models[c]`` in client c's own environment, on seeds shared by every method."""
    from securefrl.seeding import derive_seed

    out = []
    for client, model in zip(fed.clients, models, strict=True):
        client.agent.set_flat(model)
        ep_seed = derive_seed(seed, "heterogeneity-final-eval", client.client_id) % (2**31)
        out.append(float(np.mean(client.agent.evaluate(client.eval_env, episodes, ep_seed))))
    return out


def run_one(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Train one (family, h, run, seed) and return one record per method it yields."""
    import torch

    from securefrl.config import load_config
    from securefrl.errors import ConfigError
    from securefrl.federation import make_federation

    torch.set_num_threads(1)
    common = {"family": job["family"], "h": job["h"], "seed": job["seed"]}
    methods = ["fedavg", "finetune"] if job["run"] == "finetune" else [job["run"]]
    overrides = [
        f"seed={job['seed']}", f"env.heterogeneity={job['h']}", f"federation.n_clients={job['clients']}",
        f"federation.rounds={job['rounds']}", f"federation.local_steps={job['local_steps']}",
        "federation.eval_episodes=1", *FAMILIES[job["family"]], *RUNS[job["run"]],
    ]
    try:
        cfg = load_config(overrides=overrides)
        fed = make_federation(cfg)
    except ConfigError as err:  # e.g. a method the family's agent does not support
        return [{**common, "method": m, "refused": str(err)} for m in methods]
    t0 = time.perf_counter()
    for _ in range(cfg.federation.rounds):
        fed.run_round()
    seconds = time.perf_counter() - t0
    if job["run"] == "finetune":
        deployed = {"fedavg": [fed._client_model(c) for c in fed.clients],
                    "finetune": [fed.personal_model(c) for c in fed.clients]}
    else:
        deployed = {job["run"]: [fed.personal_model(c) for c in fed.clients]}
    physics = [c.env_spec.params for c in fed.clients]
    return [{**common, "method": m, "final": final_returns(fed, models, job["final_episodes"], job["seed"]),
             "physics": physics, "train_seconds": seconds} for m, models in deployed.items()]


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval (half-width nan for a single value)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return float(x.mean()), float("nan")
    return float(x.mean()), float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per family x h x method, over seeds; fedavg rows carry the paired comparison with local."""
    rows = []
    done = [r for r in records if "final" in r]
    keys = sorted({(r["family"], r["h"]) for r in records}, key=lambda k: (list(FAMILIES).index(k[0]), k[1]))
    for family, h in keys:
        local = {r["seed"]: r["final"] for r in done if (r["family"], r["h"], r["method"]) == (family, h, "local")}
        for method in METHODS:
            rs = [r for r in records if (r["family"], r["h"], r["method"]) == (family, h, method)]
            if not rs:
                continue
            refused = [r["refused"] for r in rs if "refused" in r]
            if refused:
                rows.append({"family": family, "h": h, "method": method, "seeds": 0, "refused": refused[0]})
                continue
            mean, mean_ci = t_interval([float(np.mean(r["final"])) for r in rs])
            worst, worst_ci = t_interval([float(np.min(r["final"])) for r in rs])
            row: dict[str, Any] = {"family": family, "h": h, "method": method, "seeds": len(rs), "mean": mean,
                                   "mean_ci95": mean_ci, "worst": worst, "worst_ci95": worst_ci}
            paired = [r for r in rs if r["seed"] in local]
            if method != "local" and paired:
                frac = [float(np.mean(np.asarray(r["final"]) < np.asarray(local[r["seed"]]))) for r in paired]
                gap = [float(np.mean(local[r["seed"]]) - np.mean(r["final"])) for r in paired]
                row["frac_worse_than_local"], row["frac_worse_ci95"] = t_interval(frac)
                row["penalty_vs_local"], row["penalty_ci95"] = t_interval(gap)
            rows.append(row)
    return rows


def _fmt(value: float, ci: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}" + ("" if np.isnan(ci) else f" ± {ci:.{digits}f}")


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, wall: float) -> str:
    lines = [
        "# Heterogeneity benchmark: FedAvg's penalty and personalization",
        "",
        f"{args.clients} clients, {args.rounds} rounds x {args.local_steps} local steps, seeds {args.seeds}; final "
        f"return = mean of {args.final_episodes} greedy episodes per client of the model it deploys. "
        "± = 95% t-interval over seeds. worse-than-local = fraction of clients whose return under the method is "
        "below the same client's local-only return (paired by seed); penalty = local mean - method mean "
        "(positive: the method is worse).",
        "",
        "| family | h | method | mean return | worst client | worse than local | penalty vs local |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['family']} | {r['h']} | {r['method']} | refused: {r['refused'][:80]} | | | |")
            continue
        frac = _fmt(r["frac_worse_than_local"], r["frac_worse_ci95"], 2) if "frac_worse_than_local" in r else ""
        pen = _fmt(r["penalty_vs_local"], r["penalty_ci95"]) if "penalty_vs_local" in r else ""
        lines.append(f"| {r['family']} | {r['h']} | {r['method']} | {_fmt(r['mean'], r['mean_ci95'])} | "
                     f"{_fmt(r['worst'], r['worst_ci95'])} | {frac} | {pen} |")
    lines += ["", f"Wall time {wall / 60:.1f} min ({platform.machine()}, Python {platform.python_version()}).", ""]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out_dir: Path, suffix: str) -> list[Path]:
    """One PNG per family: mean and worst-client final return against h, one line per method (95% CI bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for family in [f for f in FAMILIES if any(r["family"] == f and "mean" in r for r in rows)]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=100)
        for method in METHODS:
            rs = sorted((r for r in rows if r["family"] == family and r["method"] == method and "mean" in r),
                        key=lambda r: r["h"])
            if not rs:
                continue
            style = {"local": ("k", "--"), "fedavg": ("k", "-")}.get(method, (None, "-"))
            for ax, key in zip(axes, ("mean", "worst"), strict=True):
                ax.errorbar([r["h"] for r in rs], [r[key] for r in rs],
                            yerr=[0.0 if np.isnan(r[f"{key}_ci95"]) else r[f"{key}_ci95"] for r in rs],
                            color=style[0], ls=style[1], marker="o", capsize=3, label=method,
                            lw=2.2 if method in ("local", "fedavg") else 1.2)
        axes[0].set_title(f"{family}: mean final return over clients")
        axes[1].set_title(f"{family}: worst client's final return")
        for ax in axes:
            ax.set_xlabel("heterogeneity h")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out_dir / f"heterogeneity_{family}{suffix}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--levels", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--local-steps", type=int, default=1024)
    ap.add_argument("--final-episodes", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1, help="processes (the default machine is shared: 1)")
    ap.add_argument("--suffix", default="", help="appended to the output names")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 2 rounds x 256 steps, 1 episode")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.rounds, args.local_steps, args.final_episodes = 1, 2, 256, 1
        args.suffix = args.suffix or "_quick"
    methods = ["local", *[m for m in args.methods if m != "local"]]  # the comparison needs local-only
    jobs = [{"family": f, "h": h, "run": run, "seed": seed, "clients": args.clients, "rounds": args.rounds,
             "local_steps": args.local_steps, "final_episodes": args.final_episodes}
            for f in args.families for h in args.levels for run in runs_for(methods) for seed in range(args.seeds)]
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        for n, recs in enumerate(pool.map(run_one, jobs), 1):
            records.extend(r for r in recs if r["method"] in methods)
            for r in recs:
                what = (f"refused ({r['refused'][:60]})" if "refused" in r
                        else f"final {np.round(r['final'], 1).tolist()}")
                print(f"[{n}/{len(jobs)} {time.perf_counter() - t0:6.0f}s] {r['family']:<15} h={r['h']:<4} "
                      f"{r['method']:<10} seed {r['seed']}: {what}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    rows = summarize(records)
    RESULTS.mkdir(parents=True, exist_ok=True)
    from securefrl.results import json_safe

    meta = {"python": platform.python_version(), "machine": platform.machine(), "wall_seconds": wall,
            "args": vars(args)}
    (RESULTS / f"heterogeneity{args.suffix}.json").write_text(
        json.dumps(json_safe({"meta": meta, "summary": rows, "runs": records}), indent=1) + "\n")
    table = markdown(rows, args, wall)
    (RESULTS / f"heterogeneity{args.suffix}.md").write_text(table)
    plot(rows, RESULTS, args.suffix)
    print(table)


if __name__ == "__main__":
    main()
