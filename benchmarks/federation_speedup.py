"""Sample efficiency of federation: 10 FedAvg clients versus one agent with the same per-client steps.

For each seed, a federation of ``--clients`` PPO clients on CartPole (heterogeneity ``--heterogeneity``,
0 = identical clients as in FedPG-BR's setting) and a single PPO agent with the same
hyperparameters train for ``--budget`` environment steps per client. Both are evaluated after
every ``--local-steps`` steps (greedy, ``--eval-episodes`` episodes per client environment). Reported:
environment steps per client until the mean evaluation return first reaches ``--target`` (475),
the return at the budget, the speed-up (single / federated steps to target), and the simulation's
throughput in environment steps per second (training only, and including evaluation).

The published anchor: FedPG-BR (Fan et al., NeurIPS 2021) reports about 3-4x better sample
efficiency with 10 agents than with one. Usage::

    python benchmarks/federation_speedup.py                # 3 seeds, 10 clients, 60k steps per client
    python benchmarks/federation_speedup.py --seeds 0 --budget 20000 --clients 4   # quick look
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from securefrl.agents import make_agent
from securefrl.config import load_config
from securefrl.envs import draw_client_envs
from securefrl.federation import Federation
from securefrl.seeding import derive_rng, derive_seed


def first_reaching(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((steps for steps, ret in curve if ret >= target), None)


def run_federated(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    rounds = args.budget // args.local_steps
    cfg = load_config(overrides=[
        f"seed={seed}", f"federation.n_clients={args.clients}", f"federation.rounds={rounds}",
        f"federation.local_steps={args.local_steps}", f"federation.eval_episodes={args.eval_episodes}",
        f"env.heterogeneity={args.heterogeneity}", "agent.name=ppo",
        f"federation.server_optimizer={args.server_optimizer}", f"federation.server_lr={args.server_lr}",
        f"federation.server_momentum={args.server_momentum}",
    ])
    fed = Federation(cfg)
    curve, train_time, wall = [], 0.0, time.perf_counter()
    for _ in range(rounds):
        rec = fed.run_round()
        train_time += rec.summary["time_train"]
        curve.append((rec.summary["env_steps_per_client"], rec.summary["mean_return"]))
        if args.stop_at_target and rec.summary["mean_return"] >= args.target:
            break
    wall = time.perf_counter() - wall
    total_steps = curve[-1][0] * args.clients
    return {"curve": curve, "steps_to_target": first_reaching(curve, args.target), "final_return": curve[-1][1],
            "steps_per_s_train": total_steps / train_time, "steps_per_s_wall": total_steps / wall}


def run_single(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    spec = draw_client_envs("cartpole", 1, args.heterogeneity, derive_rng(seed, "env-draw"))[0]
    agent = make_agent("ppo", spec.make, None, seed=derive_seed(seed, "single"))
    agent.reseed(derive_seed(seed, "single-train"))
    env = spec.make()
    curve, steps, train_time, wall = [], 0, 0.0, time.perf_counter()
    while steps < args.budget:
        t0 = time.perf_counter()
        agent.learn(args.local_steps)
        train_time += time.perf_counter() - t0
        steps += args.local_steps
        ret = float(np.mean(agent.evaluate(env, args.eval_episodes * args.clients, seed=derive_seed(seed, "eval", steps)
                                           % 2**31)))
        curve.append((steps, ret))
        if args.stop_at_target and ret >= args.target:
            break
    wall = time.perf_counter() - wall
    return {"curve": curve, "steps_to_target": first_reaching(curve, args.target), "final_return": curve[-1][1],
            "steps_per_s_train": steps / train_time, "steps_per_s_wall": steps / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--budget", type=int, default=60_000, help="environment steps per client")
    p.add_argument("--local-steps", type=int, default=1024)
    p.add_argument("--eval-episodes", type=int, default=2)
    p.add_argument("--heterogeneity", type=float, default=0.0)
    p.add_argument("--target", type=float, default=475.0)
    p.add_argument("--server-optimizer", default="fedavg", choices=["fedavg", "fedavgm", "fedadam"])
    p.add_argument("--server-lr", type=float, default=1.0)
    p.add_argument("--server-momentum", type=float, default=0.9)
    p.add_argument("--stop-at-target", action="store_true", help="stop each run once it reaches the target")
    p.add_argument("--out", default="benchmarks/results/federation_speedup.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        fed = run_federated(args, seed)
        single = run_single(args, seed)
        rows.append({"seed": seed, "federated": fed, "single": single})
        fmt = lambda v: "not reached" if v is None else f"{v:,}"  # noqa: E731
        print(f"seed {seed}: steps/client to {args.target:g}: federated {fmt(fed['steps_to_target'])}, single "
              f"{fmt(single['steps_to_target'])}; return at budget: federated {fed['final_return']:.1f}, single "
              f"{single['final_return']:.1f}; steps/s (train) federated {fed['steps_per_s_train']:,.0f}, single "
              f"{single['steps_per_s_train']:,.0f}", flush=True)
    budget = args.budget
    fed_steps = [r["federated"]["steps_to_target"] or budget for r in rows]
    single_steps = [r["single"]["steps_to_target"] or budget for r in rows]
    reached = all(r["federated"]["steps_to_target"] and r["single"]["steps_to_target"] for r in rows)
    speedup = float(np.mean(single_steps) / np.mean(fed_steps))
    summary = {
        "clients": args.clients, "budget_per_client": budget, "heterogeneity": args.heterogeneity,
        "server_optimizer": f"{args.server_optimizer} (lr {args.server_lr}, momentum {args.server_momentum})",
        "mean_steps_to_target_federated": float(np.mean(fed_steps)),
        "mean_steps_to_target_single": float(np.mean(single_steps)),
        "speedup_single_over_federated": speedup,
        "speedup_is_lower_bound": not reached,
        "mean_final_return_federated": float(np.mean([r["federated"]["final_return"] for r in rows])),
        "mean_final_return_single": float(np.mean([r["single"]["final_return"] for r in rows])),
        "steps_per_s_train_federated": float(np.mean([r["federated"]["steps_per_s_train"] for r in rows])),
        "steps_per_s_wall_federated": float(np.mean([r["federated"]["steps_per_s_wall"] for r in rows])),
    }
    print("\nsummary (runs that never reached the target count as the full budget):")
    for k, v in summary.items():
        print(f"  {k:36s} {v:,.2f}" if isinstance(v, float) else f"  {k:36s} {v}")
    print(f"  published anchor (FedPG-BR, 10 agents): ~3-4x; measured {speedup:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "summary": summary, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
