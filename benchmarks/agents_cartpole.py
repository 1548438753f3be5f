"""Learning benchmark of the local RL agents: DQN and PPO on CartPole-v1, SAC on Pendulum-v1.

Acceptance: DQN and PPO each reach a mean greedy evaluation return >= 475 on CartPole-v1 within
100k environment steps, for every seed (for reference, the SB3 zoo's tuned DQN reaches 500 at
~50k steps and PPO at ~100k). SAC should exceed -400 on Pendulum-v1 within ~15-20k steps.

Each run alternates ``learn(eval_every)`` with a greedy evaluation on a separate environment
(fixed episode seeds, so curves are comparable across agents). Evaluation never touches the
agent's random streams, so the training trajectory does not depend on the evaluation schedule.
Throughput (env steps/s) counts training time only; runs use one torch thread.

Usage::

    python benchmarks/agents_cartpole.py                       # dqn + ppo, 3 seeds, 100k steps
    python benchmarks/agents_cartpole.py --agents sac          # SAC on Pendulum, 20k steps
    python benchmarks/agents_cartpole.py --agents dqn --seeds 0 --steps 20000
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from securefrl.agents import make_agent
from securefrl.configtools import to_dict

TASKS: dict[str, dict[str, Any]] = {
    "dqn": {"env_id": "CartPole-v1", "threshold": 475.0, "steps": 100_000},
    "ppo": {"env_id": "CartPole-v1", "threshold": 475.0, "steps": 100_000},
    "sac": {"env_id": "Pendulum-v1", "threshold": -400.0, "steps": 20_000},
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "agents_cartpole.json"


def run_one(name: str, seed: int, steps: int, eval_every: int, eval_episodes: int) -> dict[str, Any]:
    """Train one agent/seed, evaluating every ``eval_every`` steps; return its curve and summary."""
    task = TASKS[name]
    env_id = task["env_id"]
    agent = make_agent(name, lambda: gym.make(env_id), seed=seed)
    eval_env = gym.make(env_id)
    eval_seed = 1_000_000 + 1_000 * seed
    curve: list[dict[str, float]] = []
    train_time, done = 0.0, 0
    while done < steps:
        chunk = min(eval_every, steps - done)
        t0 = time.perf_counter()
        stats = agent.learn(chunk)
        train_time += time.perf_counter() - t0
        done += int(stats["env_steps"])
        returns = agent.evaluate(eval_env, eval_episodes, seed=eval_seed)
        curve.append({"step": done, "eval_mean": float(np.mean(returns)), "eval_std": float(np.std(returns)),
                      "train_mean_return": stats["mean_return"]})
    means = [c["eval_mean"] for c in curve]
    first = next((c["step"] for c in curve if c["eval_mean"] >= task["threshold"]), None)
    at_threshold = float(np.mean([m >= task["threshold"] for m in means]))
    return {
        "seed": seed, "env_id": env_id, "steps": done, "best_eval": max(means), "final_eval": means[-1],
        "first_step_at_threshold": first, "fraction_of_evals_at_threshold": at_threshold,
        "mean_eval_second_half": float(np.mean(means[len(means) // 2:])),
        "train_seconds": train_time, "env_steps_per_second": done / train_time,
        "config": to_dict(agent.config), "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", nargs="+", default=["dqn", "ppo"], choices=sorted(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None,
                        help="env steps per run (default: 100000 for dqn/ppo, 20000 for sac)")
    parser.add_argument("--eval-every", type=int, default=2048)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    if args.out.exists():  # keep other agents' entries when only some agents are re-run
        results = json.loads(args.out.read_text()).get("agents", {})
    all_pass = True
    for name in args.agents:
        task = TASKS[name]
        steps = args.steps or task["steps"]
        runs = []
        for seed in args.seeds:
            r = run_one(name, seed, steps, args.eval_every, args.eval_episodes)
            runs.append(r)
            print(f"{name} seed {seed} [{r['env_id']}]: best {r['best_eval']:.1f}  final {r['final_eval']:.1f}  "
                  f"first step >= {task['threshold']:g}: {r['first_step_at_threshold']}  "
                  f"evals >= threshold: {100 * r['fraction_of_evals_at_threshold']:.0f}%  "
                  f"mean 2nd half {r['mean_eval_second_half']:.1f}  "
                  f"{r['env_steps_per_second']:.0f} env steps/s ({r['train_seconds']:.1f} s)", flush=True)
        passed = all(r["first_step_at_threshold"] is not None for r in runs)
        all_pass &= passed
        results[name] = {
            "env_id": task["env_id"], "threshold": task["threshold"], "steps": steps, "passed": passed,
            "mean_env_steps_per_second": float(np.mean([r["env_steps_per_second"] for r in runs])),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": runs,
        }
        print(f"{name}: {'PASS' if passed else 'FAIL'} (every seed reaches {task['threshold']:g} within {steps} steps)")

    sps = {n: results[n]["mean_env_steps_per_second"] for n in args.agents}
    fastest = max(sps.values())
    print("throughput relative to the fastest agent in this run: "
          + ", ".join(f"{n} {v:.0f}/s ({v / fastest:.2f}x)" for n, v in sps.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": sys.version.split()[0], "torch": torch.__version__, "gymnasium": gym.__version__,
            "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
            "eval_every": args.eval_every, "eval_episodes": args.eval_episodes}
    args.out.write_text(json.dumps({"meta": meta, "agents": results}, indent=1))
    print(f"wrote {args.out}")
    return 0 if all_pass else 1


if __name__ == "__main__":
    raise SystemExit(main())
