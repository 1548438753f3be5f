"""The results folder of a run: resolved config, streamed metrics, summary, plot, checkpoint.

Layout of ``<output_dir>/<name>/``::

    config.yaml        the resolved config (re-runnable with ``securefrl run --config``)
    environments.json  each client's drawn environment parameters
    clients.jsonl      one row per round and client (returns, bytes, update norm, ...)
    rounds.jsonl       one row per round (mean/min return, times per phase, bytes)
    summary.json       final figures of the run
    returns.png        return per round for every client and their mean
    checkpoint.pt      state after the last finished round (for ``--resume``)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def json_safe(obj: Any) -> Any:
    """JSON-safe: NaN/Inf become None (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


class ResultsDir:
    """Writes one run's files; rows are appended as rounds finish."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    def write_json(self, name: str, data: Any) -> None:
        (self.path / name).write_text(json.dumps(json_safe(data), indent=2) + "\n")

    def write_config(self, config: dict[str, Any]) -> None:
        (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def reset_rows(self, clients: Iterable[dict[str, Any]], rounds: Iterable[dict[str, Any]]) -> None:
        """Rewrite the row files from a history (used on start and on resume)."""
        for name, rows in (("clients.jsonl", clients), ("rounds.jsonl", rounds)):
            with open(self.path / name, "w") as fh:
                fh.writelines(json.dumps(json_safe(row)) + "\n" for row in rows)

    def append_rows(self, clients: Iterable[dict[str, Any]], round_row: dict[str, Any]) -> None:
        with open(self.path / "clients.jsonl", "a") as fh:
            fh.writelines(json.dumps(json_safe(row)) + "\n" for row in clients)
        with open(self.path / "rounds.jsonl", "a") as fh:
            fh.write(json.dumps(json_safe(round_row)) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_returns(client_rows: list[dict[str, Any]], round_rows: list[dict[str, Any]], out: str | Path,
                 title: str = "") -> None:
    """Return of the global model per round for every client (thin lines) and their mean (bold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
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
            label="mean")
    ax.set_xlabel("round")
    ax.set_ylabel("evaluation return (global model)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
