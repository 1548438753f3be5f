"""Does federation make agents learn faster? Steps per client to a return threshold versus the number of clients K.

The question FedPG-BR (Fan et al., NeurIPS 2021, "Fault-Tolerant Federated Reinforcement Learning with
Theoretical Guarantee") answers with "3-4x fewer samples per agent with 10 agents than with one". Measured
here, fairly (``benchmarks/federation_speedup.py`` runs the full study, ``securefrl speedup`` a small slice on
any environment family):

- **Same reset semantics on both sides.** Environments persist across rounds in the library (an episode
  started in one round ends in a later one), exactly as a single agent's episodes run on across its updates.
- **Federations of K** identical clients (heterogeneity 0, FedPG-BR's setting) of PPO clients with the
  per-client settings ``--client`` (default 1 env x 32 steps per round), in both **modes**
  (``federation.update``): ``delta`` = FedAvg (server lr 1) of one local PPO update per round;
  ``gradient`` = FedSGD / DD-PPO, every minibatch step a mean gradient with server-side Adam
  (:mod:`securefrl.gradient`): a federation of K is one PPO on a K x 32-transition rollout.
  K = 1 is the same single agent in both modes (``tests/securefrl/test_gradient_mode.py``), so it runs once.
- **Baselines:** (a) K = 1 with the same per-client settings (FedPG-BR's protocol), and (b) the best single
  agent of a small sweep over rollout size (envs x steps) and epochs (``--sweep``; K = 1 is a candidate),
  picked by mean steps to the threshold (first of three consecutive hits).
- **Metric:** environment steps *per client* until the greedy evaluation return (about 10 episodes: ceil(10/K)
  per client over K clients, 10 for a single agent) reaches ``--threshold``, on a grid of ``--eval-every``
  steps per client: the first hit, and the first of three consecutive hits. Mean and 95% Student-t interval
  over seeds; a run that never gets there counts as its budget and the row says how many missed (the mean is
  then a lower bound). Speed-ups are ratios of means, with a seeded bootstrap 95% interval over seeds.

Writes ``<out>.json``, ``<out>.md`` (the table) and ``<out>.png`` (log-log steps per client versus K per mode,
with the linear-speed-up line K=1 / K and the best single agent). Delta-mode federations of a family with a
batched implementation (``securefrl.envs.families.batched_families``: CartPole, Acrobot, ...) run on the
vectorized executor (the loop's results up to float rounding); everything else on the per-client loop.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from securefrl.stats import bootstrap_ratio, t_interval

__all__ = ["add_arguments", "main", "run"]

EVAL_EPISODES = 10
"""Greedy episodes per evaluation (split over the clients of a federation)."""
THRESHOLDS = {"cartpole": 475.0, "CartPole-v1": 475.0, "acrobot": -100.0, "Acrobot-v1": -100.0}
"""Default return thresholds (gymnasium's reward thresholds); other environments need ``--threshold``."""
MODES = ("delta", "gradient")


def parse_setting(text: str) -> dict[str, int]:
    """``ENVSxSTEPS[:EPOCHS]`` -> PPO config fields (one minibatch: full-batch steps, as the PPO defaults)."""
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


def skip_off_grid_evaluations(fed: Any, local_steps: int, eval_every: int) -> None:
    """Evaluate only the global model, and only in rounds that end on the grid (NaN elsewhere).

    The round loop evaluates every client's local and global model every round; at 32 steps per round that
    costs far more than training, and only every ``eval_every / local_steps``-th global evaluation is used.
    Evaluation draws from its own seeds, so skipping it changes no training trajectory.
    """
    inner = fed.executor.evaluate

    def evaluate(tasks: list[Any]) -> list[float]:
        out = [float("nan")] * len(tasks)
        keep = []
        for i, t in enumerate(tasks):
            steps = (t.round_id + 1) * local_steps
            if t.tag == "global" and steps // eval_every != (steps - local_steps) // eval_every:
                keep.append(i)
        for i, ret in zip(keep, inner([tasks[i] for i in keep]) if keep else [], strict=True):
            out[i] = float(ret)
        return out

    fed.executor.evaluate = evaluate


def run_federation(args: argparse.Namespace, k: int, seed: int, mode: str) -> dict[str, Any]:
    """K identical PPO clients, one rollout per round, evaluated on the grid; stops after three hits in a row."""
    from securefrl.config import load_config
    from securefrl.envs.families import batched_target
    from securefrl.federation import make_federation

    client = parse_setting(args.client)
    local = client["n_envs"] * client["n_steps"]
    budget = args.budget_k1 if k <= 2 else args.budget
    # Any family with a batched implementation (CartPole, Acrobot, ...) runs delta mode vectorized (the loop's
    # results up to float rounding); gradient mode needs the per-client loop.
    simulation = "vectorized" if mode == "delta" and batched_target(args.env) else "loop"
    params = "{" + ", ".join(f"{key}: {v}" for key, v in client.items()) + "}"
    cfg = load_config(overrides=[
        f"seed={seed}", f"env.name={args.env}", "env.heterogeneity=0.0", "agent.name=ppo", f"agent.params={params}",
        f"federation.n_clients={k}", f"federation.rounds={budget // local}", f"federation.local_steps={local}",
        f"federation.eval_episodes={math.ceil(EVAL_EPISODES / k)}", f"federation.simulation={simulation}",
        "federation.server_optimizer=fedavg", "federation.server_lr=1.0", f"federation.update={mode}",
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
    fed.close()
    first, three = hits(curve, args.threshold)
    print(f"  {mode} K={k} seed {seed}: first {first}, three {three} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"k": k, "mode": mode, "seed": seed, "first": first, "three": three, "budget": budget, "curve": curve,
            "simulation": simulation, "seconds": time.perf_counter() - t0}


def run_single(args: argparse.Namespace, setting: str, seed: int) -> dict[str, Any]:
    """One PPO agent with ``setting``, the environment of a federation's client, evaluated on the same grid."""
    from securefrl.agents import make_agent
    from securefrl.envs import draw_client_envs
    from securefrl.seeding import derive_rng, derive_seed

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
    print(f"  single {setting} seed {seed}: first {first}, three {three} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    return {"setting": setting, "seed": seed, "first": first, "three": three, "budget": args.budget_k1,
            "curve": curve, "seconds": time.perf_counter() - t0}


def stats_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: mean and 95% half-width over seeds (misses count as the budget), and the number of misses."""
    out: dict[str, Any] = {"seeds": len(runs)}
    for key in ("first", "three"):
        values = [float(r[key] if r[key] is not None else r["budget"]) for r in runs]
        mean, half = t_interval(values)
        out[key] = {"mean": mean, "ci95": half, "values": values, "misses": sum(r[key] is None for r in runs)}
    return out


def fmt(s: dict[str, Any]) -> str:
    miss = f" ({s['misses']} missed: lower bound)" if s["misses"] else ""
    half = "n/a" if math.isnan(s["ci95"]) else f"{s['ci95']:,.0f}"
    return f"{s['mean']:,.0f} ± {half}{miss}"


def _key(mode: str, k: int) -> str:
    return f"{mode}:{k}"


def _stats_for(feds: dict[str, list[dict[str, Any]]], mode: str, k: int) -> dict[str, Any] | None:
    """Stats of (mode, K); K = 1 is one single agent in both modes, so either mode's K = 1 runs serve."""
    runs = feds.get(_key(mode, k)) or (feds.get(_key("delta" if mode == "gradient" else "gradient", 1)) if k == 1
                                       else None)
    return stats_of(runs) if runs else None


def plot(path: Path, series: dict[str, dict[int, dict[str, Any]]], best: dict[str, Any] | None, label: str,
         threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    all_ks: set[int] = set()
    base = None
    for mode, per_k in series.items():
        ks = sorted(per_k)
        all_ks.update(ks)
        means = [per_k[k]["three"]["mean"] for k in ks]
        err = [0.0 if math.isnan(per_k[k]["three"]["ci95"]) else per_k[k]["three"]["ci95"] for k in ks]
        ax.errorbar(ks, means, yerr=err, marker="o", capsize=3, label=f"{mode} mode (first of 3 consecutive hits)")
        if 1 in per_k:
            base = per_k[1]["three"]["mean"]
    ks_all = sorted(all_ks)
    if base is not None:
        ax.plot(ks_all, [base / k for k in ks_all], "k--", lw=1, label="linear speed-up from K=1")
    if best is not None:
        ax.axhline(best["three"]["mean"], color="tab:red", ls=":", label=f"best single agent ({label})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ks_all)
    ax.set_xticklabels([str(k) for k in ks_all])
    ax.set_xlabel("clients K")
    ax.set_ylabel(f"env steps per client to return >= {threshold:g}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(args: argparse.Namespace, feds: dict[str, list[dict[str, Any]]],
                  singles: dict[str, list[dict[str, Any]]], seconds: float) -> dict[str, Any]:
    """Table (Markdown, also printed), plot (PNG) and JSON of whatever stages have run; returns the JSON."""
    modes = [m for m in MODES if any(key.startswith(m + ":") for key in feds)] or list(args.modes)
    ks = sorted({int(key.split(":")[1]) for key in feds})
    series = {m: {k: st for k in ks if (st := _stats_for(feds, m, k)) is not None} for m in modes}
    single_stats = {s: stats_of(r) for s, r in singles.items()}
    k1 = _stats_for(feds, modes[0], 1) if ks else None
    if k1 is not None:
        label = args.client if ":" in args.client else f"{args.client}:20"  # PPO's default epochs
        single_stats.setdefault(f"{label} (= K=1)", k1)
    best_setting = min(single_stats, key=lambda s: single_stats[s]["three"]["mean"]) if single_stats else None
    best = single_stats[best_setting] if best_setting else None
    rows = []
    lines = [f"### Federation speed-up, {args.env} (h = 0), threshold {args.threshold:g}", "",
             f"Per client: PPO {args.client} per round; delta = FedAvg of one local update per round (server lr 1), "
             "gradient = every minibatch step one mean gradient, server Adam. Best single agent of the sweep "
             f"{list(args.sweep)} and K=1: **{best_setting}**. Steps per client on a {args.eval_every}-step grid, "
             "mean ± 95% CI over seeds; speed-ups are ratios of means [95% bootstrap CI].", "",
             "| mode | K | seeds | first hit | first of 3 consecutive | speed-up vs K=1 (3 consec.) | "
             "speed-up vs best single |", "|---|---|---|---|---|---|---|"]
    for mode in modes:
        for k, st in series[mode].items():
            vs_k1 = bootstrap_ratio(k1["three"]["values"], st["three"]["values"], seed=k) if k1 else None
            vs_best = bootstrap_ratio(best["three"]["values"], st["three"]["values"], seed=100 + k) if best else None
            rows.append({"mode": mode, "k": k, **st, "speedup_vs_k1": vs_k1, "speedup_vs_best_single": vs_best})
            cells = [f"{r[0]:.2f}x [{r[1]:.2f}, {r[2]:.2f}]" if r else "not run" for r in (vs_k1, vs_best)]
            lines.append(f"| {mode} | {k} | {st['seeds']} | {fmt(st['first'])} | {fmt(st['three'])} | {cells[0]} | "
                         f"{cells[1]} |")
    lines += ["", "| single agent | seeds | first hit | first of 3 consecutive |", "|---|---|---|---|"]
    lines += [f"| {s} | {v['seeds']} | {fmt(v['first'])} | {fmt(v['three'])} |" for s, v in single_stats.items()]
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n")
    if ks:
        plot(out.with_suffix(".png"), series, best, str(best_setting), args.threshold)
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"},
              "best_single": best_setting, "federations": rows, "singles": single_stats,
              "runs": {"federation": feds, "single": singles}, "seconds": seconds}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out.with_suffix('.json')}, .md, .png ({seconds:.0f} s)", flush=True)
    return result


def add_arguments(p: argparse.ArgumentParser, small: bool = False) -> None:
    """The study's options; ``small`` = the CLI's defaults (a slice that runs in minutes)."""
    p.add_argument("--env", default="cartpole", help="environment family (`securefrl envs`) or gymnasium id")
    p.add_argument("--threshold", type=float, default=None,
                   help="return threshold (default: 475 for cartpole, -100 for acrobot; required otherwise)")
    p.add_argument("--ks", type=int, nargs="*", default=[1, 5] if small else [1, 2, 5, 10, 20],
                   help="federation sizes K (none: only the single-agent sweep)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="federation.update modes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1] if small else [0, 1, 2, 3, 4])
    p.add_argument("--client", default="1x32", help="per-client PPO rollout ENVSxSTEPS[:EPOCHS], one per round")
    p.add_argument("--sweep", nargs="*", default=["8x32:20"] if small else ["8x32:20", "4x32:10", "8x32:10"],
                   help="single-agent settings ENVSxSTEPS:EPOCHS swept for the best single agent (K = 1 with the "
                        "per-client settings is a candidate too: it *is* that single agent in both modes)")
    p.add_argument("--eval-every", type=int, default=256, help="evaluation grid, env steps per client")
    p.add_argument("--budget", type=int, default=6_000 if small else 12_000, help="max env steps per client, K >= 5")
    p.add_argument("--budget-k1", type=int, default=15_000 if small else 30_000,
                   help="max env steps per client for K <= 2 and single agents")
    p.add_argument("--out", type=Path, default=Path("results/speedup" if small else
                                                   "benchmarks/results/federation_speedup"))
    p.add_argument("--merge", type=Path, nargs="*", default=[],
                   help="instead of running: combine the runs of earlier JSON outputs (e.g. stages run in parallel)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or ``--merge``) the study the parsed ``args`` describe; writes the outputs after every stage."""
    import torch

    from securefrl.errors import ConfigError

    if args.threshold is None:
        if args.env not in THRESHOLDS:
            raise ConfigError("threshold", f"no default return threshold for env {args.env!r}; pass --threshold")
        args.threshold = THRESHOLDS[args.env]
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    feds: dict[str, list[dict[str, Any]]] = {}
    singles: dict[str, list[dict[str, Any]]] = {}
    if args.merge:
        for path in args.merge:
            runs = json.loads(Path(path).read_text())["runs"]
            for key, v in runs["federation"].items():  # the same (mode, K) from several files: their seeds together
                feds.setdefault(key if ":" in key else _key("delta", int(key)), []).extend(v)
            for key, v in runs["single"].items():
                singles.setdefault(key, []).extend(v)
        args.sweep = sorted(singles)
        return write_outputs(args, feds, singles, 0.0)
    # Stages in order of what the headline needs (K = 1, K = 10 in each mode, the single-agent sweep, then the
    # rest), with the outputs rewritten after each, so a run cut short still reports what it measured.
    head = [k for k in (1, 10) if k in args.ks] or args.ks[:1]
    stages: list[Any] = [(args.modes[0], 1)] if 1 in args.ks else []
    stages += [(m, k) for k in head if k != 1 for m in args.modes]
    stages += ["sweep"] + [(m, k) for k in args.ks if k not in head for m in args.modes]
    result: dict[str, Any] = {}
    for stage in stages:
        if stage == "sweep":
            for setting in args.sweep:
                singles[setting] = [run_single(args, setting, s) for s in args.seeds]
                st = stats_of(singles[setting])
                print(f"single {setting}: first {fmt(st['first'])}; three {fmt(st['three'])}", flush=True)
        else:
            mode, k = stage
            feds[_key(mode, k)] = [run_federation(args, k, s, mode) for s in args.seeds]
            st = stats_of(feds[_key(mode, k)])
            print(f"{mode} K={k}: first {fmt(st['first'])}; three {fmt(st['three'])} "
                  f"({np.mean([r['seconds'] for r in feds[_key(mode, k)]]):.0f} s/run)", flush=True)
        result = write_outputs(args, feds, singles, time.perf_counter() - t_start)
    return result


def main(argv: list[str] | None = None, small: bool = False) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, small=small)
    run(p.parse_args(argv))
    return 0
