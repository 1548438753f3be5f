"""What running on Flower costs: round time and bytes per round, Flower deployment vs the in-process federation.

Side by side in one run, on the default demo config (8 CartPole PPO clients, 2048 local steps; ``--rounds``
rounds, 2 by default to keep it bounded): the in-process :class:`~securefrl.federation.Federation`, then the
same config as a Flower deployment on 127.0.0.1 (a SuperLink, one SuperNode process per client, ``flwr run``).
Reported per round: wall time, the protocol's client payload bytes (identical by construction), and every
byte Flower moved (message metadata, records, the global model sent down for training and evaluation). The
metrics of both runs are checked equal before any ratio is printed.

``--probe-sim N [N ...]`` also runs Flower's simulation engine (Ray) with N virtual clients (1 round, 64
local steps) and records the peak resident memory of the whole process tree, stopping at the first N that
exceeds ``--mem-limit-gib`` (8) or ``--probe-timeout`` seconds.

Usage::

    python benchmarks/flower_overhead.py --rounds 2 --out benchmarks/results/flower_overhead.json
    python benchmarks/flower_overhead.py --rounds 1 --set federation.local_steps=256 --probe-sim 8 32 128
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from securefrl.config import load_config
from securefrl.experiment import run_experiment
from securefrl.flower.appdir import write_app
from securefrl.flower.local import LocalDeployment
from securefrl.results import latest_run, read_jsonl

METRICS = ("mean_return", "min_return", "n_included", "bytes_up", "env_steps_per_client")


def _tree_rss(root: psutil.Process) -> tuple[int, int]:
    """Summed RSS and number of processes of ``root`` and every descendant."""
    total, n = 0, 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
            n += 1
        except psutil.Error:
            continue
    return total, n


class PeakMemory:
    """Samples the RSS of this process and every descendant (SuperLink, SuperNodes, Ray workers)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.peak, self.interval, self._stop = 0, interval, threading.Event()
        self.processes = 0  # size of the process tree at the peak
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            rss, n = _tree_rss(me)
            if rss > self.peak:
                self.peak, self.processes = rss, n
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _run(parent: Path) -> Path:
    """The run folder the ServerApp wrote below ``<results>/<name>/`` (timestamped, as `securefrl run`)."""
    run = latest_run(parent)
    if run is None:
        raise FileNotFoundError(f"no run below {parent}")
    return run


def compare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    overrides = [f"federation.rounds={args.rounds}", f"output_dir={work}", *args.set]
    t0 = time.perf_counter()
    ref = run_experiment(load_config(overrides=[*overrides, "name=inprocess"]), progress=False)
    t_ref = time.perf_counter() - t0
    cfg = load_config(overrides=[*overrides, "name=flower"])
    app = write_app(cfg, work / "app", work, round_timeout=args.timeout, connect_timeout=300)
    with LocalDeployment(cfg.federation.n_clients, work / "deploy") as dep:
        t0 = time.perf_counter()
        dep.run(app, timeout=args.timeout * (2 * args.rounds + 2))
        t_flower = time.perf_counter() - t0
    flower = read_jsonl(_run(work / "flower") / "rounds.jsonl")
    equal = all(np.isclose(got[k], want[k], rtol=1e-9) for got, want in zip(flower, ref.rounds, strict=True)
                for k in METRICS)
    complete = all(got["n_evaluated"] == cfg.federation.n_clients for got in flower)
    rows = []
    for got, want in zip(flower, ref.rounds, strict=True):
        rows.append({"round": want["round"], "inprocess_round_s": want["round_time"],
                     "flower_round_s": got["round_time"],
                     "time_ratio": got["round_time"] / want["round_time"], "protocol_bytes_up": want["bytes_up"],
                     "flower_bytes_up": got["flower_bytes_up"], "flower_bytes_down": got["flower_bytes_down"],
                     "bytes_up_ratio": got["flower_bytes_up"] / want["bytes_up"],
                     "n_evaluated": got["n_evaluated"]})
    if not equal:
        print(f"WARNING: metrics differ from the in-process run (every client evaluated: {complete}); "
              f"logs in {work / 'deploy' / 'logs'}")
    return {"config": cfg.to_dict(), "rounds": rows, "metrics_equal": equal, "all_clients_evaluated": complete,
            "inprocess_total_s": t_ref, "flower_total_s": t_flower,
            "mean_time_ratio": float(np.mean([r["time_ratio"] for r in rows])),
            "mean_bytes_up_ratio": float(np.mean([r["bytes_up_ratio"] for r in rows]))}


def probe_simulation(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    out = []
    for n in args.probe_sim:
        cfg = load_config(overrides=[f"federation.n_clients={n}", "federation.rounds=1", "federation.local_steps=64",
                                     "federation.eval_episodes=1", f"output_dir={work}", f"name=sim{n}", *args.set])
        app = write_app(cfg, work / f"simapp{n}", work, round_timeout=args.probe_timeout, connect_timeout=300)
        row: dict[str, Any] = {"virtual_clients": n}
        t0 = time.perf_counter()
        try:
            with PeakMemory() as mem, LocalDeployment(n, work / f"sim{n}", simulation=True) as dep:
                dep.run(app, timeout=args.probe_timeout)
            row.update(ok=True, peak_gib=mem.peak / 2**30, processes_at_peak=mem.processes,
                       seconds=time.perf_counter() - t0,
                       rounds=len(read_jsonl(_run(work / f"sim{n}") / "rounds.jsonl")))
        except (RuntimeError, TimeoutError, FileNotFoundError) as err:
            row.update(ok=False, error=str(err)[-300:], seconds=time.perf_counter() - t0)
        out.append(row)
        print(row, flush=True)
        if not row["ok"] or row["peak_gib"] > args.mem_limit_gib:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds the server waits for one stage's replies")
    ap.add_argument("--probe-sim", type=int, nargs="*", default=[])
    ap.add_argument("--probe-timeout", type=float, default=900.0)
    ap.add_argument("--mem-limit-gib", type=float, default=8.0)
    ap.add_argument("--skip-deployment", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/flower_overhead.json")
    ap.add_argument("--work", default=None, help="keep logs and results here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="securefrl-flower-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        result: dict[str, Any] = {}
        if not args.skip_deployment:
            result["deployment"] = compare(args, work)
            print(f"{'round':>5} {'in-process s':>12} {'Flower s':>9} {'ratio':>6} {'payload KB':>10} "
                  f"{'Flower up KB':>12} {'down KB':>8}")
            for r in result["deployment"]["rounds"]:
                print(f"{r['round']:>5} {r['inprocess_round_s']:12.2f} {r['flower_round_s']:9.2f} "
                      f"{r['time_ratio']:6.1f} "
                      f"{r['protocol_bytes_up'] / 1024:10.1f} {r['flower_bytes_up'] / 1024:12.1f} "
                      f"{r['flower_bytes_down'] / 1024:8.1f}")
        if args.probe_sim:
            result["simulation_probe"] = probe_simulation(args, work / "probe")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
