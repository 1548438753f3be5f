"""Secure-aggregation benchmark: wire bytes, time per phase and error, protocols side by side.

Every protocol in :data:`ENTRIES` runs the same round on the same updates (client ``c`` of a
``dim``-parameter model draws N(0, 0.01^2) from ``default_rng([seed, dim, c])``, generated
lazily so the 1M x 100 case stays in memory): ``protect`` per client, ``combine`` on the
server, ``open`` by the key holder. Reported per row: bytes per parameter of one client's
payload, protect microseconds per parameter, combine nanoseconds per parameter per client,
open time, and the maximum absolute error of the opened sum against the exact float64 sum.
Ratios are to the CKKS targets (<= 8 B/param, <= 0.5 us/param encryption, <= 10 ns/param/client
server, <= 1e-6 error at 100 clients); the TenSEAL ``ckks_vector`` with NVFlare's defaults
(N=8192, coeff [60, 40, 40], scale 2^40) is the reference measured in the same run.

To add a protocol, append a :class:`Entry` whose factory builds an
:class:`~protocols.base.AggregationProtocol` for a given dimension.

Usage::

    python benchmarks/secure_aggregation.py                  # full grid, a few minutes
    python benchmarks/secure_aggregation.py --quick          # smaller grid
    python benchmarks/secure_aggregation.py --dims 100000 --clients 10 100 --protocols ckks
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from protocols.base import Aggregate, AggregationProtocol, OpenedAggregate
from protocols.ckks import CKKSParams, CKKSProtocol
from protocols.plaintext import PlaintextProtocol

TARGETS = {
    "bytes_per_param": 8.0,
    "protect_us_per_param": 0.5,
    "combine_ns_per_param_client": 10.0,
    "max_abs_error": 1e-6,
}
UPDATE_STD = 0.01
ROUND = 1


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1 (C++ ``std::cout``) for the duration of the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


class TenSEALVectorReference(AggregationProtocol):
    """TenSEAL ``ckks_vector`` as NVFlare configures it: the reference the CKKS targets are set against.

    Public-key contexts (NVFlare's), N=8192, coeff_mod_bit_sizes [60, 40, 40], global scale 2^40;
    the server works on a copy of the context serialized without the secret key. The weight is
    appended as one more element. Benchmark-only: no envelope, no payload validation.
    """

    name = "tenseal-nvflare"
    reveals_individual_updates = False
    server_can_open = False

    def __init__(self, dim: int) -> None:
        import tenseal as ts

        self._ts = ts
        self.dim = dim
        self._client = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40])
        self._client.global_scale = 2**40
        self._server = ts.context_from(self._client.serialize(save_secret_key=False))

    def protect(self, client_id: int, round_id: int, update: np.ndarray, weight: float) -> bytes:
        values = np.append(np.asarray(update, dtype=np.float64) * weight, weight)
        with _quiet_stdout():  # TenSEAL's C++ warns on stdout for every multi-ciphertext vector
            return self._ts.ckks_vector(self._client, values.tolist()).serialize()

    def combine(self, round_id: int, payloads: Mapping[int, bytes]) -> Aggregate:
        total = None
        for cid in sorted(payloads):
            vec = self._ts.ckks_vector_from(self._server, payloads[cid])
            total = vec if total is None else total + vec
        assert total is not None
        return Aggregate(round_id, total.serialize(), sorted(payloads))

    def open(self, aggregate: Aggregate) -> OpenedAggregate:
        values = np.asarray(self._ts.ckks_vector_from(self._client, aggregate.payload).decrypt())
        return OpenedAggregate(values[: self.dim] / values[self.dim], float(values[self.dim]), aggregate.included)


@dataclass(frozen=True)
class Entry:
    """One protocol in the benchmark.

    Attributes
    ----------
    name:
        Row label.
    factory:
        Builds the protocol for a model of ``dim`` parameters.
    description:
        Parameters, for the JSON record.
    max_clients:
        Distinct clients actually run (slow references are capped; the row says how many).
    """

    name: str
    factory: Callable[[int], AggregationProtocol]
    description: str
    max_clients: int | None = None


def default_entries(tenseal_max_clients: int) -> list[Entry]:
    """Plaintext, this project's CKKS and the TenSEAL/NVFlare reference (extend this list)."""
    p = CKKSParams()
    return [
        Entry("plaintext", PlaintextProtocol, "float32 weighted updates, server sees everything"),
        Entry(
            "ckks",
            CKKSProtocol,
            f"securefrl CKKS: N={p.poly_modulus_degree}, one {p.prime_bits}-bit prime, scale 2^{p.scale_bits}, "
            "seeded symmetric encryption, compact c0, GMAC",
        ),
        Entry(
            "tenseal-nvflare",
            TenSEALVectorReference,
            "tenseal.ckks_vector, N=8192, coeff [60,40,40], scale 2^40 (NVFlare defaults)",
            max_clients=tenseal_max_clients,
        ),
    ]


def client_update(seed: int, dim: int, client: int) -> np.ndarray:
    """Client ``client``'s update, regenerated on demand from its own seeded generator."""
    return np.random.default_rng([seed, dim, client]).normal(0.0, UPDATE_STD, dim)


def run_entry(entry: Entry, dim: int, client_counts: Sequence[int], seed: int, repeats: int = 3) -> list[dict]:
    """Protect max(client_counts) clients once, then combine/open the first n for each n.

    Shared machines are noisy: ``protect`` reports the median client, and ``combine`` (cheap, the
    most sensitive to other load) is timed ``repeats`` times keeping the fastest run, as ``timeit`` does.
    """
    proto = entry.factory(dim)
    n_max = max(client_counts) if entry.max_clients is None else min(max(client_counts), entry.max_clients)
    payloads: dict[int, bytes] = {}
    prefix_sums: dict[int, np.ndarray] = {}
    exact = np.zeros(dim)
    protect_s: list[float] = []
    for cid in range(n_max):
        update = client_update(seed, dim, cid)
        t0 = time.perf_counter()
        payloads[cid] = proto.protect(cid, ROUND, update, 1.0)
        protect_s.append(time.perf_counter() - t0)
        exact += update
        if cid + 1 in client_counts or cid + 1 == n_max:
            prefix_sums[cid + 1] = exact.copy()
    bytes_per_param = float(np.mean([len(b) for b in payloads.values()])) / dim
    rows = []
    for n_req in client_counts:
        n = min(n_req, n_max)
        subset = {cid: payloads[cid] for cid in range(n)}
        combine_s = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            aggregate = proto.combine(ROUND, subset)
            combine_s = min(combine_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        opened = proto.open(aggregate)
        open_s = time.perf_counter() - t0
        err = float(np.max(np.abs(opened.mean * opened.total_weight - prefix_sums[n])))
        rows.append(
            {
                "protocol": entry.name,
                "dim": dim,
                "clients_requested": n_req,
                "clients": n,
                "rejected": len(getattr(aggregate, "rejected", {})),
                "bytes_per_param": bytes_per_param,
                "protect_us_per_param": float(np.median(protect_s)) / dim * 1e6,
                "combine_ns_per_param_client": combine_s / n / dim * 1e9,
                "open_s": open_s,
                "max_abs_error": err,
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain-text table; the x-columns are ratios to the CKKS targets (<= 1 meets the target)."""
    head = (
        f"{'protocol':<16}{'dim':>9}{'clients':>8}{'B/param':>9}{'x8B':>7}{'protect':>10}{'x0.5us':>8}"
        f"{'combine':>10}{'x10ns':>7}{'open s':>8}{'max err':>10}{'x1e-6':>8}"
    )
    units = f"{'':<16}{'':>9}{'':>8}{'':>9}{'':>7}{'us/param':>10}{'':>8}{'ns/p/cl':>10}{'':>7}{'':>8}{'(sum)':>10}"
    lines = [head, units, "-" * len(head)]
    for r in rows:
        clients = f"{r['clients']}" + (f"/{r['clients_requested']}*" if r["clients"] != r["clients_requested"] else "")
        lines.append(
            f"{r['protocol']:<16}{r['dim']:>9}{clients:>8}{r['bytes_per_param']:>9.2f}"
            f"{r['bytes_per_param'] / TARGETS['bytes_per_param']:>7.2f}"
            f"{r['protect_us_per_param']:>10.3f}{r['protect_us_per_param'] / TARGETS['protect_us_per_param']:>8.2f}"
            f"{r['combine_ns_per_param_client']:>10.2f}"
            f"{r['combine_ns_per_param_client'] / TARGETS['combine_ns_per_param_client']:>7.2f}"
            f"{r['open_s']:>8.2f}{r['max_abs_error']:>10.1e}{r['max_abs_error'] / TARGETS['max_abs_error']:>8.2f}"
        )
    lines.append("* slow reference capped: n/m = n distinct clients run of the m requested.")
    return "\n".join(lines)


def side_by_side(rows: list[dict], a: str = "ckks", b: str = "tenseal-nvflare") -> list[str]:
    """Ratios a/b for rows measured in the same run (bytes, protect, combine)."""
    out = []
    index = {(r["protocol"], r["dim"], r["clients_requested"]): r for r in rows}
    for (name, dim, n), ra in index.items():
        rb = index.get((b, dim, n))
        if name != a or rb is None:
            continue
        out.append(
            f"{a}/{b} dim={dim} clients={n}: bytes x{ra['bytes_per_param'] / rb['bytes_per_param']:.3f}, "
            f"protect x{ra['protect_us_per_param'] / rb['protect_us_per_param']:.3f}, "
            f"combine x{ra['combine_ns_per_param_client'] / rb['combine_ns_per_param_client']:.3f}"
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--protocols", nargs="+", default=None, help="subset of entry names to run")
    parser.add_argument("--tenseal-max-clients", type=int, default=10, help="distinct clients for the slow reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="combine timings per case; the fastest is kept")
    parser.add_argument("--quick", action="store_true", help="dims 10k and 100k, TenSEAL capped at 4 clients")
    default_out = Path(__file__).resolve().parent / "results" / "secure_aggregation.json"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args(argv)
    if args.quick:
        args.dims = [d for d in args.dims if d <= 100_000] or [10_000]
        args.tenseal_max_clients = min(args.tenseal_max_clients, 4)
    entries = default_entries(args.tenseal_max_clients)
    if args.protocols:
        unknown = set(args.protocols) - {e.name for e in entries}
        if unknown:
            parser.error(f"unknown protocols {sorted(unknown)}; known: {[e.name for e in entries]}")
        entries = [e for e in entries if e.name in args.protocols]
    clients = sorted(set(args.clients))
    rows: list[dict] = []
    for dim in args.dims:
        for entry in entries:
            t0 = time.perf_counter()
            rows.extend(run_entry(entry, dim, clients, args.seed, args.repeats))
            print(f"  ran {entry.name} dim={dim} in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    print(format_table(rows))
    for line in side_by_side(rows):
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "targets": TARGETS,
        "update_distribution": f"N(0, {UPDATE_STD}^2), weight 1",
        "entries": [{"name": e.name, "description": e.description, "max_clients": e.max_clients} for e in entries],
        "ckks_params": asdict(CKKSParams()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
    }
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
