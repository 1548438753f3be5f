"""Command line: ``securefrl run`` (the default demo with no arguments), ``securefrl config``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from securefrl.errors import SecureFRLError


def _cmd_run(args: argparse.Namespace) -> int:
    from securefrl.config import load_config
    from securefrl.experiment import run_experiment

    cfg = load_config(args.config, args.set)
    run_experiment(cfg, resume=args.resume, progress=not args.quiet, stop_after=args.stop_after)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from securefrl.config import load_config
    from securefrl.sweep import run_sweep

    cfg = load_config(args.config, args.set)
    points = run_sweep(cfg, args.placement, args.seeds, args.noise, args.epsilon, args.out)
    for p in points:
        eps = "-" if p.epsilon is None else f"{p.epsilon:.3g}"
        print(f"{p.label:>10}  epsilon {eps:>8}  final return {p.mean:7.1f} +- {p.ci95:.1f}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from securefrl.configtools import describe

    if args.agent:
        from securefrl.agents import AGENT_CONFIGS

        if args.agent not in AGENT_CONFIGS:
            print(f"unknown agent {args.agent!r}; choose one of {sorted(AGENT_CONFIGS)}", file=sys.stderr)
            return 2
        rows = describe(AGENT_CONFIGS[args.agent], "agent.params.")
    else:
        from securefrl.config import ExperimentConfig

        rows = describe(ExperimentConfig)
    width = max(len(name) for name, _, _ in rows)
    for name, default, doc in rows:
        print(f"{name:<{width}}  = {default!r:<12}  # {doc}")
    return 0


def _cmd_envs(args: argparse.Namespace) -> int:
    from securefrl.envs import FAMILIES

    for family in FAMILIES.values():
        print(family.describe(), end="\n\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="securefrl", description="Privacy-preserving federated RL.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run an experiment (no arguments: the default demo)")
    run.add_argument("--config", "-c", help="TOML or YAML config file")
    run.add_argument("--set", "-s", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a config value, e.g. --set federation.rounds=5 (repeatable)")
    run.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar or table")
    run.add_argument("--stop-after", type=int, default=None, metavar="ROUNDS",
                     help="stop after this many rounds in total (resume later with --resume)")
    run.set_defaults(func=_cmd_run)
    sweep = sub.add_parser("sweep", help="privacy-utility sweep: final return against epsilon")
    sweep.add_argument("--config", "-c", help="TOML or YAML config file of the base experiment")
    sweep.add_argument("--set", "-s", action="append", default=[], metavar="SECTION.KEY=VALUE")
    sweep.add_argument("--placement", default="central", choices=["central", "distributed", "local"])
    grid = sweep.add_mutually_exclusive_group(required=True)
    grid.add_argument("--noise", type=float, nargs="+", help="noise multipliers to sweep")
    grid.add_argument("--epsilon", type=float, nargs="+", help="target epsilons to sweep")
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sweep.add_argument("--out", help="output folder (default <output_dir>/<name>-sweep)")
    sweep.set_defaults(func=_cmd_sweep)
    conf = sub.add_parser("config", help="print every config field with its default and meaning")
    conf.add_argument("--agent", help="print the hyperparameters of this agent instead")
    conf.set_defaults(func=_cmd_config)
    envs = sub.add_parser("envs", help="list environment families and their physics parameters")
    envs.set_defaults(func=_cmd_envs)
    # Plug-in commands (e.g. the attack-evaluation harness of the `attacks` package) register
    # through the `securefrl.commands` entry-point group: `register(subparsers)` adds a sub-command.
    for ep in entry_points(group="securefrl.commands"):
        ep.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except SecureFRLError as err:
        print(f"securefrl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("securefrl: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
