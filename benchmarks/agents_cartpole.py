"""Learning benchmark of the local RL agents: DQN and PPO on CartPole-v1, SAC on Pendulum-v1.

Acceptance: DQN and PPO each reach a mean greedy evaluation return >= 475 on CartPole-v1 within
100k environment steps, for every seed (for reference, the SB3 zoo's tuned DQN reaches 500 at
~50k steps and PPO at ~100k). SAC should exceed -400 on Pendulum-v1 within ~15-20k steps.

Each run alternates ``learn(eval_every)`` with a greedy evaluation on a separate environment
(fixed episode seeds, so curves are comparable across agents). Evaluation never touches the
agent's random streams, so the training trajectory does not depend on the evaluation schedule.
Throughput (env steps/s) counts training time only; runs use one torch thread.

Side by side with Stable-Baselines3 (``--sb3``, needs the ``bench`` extra): the same seeds, budget
and evaluation protocol (greedy, the same episode seeds, after the training on the rollout that reaches
each ``eval_every`` grid point) for SB3's DQN and PPO with the rl-baselines3-zoo CartPole-v1
hyperparameters (``SB3_ZOO``); the summary reports the mean greedy return at the end of the budget and
over the late evaluations, mean and 95% t-interval over seeds, for both libraries and their ratio (the
goal: securefrl >= 0.9x SB3 at 50k steps). Use ``--steps 50176`` (196 x 256) so both libraries end on a
whole DQN training phase / PPO rollout; SB3 always completes its last rollout.

Usage::

    python benchmarks/agents_cartpole.py                       # dqn + ppo, 3 seeds, 100k steps
    python benchmarks/agents_cartpole.py --agents sac          # SAC on Pendulum, 20k steps
    python benchmarks/agents_cartpole.py --agents dqn --seeds 0 --steps 20000
    python benchmarks/agents_cartpole.py --agents dqn ppo --sb3 --steps 50176 --seeds 0 1 2 3 4
    python benchmarks/agents_cartpole.py --agents dqn --set gradient_steps=64 --steps 50000  # a variant
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
from securefrl.stats import t_interval

TASKS: dict[str, dict[str, Any]] = {
    "dqn": {"env_id": "CartPole-v1", "threshold": 475.0, "steps": 100_000},
    "ppo": {"env_id": "CartPole-v1", "threshold": 475.0, "steps": 100_000},
    "sac": {"env_id": "Pendulum-v1", "threshold": -400.0, "steps": 20_000},
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "agents_cartpole.json"

#: rl-baselines3-zoo ``hyperparams/{dqn,ppo}.yml``, CartPole-v1. DQN ("almost tuned", 5e4 steps):
#: exploration_fraction is relative to the run's total steps, as in the zoo (0.16 x 50k = 8k steps). PPO (1e5 steps):
#: ``lin_0.001`` / ``lin_0.2`` are linear schedules to 0 over the zoo's ``n_timesteps`` (``ZOO_HORIZON``), so a
#: shorter run sees the zoo run's first part rather than a compressed schedule.
SB3_ZOO: dict[str, dict[str, Any]] = {
    "dqn": {"learning_rate": 2.3e-3, "batch_size": 64, "buffer_size": 100_000, "learning_starts": 1_000,
            "gamma": 0.99, "target_update_interval": 10, "train_freq": 256, "gradient_steps": 128,
            "exploration_fraction": 0.16, "exploration_final_eps": 0.04, "policy_kwargs": {"net_arch": [256, 256]}},
    "ppo": {"n_envs": 8, "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20,
            "ent_coef": 0.0, "learning_rate": "lin_0.001", "clip_range": "lin_0.2"},
}
ZOO_HORIZON = {"dqn": 50_000, "ppo": 100_000}


def sb3_model(name: str, seed: int, steps: int) -> Any:
    """SB3's DQN or PPO with the zoo settings (``lin_X`` read as X -> 0 linearly over ``ZOO_HORIZON`` steps)."""
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.env_util import make_vec_env

    env_id = TASKS[name]["env_id"]
    kwargs = dict(SB3_ZOO[name])
    n_envs = int(kwargs.pop("n_envs", 1))
    for key, value in kwargs.items():
        if isinstance(value, str) and value.startswith("lin_"):
            start, scale = float(value[4:]), steps / ZOO_HORIZON[name]
            # SB3 passes progress_remaining = 1 - t / steps; the zoo's schedule is 1 - t / ZOO_HORIZON.
            kwargs[key] = lambda p, start=start, scale=scale: start * max(0.0, 1.0 - (1.0 - p) * scale)
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed) if n_envs > 1 else gym.make(env_id)
    return (DQN if name == "dqn" else PPO)("MlpPolicy", env, seed=seed, device="cpu", **kwargs)


def run_sb3(name: str, seed: int, steps: int, eval_every: int, eval_episodes: int) -> dict[str, Any]:
    """SB3's implementation with the zoo settings, trained once for ``steps`` and evaluated like :func:`run_one`.

    Evaluations happen at the start of a rollout, i.e. after the training that ends the previous one, at the first
    rollout boundary on or past each ``eval_every`` grid point -- as :func:`run_one` evaluates after ``learn``
    (which trains on its last rollout or phase). The final evaluation follows ``learn``.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    task = TASKS[name]
    env_id = task["env_id"]
    eval_env = gym.make(env_id)
    eval_seed = 1_000_000 + 1_000 * seed
    curve: list[dict[str, float]] = []

    def evaluate(model: Any) -> None:
        out = []
        for ep in range(eval_episodes):
            obs, _ = eval_env.reset(seed=eval_seed + ep)
            done, total = False, 0.0
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, _ = eval_env.step(int(action))
                total += float(reward)
                done = terminated or truncated
            out.append(total)
        curve.append({"step": model.num_timesteps, "eval_mean": float(np.mean(out)), "eval_std": float(np.std(out))})

    class Evaluate(BaseCallback):
        next_eval = eval_every

        def _on_step(self) -> bool:
            return True

        def _on_rollout_start(self) -> None:
            if self.num_timesteps >= self.next_eval and self.num_timesteps < steps:
                evaluate(self.model)
                self.next_eval += eval_every

    model = sb3_model(name, seed, steps)
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps, callback=Evaluate())
    seconds = time.perf_counter() - t0
    evaluate(model)
    return summarize(curve, task["threshold"], {"seed": seed, "env_id": env_id, "steps": model.num_timesteps,
                                                 "train_seconds": seconds, "config": SB3_ZOO[name]})


def summarize(curve: list[dict[str, float]], threshold: float, extra: dict[str, Any]) -> dict[str, Any]:
    means = [c["eval_mean"] for c in curve]
    first = next((c["step"] for c in curve if c["eval_mean"] >= threshold), None)
    return {**extra, "best_eval": max(means), "final_eval": means[-1], "first_step_at_threshold": first,
            "fraction_of_evals_at_threshold": float(np.mean([m >= threshold for m in means])),
            "mean_eval_second_half": float(np.mean(means[len(means) // 2:])),
            "mean_eval_last_quarter": float(np.mean(means[-max(1, len(means) // 4):])), "curve": curve}


def run_one(name: str, seed: int, steps: int, eval_every: int, eval_episodes: int,
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one agent/seed, evaluating every ``eval_every`` steps; return its curve and summary."""
    task = TASKS[name]
    env_id = task["env_id"]
    agent = make_agent(name, lambda: gym.make(env_id), overrides or None, seed=seed)
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
    return summarize(curve, task["threshold"], {"seed": seed, "env_id": env_id, "steps": done,
                                                 "train_seconds": train_time, "env_steps_per_second": done / train_time,
                                                 "config": to_dict(agent.config)})


def _one_thread(fn: Any, *args: Any) -> dict[str, Any]:
    torch.set_num_threads(1)
    return fn(*args)


class Runs:
    """Every (library, agent, seed) run of the benchmark, computed in ``jobs`` worker processes (1 = in order here).

    Runs are independent and each seeds its own streams, so running them in parallel changes no result.
    """

    def __init__(self, jobs: int) -> None:
        self.jobs, self.pool = jobs, None
        self.futures: dict[tuple[Any, ...], Any] = {}
        if jobs > 1:
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(jobs)

    def submit(self, key: tuple[Any, ...], fn: Any, *args: Any) -> None:
        self.futures[key] = self.pool.submit(_one_thread, fn, *args) if self.pool else (fn, args)

    def get(self, key: tuple[Any, ...]) -> dict[str, Any]:
        job = self.futures[key]
        return job.result() if self.pool else job[0](*job[1])


def compare_sb3(name: str, ours: list[dict[str, Any]], seeds: list[int], steps: int, runs: Runs) -> dict[str, Any]:
    """SB3 runs on the same seeds and protocol, and the side-by-side table of final and late-phase returns."""
    theirs = []
    for seed in seeds:
        r = runs.get(("sb3", name, seed))
        theirs.append(r)
        print(f"sb3 {name} seed {seed}: best {r['best_eval']:.1f}  final {r['final_eval']:.1f}  "
              f"first step >= threshold: {r['first_step_at_threshold']}  ({r['train_seconds']:.1f} s)", flush=True)
    table = {}
    print(f"\n| {name} on {TASKS[name]['env_id']}, {steps} steps, {len(seeds)} seeds | securefrl | SB3 zoo | ratio |")
    print("|---|---|---|---|")
    for key, label in (("final_eval", "greedy return at the end"), ("mean_eval_last_quarter", "mean of last 25% evals"),
                       ("mean_eval_second_half", "mean of 2nd-half evals")):
        (ma, ha), (mb, hb) = t_interval([r[key] for r in ours]), t_interval([r[key] for r in theirs])
        table[key] = {"securefrl": [ma, ha], "sb3": [mb, hb], "ratio": ma / mb if mb else float("nan")}
        print(f"| {label} | {ma:.0f} ± {ha:.0f} | {mb:.0f} ± {hb:.0f} | {table[key]['ratio']:.2f}x |")
    return {"config": SB3_ZOO[name], "table": table, "runs": theirs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", nargs="+", default=["dqn", "ppo"], choices=sorted(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None,
                        help="env steps per run (default: 100000 for dqn/ppo, 20000 for sac)")
    parser.add_argument("--eval-every", type=int, default=2048)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--sb3", action="store_true", help="also run Stable-Baselines3 with the zoo settings "
                        f"(agents {sorted(SB3_ZOO)}), side by side")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for the independent runs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override securefrl agent config fields (YAML values), e.g. gradient_steps=64")
    args = parser.parse_args(argv)
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}

    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    if args.out.exists():  # keep other agents' entries when only some agents are re-run
        results = json.loads(args.out.read_text()).get("agents", {})
    all_pass = True
    pending = Runs(args.jobs)
    for name in args.agents:
        steps = args.steps or TASKS[name]["steps"]
        for seed in args.seeds:
            pending.submit(("securefrl", name, seed), run_one, name, seed, steps, args.eval_every, args.eval_episodes,
                           overrides)
            if args.sb3 and name in SB3_ZOO:
                pending.submit(("sb3", name, seed), run_sb3, name, seed, steps, args.eval_every, args.eval_episodes)
    for name in args.agents:
        task = TASKS[name]
        steps = args.steps or task["steps"]
        runs = []
        for seed in args.seeds:
            r = pending.get(("securefrl", name, seed))
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
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "overrides": overrides, "runs": runs,
        }
        print(f"{name}: {'PASS' if passed else 'FAIL'} (every seed reaches {task['threshold']:g} within {steps} steps)")
        if args.sb3 and name in SB3_ZOO:
            results[name]["sb3"] = compare_sb3(name, runs, args.seeds, steps, pending)

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
