"""Heterogeneity that matters: FedAvg's penalty against local-only training, and which personalization cures it.

Jin et al. (2022, "Federated Reinforcement Learning with Environment Heterogeneity") show that FedAvg-style
FRL converges to a policy whose suboptimality grows with the heterogeneity of the clients' environments.
This benchmark measures it: for each family x heterogeneity h x method x seed, one federation is trained
with identical agent hyperparameters, client environments (drawn from the seed, so every method of a seed
sees the same clients), per-client step budget and evaluation; then every client's deployed model is
evaluated on ``--final-episodes`` greedy episodes in its own environment, on episode seeds shared by all
methods. Runs use the vectorized simulation where the family and method allow it (same metrics as the loop).

Methods: ``local`` (clients never federate), ``fedavg`` (the global model), ``finetune`` (the same FedAvg
run, each client deploying the global model after its local training), ``fedper``, ``embedding``, ``ifca``,
``ditto`` and ``relation`` (see :mod:`securefrl.personalization`). Methods a family's agent does not support
(e.g. fedper with SAC on hopper) are recorded as refused, with the reason.

Reported per family, h and method, over seeds (95% t-intervals over seeds): the mean over clients of the
final return, the worst client's final return, the fraction of clients for which the method's model is worse
than the same client's local-only model (paired by seed and client) and the penalty ``local mean - method
mean``. Outputs: benchmarks/results/heterogeneity{suffix}.jsonl (records, appended as runs finish: a stopped
grid continues where it stopped), .json and .md, and one PNG per family. The runner is
:mod:`securefrl.personalization.benchmark`; ``securefrl heterogeneity FAMILY`` runs one family's slice.

Usage::

    python benchmarks/heterogeneity.py                                   # the full grid (hours on 2 cores)
    python benchmarks/heterogeneity.py --families edge_caching --levels 0 1 --methods local fedavg relation \\
        --seeds 3 --rounds 6                                              # a small slice
    python benchmarks/heterogeneity.py --quick                           # smoke test: 1 seed, 2 short rounds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from securefrl.personalization.benchmark import (
    HETEROGENEITY_FAMILIES,
    HETEROGENEITY_METHODS,
    GridSettings,
    run_heterogeneity,
)

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", nargs="+", default=list(HETEROGENEITY_FAMILIES), choices=list(HETEROGENEITY_FAMILIES))
    ap.add_argument("--levels", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    ap.add_argument("--methods", nargs="+", default=HETEROGENEITY_METHODS, choices=HETEROGENEITY_METHODS)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds first-seed .. first-seed + seeds - 1 (e.g. held-out seeds after tuning on 0-4)")
    GridSettings().add_arguments(ap)
    ap.add_argument("--suffix", default="", help="appended to the output names")
    ap.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    ap.add_argument("--summarize-only", action="store_true", help="tabulate the records already written, train nothing")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 2 rounds x 256 steps, 1 episode")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.rounds, args.local_steps, args.final_episodes = 1, 2, 256, 1
        args.suffix = args.suffix or "_quick"
    grid = GridSettings.from_args(args)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    run_heterogeneity(args.families, args.levels, args.methods, seeds, grid, args.out, args.suffix,
                      log=lambda line: print(line, file=sys.stderr, flush=True), train=not args.summarize_only)
    print((args.out / f"heterogeneity{args.suffix}.md").read_text())


if __name__ == "__main__":
    main()
