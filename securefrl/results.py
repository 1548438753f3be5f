"""The results folder of a run: resolved config, streamed metrics, summary, plot, checkpoint.

Every run gets its own folder ``<output_dir>/<name>/<YYYYmmdd-HHMMSS>/`` (a ``-2``, ``-3``, ...
suffix if two runs start in the same second), so no run overwrites another; ``--out DIR`` writes to
``DIR`` instead and refuses a folder that already holds a run unless ``--overwrite``. Layout::

    config.yaml        the resolved config (re-runnable with ``securefrl run --config``)
    environments.json  each client's drawn environment parameters
    clients.jsonl      one row per round and client (returns, bytes, update norm, ...); clients.csv the same
    rounds.jsonl       one row per round (mean/min return, times per phase, bytes); rounds.csv the same
    summary.json       final figures of the run
    returns.png        return per round for every client and their mean
    checkpoint.pt      state after the last finished round (for ``--resume`` and ``securefrl evaluate``)
    tensorboard/       TensorBoard event files (only with ``--tensorboard`` and the tensorboard package)

Plots are drawn on :class:`matplotlib.figure.Figure` objects, never through a global backend switch,
so the same functions render inline in a notebook and to files in a script.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from securefrl.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Files a run writes; ``--overwrite`` removes exactly these (and nothing else a user put in the folder).
RUN_FILES = ("config.yaml", "environments.json", "clients.jsonl", "rounds.jsonl", "clients.csv", "rounds.csv",
             "summary.json", "returns.png", "checkpoint.pt")
TENSORBOARD_DIR = "tensorboard"


def json_safe(obj: Any) -> Any:
    """JSON-safe: NaN/Inf become None (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------- run folders
def is_run(path: str | Path) -> bool:
    """True if ``path`` holds a run (its resolved config)."""
    return (Path(path) / "config.yaml").is_file()


def _stamp_key(path: Path) -> tuple[str, int]:
    """Sort key of run folders: timestamp, then the same-second counter (``-2`` after the bare stamp)."""
    m = re.fullmatch(r"(\d{8}-\d{6})(?:-(\d+))?", path.name)
    return (m.group(1), int(m.group(2) or 1)) if m else (path.name, 0)


def new_run_dir(parent: str | Path) -> Path:
    """A fresh, empty ``parent/<YYYYmmdd-HHMMSS>[-k]`` folder (created atomically, so parallel runs never share)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, k = parent / stamp, 2
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path, k = parent / f"{stamp}-{k}", k + 1


def runs_of(parent: str | Path) -> list[Path]:
    """The runs of one name: the run folders directly below ``parent`` (or ``parent`` itself), oldest first."""
    parent = Path(parent)
    if is_run(parent):
        return [parent]
    if not parent.is_dir():
        return []
    return sorted((p for p in parent.iterdir() if p.is_dir() and is_run(p)), key=_stamp_key)


def latest_run(parent: str | Path) -> Path | None:
    found = runs_of(parent)
    return found[-1] if found else None


def resolve_run(spec: str | Path, output_dir: str | Path = "results") -> Path:
    """A run folder from what a user typed: a run folder, a folder of runs (its latest) or a run name."""
    for candidate in (Path(spec), Path(output_dir) / str(spec)):
        run = latest_run(candidate)
        if run is not None:
            return run
    raise ConfigError("run", f"no run at {spec!r} (nor under {Path(output_dir) / str(spec)}); "
                      "`securefrl runs` lists the runs there are")


@dataclass
class RunInfo:
    """One run found on disk, for ``securefrl runs`` and ``securefrl compare``."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.config.get("name", self.path.parent.name))

    def rounds(self) -> list[dict[str, Any]]:
        f = self.path / "rounds.jsonl"
        return read_jsonl(f) if f.is_file() else []

    def describe(self) -> dict[str, Any]:
        """Table row: what ran and how it ended."""
        cfg, s = self.config, self.summary
        fed = cfg.get("federation", {})
        return {
            "run": str(self.path), "name": self.name, "env": cfg.get("env", {}).get("name"),
            "heterogeneity": cfg.get("env", {}).get("heterogeneity"), "agent": cfg.get("agent", {}).get("name"),
            "clients": fed.get("n_clients"), "protocol": cfg.get("protocol", {}).get("name"),
            "privacy": cfg.get("privacy", {}).get("placement"), "attack": cfg.get("attack", {}).get("name"),
            "personalization": cfg.get("personalization", {}).get("method"),
            "rounds": f"{s.get('rounds_completed', len(self.rounds()))}/{fed.get('rounds')}",
            "final": s.get("final_mean_return"), "best": s.get("best_mean_return"), "epsilon": s.get("epsilon"),
        }


def read_run(path: str | Path) -> RunInfo:
    path = Path(path)
    if not is_run(path):
        raise ConfigError("run", f"{path} holds no run (no config.yaml)")
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    summary_file = path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return RunInfo(path, config, summary)


def find_runs(root: str | Path = "results") -> list[RunInfo]:
    """Every run below ``root`` (recursively), oldest first by folder name within a name."""
    root = Path(root)
    if not root.exists():
        return []
    found = sorted({p.parent for p in root.rglob("config.yaml") if (p.parent / "rounds.jsonl").is_file()},
                   key=lambda p: (str(p.parent), _stamp_key(p)))
    return [read_run(p) for p in found]


# ------------------------------------------------------------------------------------------------ writers
class _CsvLog:
    """An append-only CSV of rows whose keys may grow (a new column rewrites the file once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] = []
        self.rows: list[dict[str, Any]] = []

    @staticmethod
    def _cell(v: Any) -> Any:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return ""
        return json.dumps(v) if isinstance(v, (dict, list, tuple)) else v

    def reset(self, rows: Iterable[dict[str, Any]]) -> None:
        self.rows = list(rows)
        self.columns = list(dict.fromkeys(k for r in self.rows for k in r))
        self._rewrite()

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as fh:
            w = csv.DictWriter(fh, self.columns)
            w.writeheader()
            w.writerows({k: self._cell(v) for k, v in r.items()} for r in self.rows)

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        new = [k for r in rows for k in r if k not in self.columns]
        if new:
            self.columns.extend(dict.fromkeys(new))
            self._rewrite()
            return
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.columns).writerows({k: self._cell(v) for k, v in r.items()} for r in rows)


def tensorboard_available() -> bool:
    try:
        import tensorboard  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


class _TensorBoardLog:
    """Round scalars to TensorBoard through ``torch.utils.tensorboard`` (needs the tensorboard package)."""

    def __init__(self, path: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(path))

    def log(self, round_row: dict[str, Any]) -> None:
        step = int(round_row["round"])
        for k, v in round_row.items():
            if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                group = "time" if k.startswith("time_") or k == "round_time" else "federation"
                self.writer.add_scalar(f"{group}/{k}", v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class ResultsDir:
    """Writes one run's files; rows are appended (JSON lines and CSV) as rounds finish."""

    def __init__(self, path: str | Path, tensorboard: bool = False, fresh: bool = False) -> None:
        """``fresh``: remove an earlier run's files first (a new run or ``--overwrite``, not a resume)."""
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.clear()
        self._csv = {"clients": _CsvLog(self.path / "clients.csv"), "rounds": _CsvLog(self.path / "rounds.csv")}
        self._tb: _TensorBoardLog | None = None
        if tensorboard:
            if tensorboard_available():
                self._tb = _TensorBoardLog(self.path / TENSORBOARD_DIR)
            else:
                print("securefrl: TensorBoard logging skipped: the tensorboard package is not installed "
                      "(pip install tensorboard, or pip install -e '.[tensorboard]')", file=sys.stderr)

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    def clear(self) -> None:
        """Remove a previous run's files from this folder (``--overwrite``); other files stay."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / TENSORBOARD_DIR, ignore_errors=True)

    def write_json(self, name: str, data: Any) -> None:
        (self.path / name).write_text(json.dumps(json_safe(data), indent=2) + "\n")

    def write_config(self, config: dict[str, Any]) -> None:
        (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def reset_rows(self, clients: Iterable[dict[str, Any]], rounds: Iterable[dict[str, Any]]) -> None:
        """Rewrite the row files from a history (used on start and on resume)."""
        clients, rounds = list(clients), list(rounds)
        for name, rows in (("clients", clients), ("rounds", rounds)):
            with open(self.path / f"{name}.jsonl", "w") as fh:
                fh.writelines(json.dumps(json_safe(row)) + "\n" for row in rows)
            self._csv[name].reset(rows)
        if self._tb is not None:
            for row in rounds:
                self._tb.log(row)

    def append_rows(self, clients: Sequence[dict[str, Any]], round_row: dict[str, Any]) -> None:
        with open(self.path / "clients.jsonl", "a") as fh:
            fh.writelines(json.dumps(json_safe(row)) + "\n" for row in clients)
        with open(self.path / "rounds.jsonl", "a") as fh:
            fh.write(json.dumps(json_safe(round_row)) + "\n")
        self._csv["clients"].append(clients)
        self._csv["rounds"].append([round_row])
        if self._tb is not None:
            self._tb.log(round_row)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


# ------------------------------------------------------------------------------------------------- plots
def integer_rounds(ax: Any) -> None:
    """Round axes show whole rounds only (a 2-round run otherwise gets ticks at 0.25, 0.5, ...)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def run_title(config: Any, run: str | Path | None = None) -> str:
    """``name (folder): agent on env, heterogeneity h, n clients, protocol[, extras]`` for plot titles."""
    c = config
    parts = [f"{c.agent.name} on {c.env.name}, heterogeneity {c.env.heterogeneity:g}, {c.federation.n_clients} "
             f"clients, {c.protocol.name}"]
    if c.privacy.placement != "none":
        parts.append(f"{c.privacy.placement} DP")
    if c.attack.name != "none":
        parts.append(f"{c.attack.n_malicious}x {c.attack.name}")
    if c.federation.aggregator != "fedavg":
        parts.append(c.federation.aggregator)
    if c.personalization.method != "none":
        parts.append(c.personalization.method)
    head = c.name if run is None else f"{c.name} ({Path(run).name})"
    return f"{head}\n" + ", ".join(parts)


def returns_figure(client_rows: list[dict[str, Any]], round_rows: list[dict[str, Any]], config: Any = None,
                   run: str | Path | None = None, title: str = "") -> Figure:
    """Return per round for every client (thin lines) and their mean (bold), as a Figure.

    Under personalization ``return_global`` is the released model with each client's own local
    parts, so the y-label says "client's model" rather than "global model".
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.subplots()
    by_client: dict[int, list[tuple[int, float]]] = {}
    for row in client_rows:
        by_client.setdefault(row["client"], []).append((row["round"], row["return_global"]))
    if len(by_client) <= 20:
        for cid, pts in sorted(by_client.items()):
            xs, ys = zip(*sorted(pts), strict=True)
            ax.plot(xs, ys, lw=0.9, alpha=0.55, label=f"client {cid}")
    else:  # many clients: a band instead of one line (and legend entry) each
        rounds = [r["round"] for r in round_rows]
        per_round = np.array([[dict(pts).get(r, np.nan) for r in rounds] for pts in by_client.values()])
        lo, hi = np.nanpercentile(per_round, [10, 90], axis=0)
        ax.fill_between(rounds, lo, hi, alpha=0.25, label=f"10-90th percentile of {len(by_client)} clients")
    ax.plot([r["round"] for r in round_rows], [r["mean_return"] for r in round_rows], color="black", lw=2.2,
            label="mean", marker="o" if len(round_rows) < 4 else None)
    personalized = config is not None and config.personalization.method != "none"
    ax.set_xlabel("round")
    ax.set_ylabel("evaluation return (each client's model)" if personalized else "evaluation return (global model)")
    integer_rounds(ax)
    ax.set_title(title or (run_title(config, run) if config is not None else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def plot_returns(client_rows: list[dict[str, Any]], round_rows: list[dict[str, Any]], out: str | Path,
                 title: str = "", config: Any = None, run: str | Path | None = None) -> None:
    """:func:`returns_figure` saved to ``out``."""
    returns_figure(client_rows, round_rows, config, run, title).savefig(out)


def compare_figure(runs: Sequence[RunInfo], metric: str = "mean_return") -> Figure:
    """The ``metric`` curve of several runs on one axis, one labelled line per run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), dpi=110)
    ax = fig.subplots()
    names = [r.name for r in runs]
    for info in runs:
        rows = [r for r in info.rounds() if r.get(metric) is not None]
        label = info.name if names.count(info.name) == 1 else f"{info.name} ({info.path.name})"
        ax.plot([r["round"] for r in rows], [r[metric] for r in rows], marker="o" if len(rows) < 4 else None,
                label=label)
    envs = sorted({str(r.config.get("env", {}).get("name")) for r in runs})
    hets = sorted({f"{r.config.get('env', {}).get('heterogeneity', 0):g}" for r in runs})
    ax.set_title(f"{metric.replace('_', ' ')} of {len(runs)} runs on {', '.join(envs)}, heterogeneity "
                 f"{', '.join(hets)}", fontsize=9)
    ax.set_xlabel("round")
    ax.set_ylabel(metric.replace("_", " "))
    integer_rounds(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
