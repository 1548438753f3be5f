"""Run an experiment end to end: federation rounds, live progress, a results folder per run, resume.

Progress and the per-round table go to stdout: a tqdm bar above the table when stdout is a
terminal, one plain line per round otherwise (logs and pipes get no carriage returns). Warnings
and errors stay on stderr.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from securefrl.config import ExperimentConfig
from securefrl.configtools import from_dict
from securefrl.errors import ConfigError
from securefrl.federation import Federation, make_federation
from securefrl.results import ResultsDir, is_run, latest_run, new_run_dir, plot_returns, read_jsonl


@dataclass
class RunResult:
    """What a finished run returns to Python callers (everything is also on disk)."""

    path: Path
    clients: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    summary: dict[str, Any]
    federation: Federation


def _header(dp: bool) -> str:
    eps = f" {'eps_server':>10} {'eps_outsiders':>13}" if dp else ""  # vs the server / vs model observers
    return f"{'round':>5} {'mean':>8} {'min':>8} {'local':>8} {'steps/cl':>9} {'KB up':>8}{eps} {'time s':>7}"


def _row(s: dict[str, Any], dp: bool) -> str:
    local = "-" if s["mean_local_return"] is None else f"{s['mean_local_return']:8.1f}"
    eps = (f" {s.get('epsilon_server', float('nan')):10.3f} {s.get('epsilon_outsiders', float('nan')):13.3f}"
           if dp else "")
    note = f"  aborted: {s['aborted']}" if s.get("aborted") else ""
    return (f"{s['round']:>5} {s['mean_return']:8.1f} {s['min_return']:8.1f} {local:>8} "
            f"{s['env_steps_per_client']:>9} {s['bytes_up'] / 1024:8.1f}{eps} {s['round_time']:7.2f}{note}")


def config_differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two plain config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += config_differences(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if old == new else [path]


#: Fields a resumed run may change: where results live, and (to extend a run) the number of rounds.
_RESUMABLE = {"output_dir", "federation.rounds"}


def _check_resumable(saved: ExperimentConfig, config: ExperimentConfig, done: int, where: Path) -> None:
    diff = config_differences(saved.to_dict(), config.to_dict())
    fixed = [d for d in diff if d not in _RESUMABLE]
    if fixed:
        shown = ", ".join(f"{d} ({_get(saved, d)!r} -> {_get(config, d)!r})" for d in fixed[:5])
        raise ConfigError(fixed[0], f"differs from the config the run in {where} was made with: {shown}. "
                          "Only federation.rounds may change on --resume (to extend a run); start a new run otherwise")
    if "federation.rounds" in diff:
        if config.federation.rounds < done:
            raise ConfigError("federation.rounds", f"the run in {where} already completed {done} rounds; "
                              f"cannot resume it to {config.federation.rounds}")
        if config.privacy.placement != "none" and config.privacy.target_epsilon > 0:
            raise ConfigError("federation.rounds", "the noise of this run was calibrated so that "
                              f"{saved.federation.rounds} rounds spend privacy.target_epsilon="
                              f"{config.privacy.target_epsilon}; more rounds would spend more. Start a new run, or "
                              "use privacy.noise_multiplier with privacy.epsilon_budget")


def _get(cfg: ExperimentConfig, dotted: str) -> Any:
    node: Any = cfg.to_dict()
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def resolve_run_dir(config: ExperimentConfig, resume: bool | str | Path = False, out: str | Path | None = None,
                    overwrite: bool = False) -> tuple[Path, bool]:
    """The folder a run writes to, and whether it continues a checkpoint there.

    ``resume`` may name a run folder (or a folder of runs: its latest); ``True`` continues ``out``
    or the latest run of ``<output_dir>/<name>``. Without ``resume``: ``out`` if given (refused if
    it holds a run, unless ``overwrite``), else a new ``<output_dir>/<name>/<timestamp>`` folder.
    """
    if resume is not False and resume is not None:
        target = out if resume is True else resume
        where = Path(target) if target is not None else Path(config.output_dir) / config.name
        run = latest_run(where)
        if run is None or not (run / "checkpoint.pt").is_file():
            raise ConfigError("resume", f"no run with a checkpoint at {where}; start the run without --resume "
                              "(`securefrl runs` lists the runs there are)")
        return run, True
    if out is not None:
        out = Path(out)
        if is_run(out) and not overwrite:
            raise ConfigError("out", f"{out} already holds a run; pass --overwrite to replace it, --resume to "
                              "continue it, or choose another folder")
        return out, False
    return new_run_dir(Path(config.output_dir) / config.name), False


class _Progress:
    """The per-round table on stdout: tqdm bar on a terminal, a plain line per round otherwise."""

    def __init__(self, enabled: bool, total: int, initial: int, dp: bool) -> None:
        self.enabled, self.dp = enabled, dp
        self.bar = None
        if not enabled:
            return
        if sys.stdout.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="rounds", unit="round", file=sys.stdout, leave=False)
        self.write(_header(dp))

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def round(self, summary: dict[str, Any]) -> None:
        self.write(_row(summary, self.dp))
        if self.bar is not None:
            self.bar.set_postfix(mean_return=f"{summary['mean_return']:.1f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_experiment(config: ExperimentConfig, resume: bool | str | Path = False, progress: bool = True,
                   stop_after: int | None = None, out: str | Path | None = None, overwrite: bool = False,
                   tensorboard: bool = False) -> RunResult:
    """Run (or, with ``resume``, continue) the experiment described by ``config``.

    Results go to a new folder ``<output_dir>/<name>/<timestamp>`` (``out`` to choose it, see
    :func:`resolve_run_dir`). ``stop_after`` ends the run after that many rounds in total (as if
    interrupted), leaving a checkpoint that ``resume`` continues from; resuming with a larger
    ``federation.rounds`` extends a finished run. ``tensorboard`` also logs round scalars to
    ``<run>/tensorboard`` when the tensorboard package is installed.
    """
    fed = make_federation(config)  # first: a config the federation refuses leaves no empty run folder behind
    path, resuming = resolve_run_dir(config, resume, out, overwrite)
    client_rows: list[dict[str, Any]] = []
    round_rows: list[dict[str, Any]] = []
    if resuming:
        state = torch.load(path / "checkpoint.pt", weights_only=True)
        saved = from_dict(ExperimentConfig, state["config"])
        _check_resumable(saved, config, int(state["federation"]["round"]), path)
        fed.load_state_dict(state["federation"])
        client_rows = [r for r in read_jsonl(path / "clients.jsonl") if r["round"] < fed.round]
        round_rows = [r for r in read_jsonl(path / "rounds.jsonl") if r["round"] < fed.round]
        if len(round_rows) != fed.round:
            raise ConfigError("resume", f"the checkpoint is at round {fed.round} but rounds.jsonl holds "
                                        f"{len(round_rows)} of those rounds; refusing a mismatched checkpoint")
        if fed.dp is not None:
            fed.dp.check_resume(round_rows)  # an edited accountant history is refused
    results = ResultsDir(path, tensorboard=tensorboard, fresh=not resuming)
    results.write_config(config.to_dict())
    results.write_json("environments.json", [{"client": c.client_id, **c.env_spec.to_dict()} for c in fed.clients])
    results.reset_rows(client_rows, round_rows)

    total = config.federation.rounds
    last = min(total, stop_after) if stop_after is not None else total
    if progress:
        verb = f"resuming at round {fed.round}" if resuming else "results"
        print(f"securefrl: {len(fed.clients)} {config.env.name} clients (heterogeneity {config.env.heterogeneity}),"
              f" agent {config.agent.name}, protocol {config.protocol.name}, {fed.dim} parameters; {verb} -> {path}"
              + (f"\n  {fed.protocol.label}" if getattr(fed.protocol, "label", None) else ""),
              flush=True)
    bar = _Progress(progress, total, fed.round, fed.dp is not None)
    t_start = time.perf_counter()
    stopped = None
    try:
        while fed.round < last:
            if fed.budget_exhausted():
                stopped = (f"privacy budget: round {fed.round} would take epsilon past "
                           f"{config.privacy.epsilon_budget} at delta {config.privacy.delta}")
                break
            record = fed.run_round()
            client_rows.extend(record.clients)
            round_rows.append(record.summary)
            results.append_rows(record.clients, record.summary)
            torch.save({"config": config.to_dict(), "federation": fed.state_dict()}, results.checkpoint)
            bar.round(record.summary)
    finally:
        bar.close()
        results.close()
    summary = summarize(config, fed, round_rows, time.perf_counter() - t_start)
    summary["stopped_reason"] = stopped
    results.write_json("summary.json", summary)
    if round_rows:
        plot_returns(client_rows, round_rows, path / "returns.png", config=config, run=path)
    if progress and stopped:
        print(f"stopped early: {stopped}", flush=True)
    if progress and round_rows:
        print(f"done: final mean return {summary['final_mean_return']:.1f} (first round "
              f"{summary['first_mean_return']:.1f}); results in {path}", flush=True)
    return RunResult(path, client_rows, round_rows, summary, fed)


def summarize(config: ExperimentConfig, fed: Federation, rounds: list[dict[str, Any]],
              seconds: float) -> dict[str, Any]:
    """Final figures of a run (written to summary.json)."""
    if not rounds:
        return {"rounds_completed": 0}
    return {
        "name": config.name,
        "rounds_completed": len(rounds),
        "finished": len(rounds) == config.federation.rounds,
        "first_mean_return": rounds[0]["mean_return"],
        "final_mean_return": rounds[-1]["mean_return"],
        "final_min_return": rounds[-1]["min_return"],
        "best_mean_return": max(r["mean_return"] for r in rounds),
        "env_steps_per_client": rounds[-1]["env_steps_per_client"],
        "parameters": fed.dim,
        "protocol": config.protocol.name,
        "protocol_mode": getattr(fed.protocol, "label", None),
        "bytes_up_total": sum(r["bytes_up"] for r in rounds),
        "epsilon": rounds[-1].get("epsilon"),
        "epsilon_server": rounds[-1].get("epsilon_server"),
        "epsilon_outsiders": rounds[-1].get("epsilon_outsiders"),
        "dp_noise": fed.dp.noise_label if fed.dp is not None else None,
        "dp_calibrated_against": config.privacy.calibrate_against if fed.dp is not None else None,
        "delta": config.privacy.delta if config.privacy.placement != "none" else None,
        "malicious_clients": fed.malicious_ids,
        "wall_seconds_this_session": seconds,
        "time_per_phase": {k: sum(r[f"time_{k}"] for r in rounds)
                           for k in ("setup", "train", "protect", "combine", "open", "eval")},
    }
