"""Privacy-utility sweep: final return against epsilon over a grid of noise levels x seeds.

Each grid point is a full experiment (same config, other ``privacy`` settings and seed); the
no-DP baseline runs the same seeds with ``placement = "none"``. The table holds the mean final
return with a 95% t-interval over seeds and the epsilon reached; the plot draws return against
epsilon (log scale) with the baseline as a band.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from securefrl.config import ExperimentConfig, replace
from securefrl.configtools import to_dict
from securefrl.errors import ConfigError
from securefrl.experiment import run_experiment


@dataclass
class SweepPoint:
    """One grid point aggregated over seeds."""

    label: str
    noise_multiplier: float | None
    target_epsilon: float | None
    epsilon: float | None
    returns: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def ci95(self) -> float:
        """Half-width of the 95% t-interval of the mean over seeds (0 with one seed)."""
        n = len(self.returns)
        if n < 2:
            return 0.0
        return float(stats.t.ppf(0.975, n - 1) * np.std(self.returns, ddof=1) / math.sqrt(n))


def final_return(rounds: list[dict[str, Any]], window: int = 3) -> float:
    """Mean of the last ``window`` rounds' mean returns (less noisy than the very last round)."""
    return float(np.mean([r["mean_return"] for r in rounds[-window:]]))


def run_sweep(base: ExperimentConfig, placement: str, seeds: list[int], noise_multipliers: list[float] | None = None,
              target_epsilons: list[float] | None = None, out_dir: str | Path | None = None,
              progress: bool = True) -> list[SweepPoint]:
    """Run the grid and write ``sweep.csv``, ``sweep.md`` and ``sweep.png`` to ``out_dir``."""
    if placement == "none":
        raise ConfigError("placement", "choose a DP placement to sweep: central, distributed or local")
    if bool(noise_multipliers) == bool(target_epsilons):
        raise ConfigError("sweep", "give either noise multipliers or target epsilons (one of the two)")
    if not seeds:
        raise ConfigError("seeds", "give at least one seed")
    out = Path(out_dir or Path(base.output_dir) / f"{base.name}-sweep")
    out.mkdir(parents=True, exist_ok=True)
    grid: list[tuple[str, dict[str, Any]]] = [("no DP", {"placement": "none"})]
    for z in noise_multipliers or []:
        grid.append((f"z={z:g}", {"placement": placement, "noise_multiplier": z, "target_epsilon": 0.0}))
    for e in target_epsilons or []:
        grid.append((f"eps={e:g}", {"placement": placement, "target_epsilon": e}))
    points = []
    for label, privacy in grid:
        returns, eps = [], []
        for seed in seeds:
            cfg = replace(base, seed=seed, name=f"{label.replace(' ', '').replace('=', '')}-seed{seed}",
                          output_dir=str(out / "runs"), privacy={**to_dict(base.privacy), **privacy})
            if progress:
                print(f"sweep: {label}, seed {seed}", flush=True)
            res = run_experiment(cfg, progress=False)
            returns.append(final_return(res.rounds))
            eps.append(res.summary.get("epsilon"))
        e = None if eps[0] is None else float(np.mean(eps))
        points.append(SweepPoint(label, privacy.get("noise_multiplier"), privacy.get("target_epsilon") or None, e,
                                 returns))
    write_sweep(points, out, title=f"{base.env.name}, {base.protocol.name}, {placement} noise, {len(seeds)} seeds")
    return points


def write_sweep(points: list[SweepPoint], out: Path, title: str = "") -> None:
    """The table (CSV and Markdown) and the plot of a sweep."""
    header = ["setting", "noise_multiplier", "epsilon", "final_return_mean", "ci95", "seeds"]
    rows = [[p.label, p.noise_multiplier, p.epsilon, round(p.mean, 2), round(p.ci95, 2), len(p.returns)]
            for p in points]
    with open(out / "sweep.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v)) for v in row)
              + " |" for row in rows]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    dp = sorted((p for p in points if p.epsilon is not None), key=lambda p: p.epsilon)  # type: ignore[arg-type,return-value]
    if dp:
        ax.errorbar([p.epsilon for p in dp], [p.mean for p in dp], yerr=[p.ci95 for p in dp], marker="o",
                    capsize=3, label="DP (mean, 95% CI over seeds)")
        ax.set_xscale("log")
    for p in points:
        if p.epsilon is None:
            ax.axhline(p.mean, color="black", ls="--", label="no DP")
            ax.axhspan(p.mean - p.ci95, p.mean + p.ci95, color="black", alpha=0.08)
    ax.set_xlabel("epsilon against the server, or as privacy.calibrate_against says (delta as configured)")
    ax.set_ylabel("final return")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sweep.png")
    plt.close(fig)
