"""Does federation make agents learn faster? Steps per client to a return threshold versus the number of clients K.

The question FedPG-BR (Fan et al., NeurIPS 2021, "Fault-Tolerant Federated Reinforcement Learning with
Theoretical Guarantee") answers with "3-4x fewer samples per agent with 10 agents than with one". Measured
here, fairly:

- **Same reset semantics on both sides.** Environments persist across rounds in the library (an episode
  started in one round ends in a later one), exactly as a single agent's episodes run on across its
  updates; the old benchmark reset every client's environments every round but never the single agent's.
- **Federations of K in {1, 2, 5, 10, 20}** identical clients (heterogeneity 0, FedPG-BR's setting), FedAvg
  (server lr 1) of PPO clients with the per-client settings ``--client`` (default 1 env x 32 steps, one update
  per round on that rollout: a federation of K gathers K x 32 transitions per global update).
- **Baselines:** (a) K = 1 with the same per-client settings (FedPG-BR's protocol), and (b) the best single
  agent of a small sweep over rollout size (envs x steps) and epochs (``--sweep``), picked by mean steps to the
  threshold (first of three consecutive hits).
- **Metric:** environment steps *per client* until the greedy evaluation return (about 10 episodes: ceil(10/K)
  per client over K clients, 10 for a single agent) reaches ``--threshold``, on a grid of ``--eval-every``
  steps per client: the first hit, and the first of three consecutive hits. Mean and 95% Student-t interval
  over seeds; a run that never gets there counts as its budget and the row says how many missed (the mean is
  then a lower bound). Speed-ups are ratios of means, with a seeded bootstrap 95% interval over seeds.

Writes ``<out>.json``, ``<out>.md`` (the table) and ``<out>.png`` (log-log steps per client versus K, with the
linear-speed-up line K=1 / K and the best single agent). The vectorized simulation trains CartPole
federations (the same results as the per-client loop up to float rounding, see tests/securefrl/test_vectorized.py);
other environments use the loop. Usage::

    python benchmarks/federation_speedup.py                                  # CartPole, K 1..20, 5 seeds
    python benchmarks/federation_speedup.py --env acrobot --threshold -100   # Acrobot (loop, slower)
    python benchmarks/federation_speedup.py --ks 1 10 --seeds 0 1 --sweep 8x32:20  # quick look
    python benchmarks/federation_speedup.py --merge a.json b.json --out combined  # stages run in parallel
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from securefrl.agents import make_agent
from securefrl.config import load_config
from securefrl.envs import draw_client_envs
from securefrl.federation import make_federation
from securefrl.seeding import derive_rng, derive_seed

EVAL_EPISODES = 10
"""Greedy episodes per evaluation (split over the clients of a federation)."""


def parse_setting(text: str) -> dict[str, int]:
    """``ENVSxSTEPS:EPOCHS`` -> PPO config fields (one minibatch: full-batch steps, as the PPO defaults)."""
    shape, _, epochs = text.partition(":")
    n_envs, n_steps = (int(v) for v in shape.split("x"))
    out = {"n_envs": n_envs, "n_steps": n_steps}
    if epochs:
        out["n_epochs"] = int(epochs)
    return out


def hits(curve: list[tuple[int, float]], threshold: float) -> tuple[int | None, int | None]:
    """(step of the first evaluation >= threshold, step of the first of three consecutive ones)."""
    ok = [ret >= threshold for _, ret in curve]
    first = next((s for (s, _), o in zip(curve, ok, strict=True) if o), None)
    three = next((curve[i][0] for i in range(len(curve) - 2) if ok[i] and ok[i + 1] and ok[i + 2]), None)
    return first, three


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% Student-t interval."""
    from scipy import stats

    a = np.asarray(values, dtype=np.float64)
    if len(a) < 2:
        return float(a.mean()), float("nan")
    return float(a.mean()), float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))


def bootstrap_ratio(num: list[float], den: list[float], seed: int = 0, n: int = 2000) -> tuple[float, float, float]:
    """mean(num) / mean(den) and a 95% percentile-bootstrap interval (seeds resampled independently)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    ra = a[rng.integers(0, len(a), (n, len(a)))].mean(axis=1)
    rb = b[rng.integers(0, len(b), (n, len(b)))].mean(axis=1)
    lo, hi = np.percentile(ra / rb, [2.5, 97.5])
    return float(a.mean() / b.mean()), float(lo), float(hi)


def skip_off_grid_evaluations(fed: Any, local_steps: int, eval_every: int) -> None:
    """Evaluate only the global model, and only in rounds that end on the grid (NaN elsewhere).

    The round loop evaluates every client's local and global model every round; at 32 steps per round that
    costs far more than training, and only every ``eval_every / local_steps``-th global evaluation is used.
    Evaluation draws from its own seeds, so skipping it changes no training trajectory.
    """
    inner = fed._evaluate

    def evaluate(client: Any, round_id: int, tag: str) -> float:
        steps = (round_id + 1) * local_steps
        if tag != "global" or steps // eval_every == (steps - local_steps) // eval_every:
            return float("nan")
        return float(inner(client, round_id, tag))

    fed._evaluate = evaluate


def run_federation(args: argparse.Namespace, k: int, seed: int) -> dict[str, Any]:
    """K identical PPO clients, one rollout per round, evaluated on the grid; stops after three hits in a row."""
    client = parse_setting(args.client)
    local = client["n_envs"] * client["n_steps"]
    budget = args.budget_k1 if k <= 2 else args.budget
    simulation = "vectorized" if args.env == "cartpole" else "loop"
    params = "{" + ", ".join(f"{key}: {v}" for key, v in client.items()) + "}"
    cfg = load_config(overrides=[
        f"seed={seed}", f"env.name={args.env}", "env.heterogeneity=0.0", "agent.name=ppo", f"agent.params={params}",
        f"federation.n_clients={k}", f"federation.rounds={budget // local}", f"federation.local_steps={local}",
        f"federation.eval_episodes={math.ceil(EVAL_EPISODES / k)}", f"federation.simulation={simulation}",
        "federation.server_optimizer=fedavg", "federation.server_lr=1.0",
    ])
    fed = make_federation(cfg)
    skip_off_grid_evaluations(fed, local, args.eval_every)
    curve: list[tuple[int, float]] = []
    t0, next_eval = time.perf_counter(), args.eval_every
    for _ in range(cfg.federation.rounds):
        rec = fed.run_round()
        steps = rec.summary["env_steps_per_client"]
        if steps >= next_eval:  # the round's evaluation of the new global model, on the grid
            curve.append((steps, rec.summary["mean_return"]))
            next_eval += args.eval_every
            if hits(curve, args.threshold)[1] is not None:
                break
    first, three = hits(curve, args.threshold)
    return {"k": k, "seed": seed, "first": first, "three": three, "budget": budget, "curve": curve,
            "seconds": time.perf_counter() - t0}


def run_single(args: argparse.Namespace, setting: str, seed: int) -> dict[str, Any]:
    """One PPO agent with ``setting``, the environment of a federation's client, evaluated on the same grid."""
    spec = draw_client_envs(args.env, 1, 0.0, derive_rng(seed, "env-draw"))[0]
    agent = make_agent("ppo", spec.make, parse_setting(setting), seed=derive_seed(seed, "single"))
    agent.reseed(derive_seed(seed, "single-train") % 2**31)
    env = spec.make()
    curve: list[tuple[int, float]] = []
    t0, steps = time.perf_counter(), 0
    while steps < args.budget_k1:
        agent.learn(args.eval_every)
        steps += args.eval_every
        ret = float(np.mean(agent.evaluate(env, EVAL_EPISODES, seed=derive_seed(seed, "eval", steps) % 2**31)))
        curve.append((steps, ret))
        if hits(curve, args.threshold)[1] is not None:
            break
    first, three = hits(curve, args.threshold)
    return {"setting": setting, "seed": seed, "first": first, "three": three, "budget": args.budget_k1,
            "curve": curve, "seconds": time.perf_counter() - t0}


def stats_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: mean and 95% half-width over seeds (misses count as the budget), and the number of misses."""
    out: dict[str, Any] = {}
    for key in ("first", "three"):
        values = [float(r[key] if r[key] is not None else r["budget"]) for r in runs]
        mean, half = t_interval(values)
        out[key] = {"mean": mean, "ci95": half, "values": values, "misses": sum(r[key] is None for r in runs)}
    return out


def fmt(s: dict[str, Any]) -> str:
    miss = f" ({s['misses']} missed: lower bound)" if s["misses"] else ""
    return f"{s['mean']:,.0f} ± {s['ci95']:,.0f}{miss}"


def plot(path: Path, ks: list[int], fed: dict[int, dict[str, Any]], best: dict[str, Any], label: str,
         threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for key, marker, name in (("three", "o", "first of 3 consecutive hits"), ("first", "s", "first hit")):
        means = [fed[k][key]["mean"] for k in ks]
        err = [fed[k][key]["ci95"] for k in ks]
        ax.errorbar(ks, means, yerr=err, marker=marker, capsize=3, label=f"federation, {name}")
    base = fed[ks[0]]["three"]["mean"] * ks[0]
    ax.plot(ks, [base / k for k in ks], "k--", lw=1, label="linear speed-up from K=1")
    ax.axhline(best["three"]["mean"], color="tab:red", ls=":", label=f"best single agent ({label})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("clients K")
    ax.set_ylabel(f"env steps per client to return >= {threshold:g}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="cartpole", help="environment family (cartpole runs vectorized)")
    p.add_argument("--threshold", type=float, default=475.0)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--client", default="1x32", help="per-client PPO rollout ENVSxSTEPS[:EPOCHS], one per round")
    p.add_argument("--sweep", nargs="*", default=["8x32:20", "4x32:10", "8x32:10"],
                   help="single-agent settings ENVSxSTEPS:EPOCHS swept for the best single agent (K = 1 with the "
                        "per-client settings is a candidate too: with FedAvg at server lr 1 it *is* that single agent)")
    p.add_argument("--eval-every", type=int, default=256, help="evaluation grid, env steps per client")
    p.add_argument("--budget", type=int, default=12_000, help="max env steps per client for K >= 5")
    p.add_argument("--budget-k1", type=int, default=30_000, help="max env steps per client for K <= 2 and singles")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/federation_speedup"))
    p.add_argument("--merge", type=Path, nargs="*", default=[],
                   help="instead of running: combine the runs of earlier JSON outputs (e.g. stages run in parallel)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    feds: dict[int, list[dict[str, Any]]] = {}
    singles: dict[str, list[dict[str, Any]]] = {}
    if args.merge:
        for path in args.merge:
            runs = json.loads(path.read_text())["runs"]
            for k, v in runs["federation"].items():  # the same K from several files: their seeds together
                feds.setdefault(int(k), []).extend(v)
            for k, v in runs["single"].items():
                singles.setdefault(k, []).extend(v)
        args.sweep = sorted(singles)
        write_outputs(args, feds, singles, 0.0)
        return 0
    # Stages in order of what the headline needs (K = 1, K = 10, the single-agent sweep, then the rest), with
    # the outputs rewritten after each, so a run cut short still reports what it measured.
    order = [k for k in (1, 10) if k in args.ks]
    stages: list[Any] = [*order, "sweep", *[k for k in args.ks if k not in order]]
    for stage in stages:
        if stage == "sweep":
            for setting in args.sweep:
                singles[setting] = [run_single(args, setting, s) for s in args.seeds]
                st = stats_of(singles[setting])
                print(f"single {setting}: first {fmt(st['first'])}; three {fmt(st['three'])}", flush=True)
        else:
            feds[stage] = [run_federation(args, stage, s) for s in args.seeds]
            st = stats_of(feds[stage])
            print(f"K={stage}: first {fmt(st['first'])}; three {fmt(st['three'])} "
                  f"({np.mean([r['seconds'] for r in feds[stage]]):.0f} s/run)", flush=True)
        write_outputs(args, feds, singles, time.perf_counter() - t_start)
    return 0


def write_outputs(args: argparse.Namespace, feds: dict[int, list[dict[str, Any]]],
                  singles: dict[str, list[dict[str, Any]]], seconds: float) -> None:
    """Table (Markdown), plot (PNG) and JSON of whatever stages have run."""
    ks = sorted(feds)
    fed_stats = {k: stats_of(feds[k]) for k in ks}
    single_stats = {s: stats_of(r) for s, r in singles.items()}
    if 1 in fed_stats and args.client:
        single_stats.setdefault(f"{args.client}:{parse_setting(args.client).get('n_epochs', 20)} (= K=1)",
                                fed_stats[1])
    best_setting = min(single_stats, key=lambda s: single_stats[s]["three"]["mean"]) if single_stats else None
    best = single_stats[best_setting] if best_setting else None
    k1 = ks[0] if ks else None
    rows = []
    lines = [f"### Federation speed-up, {args.env} (h = 0), threshold {args.threshold:g}, {len(args.seeds)} seeds",
             "", f"Per client: PPO {args.client}, one update per round, FedAvg (server lr 1). Best single agent of "
             f"the sweep {args.sweep} and K=1: **{best_setting}**. Steps per client on a {args.eval_every}-step grid, "
             "mean ± 95% CI over seeds; speed-ups are ratios of means [95% bootstrap CI].", "",
             f"| K | first hit | first of 3 consecutive | speed-up vs K={k1} (3 consec.) | speed-up vs best single |",
             "|---|---|---|---|---|"]
    for k in ks:
        st = fed_stats[k]
        vs_k1 = bootstrap_ratio(fed_stats[k1]["three"]["values"], st["three"]["values"], seed=k)
        vs_best = bootstrap_ratio(best["three"]["values"], st["three"]["values"], seed=100 + k) if best else None
        rows.append({"k": k, **st, "speedup_vs_k1": vs_k1, "speedup_vs_best_single": vs_best})
        best_cell = f"{vs_best[0]:.2f}x [{vs_best[1]:.2f}, {vs_best[2]:.2f}]" if vs_best else "not run"
        lines.append(f"| {k} | {fmt(st['first'])} | {fmt(st['three'])} | {vs_k1[0]:.2f}x [{vs_k1[1]:.2f}, "
                     f"{vs_k1[2]:.2f}] | {best_cell} |")
    lines += ["", "| single agent | first hit | first of 3 consecutive |", "|---|---|---|"]
    lines += [f"| {s} | {fmt(v['first'])} | {fmt(v['three'])} |" for s, v in single_stats.items()]
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(table + "\n")
    if ks and best:
        plot(args.out.with_suffix(".png"), ks, fed_stats, best, str(best_setting), args.threshold)
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "best_single": best_setting, "federations": rows, "singles": single_stats,
              "runs": {"federation": {str(k): v for k, v in feds.items()}, "single": singles}, "seconds": seconds}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out.with_suffix('.json')}, .md, .png ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
