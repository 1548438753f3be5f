"""The runner shared by the personalization benchmarks (``benchmarks/heterogeneity.py``,
``benchmarks/personalization.py``, ``securefrl heterogeneity``): train one federation, evaluate what each
client deploys, summarise over seeds with 95% intervals, tabulate and plot.

One training run (:func:`train_and_deploy`) is a config given as overrides; it runs on the vectorized
simulation where the config allows it (the same metrics as the loop, tested in
``tests/securefrl/test_vectorized_apps.py`` and ``tests/securefrl/test_axes.py``) and on the loop otherwise, and
records which (and, for the loop, the vectorized path's refusal as ``loop_reason``; the log line shows it).
After the last round every client's deployed model — the global model (``global``) or the client's personal
one (``personal``) — is evaluated on ``final_episodes`` greedy episodes in the client's own environment, on
episode seeds derived from the run's seed only, so every method of a seed is evaluated on the same episodes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securefrl.stats import t_interval

__all__ = ["HETEROGENEITY_FAMILIES", "HETEROGENEITY_METHODS", "GridSettings", "goal_check", "heterogeneity_jobs",
           "markdown_table", "plot_family", "run_heterogeneity", "run_heterogeneity_job", "summarize", "t_interval",
           "train_and_deploy", "wide_table"]


def _config(overrides: Sequence[str], vectorized: bool) -> tuple[Any, str, str]:
    """The config, the simulation path it runs on, and why it is not the vectorized one ("" if it is)."""
    from securefrl.config import load_config
    from securefrl.errors import ConfigError

    why = "not asked for"
    if vectorized:
        try:
            return load_config(overrides=[*overrides, "federation.simulation=vectorized"]), "vectorized", ""
        except ConfigError as err:  # the method or the env does not run vectorized: the loop gives the same
            why = str(err)          # results, slower; the record says so and why
    return load_config(overrides=list(overrides)), "loop", why


def train_and_deploy(overrides: Sequence[str], deploy: Mapping[str, str], final_episodes: int,
                     eval_tag: str = "final-eval", vectorized: bool = True) -> list[dict[str, Any]]:
    """Train the federation ``overrides`` configure; one record per method of ``deploy``.

    ``deploy`` maps a reported method name to the model its clients deploy: ``"global"`` (the algorithm's
    model for the client, e.g. FedAvg's global model) or ``"personal"`` (``fed.personal_model``). A config the
    library refuses yields records with ``refused`` (the reason) instead of results. Records carry the final
    returns per client, the per-round mean evaluation (``curve``), the clients' environment parameters, the
    simulation path (with ``loop_reason`` if it is the loop), environment steps and upload per client, and
    training seconds.
    """
    import torch

    from securefrl.errors import ConfigError
    from securefrl.federation import make_federation
    from securefrl.seeding import derive_seed
    from securefrl.tasks import EvalTask

    torch.set_num_threads(1)
    try:
        cfg, path, why_loop = _config(overrides, vectorized)
        fed = make_federation(cfg)
    except ConfigError as err:  # e.g. a method the family's agent does not support
        return [{"method": m, "refused": str(err)} for m in deploy]
    t0 = time.perf_counter()
    curves: dict[str, list[float]] = {"global": [], "personal": []}
    bytes_up = []
    for _ in range(cfg.federation.rounds):
        rec = fed.run_round()
        curves["personal"].append(float(np.mean([c["return_personal"] for c in rec.clients])))
        curves["global"].append(float(np.mean([c["return_global"] for c in rec.clients])))
        bytes_up.append(rec.summary["bytes_up"] / len(fed.clients))
    seconds = time.perf_counter() - t0
    common: dict[str, Any] = {
        "physics": [c.env_spec.params for c in fed.clients], "simulation": path, "train_seconds": seconds,
        **({"loop_reason": why_loop} if why_loop else {}),
        "env_steps_per_client": float(np.mean([c.env_steps for c in fed.clients])),
        "kb_up_per_client_round": float(np.mean(bytes_up)) / 1024,
    }
    if hasattr(fed.algorithm, "choice"):
        common["clusters"] = [None if fed.choice[c.client_id] is None else int(fed.choice[c.client_id])
                              for c in fed.clients]
    out = []
    for method, which in deploy.items():
        if which not in curves:
            raise ValueError(f"deploy {method!r}: {which!r} is neither 'global' nor 'personal'")
        models = [fed.algorithm.client_model(c) if which == "global" else fed.personal_model(c) for c in fed.clients]
        tasks = [EvalTask(c.client_id, fed.round, eval_tag, params=np.asarray(m), episodes=final_episodes,
                          seed=derive_seed(cfg.seed, eval_tag, c.client_id) % (2**31))
                 for c, m in zip(fed.clients, models, strict=True)]
        final = [float(x) for x in fed.executor.evaluate(tasks)]
        out.append({**common, "method": method, "final": final, "curve": curves[which]})
    fed.close()
    return out


def summarize(records: Sequence[Mapping[str, Any]], methods: Sequence[str], families: Sequence[str],
              key: str = "family", baseline: str = "local") -> list[dict[str, Any]]:
    """One row per ``key`` (family or setting) x h x method, over seeds (95% t-intervals over seeds).

    Rows of methods other than ``baseline`` carry the comparison with it, paired by seed and client: the fraction
    of clients whose return is below their ``baseline`` return and the penalty ``baseline mean - method mean``.
    """
    rows = []
    done = [r for r in records if "final" in r]
    cells = sorted({(r[key], r["h"]) for r in records}, key=lambda k: (list(families).index(k[0]), k[1]))
    for fam, h in cells:
        base = {r["seed"]: r["final"] for r in done if (r[key], r["h"], r["method"]) == (fam, h, baseline)}
        for method in methods:
            rs = [r for r in records if (r[key], r["h"], r["method"]) == (fam, h, method)]
            if not rs:
                continue
            refused = [r["refused"] for r in rs if "refused" in r]
            if refused:
                rows.append({key: fam, "h": h, "method": method, "seeds": 0, "refused": refused[0]})
                continue
            mean, mean_ci = t_interval([float(np.mean(r["final"])) for r in rs])
            worst, worst_ci = t_interval([float(np.min(r["final"])) for r in rs])
            row: dict[str, Any] = {key: fam, "h": h, "method": method, "seeds": len(rs), "mean": mean,
                                   "mean_ci95": mean_ci, "worst": worst, "worst_ci95": worst_ci,
                                   "curve_mean": float(np.mean([np.mean(r["curve"]) for r in rs])),
                                   "env_steps_per_client": float(np.mean([r["env_steps_per_client"] for r in rs])),
                                   "kb_up_per_client_round": float(np.mean([r["kb_up_per_client_round"] for r in rs]))}
            paired = [r for r in rs if r["seed"] in base]
            if method != baseline and paired:
                frac = [float(np.mean(np.asarray(r["final"]) < np.asarray(base[r["seed"]]))) for r in paired]
                gap = [float(np.mean(base[r["seed"]]) - np.mean(r["final"])) for r in paired]
                row["frac_worse_than_local"], row["frac_worse_ci95"] = t_interval(frac)
                row["penalty_vs_local"], row["penalty_ci95"] = t_interval(gap)
            rows.append(row)
    return rows


def _paired(records: Sequence[Mapping[str, Any]], family: str, h: float, a: str, b: str, stat: Any,
            key: str = "family") -> tuple[float, float, int]:
    """Mean and 95% half-width over seeds of ``stat(a's finals) - stat(b's finals)``, paired by seed; and n."""
    def per_seed(m: str) -> dict[int, list[float]]:
        return {r["seed"]: r["final"] for r in records
                if (r[key], r["h"], r["method"]) == (family, h, m) and "final" in r}

    ra, rb = per_seed(a), per_seed(b)
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
        return float("nan"), float("nan"), 0
    mean, ci = t_interval([float(stat(ra[s]) - stat(rb[s])) for s in seeds])
    return mean, ci, len(seeds)


def goal_check(records: Sequence[Mapping[str, Any]], families: Sequence[str], methods: Sequence[str],
               key: str = "family") -> list[str]:
    """The issue's goal, per family, from paired per-seed differences (95% t-intervals over seeds).

    (a) FedAvg's penalty against local-only (local mean - FedAvg mean) is significant at the largest h (interval
    above 0) and larger there than at the smallest h; (b) some personalization method beats both FedAvg and
    local-only at the largest h on mean return (paired interval above 0 against each) and on worst-client return
    (point estimate), while matching FedAvg at the smallest h (the paired interval of its mean against FedAvg's
    includes 0 or lies above it).
    """
    out = []
    pers = [m for m in methods if m not in ("local", "fedavg")]
    for fam in families:
        hs = sorted({float(r["h"]) for r in records if r[key] == fam and "final" in r})
        if len(hs) < 2:
            continue
        lo_h, hi_h = hs[0], hs[-1]
        pen_hi, ci_hi, n = _paired(records, fam, hi_h, "local", "fedavg", np.mean, key)
        pen_lo, ci_lo, _ = _paired(records, fam, lo_h, "local", "fedavg", np.mean, key)
        if n == 0:
            continue
        a = pen_hi - ci_hi > 0 and pen_hi > pen_lo
        line = (f"{fam}: FedAvg penalty vs local {pen_lo:+.1f} ± {ci_lo:.1f} at h={lo_h:g}, {pen_hi:+.1f} ± "
                f"{ci_hi:.1f} at h={hi_h:g} ({n} seeds): {'significant and growing' if a else 'NOT significant'}")
        winners = []
        for m in pers:
            d_f, c_f, nm = _paired(records, fam, hi_h, m, "fedavg", np.mean, key)
            d_l, c_l, _ = _paired(records, fam, hi_h, m, "local", np.mean, key)
            w_f, _, _ = _paired(records, fam, hi_h, m, "fedavg", np.min, key)
            w_l, _, _ = _paired(records, fam, hi_h, m, "local", np.min, key)
            z_f, z_c, _ = _paired(records, fam, lo_h, m, "fedavg", np.mean, key)
            if nm == 0:
                continue
            ok = d_f - c_f > 0 and d_l - c_l > 0 and w_f > 0 and w_l > 0 and z_f + z_c >= 0
            winners.append(f"{m} {'YES' if ok else 'no'} (h={hi_h:g}: mean vs fedavg {d_f:+.1f} ± {c_f:.1f}, vs local "
                           f"{d_l:+.1f} ± {c_l:.1f}; worst vs fedavg {w_f:+.1f}, vs local {w_l:+.1f}; h={lo_h:g}: mean "
                           f"vs fedavg {z_f:+.1f} ± {z_c:.1f})")
        out.append(line + ("; personalization: " + "; ".join(winners) if winners else ""))
    return out


def _fmt(value: float, ci: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}" + ("" if np.isnan(ci) else f" ± {ci:.{digits}f}")


def markdown_table(rows: Sequence[Mapping[str, Any]], key: str = "family") -> list[str]:
    """Markdown lines: mean, worst client, fraction worse than local-only, penalty vs local (± 95% CI)."""
    lines = [f"| {key} | h | method | mean return | worst client | worse than local | penalty vs local |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r[key]} | {r['h']} | {r['method']} | refused: {r['refused'][:80]} | | | |")
            continue
        frac = _fmt(r["frac_worse_than_local"], r["frac_worse_ci95"], 2) if "frac_worse_than_local" in r else ""
        pen = _fmt(r["penalty_vs_local"], r["penalty_ci95"]) if "penalty_vs_local" in r else ""
        lines.append(f"| {r[key]} | {r['h']} | {r['method']} | {_fmt(r['mean'], r['mean_ci95'])} | "
                     f"{_fmt(r['worst'], r['worst_ci95'])} | {frac} | {pen} |")
    return lines


def wide_table(rows: Sequence[Mapping[str, Any]], methods: Sequence[str], key: str = "family") -> list[str]:
    """Markdown lines, one row per family x h: each method's mean ± 95% CI / worst client, then FedAvg's penalty
    against local-only and the fraction of clients FedAvg serves worse than local-only training."""
    cells = {(r[key], r["h"], r["method"]): r for r in rows}
    shown = [m for m in methods if any(k[2] == m for k in cells)]
    lines = [f"| {key} | h | " + " | ".join(f"{m} mean / worst" for m in shown) +
             " | FedAvg penalty vs local | clients FedAvg < local |",
             "|---|---|" + "---|" * (len(shown) + 2)]
    for fam, h in dict.fromkeys((k[0], k[1]) for k in cells):
        out = []
        for m in shown:
            r = cells.get((fam, h, m))
            out.append("" if r is None else "refused" if "refused" in r else
                       f"{_fmt(r['mean'], r['mean_ci95'])} / {r['worst']:.1f}")
        fed = cells.get((fam, h, "fedavg"), {})
        pen = _fmt(fed["penalty_vs_local"], fed["penalty_ci95"]) if "penalty_vs_local" in fed else ""
        frac = _fmt(fed["frac_worse_than_local"], fed["frac_worse_ci95"], 2) if "frac_worse_than_local" in fed else ""
        lines.append(f"| {fam} | {h:g} | " + " | ".join(out) + f" | {pen} | {frac} |")
    return lines


def plot_family(rows: Sequence[Mapping[str, Any]], family: str, methods: Sequence[str], path: Path,
                key: str = "family") -> bool:
    """PNG of mean and worst-client final return against h, one line per method (95% CI bars); False if no rows."""
    from matplotlib.figure import Figure  # no pyplot: no global backend switch

    mine = [r for r in rows if r[key] == family and "mean" in r]
    if not mine:
        return False
    fig = Figure(figsize=(11, 3.8), dpi=100)
    axes = fig.subplots(1, 2)
    for method in methods:
        rs = sorted((r for r in mine if r["method"] == method), key=lambda r: r["h"])
        if not rs:
            continue
        color, ls = {"local": ("k", "--"), "fedavg": ("k", "-")}.get(method, (None, "-"))
        for ax, stat in zip(axes, ("mean", "worst"), strict=True):
            ax.errorbar([r["h"] for r in rs], [r[stat] for r in rs],
                        yerr=[0.0 if np.isnan(r[f"{stat}_ci95"]) else r[f"{stat}_ci95"] for r in rs],
                        color=color, ls=ls, marker="o", capsize=3, label=method,
                        lw=2.2 if method in ("local", "fedavg") else 1.2)
    axes[0].set_title(f"{family}: mean final return over clients")
    axes[1].set_title(f"{family}: worst client's final return")
    for ax in axes:
        ax.set_xlabel("heterogeneity h")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    return True


# --- the heterogeneity grid (benchmarks/heterogeneity.py, ``securefrl heterogeneity``) -------------------------

HETEROGENEITY_FAMILIES: dict[str, list[str]] = {
    "cartpole": ["env.name=cartpole"],
    "acrobot": ["env.name=acrobot"],
    "edge_caching": ["env.name=edge_caching"],
    "mec_offloading": ["env.name=mec_offloading"],
    "ran_access": ["env.name=ran_access"],
    "hopper": ["env.name=hopper", "agent.name=sac", "agent.params.learning_starts=500"],
}
"""Config overrides of each family (the continuous hopper needs SAC and securefrl[mujoco])."""

HETEROGENEITY_METHODS = ["local", "fedavg", "finetune", "fedper", "embedding", "ifca", "ditto", "relation"]

_RUNS: dict[str, list[str]] = {
    "local": ["personalization.method=local"],
    "finetune": ["personalization.method=finetune"],  # one run gives fedavg (global) and finetune (tuned)
    "fedper": ["personalization.method=fedper"],
    "embedding": ["personalization.method=embedding"],
    "ifca": ["personalization.method=ifca", "personalization.n_clusters=2"],
    "ditto": ["personalization.method=ditto"],
    "relation": ["personalization.method=relation"],
}


@dataclass(frozen=True)
class GridSettings:
    """What every training run of a heterogeneity grid shares (records carry :meth:`record` and are matched on it)."""

    clients: int = 4
    rounds: int = 8
    local_steps: int = 1024
    final_episodes: int = 5
    client_types: int = 0
    """> 0: the clients are drawn in that many types (``env.client_types``, :func:`draw_client_envs
    <securefrl.envs.spec.draw_client_envs>`), so that same-type clients can help each other at every h."""
    type_spread: float = 0.1
    """``env.type_spread`` with ``client_types``."""
    extra: tuple[str, ...] = ()
    """Config overrides applied to every run after the grid's own (``--set agent.params.lr=1e-3``: a sensitivity
    check); recorded, so records of runs with other extras are never mixed."""

    def record(self) -> dict[str, Any]:
        """The settings as records store them (an untyped grid's records carry no type keys)."""
        out: dict[str, Any] = {"clients": self.clients, "rounds": self.rounds, "local_steps": self.local_steps,
                               "final_episodes": self.final_episodes}
        if self.client_types:
            out |= {"client_types": self.client_types, "type_spread": self.type_spread}
        if self.extra:
            out["extra"] = list(self.extra)
        return out

    def overrides(self) -> list[str]:
        """Config overrides of a run of the grid."""
        out = [f"federation.n_clients={self.clients}", f"federation.rounds={self.rounds}",
               f"federation.local_steps={self.local_steps}", "federation.eval_episodes=1"]
        if self.client_types:
            out += [f"env.client_types={self.client_types}", f"env.type_spread={self.type_spread}"]
        return out

    def describe(self) -> str:
        types = f" in {self.client_types} types (spread {self.type_spread:g})" if self.client_types else ""
        extra = f" (every run also: {', '.join(self.extra)})" if self.extra else ""
        return f"{self.clients} clients{types}, {self.rounds} rounds x {self.local_steps} local steps{extra}"

    def add_arguments(self, parser: Any) -> None:
        """``--clients``, ``--rounds``, ... on an argparse parser, defaulting to this grid's values (the
        benchmark script and the ``securefrl heterogeneity`` command share them; :meth:`from_args` reads them)."""
        parser.add_argument("--clients", type=int, default=self.clients)
        parser.add_argument("--rounds", type=int, default=self.rounds)
        parser.add_argument("--local-steps", type=int, default=self.local_steps)
        parser.add_argument("--final-episodes", type=int, default=self.final_episodes)
        parser.add_argument("--client-types", type=int, default=self.client_types,
                            help="draw the clients in this many types (env.client_types); 0: every client its own draw")
        parser.add_argument("--type-spread", type=float, default=self.type_spread,
                            help="env.type_spread with --client-types")
        parser.add_argument("--set", action="append", default=list(self.extra), metavar="KEY=VALUE",
                            help="config override for every run, after the grid's own (repeatable)")

    @classmethod
    def from_args(cls, args: Any) -> GridSettings:
        """The grid of parsed :meth:`add_arguments` options."""
        return cls(args.clients, args.rounds, args.local_steps, args.final_episodes, args.client_types,
                   args.type_spread, tuple(args.set))


def heterogeneity_jobs(families: Sequence[str], levels: Sequence[float], methods: Sequence[str], seeds: Sequence[int],
                       grid: GridSettings) -> list[dict[str, Any]]:
    """The grid's training runs, seed-major (a stopped grid has whole seeds), local-only first in each cell."""
    runs: list[str] = []
    for m in ["local", *methods]:  # the comparison needs local-only
        run = "finetune" if m in ("fedavg", "finetune") else m
        if run not in runs:
            runs.append(run)
    return [{"family": f, "h": float(h), "run": run, "seed": seed, "grid": grid}
            for seed in seeds for f in families for h in levels for run in runs]


def _equal_budget(run: str, grid: GridSettings) -> list[str]:
    """Overrides that give a method the grid's environment steps per client and round, no more.

    A method whose train tasks run a second agent (``second_agent``: Ditto's personal model) collects rollouts
    for each of its two models, so each gets half the steps; otherwise Ditto would see twice the data of
    local-only training (it did until session 5: 16,384 vs 8,192 steps per client).
    """
    from securefrl.axes import ALGORITHMS

    if "second_agent" not in ALGORITHMS.meta(run).get("task_features", ()):  # a run is named by its method
        return []
    half = grid.local_steps // 2
    return [f"federation.local_steps={half}", f"personalization.ditto_steps={grid.local_steps - half}"]


def run_heterogeneity_job(job: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Train one (family, h, run, seed) of the grid; one record per method it yields."""
    grid: GridSettings = job["grid"]
    overrides = [f"seed={job['seed']}", f"env.heterogeneity={job['h']}", *grid.overrides(),
                 *HETEROGENEITY_FAMILIES[job["family"]], *_RUNS[job["run"]], *_equal_budget(job["run"], grid),
                 *grid.extra]
    deploy = {"fedavg": "global", "finetune": "personal"} if job["run"] == "finetune" else {job["run"]: "personal"}
    common = {"family": job["family"], "h": job["h"], "seed": job["seed"]}
    return [{**common, **r} for r in train_and_deploy(overrides, deploy, grid.final_episodes,
                                                       eval_tag="heterogeneity-final-eval")]


def _job_key(r: Mapping[str, Any]) -> tuple[str, float, str, int]:
    run = "finetune" if r["method"] in ("fedavg", "finetune") else r["method"]
    return (r["family"], float(r["h"]), run, int(r["seed"]))


def _seed_text(seeds: Sequence[int]) -> str:
    s = sorted(seeds)
    span = f"{s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) else ", ".join(map(str, s))
    return f"{len(s)} seeds ({span})"


def run_heterogeneity(families: Sequence[str], levels: Sequence[float], methods: Sequence[str], seeds: Sequence[int],
                      grid: GridSettings, out_dir: Path, suffix: str = "", log: Any = None,
                      train: bool = True) -> list[dict[str, Any]]:
    """Run (or continue) the grid; write ``heterogeneity{suffix}.jsonl`` (records, appended as each run ends, so a
    stopped grid continues where it stopped), ``.json`` (summary + records), ``.md`` and one PNG per family.
    With ``train=False`` only the records already there are summarised. Returns the summary rows."""
    import json
    import platform

    from securefrl.results import json_safe

    for f in families:
        if f not in HETEROGENEITY_FAMILIES:
            raise ValueError(f"unknown family {f!r}; choose from {', '.join(HETEROGENEITY_FAMILIES)}")
    bad = [m for m in methods if m not in HETEROGENEITY_METHODS]
    if bad:
        raise ValueError(f"unknown methods {bad}; choose from {', '.join(HETEROGENEITY_METHODS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    stream = out_dir / f"heterogeneity{suffix}.jsonl"
    jobs = heterogeneity_jobs(families, levels, methods, seeds, grid)
    settings = grid.record()
    records = [r for r in (json.loads(line) for line in stream.read_text().splitlines() if line.strip())
               if r.get("settings") == settings] if stream.exists() else []
    have = {_job_key(r) for r in records}
    t0 = time.perf_counter()
    todo = [j for j in jobs if (j["family"], j["h"], j["run"], j["seed"]) not in have] if train else []
    for n, job in enumerate(todo, 1):
        recs = run_heterogeneity_job(job)
        with open(stream, "a") as fh:
            for r in recs:
                r["settings"] = settings
                fh.write(json.dumps(json_safe(r)) + "\n")
        records.extend(recs)
        if log is not None:
            for r in recs:
                what = (f"refused ({r['refused'][:60]})" if "refused" in r
                        else f"final {np.round(r['final'], 1).tolist()} ({r['simulation']}"
                        + (f": {r['loop_reason'][:80]})" if "loop_reason" in r else ")"))
                log(f"[{n}/{len(todo)} {time.perf_counter() - t0:6.0f}s] {r['family']:<15} h={r['h']:<4} "
                    f"{r['method']:<10} seed {r['seed']}: {what}")
    wanted = {(j["family"], j["h"], j["run"], j["seed"]) for j in jobs}
    chosen = [r for r in records if _job_key(r) in wanted and r["method"] in ["local", *methods]]
    rows = summarize(chosen, HETEROGENEITY_METHODS, list(HETEROGENEITY_FAMILIES))
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "wall_seconds_this_call": time.perf_counter() - t0, "families": list(families), "levels": list(levels),
            "methods": list(methods), "seeds": list(seeds), "missing_runs": 0 if train else
            len([j for j in jobs if (j["family"], j["h"], j["run"], j["seed"]) not in have]), **settings}
    (out_dir / f"heterogeneity{suffix}.json").write_text(
        json.dumps(json_safe({"meta": meta, "summary": rows, "runs": chosen}), indent=1) + "\n")
    lines = ["# Heterogeneity benchmark: FedAvg's penalty and personalization", "",
             f"{grid.describe()}, {_seed_text(seeds)}; final return = mean of {grid.final_episodes} greedy "
             "episodes per client of the model it deploys. ± = 95% t-interval over seeds. "
             "worse than local = fraction of clients whose return under the method is below the same client's "
             "local-only return (paired by seed); penalty = local mean - method mean (positive: the method is "
             "worse).", "", *wide_table(rows, HETEROGENEITY_METHODS), "", "Every cell:", "", *markdown_table(rows),
             "", "## The issue's goal, per family (paired over seeds)", "",
             *[f"- {line}" for line in goal_check(chosen, families, ["local", *methods])], ""]
    (out_dir / f"heterogeneity{suffix}.md").write_text("\n".join(lines))
    for f in families:
        plot_family(rows, f, HETEROGENEITY_METHODS, out_dir / f"heterogeneity_{f}{suffix}.png")
    return rows
