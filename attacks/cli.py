"""``securefrl attack-matrix``: the attack-evaluation harness as a plug-in sub-command.

Registered through the ``securefrl.commands`` entry-point group (``attacks = "attacks.cli:register"``),
so :mod:`securefrl.cli` finds it without importing :mod:`attacks`.

Examples::

    securefrl attack-matrix                                   # small default matrix
    securefrl attack-matrix --config matrix.toml              # TOML or YAML with lists
    securefrl attack-matrix --set seeds=[0,1,2] --set defences=[fedavg,median,krum] --set n_malicious=2
    securefrl attack-matrix --list                            # attacks, defences, inference and protocol attacks
    securefrl attack-matrix --set attacks=[] --set defences=[]  # only the protocol section (malicious server)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "register", "run"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="TOML or YAML matrix file (see `--describe`)")
    parser.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                        help="override a matrix field, e.g. --set seeds=[0,1] or --set base.federation.rounds=3")
    parser.add_argument("--out", help="output folder (default <output_dir>/<name>)")
    parser.add_argument("--list", action="store_true",
                        help="list attacks, defences, inference and protocol attacks, then exit")
    parser.add_argument("--describe", action="store_true", help="print every matrix field and its meaning, then exit")
    parser.add_argument("--quiet", "-q", action="store_true", help="no per-cell progress lines")
    parser.add_argument("--workers", "-j", type=int, default=1, help="cells run in this many processes (default 1)")


def run(args: argparse.Namespace) -> int:
    """Run the matrix described by ``args`` (the sub-command's handler)."""
    from attacks.harness import DEFENCES, INFERENCE_ATTACKS, MatrixConfig, load_matrix_config, run_matrix, write_outputs
    from attacks.registry import REGISTRY

    if args.list:
        print("attacks:", ", ".join(["none", *REGISTRY.names()]))
        print("defences:", ", ".join(DEFENCES))
        print("inference attacks:", ", ".join(INFERENCE_ATTACKS))
        from attacks.protocol import load_all

        print("protocol attacks:", ", ".join(sorted(load_all())))
        return 0
    if args.describe:
        from securefrl.configtools import describe

        rows = describe(MatrixConfig)
        width = max(len(n) for n, _, _ in rows)
        for name, default, doc in rows:
            print(f"{name:<{width}}  = {default!r}\n{'':<{width}}    # {doc}")
        return 0
    m = load_matrix_config(args.config, args.set)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    rows = run_matrix(m, log=log, workers=args.workers)
    folder = write_outputs(rows, m, args.out)
    print(f"attack matrix: {len(rows)} rows -> {folder}/summary.md, cells.csv, *.png")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``attack-matrix`` sub-command to ``securefrl``'s sub-parsers (entry point ``securefrl.commands``)."""
    p = subparsers.add_parser("attack-matrix", help="run attacks x defences x protocols x seeds and write tables/plots",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m attacks.cli``) with the same arguments as the sub-command."""
    parser = argparse.ArgumentParser(prog="attack-matrix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    from securefrl.errors import SecureFRLError

    try:
        return run(parser.parse_args(argv))
    except SecureFRLError as err:
        print(f"attack-matrix: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
