"""Run an experiment end to end: federation rounds, live progress, results folder, resume."""

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
from securefrl.results import ResultsDir, plot_returns, read_jsonl


@dataclass
class RunResult:
    """What a finished run returns to Python callers (everything is also on disk)."""

    path: Path
    clients: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    summary: dict[str, Any]
    federation: Federation


def _header(dp: bool) -> str:
    eps = f" {'epsilon':>8}" if dp else ""
    return f"{'round':>5} {'mean':>8} {'min':>8} {'local':>8} {'steps/cl':>9} {'KB up':>8}{eps} {'time s':>7}"


def _row(s: dict[str, Any], dp: bool) -> str:
    local = "-" if s["mean_local_return"] is None else f"{s['mean_local_return']:8.1f}"
    eps = f" {s.get('epsilon', float('nan')):8.3f}" if dp else ""
    note = f"  aborted: {s['aborted']}" if s.get("aborted") else ""
    return (f"{s['round']:>5} {s['mean_return']:8.1f} {s['min_return']:8.1f} {local:>8} "
            f"{s['env_steps_per_client']:>9} {s['bytes_up'] / 1024:8.1f}{eps} {s['round_time']:7.2f}{note}")


def run_experiment(config: ExperimentConfig, resume: bool = False, progress: bool = True,
                   stop_after: int | None = None) -> RunResult:
    """Run (or, with ``resume``, continue) the experiment described by ``config``.

    ``stop_after`` ends the run after that many rounds in total (as if interrupted), leaving a
    checkpoint that ``resume=True`` continues from.
    """
    out = ResultsDir(Path(config.output_dir) / config.name)
    fed = make_federation(config)
    client_rows: list[dict[str, Any]] = []
    round_rows: list[dict[str, Any]] = []
    if resume:
        if not out.checkpoint.is_file():
            raise ConfigError("resume", f"no checkpoint at {out.checkpoint}; start the run without --resume")
        state = torch.load(out.checkpoint, weights_only=True)
        saved = from_dict(ExperimentConfig, state["config"])
        if saved.to_dict() != config.to_dict():
            raise ConfigError("resume", f"the config differs from the one the checkpoint in {out.path} was made with")
        fed.load_state_dict(state["federation"])
        client_rows = [r for r in read_jsonl(out.path / "clients.jsonl") if r["round"] < fed.round]
        round_rows = [r for r in read_jsonl(out.path / "rounds.jsonl") if r["round"] < fed.round]
    out.write_config(config.to_dict())
    out.write_json("environments.json", [{"client": c.client_id, **c.env_spec.to_dict()} for c in fed.clients])
    out.reset_rows(client_rows, round_rows)

    total = config.federation.rounds
    last = min(total, stop_after) if stop_after is not None else total
    bar = None
    if progress:
        from tqdm.auto import tqdm

        print(f"securefrl: {len(fed.clients)} {config.env.name} clients (heterogeneity {config.env.heterogeneity}),"
              f" agent {config.agent.name}, protocol {config.protocol.name}, {fed.dim} parameters -> {out.path}"
              + (f"\n  {fed.protocol.label}" if getattr(fed.protocol, "label", None) else ""),
              file=sys.stderr)
        bar = tqdm(total=total, initial=fed.round, desc="rounds", unit="round", file=sys.stderr, leave=False)
        tqdm.write(_header(fed.dp is not None), file=sys.stderr)
    t_start = time.perf_counter()
    stopped = None
    while fed.round < last:
        if fed.budget_exhausted():
            stopped = (f"privacy budget: round {fed.round} would take epsilon past "
                       f"{config.privacy.epsilon_budget} at delta {config.privacy.delta}")
            break
        record = fed.run_round()
        client_rows.extend(record.clients)
        round_rows.append(record.summary)
        out.append_rows(record.clients, record.summary)
        torch.save({"config": config.to_dict(), "federation": fed.state_dict()}, out.checkpoint)
        if bar is not None:
            from tqdm.auto import tqdm

            tqdm.write(_row(record.summary, fed.dp is not None), file=sys.stderr)
            bar.set_postfix(mean_return=f"{record.summary['mean_return']:.1f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    fed.close()  # a local Ray instance started for this run shuts down (the driver's state stays readable)
    summary = summarize(config, fed, round_rows, time.perf_counter() - t_start)
    summary["stopped_reason"] = stopped
    out.write_json("summary.json", summary)
    if round_rows:
        plot_returns(client_rows, round_rows, out.path / "returns.png",
                     title=f"{config.agent.name} on {config.env.name}, {len(fed.clients)} clients, "
                           f"{config.protocol.name}")
    if progress and stopped:
        print(f"stopped early: {stopped}", file=sys.stderr)
    if progress and round_rows:
        print(f"done: final mean return {summary['final_mean_return']:.1f} (first round "
              f"{summary['first_mean_return']:.1f}); results in {out.path}", file=sys.stderr)
    return RunResult(out.path, client_rows, round_rows, summary, fed)


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
        "delta": config.privacy.delta if config.privacy.placement != "none" else None,
        "malicious_clients": fed.malicious_ids,
        "wall_seconds_this_session": seconds,
        "time_per_phase": {k: sum(r[f"time_{k}"] for r in rounds)
                           for k in ("setup", "train", "protect", "combine", "open", "eval")},
    }
