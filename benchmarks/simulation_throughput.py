"""Simulation throughput at scale: per-client loop vs vectorized clients vs Stable-Baselines3, side by side.

Part 1, throughput: one federated round of ``--clients`` (100) heterogeneous CartPole PPO clients, all
sampled, ``local_steps`` 2048 each, with the per-client loop (``federation.simulation=loop``, the
reference) and the vectorized path (``simulation=vectorized``); and Stable-Baselines3's PPO
(Raffin et al. 2021) on one CartPole, both with our PPO's hyperparameters ("matched": 4 envs x 128
steps, 4 epochs, 4 minibatches, 64-64 tanh nets, lr 1e-3) and with SB3's defaults. Aggregate
training throughput = environment steps trained / seconds spent training. All four run in one
process with torch on one thread (the same process budget), time-sliced: ``--slices`` rounds of
a few seconds each (the vectorized path trains all clients once, the loop the next tenth of its
clients, SB3 a fixed chunk of steps), so the load of this shared machine falls on all four alike.

Part 2, scale: the vectorized path with 10, 100 and 1,000 clients, 10% sampled per round (and the
loop with 10 and 100): round time, peak resident memory (``resource.getrusage`` ru_maxrss of a
fresh process), tracemalloc's peak of Python/numpy allocations, and the bytes of the stacked torch
state (parameters and per-client Adam moments, not seen by tracemalloc).

Usage::

    python benchmarks/simulation_throughput.py            # writes benchmarks/results/simulation_throughput.json
    python benchmarks/simulation_throughput.py --quick    # a smaller, faster look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "results" / "simulation_throughput.json"


def _fed_config(n_clients: int, fraction: float, simulation: str, local_steps: int, seed: int) -> Any:
    from securefrl.config import load_config

    return load_config(overrides=[
        f"seed={seed}", f"federation.n_clients={n_clients}", f"federation.client_fraction={fraction}",
        f"federation.local_steps={local_steps}", "federation.rounds=10", "federation.eval_episodes=3",
        "env.heterogeneity=0.5", "agent.name=ppo", f"federation.simulation={simulation}"])


def measure_federation(n_clients: int, fraction: float, simulation: str, local_steps: int, rounds: int,
                       seed: int) -> dict[str, Any]:
    """Build a federation and run ``rounds`` rounds; training throughput, round times, memory."""
    import torch

    from securefrl.federation import make_federation

    torch.set_num_threads(1)
    tracemalloc.start()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    fed = make_federation(_fed_config(n_clients, fraction, simulation, local_steps, seed))
    build = time.perf_counter() - t0
    summaries = [fed.run_round().summary for _ in range(rounds)]
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    steps = sum(s["n_sampled"] for s in summaries) * local_steps
    train = sum(s["time_train"] for s in summaries)
    wall = sum(s["round_time"] for s in summaries)
    population = getattr(fed, "population", None)
    return {
        "simulation": simulation, "n_clients": n_clients, "client_fraction": fraction, "rounds": rounds,
        "n_sampled": summaries[0]["n_sampled"], "local_steps": local_steps, "build_s": build,
        "train_s": train, "round_s": [s["round_time"] for s in summaries],
        "time_per_phase_s": {k: sum(s[f"time_{k}"] for s in summaries)
                             for k in ("train", "protect", "combine", "open", "eval")},
        "train_steps_per_s": steps / train, "wall_steps_per_s": steps / wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_imports_mib": rss0 / 1024,
        "tracemalloc_peak_mib": py_peak / 2**20,
        "torch_state_mib": population.nbytes() / 2**20 if population is not None else None,
        "final_mean_return": summaries[-1]["mean_return"],
    }


def _sb3_model(kind: str, seed: int) -> Any:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    if kind == "matched":
        return PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=4, seed=seed), n_steps=128, batch_size=128,
                   n_epochs=4, learning_rate=1e-3, gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.01,
                   vf_coef=0.5, max_grad_norm=0.5, seed=seed, device="cpu", verbose=0,
                   policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.Tanh})
    return PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=seed), seed=seed, device="cpu", verbose=0)


def measure_throughput(n_clients: int, local_steps: int, slices: int, seed: int) -> dict[str, Any]:
    """Loop, vectorized and SB3 (matched, default) trained in alternating time slices in this process."""
    import torch

    from securefrl.federation import make_federation

    torch.set_num_threads(1)
    feds = {sim: make_federation(_fed_config(n_clients, 1.0, sim, local_steps, seed)) for sim in ("loop", "vectorized")}
    models = {kind: _sb3_model(kind, seed) for kind in ("matched", "default")}
    sb3_chunk = {"matched": 10 * 512, "default": 2 * 2048}  # whole rollouts of each configuration
    per = max(1, n_clients // slices)
    steps = {k: 0 for k in ("loop", "vectorized", "sb3_matched", "sb3_default")}
    secs = dict.fromkeys(steps, 0.0)
    rates: dict[str, list[float]] = {k: [] for k in steps}

    def timed(name: str, fn: Any, n_steps: int) -> None:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        steps[name] += n_steps
        secs[name] += dt
        rates[name].append(n_steps / dt)

    for s in range(slices):
        vec = feds["vectorized"]
        timed("vectorized", lambda v=vec, s=s: [v.local_update(c, s) for c in v.clients], n_clients * local_steps)
        loop = feds["loop"]
        chunk = loop.clients[s * per:(s + 1) * per]
        timed("loop", lambda lp=loop, ch=chunk: [lp.local_update(c, 0) for c in ch], len(chunk) * local_steps)
        for kind, model in models.items():
            timed(f"sb3_{kind}", lambda m=model, k=kind: m.learn(sb3_chunk[k], reset_num_timesteps=False),
                  sb3_chunk[kind])
    return {"n_clients": n_clients, "local_steps": local_steps, "slices": slices,
            "train_steps_per_s": {k: steps[k] / secs[k] for k in steps}, "steps": steps, "train_s": secs,
            "slice_steps_per_s": rates,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["what"] == "throughput":
        return measure_throughput(spec["n_clients"], spec["local_steps"], spec["slices"], spec["seed"])
    return measure_federation(spec["n_clients"], spec["fraction"], spec["simulation"], spec["local_steps"],
                              spec["rounds"], spec["seed"])


def in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (its own memory high-water mark, no warm caches)."""
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {spec} -> {result['train_steps_per_s']} steps/s, round(s) {result.get('round_s', '-')}, "
          f"peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--local-steps", type=int, default=2048)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--scale", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--loop-scale-max", type=int, default=100, help="largest client count run with the loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="10 clients, 512 steps, 2 slices, scale 10/100")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    if args.quick:
        args.clients, args.local_steps, args.slices, args.scale = 10, 512, 2, [10, 100]

    print(f"throughput: {args.clients} clients x {args.local_steps} steps, {args.slices} interleaved slices",
          flush=True)
    tp = in_subprocess({"what": "throughput", "n_clients": args.clients, "local_steps": args.local_steps,
                        "slices": args.slices, "seed": args.seed})
    sps = tp["train_steps_per_s"]
    best_sb3 = max(sps["sb3_matched"], sps["sb3_default"])
    ratios = {"vectorized_over_loop": sps["vectorized"] / sps["loop"],
              "vectorized_over_sb3_matched": sps["vectorized"] / sps["sb3_matched"],
              "vectorized_over_sb3_default": sps["vectorized"] / sps["sb3_default"],
              "vectorized_over_best_sb3": sps["vectorized"] / best_sb3,
              "loop_over_best_sb3": sps["loop"] / best_sb3}

    print("scale: 10% of clients sampled per round, 2 rounds each", flush=True)
    scale: list[dict[str, Any]] = []
    for n in args.scale:
        for sim in ("vectorized", "loop"):
            if sim == "loop" and n > args.loop_scale_max:
                continue
            scale.append(in_subprocess({"what": "fed", "n_clients": n, "fraction": 0.1, "simulation": sim,
                                        "local_steps": args.local_steps, "rounds": 2, "seed": args.seed}))

    print("\n== aggregate training throughput (env steps/s over all slices; min-max of slices) ==")
    for k, v in sps.items():
        lo, hi = min(tp["slice_steps_per_s"][k]), max(tp["slice_steps_per_s"][k])
        print(f"  {k:<12} {v:>10,.0f}   ({lo:,.0f} - {hi:,.0f})")
    for k, v in ratios.items():
        print(f"  {k:<28} {v:6.1f}x")
    target = ratios["vectorized_over_best_sb3"] >= 10
    print(f"  target vectorized >= 10x SB3: {'met' if target else 'NOT met'}")
    print("\n== scale (10% sampled) ==")
    print(f"  {'sim':<10} {'clients':>7} {'sampled':>7} {'round s':>15} {'peak RSS MiB':>12} {'torch MiB':>9} "
          f"{'tracemalloc MiB':>15}")
    for s in scale:
        rounds = "/".join(f"{t:.2f}" for t in s["round_s"])
        torch_mib = f"{s['torch_state_mib']:.1f}" if s["torch_state_mib"] is not None else "-"
        print(f"  {s['simulation']:<10} {s['n_clients']:>7} {s['n_sampled']:>7} {rounds:>15} "
              f"{s['peak_rss_mib']:>12.0f} {torch_mib:>9} {s['tracemalloc_peak_mib']:>15.1f}")
    result = {"settings": vars(args) | {"out": str(args.out)}, "train_steps_per_s": sps, "ratios": ratios,
              "target_10x_sb3_met": target, "throughput": tp, "scale": scale}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
