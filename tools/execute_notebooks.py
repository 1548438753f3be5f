"""Execute the tutorial notebooks in place, so the repository holds them with their outputs.

    python tools/execute_notebooks.py                 # every notebook, small settings (SECUREFRL_SMALL=1)
    python tools/execute_notebooks.py --full 01 02    # the named notebooks at full size

Each notebook runs in a scratch folder (its results/ does not land in the repository), with the
notebook's own inline matplotlib backend.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(path: Path, small: bool) -> float:
    os.environ.pop("MPLBACKEND", None)
    os.environ["SECUREFRL_SMALL"] = "1" if small else "0"
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": scratch}}).execute()
    root = str(NOTEBOOKS.parent) + os.sep
    for cell in nb.cells:  # warnings name source files: keep paths relative to the repository
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out["text"] = out["text"].replace(root, "")
    nb.metadata["securefrl"] = {"executed_with": "SECUREFRL_SMALL=1" if small else "full settings"}
    nbformat.write(nb, path)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("only", nargs="*", help="notebook name prefixes (default: all)")
    ap.add_argument("--full", action="store_true", help="full settings instead of SECUREFRL_SMALL=1")
    args = ap.parse_args()
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        if args.only and not any(path.name.startswith(p) for p in args.only):
            continue
        print(f"{path.name}: {execute(path, not args.full):.0f} s", flush=True)


if __name__ == "__main__":
    main()
