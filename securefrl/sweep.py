"""Privacy-utility sweep: final return against epsilon over a grid of noise levels x seeds.

Each grid point is a full experiment (same config, other ``privacy`` settings and seed); the
no-DP baseline runs the same seeds with ``placement = "none"``. Every grid point's config is built
and validated before the first run starts, so a bad value fails in a second, not after the baseline.
The table holds the mean final return over seeds with a 95% percentile-bootstrap interval (it stays
inside the range of the observed returns, unlike a t-interval over 3 seeds; with one seed there is
no interval and none is printed) and the epsilon reached; the plot draws return against epsilon
(log scale) with the baseline as a band.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securefrl.config import ExperimentConfig, replace
from securefrl.configtools import to_dict
from securefrl.errors import ConfigError
from securefrl.experiment import run_experiment
from securefrl.results import new_run_dir

#: Bootstrap resamples of the seed means; the generator is seeded so the table is reproducible.
BOOTSTRAP_RESAMPLES = 10_000


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
    def ci(self) -> tuple[float, float] | None:
        """95% percentile-bootstrap interval of the mean over seeds; None with fewer than two seeds."""
        r = np.asarray(self.returns, dtype=np.float64)
        if r.size < 2:
            return None
        rng = np.random.default_rng(0)
        means = r[rng.integers(0, r.size, size=(BOOTSTRAP_RESAMPLES, r.size))].mean(axis=1)
        lo, hi = np.percentile(means, [2.5, 97.5])
        return float(lo), float(hi)

    def describe(self) -> str:
        eps = "-" if self.epsilon is None else f"{self.epsilon:.3g}"
        ci = self.ci
        n = len(self.returns)
        band = "(1 seed: CI n/a)" if ci is None else f"95% CI [{ci[0]:.1f}, {ci[1]:.1f}] ({n} seeds)"
        return f"{self.label:>10}  epsilon {eps:>8}  final return {self.mean:7.1f}  {band}"


def final_return(rounds: list[dict[str, Any]], window: int = 3) -> float:
    """Mean of the last ``window`` rounds' mean returns (less noisy than the very last round)."""
    return float(np.mean([r["mean_return"] for r in rounds[-window:]]))


def _grid(base: ExperimentConfig, placement: str, noise_multipliers: list[float] | None,
          target_epsilons: list[float] | None) -> list[tuple[str, dict[str, Any]]]:
    grid: list[tuple[str, dict[str, Any]]] = [("no DP", {"placement": "none"})]
    for z in noise_multipliers or []:
        if not z > 0:
            raise ConfigError("noise_multiplier", f"{z!r} is not a noise level to sweep; give values > 0 "
                              "(the no-DP baseline is always included)")
        grid.append((f"z={z:g}", {"placement": placement, "noise_multiplier": z, "target_epsilon": 0.0}))
    for e in target_epsilons or []:
        if not e > 0:
            raise ConfigError("epsilon", f"target epsilon {e!r} is not reachable by any finite noise; give values "
                              "> 0 (the no-DP baseline, epsilon = infinity, is always included)")
        grid.append((f"eps={e:g}", {"placement": placement, "target_epsilon": e}))
    return grid


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def run_sweep(base: ExperimentConfig, placement: str, seeds: list[int], noise_multipliers: list[float] | None = None,
              target_epsilons: list[float] | None = None, out_dir: str | Path | None = None,
              progress: bool = True) -> list[SweepPoint]:
    """Run the grid and write ``sweep.csv``, ``sweep.md`` and ``sweep.png`` to ``out_dir``.

    ``out_dir`` defaults to a new ``<output_dir>/<name>-sweep/<timestamp>`` folder; each run of the
    grid is a run folder below ``<out_dir>/runs``.
    """
    if placement == "none":
        raise ConfigError("placement", "choose a DP placement to sweep: central, distributed or local")
    if bool(noise_multipliers) == bool(target_epsilons):
        raise ConfigError("sweep", "give either noise multipliers or target epsilons (one of the two)")
    if not seeds:
        raise ConfigError("seeds", "give at least one seed")
    grid = _grid(base, placement, noise_multipliers, target_epsilons)
    # Build (and so validate) every config before the first run.
    configs = [[(seed, replace(base, seed=seed, privacy={**to_dict(base.privacy), **privacy})) for seed in seeds]
               for _label, privacy in grid]
    out = Path(out_dir) if out_dir is not None else new_run_dir(Path(base.output_dir) / f"{base.name}-sweep")
    out.mkdir(parents=True, exist_ok=True)
    total, done, t0 = len(grid) * len(seeds), 0, time.perf_counter()
    points = []
    for (label, privacy), runs in zip(grid, configs, strict=True):
        returns, eps = [], []
        for seed, cfg in runs:
            if progress:
                eta = "ETA --" if done == 0 else f"ETA {_duration((time.perf_counter() - t0) / done * (total - done))}"
                print(f"sweep [{done + 1}/{total}] {label}, seed {seed}  ({eta})", flush=True)
            tag = label.replace(" ", "").replace("=", "")
            res = run_experiment(cfg, progress=False, out=out / "runs" / f"{tag}-seed{seed}", overwrite=True)
            returns.append(final_return(res.rounds))
            eps.append(res.summary.get("epsilon"))
            done += 1
        reached = [x for x in eps if x is not None]
        e = float(np.mean(reached)) if reached else None
        points.append(SweepPoint(label, privacy.get("noise_multiplier"), privacy.get("target_epsilon") or None, e,
                                 returns))
    if progress:
        print(f"sweep: {total} runs in {_duration(time.perf_counter() - t0)}; table and plot in {out}", flush=True)
    write_sweep(points, out, title=f"{base.name}: {base.env.name}, heterogeneity {base.env.heterogeneity:g}, "
                                   f"{base.protocol.name}, {placement} noise, {len(seeds)} seeds")
    return points


def write_sweep(points: list[SweepPoint], out: Path, title: str = "") -> None:
    """The table (CSV and Markdown) and the plot of a sweep."""
    header = ["setting", "noise_multiplier", "epsilon", "final_return_mean", "ci95_low", "ci95_high", "seeds"]
    rows = []
    for p in points:
        ci = p.ci
        rows.append([p.label, p.noise_multiplier, p.epsilon, round(p.mean, 2),
                     None if ci is None else round(ci[0], 2), None if ci is None else round(ci[1], 2), len(p.returns)])
    with open(out / "sweep.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(["" if v is None else v for v in row] for row in rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v)) for v in row)
              + " |" for row in rows]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    sweep_figure(points, title).savefig(out / "sweep.png")


def sweep_figure(points: list[SweepPoint], title: str = "") -> Any:
    """Final return against epsilon (log scale), bootstrap intervals as error bars, no-DP baseline as a band."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4), dpi=110)
    ax = fig.subplots()
    dp = sorted(((p.epsilon, p) for p in points if p.epsilon is not None), key=lambda ep: ep[0])
    if dp:
        err = np.array([[p.mean - p.ci[0], p.ci[1] - p.mean] if p.ci else [0.0, 0.0] for _, p in dp]).T
        ax.errorbar([e for e, _ in dp], [p.mean for _, p in dp], yerr=err, marker="o", capsize=3,
                    label="DP (mean, 95% bootstrap CI over seeds)")
        ax.set_xscale("log")
    for p in points:
        if p.epsilon is None:
            ax.axhline(p.mean, color="black", ls="--", label="no DP")
            if p.ci is not None:
                ax.axhspan(p.ci[0], p.ci[1], color="black", alpha=0.08)
    ax.set_xlabel("epsilon against the server, or as privacy.calibrate_against says (delta as configured)")
    ax.set_ylabel("final return (mean of the last 3 rounds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
