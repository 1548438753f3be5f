"""Vertical FRL benchmark: VFRL against each party alone and against one agent with the full observation.

CartPole-v1 split as in the VFRL default: party 1 observes cart position and velocity, party 2 pole
angle and angular velocity. For every seed, in one process and with identical DQN hyperparameters,
step budget and evaluation episodes (Zhuo et al. 2019's question: does cooperating on split features
beat each agent on its own?):

* ``vfrl``           encoders per party + Q-network agent, AES-GCM channels (securefrl.vertical)
* ``vfrl+dp``        the same with embeddings clipped to norm 1 and Gaussian noise (multiplier ``--dp-z``)
* ``partial:partyK`` one DQN agent that sees only party K's slice
* ``full``           one DQN agent that sees the whole observation (needs someone to see everything)

Reported per method and seed: the *late return* — the mean greedy return (``--eval-episodes`` seeded
episodes per evaluation) over every evaluation in the second half of training — plus the curve mean
(all evaluations: an area under the learning curve), the final and the peak evaluation. DQN on
CartPole oscillates strongly between evaluations (a policy at 500 can drop to 100 one evaluation later,
for every method), so the comparison uses the late return, which averages over several evaluations.
Also: the ratio of VFRL to the best partial-view agent and to the full-observation agent, wall time,
and VFRL bytes on the wire per environment step. JSON goes to benchmarks/results/vertical.json.

Usage::

    python benchmarks/vertical.py                 # 3 seeds x 100k steps, about an hour on 2 busy cores
    python benchmarks/vertical.py --quick         # 1 seed x 4k steps, smoke test
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from securefrl.agents.dqn import DQNConfig
from securefrl.configtools import from_dict
from securefrl.vertical import (
    VFRLConfig,
    VFRLResult,
    run_full_observation_baseline,
    run_partial_view_baseline,
    run_vfrl,
)

RESULTS = Path(__file__).resolve().parent / "results" / "vertical.json"


def _row(res: VFRLResult) -> dict:
    d = asdict(res)
    d["curve"] = [list(c) for c in res.curve]
    d["train_curve"] = [list(c) for c in res.train_curve]
    return d


def late_return(res: VFRLResult) -> float:
    """Mean of the evaluations after half of the training budget (the final one included)."""
    late = [r for step, r in res.curve if step > res.env_steps / 2]
    return float(np.mean(late))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--eval-every", type=int, default=5_000)
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--dp-z", type=float, default=0.1, help="noise multiplier of the vfrl+dp row (0 skips it)")
    ap.add_argument("--dqn", nargs="*", default=[], metavar="KEY=VALUE",
                    help="DQN hyperparameter overrides shared by every method, e.g. lr=1e-3 gradient_steps=8")
    ap.add_argument("--quick", action="store_true", help="1 seed, 4k steps, 3 eval episodes")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.eval_every, args.eval_episodes = [0], 4_000, 1_000, 3

    overrides = {}
    for item in args.dqn:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--dqn takes KEY=VALUE, got {item!r}")
        try:
            overrides[key] = ast.literal_eval(value)  # numbers, True/False, tuples: (64, 64)
        except (ValueError, SyntaxError):
            overrides[key] = value
    dqn = from_dict(DQNConfig, overrides, "dqn")
    base = VFRLConfig(total_steps=args.steps, eval_every=args.eval_every, eval_episodes=args.eval_episodes, dqn=dqn)
    methods: dict[str, object] = {"vfrl": lambda s: run_vfrl(base, s)}
    if args.dp_z > 0:
        dp_cfg = replace(base, embedding_clip=1.0, noise_multiplier=args.dp_z)
        methods["vfrl+dp"] = lambda s: run_vfrl(dp_cfg, s)
    for k in range(1, len(base.partition) + 1):
        methods[f"partial:party{k}"] = lambda s, k=k: run_partial_view_baseline(base, s, k)
    methods["full"] = lambda s: run_full_observation_baseline(base, s)

    runs: dict[str, list[VFRLResult]] = {m: [] for m in methods}
    t_start = time.perf_counter()
    for seed in args.seeds:
        for name, fn in methods.items():
            res = fn(seed)  # type: ignore[operator]
            runs[name].append(res)
            print(f"seed {seed} {name:>16}: return {res.mean_return:7.1f}  curve "
                  f"{[round(r, 1) for _, r in res.curve]}  ({res.wall_time_s:.0f} s)", flush=True)

    late = {m: [late_return(r) for r in rs] for m, rs in runs.items()}
    mean = {m: float(np.mean(v)) for m, v in late.items()}
    final = {m: float(np.mean([r.mean_return for r in rs])) for m, rs in runs.items()}
    peak = {m: float(np.mean([max(c[1] for c in r.curve) for r in rs])) for m, rs in runs.items()}
    auc = {m: float(np.mean([np.mean([c[1] for c in r.curve]) for r in rs])) for m, rs in runs.items()}
    partial_names = [m for m in methods if m.startswith("partial:")]
    best_partial = max(partial_names, key=lambda m: mean[m])
    per_seed_beats = {m: all(v > p for v, p in zip(late["vfrl"], late[m], strict=True)) for m in partial_names}
    print()
    print("late return = mean greedy return over the evaluations in the second half of training")
    header = (f"{'method':>16} | " + " | ".join(f"seed {s:>3}" for s in args.seeds)
              + " | late mean | curve mean | final mean | peak mean | time/run s")
    print(header)
    print("-" * len(header))
    for m in runs:
        cells = " | ".join(f"{v:8.1f}" for v in late[m])
        print(f"{m:>16} | {cells} | {mean[m]:9.1f} | {auc[m]:10.1f} | {final[m]:10.1f} | {peak[m]:9.1f} | "
              f"{np.mean([r.wall_time_s for r in runs[m]]):10.0f}")
    vfrl_bytes = float(np.mean([r.wire_bytes / r.env_steps for r in runs["vfrl"]]))
    ratios = {
        "vfrl_over_best_partial": mean["vfrl"] / mean[best_partial] if mean[best_partial] else float("inf"),
        "vfrl_over_full": mean["vfrl"] / mean["full"] if mean["full"] else float("inf"),
    }
    print()
    print(f"late return, VFRL / best partial view ({best_partial}): {ratios['vfrl_over_best_partial']:.2f}x;  "
          f"VFRL / full observation: {ratios['vfrl_over_full']:.2f}x")
    print(f"VFRL beats every partial-view agent on every seed (late return): "
          f"{all(per_seed_beats.values())} {per_seed_beats};  on the mean over seeds: "
          f"{all(mean['vfrl'] > mean[m] for m in partial_names)}")
    print(f"VFRL wire traffic: {vfrl_bytes:.0f} bytes per training environment step (training + evaluation)")

    out = {
        "benchmark": "vertical",
        "env": base.env_id,
        "partition": [list(p) for p in base.partition],
        "seeds": args.seeds,
        "env_steps": args.steps,
        "eval_episodes": args.eval_episodes,
        "dp_noise_multiplier": args.dp_z,
        "dqn": asdict(dqn),
        "metric": "late return: mean greedy return over evaluations in the second half of training",
        "late_return_per_seed": late,
        "late_return_mean": mean,
        "final_return_mean": final,
        "peak_return_mean": peak,
        "curve_mean_return_mean": auc,
        "ratios": ratios,
        "best_partial": best_partial,
        "vfrl_beats_partial_every_seed": per_seed_beats,
        "vfrl_wire_bytes_per_env_step": vfrl_bytes,
        "total_time_s": time.perf_counter() - t_start,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "runs": {m: [_row(r) for r in rs] for m, rs in runs.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, allow_nan=True))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
