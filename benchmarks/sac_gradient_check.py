"""SAC on Pendulum, federated in gradient mode (FedSGD) against delta mode (FedAvg): a small learning check.

Both modes run the same federation per seed: the same clients and environments (drawn from the seed), the
same SAC hyperparameters (``actor_on_updated_critic = false`` in both, the variant gradient mode federates),
the same environment steps per client and the same greedy evaluation at every round's end. Gradient mode
(:mod:`securefrl.gradient`) aggregates every optimizer step and steps the server's Adam on the mean gradient
(McMahan et al. 2017); delta mode averages each round's local changes. Reported per mode, over seeds: the
final round's mean evaluation return over clients, and the best round's, with 95% Student-t intervals, and
the wall time. Writes benchmarks/results/sac_gradient_check.json and prints a Markdown table.

Usage::

    python benchmarks/sac_gradient_check.py                          # 3 clients, 3 seeds, 8 x 500 steps
    python benchmarks/sac_gradient_check.py --clients 5 --seeds 5 --rounds 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from securefrl.config import load_config
from securefrl.federation import Federation
from securefrl.speedup import t_interval

RESULTS = Path(__file__).resolve().parent / "results"


def run(mode: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One federation in ``mode``; the per-round mean evaluation return and the wall time."""
    params = (f"{{hidden: [{args.hidden}, {args.hidden}], batch_size: {args.batch_size}, learning_starts: "
              f"{args.learning_starts}, buffer_size: 20000, actor_on_updated_critic: false}}")
    cfg = load_config(overrides=[
        "agent.name=sac", "env.name=pendulum", f"env.heterogeneity={args.heterogeneity}", f"seed={seed}",
        f"federation.update={mode}", f"federation.n_clients={args.clients}", f"federation.rounds={args.rounds}",
        f"federation.local_steps={args.local_steps}", f"federation.eval_episodes={args.eval_episodes}",
        f"agent.params={params}"])
    fed = Federation(cfg)
    t0 = time.perf_counter()
    returns, steps = [], 0
    for _ in range(args.rounds):
        summary = fed.run_round().summary
        returns.append(float(summary["mean_return"]))
        steps += int(summary.get("grad_steps", 0))
    return {"mode": mode, "seed": seed, "returns": returns, "final": returns[-1], "best": max(returns),
            "server_steps": steps, "seconds": time.perf_counter() - t0}


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| mode | seeds | final return | best round's return | seconds per run |", "|---|---|---|---|---|"]
    for mode in ("delta", "gradient"):
        rs = [r for r in records if r["mode"] == mode]
        if not rs:
            continue
        (f, fh), (b, bh), (s, _) = (t_interval([r[k] for r in rs]) for k in ("final", "best", "seconds"))
        lines.append(f"| {mode} | {len(rs)} | {f:.0f} ± {fh:.0f} | {b:.0f} ± {bh:.0f} | {s:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--local-steps", type=int, default=500)
    ap.add_argument("--learning-starts", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--eval-episodes", type=int, default=2)
    ap.add_argument("--heterogeneity", type=float, default=0.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "sac_gradient_check.json")
    args = ap.parse_args(argv)
    records = []
    for seed in range(args.seeds):
        for mode in ("delta", "gradient"):
            rec = run(mode, seed, args)
            records.append(rec)
            print(f"seed {seed} {mode}: final {rec['final']:.0f}, best {rec['best']:.0f}, "
                  f"{rec['seconds']:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "runs": records},
                                   indent=1))
    print(table(records))


if __name__ == "__main__":
    main()
