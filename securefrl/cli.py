"""Command line: ``securefrl run`` (the default demo with no arguments), ``runs``, ``compare``, ``evaluate``,
``sweep``, ``config``, ``envs``, ``speedup``; plug-ins add more (``attack-matrix``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from securefrl.errors import ConfigError, SecureFRLError


def _load_run_config(args: argparse.Namespace) -> tuple[Any, Any]:
    """The config of ``securefrl run`` and what to resume: with ``--resume RUN`` and no ``--config`` the
    run's own config.yaml (plus ``--set``), so ``--resume RUN --set federation.rounds=N`` extends it."""
    from securefrl.config import load_config
    from securefrl.results import latest_run

    resume = args.resume
    if resume is None:
        return load_config(args.config, args.set), False
    if resume is True:
        base = load_config(args.config, args.set)
        where = Path(args.out) if args.out else Path(base.output_dir) / base.name
        run = latest_run(where)
        if run is None:
            raise ConfigError("resume", f"no run to resume at {where}; start it without --resume")
    else:
        run = latest_run(resume)
        if run is None:
            raise ConfigError("resume", f"no run at {resume}; `securefrl runs` lists the runs there are")
    cfg = load_config(args.config if args.config else run / "config.yaml", args.set)
    return cfg, run


def _cmd_run(args: argparse.Namespace) -> int:
    from securefrl.experiment import run_experiment

    if args.overwrite and not args.out:
        raise ConfigError("overwrite", "--overwrite replaces the run in --out DIR; without --out every run gets "
                          "a new folder and nothing is overwritten")
    cfg, resume = _load_run_config(args)
    run_experiment(cfg, resume=resume, progress=not args.quiet, stop_after=args.stop_after, out=args.out,
                   overwrite=args.overwrite, tensorboard=args.tensorboard)
    return 0


def _fmt(v: Any, width: int = 0) -> str:
    s = "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))
    return f"{s:>{width}}" if width else s


def _table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return lines


def _cmd_runs(args: argparse.Namespace) -> int:
    from securefrl.results import find_runs

    runs = find_runs(args.root)
    if not runs:
        print(f"no runs under {args.root}")
        return 0
    columns = ["run", "env", "heterogeneity", "agent", "clients", "protocol", "privacy", "attack", "rounds", "final",
               "epsilon"]
    print("\n".join(_table([r.describe() for r in runs], columns)))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import csv

    from securefrl.results import compare_figure, new_run_dir, read_run, resolve_run

    runs = [read_run(resolve_run(spec, args.output_dir)) for spec in args.runs]
    rows = [r.describe() for r in runs]
    columns = ["run", "name", "env", "heterogeneity", "agent", "protocol", "privacy", "attack", "personalization",
               "rounds", "final", "best", "epsilon"]
    lines = _table(rows, columns)
    print("\n".join(lines))
    out = Path(args.out) if args.out else new_run_dir(Path(args.output_dir) / "compare")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "compare.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, columns)
        w.writeheader()
        w.writerows({c: r.get(c) for c in columns} for r in rows)
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    (out / "compare.md").write_text("\n".join(md) + "\n")
    compare_figure(runs, args.metric).savefig(out / "compare.png")
    print(f"plot and table: {out}/compare.png, compare.csv, compare.md")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from securefrl.runs import load_run

    run = load_run(args.run, args.output_dir)
    ev = run.evaluation(client=args.client, episodes=args.episodes, model=args.model, seed=args.seed,
                        render=args.render, video=args.video)
    print(f"{run.path}: client {ev.client}, {ev.model} model, {len(ev.returns)} episodes in its own environment")
    print("returns: " + ", ".join(f"{r:.1f}" for r in ev.returns))
    print(f"mean {ev.mean:.1f} +- {ev.std:.1f} (std)")
    if ev.video is not None:
        print(f"video: {ev.video}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from securefrl.config import load_config
    from securefrl.sweep import run_sweep

    cfg = load_config(args.config, args.set)
    points = run_sweep(cfg, args.placement, args.seeds, args.noise, args.epsilon, args.out)
    for p in points:
        print(p.describe())
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from securefrl.configtools import describe

    if args.protocol:
        from securefrl.configtools import plugin_parameters
        from securefrl.protocol_factory import _protocol_class

        rows = plugin_parameters(_protocol_class(args.protocol), "protocol.params.", ("dim", "n_clients"))
    elif args.agent:
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


def _cmd_speedup(args: argparse.Namespace) -> int:
    from securefrl.speedup import run

    run(args)
    return 0


def _cmd_heterogeneity(args: argparse.Namespace) -> int:
    from securefrl.personalization.benchmark import GridSettings, run_heterogeneity

    out = Path(args.out)
    grid = GridSettings.from_args(args)
    run_heterogeneity([args.family], args.levels, args.methods, range(args.seeds), grid, out, f"_{args.family}",
                      log=None if args.quiet else lambda line: print(line, file=sys.stderr, flush=True))
    print((out / f"heterogeneity_{args.family}.md").read_text())
    stem = f"heterogeneity_{args.family}"
    print(f"wrote {out}/{stem}.jsonl, .json, .md and {stem}_{args.family}.png")
    return 0


def _add_config_args(p: argparse.ArgumentParser, help_config: str = "TOML or YAML config file") -> None:
    p.add_argument("--config", "-c", help=help_config)
    p.add_argument("--set", "-s", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set federation.rounds=5, --set privacy.delta=1e-6, "
                        "--set 'env.overrides={pole_length=0.7}' (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from securefrl import __version__

    parser = argparse.ArgumentParser(prog="securefrl", description="Privacy-preserving federated RL.")
    parser.add_argument("--version", action="version", version=f"securefrl {__version__}")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run an experiment (no arguments: the default demo)",
                         description="Each run writes a new folder <output_dir>/<name>/<timestamp>/ (or --out DIR).")
    _add_config_args(run)
    run.add_argument("--out", "-o", help="write the run to this folder (refused if it holds a run; see --overwrite)")
    run.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    run.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN",
                     help="continue a run from its last checkpoint: RUN (a run folder), else the latest run of the "
                          "config's name; with --set federation.rounds=N it extends a finished run")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar or table")
    run.add_argument("--stop-after", type=int, default=None, metavar="ROUNDS",
                     help="stop after this many rounds in total (resume later with --resume)")
    run.add_argument("--tensorboard", action="store_true",
                     help="also log round metrics to <run>/tensorboard (needs: pip install tensorboard)")
    run.set_defaults(func=_cmd_run)
    runs = sub.add_parser("runs", help="list the runs under a results folder")
    runs.add_argument("root", nargs="?", default="results", help="folder to search (default results)")
    runs.set_defaults(func=_cmd_runs)
    cmp = sub.add_parser("compare", help="curves of several runs on one plot, their summaries in one table")
    cmp.add_argument("runs", nargs="+", metavar="RUN", help="run folders, folders of runs (latest) or run names")
    cmp.add_argument("--metric", default="mean_return", help="round metric to plot (default mean_return)")
    cmp.add_argument("--out", "-o", help="folder for compare.png/.csv/.md (default <output-dir>/compare/<timestamp>)")
    cmp.add_argument("--output-dir", default="results", help="where run names are looked up (default results)")
    cmp.set_defaults(func=_cmd_compare)
    ev = sub.add_parser("evaluate", help="load a run's trained model and report its returns (optionally a video)")
    ev.add_argument("run", metavar="RUN", help="run folder, folder of runs (latest) or run name")
    ev.add_argument("--client", type=int, default=0, help="whose model, in whose environment (default 0)")
    ev.add_argument("--episodes", "-n", type=int, default=5, help="greedy episodes (default 5)")
    ev.add_argument("--model", choices=["global", "personal"], default="global",
                    help="the model released to the client, or the one it would deploy (personalization)")
    ev.add_argument("--seed", type=int, default=None, help="first episode seed (default: derived from the run)")
    ev.add_argument("--render", choices=["rgb_array", "human"], default=None, help="render mode of the episodes")
    ev.add_argument("--video", help="write the rendered episodes to this .gif (or .mp4 with imageio[ffmpeg])")
    ev.add_argument("--output-dir", default="results", help="where run names are looked up (default results)")
    ev.set_defaults(func=_cmd_evaluate)
    sweep = sub.add_parser("sweep", help="privacy-utility sweep: final return against epsilon")
    _add_config_args(sweep, "TOML or YAML config file of the base experiment")
    sweep.add_argument("--placement", default="central", choices=["central", "distributed", "local"])
    grid = sweep.add_mutually_exclusive_group(required=True)
    grid.add_argument("--noise", type=float, nargs="+", help="noise multipliers to sweep")
    grid.add_argument("--epsilon", type=float, nargs="+", help="target epsilons to sweep (each > 0)")
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sweep.add_argument("--out", help="output folder (default <output_dir>/<name>-sweep/<timestamp>)")
    sweep.set_defaults(func=_cmd_sweep)
    conf = sub.add_parser("config", help="print every config field with its default and meaning")
    conf.add_argument("--agent", help="print the hyperparameters of this agent instead")
    conf.add_argument("--protocol", help="print the parameters of this protocol (plaintext, ckks, secagg) instead")
    conf.set_defaults(func=_cmd_config)
    envs = sub.add_parser("envs", help="list environment families and their physics parameters")
    envs.set_defaults(func=_cmd_envs)
    from securefrl.speedup import add_arguments as speedup_arguments

    speed = sub.add_parser("speedup", help="steps per client to a return threshold vs clients K, both update modes, "
                                           "against the best single agent (small slice of the benchmark)",
                           description="A small slice of benchmarks/federation_speedup.py on your environment "
                                       "family: writes <out>.json/.md/.png and prints the table.")
    speedup_arguments(speed, small=True)
    speed.set_defaults(func=_cmd_speedup)
    from securefrl.personalization.benchmark import HETEROGENEITY_FAMILIES, HETEROGENEITY_METHODS, GridSettings

    het = sub.add_parser("heterogeneity", help="one family's slice of the heterogeneity benchmark: FedAvg's "
                         "penalty against local-only training and the personalization methods (JSON, Markdown, PNG)")
    het.add_argument("family", choices=list(HETEROGENEITY_FAMILIES))
    het.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="heterogeneity levels h")
    het.add_argument("--methods", nargs="+", choices=HETEROGENEITY_METHODS,
                     default=["local", "fedavg", "finetune", "relation"], help="local-only is always included")
    het.add_argument("--seeds", type=int, default=3)
    GridSettings(rounds=4, local_steps=512, final_episodes=3).add_arguments(het)  # a quick slice by default
    het.add_argument("--out", default="results/heterogeneity", help="output folder (a rerun continues its records)")
    het.add_argument("--quiet", action="store_true", help="no line per finished run")
    het.set_defaults(func=_cmd_heterogeneity)
    # Plug-in commands (e.g. the attack-evaluation harness of the `attacks` package) register
    # through the `securefrl.commands` entry-point group: `register(subparsers)` adds a sub-command.
    for ep in entry_points(group="securefrl.commands"):
        ep.load()(sub)
    return parser


def _missing_dependency(err: Exception) -> str:
    """What to install, for gymnasium's DependencyNotInstalled (e.g. Box2D for LunarLander)."""
    text = str(err)
    extra = next((e for e in ("box2d", "mujoco", "atari", "toy-text", "classic-control") if e in text.lower()), None)
    hint = f'pip install "gymnasium[{extra}]"' if extra else "install the package it names"
    if extra == "box2d":
        hint = 'pip install swig, then pip install "gymnasium[box2d]"'
    return f"the environment needs a package that is not installed: {text.strip()}. Fix: {hint}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from gymnasium.error import DependencyNotInstalled

    try:
        return int(args.func(args))
    except SecureFRLError as err:
        print(f"securefrl: error: {err}", file=sys.stderr)
        return 2
    except DependencyNotInstalled as err:
        print(f"securefrl: error: {_missing_dependency(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("securefrl: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
