"""Cost of SecAgg+ masking: bytes each client sends and time per stage, for clients and server.

Wire expansion is every byte a client sends across the four stages (envelopes included) divided by a
32-bit plaintext upload, 4 * dim bytes. Bonawitz et al. 2017 (CCS) report 1.73x for 500 clients and
2^20 16-bit values; the target here is at most 1.1x for 100 clients x 1M parameters. A plaintext
round (PlaintextProtocol) runs side by side for a time ratio, since these machines are noisy.

Usage::

    python benchmarks/secagg_cost.py            # 10k/100k/1M params x 10/100 clients, complete + log graph
    python benchmarks/secagg_cost.py --quick    # 10k/100k params only

Prints a table and writes ``benchmarks/results/secagg_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocols.plaintext import PlaintextProtocol
from protocols.secagg import SecAggClient, SecAggParams, SecAggServer, Stage

STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)
SHORT = {Stage.ADVERTISE_KEYS: "adv", Stage.SHARE_KEYS: "share", Stage.MASKED_INPUT: "masked", Stage.UNMASK: "unmask"}


def run_case(n: int, dim: int, neighbours: int | str | None, dropout: float, seed: int) -> dict:
    """One SecAgg+ round among ``n`` clients; a ``dropout`` fraction goes silent after sharing keys."""
    rng = np.random.default_rng(seed)
    params = SecAggParams(dim=dim, max_clients=n, neighbours=neighbours)
    roster = list(range(n))
    dropped = set(rng.choice(n, size=round(dropout * n), replace=False).tolist())
    sent = {c: dict.fromkeys(STAGES, 0) for c in roster}
    ctime = {c: dict.fromkeys(STAGES, 0.0) for c in roster}

    def timed(stage: Stage, cid: int, fn, *args) -> bytes:
        start = time.perf_counter()
        out = fn(*args)
        ctime[cid][stage] += time.perf_counter() - start
        sent[cid][stage] += len(out)
        return out

    server = SecAggServer(params, 0, roster)
    clients = {c: SecAggClient(params, 0, c, roster) for c in roster}
    for c in roster:
        server.receive(c, timed(Stage.ADVERTISE_KEYS, c, clients[c].advertise_keys))
    for c, msg in server.broadcast_keys().items():
        server.receive(c, timed(Stage.SHARE_KEYS, c, clients[c].share_keys, msg))
    plain_sum = np.zeros(dim)
    for c, msg in server.forward_shares().items():
        if c in dropped:
            continue
        update = rng.uniform(-1, 1, dim)
        plain_sum += update
        server.receive(c, timed(Stage.MASKED_INPUT, c, clients[c].masked_input, msg, update, 1.0))
    for c, msg in server.request_unmask().items():
        server.receive(c, timed(Stage.UNMASK, c, clients[c].unmask, msg))
    result = server.finalize()

    total, _ = clients[roster[0]].quantizer.decode(result.total, len(result.included))
    err = float(np.max(np.abs(total - plain_sum)))
    complete = [c for c in roster if c not in dropped]
    per_client = [sum(sent[c].values()) for c in complete]
    plaintext_time = _plaintext_round(n - len(dropped), dim, rng)
    secagg_time = sum(sum(t.values()) for t in ctime.values()) + sum(server.timings.values())
    return {
        "clients": n,
        "dim": dim,
        "graph": "complete" if neighbours is None else f"k={params.degree(n)}",
        "degree": params.degree(n),
        "threshold": server.plan.threshold,
        "dropped": len(dropped),
        "bytes_per_client": {SHORT[s]: float(np.mean([sent[c][s] for c in complete])) for s in STAGES},
        "expansion_max": max(per_client) / (4 * dim),
        "expansion_mean": float(np.mean(per_client)) / (4 * dim),
        "client_seconds": {SHORT[s]: float(np.mean([ctime[c][s] for c in complete])) for s in STAGES},
        "server_seconds": {SHORT[s]: server.timings[s] for s in STAGES},
        "max_abs_error_of_sum": err,
        "error_bound_of_sum": clients[roster[0]].quantizer.error_bound(len(result.included))[0],
        "secagg_over_plaintext_time": secagg_time / plaintext_time,
    }


def _plaintext_round(n: int, dim: int, rng: np.random.Generator) -> float:
    proto = PlaintextProtocol(dim)
    updates = [rng.uniform(-1, 1, dim) for _ in range(n)]
    start = time.perf_counter()
    payloads = {c: proto.protect(c, 0, updates[c], 1.0) for c in range(n)}
    proto.open(proto.combine(0, payloads))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k parameters only")
    parser.add_argument("--dropout", type=float, default=0.1, help="fraction silent at the masked-input stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "secagg_cost.json")
    args = parser.parse_args(argv)
    dims = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    cases = [(n, d, None) for d in dims for n in (10, 100)] + [(100, d, "log") for d in dims]
    rows = []
    head = (f"{'graph':>8} {'n':>4} {'dim':>8} {'t':>3} {'drop':>4} {'expand':>7} | client ms/stage "
            f"{'adv':>5} {'share':>6} {'masked':>7} {'unmask':>6} | server ms/stage {'adv':>5} {'share':>6} "
            f"{'masked':>7} {'unmask':>7} | x plain")
    print(head)
    for n, dim, k in cases:
        row = run_case(n, dim, k, args.dropout, args.seed)
        rows.append(row)
        c, s = row["client_seconds"], row["server_seconds"]
        print(f"{row['graph']:>8} {n:>4} {dim:>8} {row['threshold']:>3} {row['dropped']:>4} "
              f"{row['expansion_max']:>7.4f} | {'':15} {1e3 * c['adv']:>5.1f} {1e3 * c['share']:>6.1f} "
              f"{1e3 * c['masked']:>7.1f} {1e3 * c['unmask']:>6.1f} | {'':15} {1e3 * s['adv']:>5.1f} "
              f"{1e3 * s['share']:>6.1f} {1e3 * s['masked']:>7.1f} {1e3 * s['unmask']:>7.1f} | "
              f"{row['secagg_over_plaintext_time']:>7.1f}", flush=True)
        assert row["max_abs_error_of_sum"] <= row["error_bound_of_sum"] + 1e-6, "unmasked sum is wrong"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "dropout": args.dropout, "seed": args.seed, "quick": args.quick}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
