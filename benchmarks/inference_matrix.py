"""What a curious server (or holder of the released model) learns under plaintext, SecAgg and CKKS, with and
without DP noise on the updates: environment-property inference, state reconstruction, membership inference.

Setting: PPO CartPole, 10 clients at heterogeneity 1 (pole lengths 0.5-1.5 m), 2 rounds of 512 local steps.
DP settings: none; ``local`` (every client adds N(0, (zC)^2), z=1, C=1); ``distributed`` (every client adds a
1/10 share of that variance — the full noise only appears in the sum, so under plaintext each update is
under-protected). Each inference study runs its own federation per protocol, DP setting and seed; the
server-side attacks see only the protocol's ServerView.

Run (about 15-25 minutes with ``--workers 2``)::

    .venv/bin/python benchmarks/inference_matrix.py --workers 2

Writes ``benchmarks/results/inference_matrix.json`` and ``benchmarks/results/inference_matrix/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attacks.harness import MatrixConfig, aggregate, run_matrix, write_outputs  # noqa: E402
from securefrl.configtools import from_dict  # noqa: E402
from securefrl.results import json_safe  # noqa: E402

#: The pinned PPO setting of benchmarks/attack_matrix.py (one 512-step rollout per round here).
PPO_PARAMS = {"n_envs": 4, "n_steps": 128, "n_epochs": 4, "n_minibatches": 4, "lr": 1e-3, "lr_final_fraction": 0.1,
              "gamma": 0.99, "gae_lambda": 0.95, "clip_vloss": False, "ent_coef": 0.01}



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "inference_matrix"))
    args = parser.parse_args()
    out = Path(args.out)
    m = from_dict(MatrixConfig, {
        "name": "inference_matrix", "output_dir": str(out.parent), "seeds": args.seeds,
        "base": {"env": {"name": "cartpole", "heterogeneity": 1.0},
                 "agent": {"name": "ppo", "params": PPO_PARAMS},
                 "federation": {"n_clients": 10, "rounds": 2, "local_steps": 512, "eval_episodes": 1}},
        "attacks": [], "defences": ["fedavg"], "protocols": ["plaintext"],
        "inference": ["property", "reconstruction", "membership"],
        "inference_protocols": ["plaintext", "secagg", "ckks"],
        "dp": ["none", "distributed", "local"], "dp_clip": 1.0, "dp_noise_multiplier": 1.0,
        "inference_params": {
            "property": {"n_shadow": 48},
            "reconstruction": {"batch_sizes": [1, 4], "rounds": 2, "targets_per_round": 2},
            "membership": {"window": 16},
        },
    })
    t0 = time.perf_counter()
    rows = [r for r in run_matrix(m, workers=args.workers) if r["kind"] == "inference"]
    wall = time.perf_counter() - t0
    write_outputs(rows, m, out)
    agg = aggregate(rows, m)["inference"]
    metrics = sorted({k.split("|", 3)[3] for k in agg if k.split("|", 3)[3]})
    cols = [(p, dp) for p in m.inference_protocols for dp in m.dp]
    print(f"\ninference attacks, seeds {args.seeds}, {wall / 60:.1f} min wall; value (chance)")
    print(f"{'metric':<38}" + "".join(f"{p[:6] + '/' + dp[:5]:>17}" for p, dp in cols))
    for metric in metrics:
        line = f"{metric:<38}"
        for p, dp in cols:
            e = agg.get(f"{metric.split('.')[0]}|{p}|{dp}|{metric}")
            line += f"{'—':>17}" if e is None or e["status"] != "ok" else \
                f"{e['value'][0]:>9.3f} ({e['chance'][0]:.2f})"
        print(line)
    path = ROOT / "benchmarks" / "results" / "inference_matrix.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe({"wall_minutes": wall / 60, "seeds": args.seeds, "results": {
        k: {"value": v["value"][0], "std": v["value"][1], "chance": v["chance"][0], "status": v["status"]}
        for k, v in agg.items()}}), indent=2) + "\n")
    print(f"\nwrote {path} and {out}/summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
