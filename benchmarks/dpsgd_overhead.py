"""Cost of record-level DP-SGD in local training: each per-sample-gradient mode against non-private training.

The agents' own networks and default hyperparameters (DQN: 128x128 Q-network, batch 64, 64 gradient
steps every 256 environment steps; PPO: 64x64 actor + critic, 8 envs x 32 steps, 20 full-batch epochs),
CartPole, one CPU thread. Variants, built once and timed round-robin (these machines are noisy, so every
ratio is taken within one repetition and the median over repetitions is reported):

* ``plain``         -- the default, non-private agent (DQN: uniform batches with replacement; PPO: shuffled
  minibatches, GAE lambda 0.8, advantage normalisation);
* ``plain_poisson`` -- non-private, but configured exactly as DP-SGD requires (Poisson batches; PPO:
  ``gae_lambda=0``, ``norm_adv=false``), which isolates the cost of DP-SGD itself;
* ``mlp``           -- DP-SGD with ghost-norm clipping for Linear MLPs
  (:func:`securefrl.privacy.dpsgd.mlp_clip_and_sum`);
* ``hooks``, ``ew``, ``functorch`` -- DP-SGD with Opacus's ``GradSampleModule`` modes;
* ``mlp_secure``    -- ``mlp`` with the default OS-CSPRNG noise and sampling (the others use seeded noise).

DP-SGD runs with z = 1, C = 1 (cost does not depend on them). Measured: time per gradient step (DQN: one
``_update_batch`` on a sampled batch; PPO: one rollout update divided by its gradient steps) and time per
environment step of ``learn`` (acting, environment, training). Usage::

    python benchmarks/dpsgd_overhead.py               # 7 repetitions, writes benchmarks/results/dpsgd_overhead.json
    python benchmarks/dpsgd_overhead.py --reps 2 --grad-steps 50 --env-steps 512   # quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import opacus
import torch

from securefrl.agents import DQNAgent, DQNConfig, PPOAgent, PPOConfig
from securefrl.agents.base import Agent
from securefrl.agents.dp import DPSGDSettings, enable_dp_sgd
from securefrl.privacy.dpsgd import DPSGD_MODES

VARIANTS = ("plain", "plain_poisson", *DPSGD_MODES, "mlp_secure")


def env_fn() -> gym.Env:
    return gym.make("CartPole-v1")


def build(algo: str, variant: str, seed: int) -> Agent:
    private = variant not in ("plain", "plain_poisson")
    if algo == "dqn":
        cfg: Any = DQNConfig() if variant == "plain" else DQNConfig(batch_sampling="poisson")
        agent: Agent = DQNAgent(env_fn, cfg, seed=seed)
    else:
        cfg = PPOConfig() if variant == "plain" else PPOConfig(batch_sampling="poisson", gae_lambda=0.0, norm_adv=False)
        agent = PPOAgent(env_fn, cfg, seed=seed)
    if variant == "mlp_secure":
        enable_dp_sgd(agent, DPSGDSettings(1.0, 1.0, "mlp"), None)  # secure by default: no generator
    elif private:
        enable_dp_sgd(agent, DPSGDSettings(1.0, 1.0, variant, secure=False), np.random.default_rng(seed))
    # Warm up: DQN fills past learning_starts and trains once; PPO collects and updates one rollout.
    agent.learn(1280 if algo == "dqn" else 256)
    return agent


def time_grad_steps(agent: Any, algo: str, n: int) -> float:
    """Seconds per gradient step of the agent's own update path (sampling included)."""
    if algo == "dqn":  # the benchmark built this agent by name (build); its private update paths differ
        t0 = time.perf_counter()
        for _ in range(n):
            agent._update_batch(agent._sample_batch())
        return (time.perf_counter() - t0) / n
    cfg: Any = agent.config
    per_update = cfg.n_epochs * cfg.n_minibatches
    updates = max(1, n // per_update)
    t0 = time.perf_counter()
    for _ in range(updates):
        agent._update(cfg.n_steps)  # the last collected rollout, again
    return (time.perf_counter() - t0) / (updates * per_update)


def time_env_steps(agent: Agent, n: int) -> float:
    """Seconds per environment step of ``learn`` (acting, stepping and training)."""
    t0 = time.perf_counter()
    agent.learn(n)
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--grad-steps", type=int, default=200, help="gradient steps timed per variant and rep")
    parser.add_argument("--env-steps", type=int, default=2048, help="learn() steps timed per variant and rep")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dpsgd_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)  # seeded-noise notice, Opacus hook notices

    results: dict[str, Any] = {
        "meta": {"torch": torch.__version__, "opacus": opacus.__version__, "python": platform.python_version(),
                 "threads": torch.get_num_threads(), "reps": args.reps, "grad_steps": args.grad_steps,
                 "env_steps": args.env_steps, "noise_multiplier": 1.0, "max_grad_norm": 1.0},
    }
    for algo in ("dqn", "ppo"):
        agents = {v: build(algo, v, seed=0) for v in VARIANTS}
        grad: dict[str, list[float]] = {v: [] for v in VARIANTS}
        env: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for rep in range(args.reps):
            order = VARIANTS if rep % 2 == 0 else tuple(reversed(VARIANTS))  # alternate order against drift
            for v in order:
                grad[v].append(time_grad_steps(agents[v], algo, args.grad_steps))
            for v in order:
                env[v].append(time_env_steps(agents[v], args.env_steps))
        rows = {}
        for v in VARIANTS:
            rows[v] = {
                "ms_per_grad_step": 1e3 * float(np.median(grad[v])),
                "us_per_env_step": 1e6 * float(np.median(env[v])),
                "grad_ratio_vs_plain": float(np.median(np.array(grad[v]) / np.array(grad["plain"]))),
                "env_ratio_vs_plain": float(np.median(np.array(env[v]) / np.array(env["plain"]))),
                "grad_ratio_vs_plain_poisson": float(np.median(np.array(grad[v]) / np.array(grad["plain_poisson"]))),
                "env_ratio_vs_plain_poisson": float(np.median(np.array(env[v]) / np.array(env["plain_poisson"]))),
            }
        results[algo] = rows
        print(f"\n{algo.upper()}  (median of {args.reps} reps; ratios taken within each rep)")
        print(f"{'variant':<14}{'ms/grad step':>13}{'x plain':>9}{'x plain_poisson':>17}"
              f"{'us/env step':>13}{'x plain':>9}{'x plain_poisson':>17}")
        for v, r in rows.items():
            print(f"{v:<14}{r['ms_per_grad_step']:>13.3f}{r['grad_ratio_vs_plain']:>9.2f}"
                  f"{r['grad_ratio_vs_plain_poisson']:>17.2f}{r['us_per_env_step']:>13.1f}"
                  f"{r['env_ratio_vs_plain']:>9.2f}{r['env_ratio_vs_plain_poisson']:>17.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
