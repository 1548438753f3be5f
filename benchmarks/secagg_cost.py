"""Cost of authenticated SecAgg+ (malicious-server model): bytes and time per stage, and honest epsilons.

Every round runs with identity signatures on every client message, the signed key book, the
consistency check and commitment-checked (robust) reconstruction on -- the default protocol. Wire
expansion is every byte a client sends across the five stages (envelopes and signatures included)
divided by a 32-bit plaintext upload, 4 * dim bytes. Bonawitz et al. 2017 (CCS) report 1.73x for 500
clients and 2^20 16-bit values; the target here is at most 1.1x for 100 clients x 1M parameters.
Set-up bytes are everything but the masked input, sent and received. A plaintext round
(PlaintextProtocol) runs side by side for a time ratio, since these machines are noisy.

The second table gives, for the README's DP examples, epsilon against the server (q = 1: it knows who
took part) and against outside observers of the released models (q = clients per round / clients),
with target_epsilon calibrated against the server (the default) and, for comparison, against outsiders
(what the library did before).

Usage::

    python benchmarks/secagg_cost.py            # 10k/100k/1M params x 10/100 clients, complete + SecAgg+ graph
    python benchmarks/secagg_cost.py --quick    # 10k/100k params only

Prints the tables and writes ``benchmarks/results/secagg_cost.json``.
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
from protocols.secagg import SecAggClient, SecAggParams, SecAggServer, Stage, enrol

STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK)
SHORT = {Stage.ADVERTISE_KEYS: "adv", Stage.SHARE_KEYS: "share", Stage.MASKED_INPUT: "masked",
         Stage.CONSISTENCY: "check", Stage.UNMASK: "unmask"}


def run_case(n: int, dim: int, neighbours: int | str | None, dropout: float, seed: int) -> dict:
    """One SecAgg+ round among ``n`` clients; a ``dropout`` fraction goes silent after sharing keys."""
    rng = np.random.default_rng(seed)
    params = SecAggParams(dim=dim, max_clients=n, neighbours=neighbours)
    roster = list(range(n))
    dropped = set(rng.choice(n, size=round(dropout * n), replace=False).tolist())
    sent = {c: dict.fromkeys(STAGES, 0) for c in roster}
    received = {c: dict.fromkeys(STAGES, 0) for c in roster}
    ctime = {c: dict.fromkeys(STAGES, 0.0) for c in roster}

    def timed(stage: Stage, cid: int, fn, *args) -> bytes:
        if args and isinstance(args[0], bytes):
            received[cid][stage] += len(args[0])
        start = time.perf_counter()
        out = fn(*args)
        ctime[cid][stage] += time.perf_counter() - start
        sent[cid][stage] += len(out)
        return out

    t0 = time.perf_counter()
    registry, keys = enrol(roster)  # once per deployment, not per round
    enrol_seconds = time.perf_counter() - t0
    server = SecAggServer(params, 0, roster, registry)
    clients = {c: SecAggClient(params, 0, c, roster, keys[c], registry) for c in roster}
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
    for c, msg in server.request_consistency().items():
        server.receive(c, timed(Stage.CONSISTENCY, c, clients[c].sign_survivors, msg))
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
        "bytes_received_per_client": {SHORT[s]: float(np.mean([received[c][s] for c in complete])) for s in STAGES},
        "setup_bytes_sent": float(np.mean([sum(v for s, v in sent[c].items() if s != Stage.MASKED_INPUT)
                                           for c in complete])),
        "setup_bytes_received": float(np.mean([sum(v for s, v in received[c].items() if s != Stage.MASKED_INPUT)
                                               for c in complete])),
        "enrolment_seconds": enrol_seconds,
        "expansion_max": max(per_client) / (4 * dim),
        "expansion_mean": float(np.mean(per_client)) / (4 * dim),
        "client_seconds": {SHORT[s]: float(np.mean([ctime[c][s] for c in complete])) for s in STAGES},
        "server_seconds": {SHORT[s]: server.timings[s] for s in STAGES},
        "max_abs_error_of_sum": err,
        "error_bound_of_sum": clients[roster[0]].quantizer.error_bound(len(result.included))[0],
        "secagg_over_plaintext_time": secagg_time / plaintext_time,
        "client_seconds_total": float(np.mean([sum(ctime[c].values()) for c in complete])),
        "server_seconds_total": float(sum(server.timings.values())),
    }


def dp_examples() -> list[dict]:
    """Epsilon against the server and against outsiders for the README's DP examples (default config sizes)."""
    from securefrl.config import PrivacySection
    from securefrl.privacy.federated import ClientLevelDP

    n, rounds = 8, 15  # the default federation: 8 clients, 15 rounds
    cases = [("distributed, secagg, target_epsilon=8, client_fraction=0.5", "distributed", "secagg", 4,
              {"target_epsilon": 8.0})]
    cases += [(f"central, plaintext, noise {z}, client_fraction=1", "central", "plaintext", n,
               {"noise_multiplier": z}) for z in (0.5, 1.0, 2.0, 4.0)]
    out = []
    for label, placement, protocol, per_round, kw in cases:
        for against in ("server", "outsiders"):
            if against == "outsiders" and "target_epsilon" not in kw:
                continue  # without a target the calibration does not depend on it
            dp = ClientLevelDP(PrivacySection(placement=placement, calibrate_against=against, **kw), protocol, n,
                               per_round, rounds)
            m: dict = {}
            for _ in range(rounds):
                _, m = dp.finish_round(np.zeros(1), per_round, [], np.random.default_rng(0))
            out.append({"example": label, "calibrated_against": against, "noise_multiplier": dp.z,
                        "epsilon_server": m["epsilon_server"], "epsilon_outsiders": m["epsilon_outsiders"]})
    return out


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
    parser.add_argument("--sizes", default="", help="comma-separated n:dim cases instead of the grid, e.g. 100:1000000")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "secagg_cost.json")
    args = parser.parse_args(argv)
    dims = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    cases = [(n, d, None) for d in dims for n in (10, 100)] + [(100, d, "log") for d in dims]
    if args.sizes:
        cases = [(int(n), int(d), None) for n, d in (c.split(":") for c in args.sizes.split(","))]
    rows = []
    head = (f"{'graph':>8} {'n':>4} {'dim':>8} {'t':>3} {'drop':>4} {'expand':>7} {'setup KB':>9} | client ms/stage "
            f"{'adv':>5} {'share':>6} {'masked':>7} {'check':>6} {'unmask':>6} | server ms/stage {'adv':>5} "
            f"{'share':>6} {'masked':>7} {'check':>6} {'unmask':>7} | x plain")
    print(head)
    for n, dim, k in cases:
        row = run_case(n, dim, k, args.dropout, args.seed)
        rows.append(row)
        c, s = row["client_seconds"], row["server_seconds"]
        setup = (row["setup_bytes_sent"] + row["setup_bytes_received"]) / 1024
        print(f"{row['graph']:>8} {n:>4} {dim:>8} {row['threshold']:>3} {row['dropped']:>4} "
              f"{row['expansion_max']:>7.4f} {setup:>9.1f} | {'':15} {1e3 * c['adv']:>5.1f} {1e3 * c['share']:>6.1f} "
              f"{1e3 * c['masked']:>7.1f} {1e3 * c['check']:>6.1f} {1e3 * c['unmask']:>6.1f} | {'':15} "
              f"{1e3 * s['adv']:>5.1f} {1e3 * s['share']:>6.1f} {1e3 * s['masked']:>7.1f} {1e3 * s['check']:>6.1f} "
              f"{1e3 * s['unmask']:>7.1f} | {row['secagg_over_plaintext_time']:>7.1f}", flush=True)
        assert row["max_abs_error_of_sum"] <= row["error_bound_of_sum"] + 1e-6, "unmasked sum is wrong"
    print(f"\n{'README DP example':<58} {'calibrated':>10} {'z':>7} {'eps server':>10} {'eps outsiders':>13}")
    eps_rows = dp_examples()
    for e in eps_rows:
        print(f"{e['example']:<58} {e['calibrated_against']:>10} {e['noise_multiplier']:>7.3f} "
              f"{e['epsilon_server']:>10.2f} {e['epsilon_outsiders']:>13.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "dropout": args.dropout, "seed": args.seed, "quick": args.quick, "authenticated": True,
            "sizes": args.sizes}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows, "dp_examples": eps_rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
