"""Public parameters of a SecAgg+ deployment and the per-round plan every party derives from them.

Everything here is public and deterministic: the server and every client compute the same modulus,
quantization grid, threshold and neighbour graph from the same parameters, round number and roster,
so nothing about them needs to be trusted from the server. Overflow is refused at construction: the
sum of ``max_clients`` quantized values must fit in the modulus, otherwise the aggregate would wrap
silently (Bonawitz et al. 2017, CCS, §3: inputs live in Z_R with R large enough for the sum).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from protocols import crypto
from protocols.errors import ProtocolConfigError
from protocols.wire import SERVER_ID

_MODULI = {32: np.uint32, 64: np.uint64}


def logarithmic_degree(n: int, factor: float = 2.0) -> int:
    """An even neighbour count ``>= factor * log2(n)``: the O(log n) shape of SecAgg+'s degree.

    Only the shape: with a third of the clients corrupt, ``2 log2 n`` leaves some honest client isolated
    in 9-28% of rounds for n = 50-1000. The degree SecAgg+ uses is :func:`secagg_plus_parameters`.
    """
    k = math.ceil(factor * math.log2(max(n, 2)))
    return k + (k % 2)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _upper_tail(log_pmf: list[float], c: int) -> float:
    """``P[X >= c]`` from log-probabilities (0 past the support)."""
    return float(sum(math.exp(v) for v in log_pmf[max(c, 0):]))


@lru_cache(maxsize=256)
def secagg_plus_parameters(n: int, corrupt_fraction: float, dropout_fraction: float, security_bits: int = 40,
                           correctness_bits: int = 40) -> tuple[int, int]:
    """Degree k and threshold t of SecAgg+ for ``n`` clients (Bell et al. 2020, CCS, §3-4, Thm 3.6 and Table 2).

    Each client's k neighbours are a uniformly random k-subset of the others (the Harary graph over a random
    permutation). With ``gamma n`` corrupt clients (colluding with the server) and each neighbour absent
    (dropped, or corrupt and silent) with probability ``delta``, a round with threshold t over neighbourhoods
    of m = k + 1 clients is

    * secure if no honest client has ``c_u >= 2t - m`` corrupt neighbours: below that, the corrupt
      neighbours cannot reach t shares of either secret, and two survivor sets (an equivocating server)
      cannot both gather t signatures in the consistency check; an isolated honest client (all k neighbours
      corrupt, so the server learns its input) is the extreme case;
    * correct if no client keeps fewer than t live neighbourhood members (``d_u > m - t``).

    ``c_u`` is hypergeometric, ``d_u`` binomial; a union bound over the n clients keeps the security failure
    below ``2^-security_bits`` and, where possible, the correctness failure below ``2^-correctness_bits``.
    The smallest even k meeting both is returned with its smallest t; if none below ``n - 1`` does, the
    complete graph (SecAgg) with the secure t, whatever its correctness (a failed round aborts, it leaks
    nothing). The bound is per graph: the graph seed is a digest of every sampled client's signed keys (a
    sparse round aborts if any is missing, so the server cannot re-roll the graph by leaving clients out);
    corrupt clients that see the honest keys first and try 2^g key choices, or a server that aborts 2^g
    rounds, gain at most g bits (raise ``security_bits`` to match).
    Not covered: the honest subgraph splitting into pieces larger than one client (far less likely than
    isolation, which dominates).
    """
    if n < 2:
        return max(n - 1, 0), 1
    corrupt = math.floor(corrupt_fraction * n)
    sec_limit = 2.0 ** -(security_bits + math.log2(n))
    cor_limit = 2.0 ** -(correctness_bits + math.log2(n))
    log_q, log_p = (math.log1p(-dropout_fraction) if dropout_fraction < 1 else -math.inf,
                    math.log(dropout_fraction) if dropout_fraction > 0 else -math.inf)
    # Isolation alone needs gamma^k n <= 2^-s; start there rather than at k = 2.
    start = 2
    if 0 < corrupt_fraction < 1:
        start = max(2, 2 * math.floor((security_bits + math.log2(n)) / -math.log2(corrupt_fraction) / 2))
    for k in [*range(start, n - 1, 2), n - 1]:
        m = k + 1
        others = n - 1
        log_hyper = [(_log_comb(corrupt, c) + _log_comb(others - corrupt, k - c) - _log_comb(others, k))
                     if c <= corrupt and k - c <= others - corrupt else -math.inf for c in range(k + 1)]
        c_star = next((c for c in range(k + 2) if _upper_tail(log_hyper, c) <= sec_limit), k + 1)
        t = max(math.ceil((m + c_star) / 2), m // 2 + 1)
        if t > m:
            continue
        log_absent = [_log_comb(k, d) + (d * log_p if d else 0.0) + ((k - d) * log_q if k - d else 0.0)
                      for d in range(k + 1)]
        if k == n - 1 or _upper_tail(log_absent, m - t + 1) <= cor_limit:
            return k, t
    raise ProtocolConfigError(
        f"no secure SecAgg+ parameters for n={n} clients with corrupt fraction {corrupt_fraction}: even the "
        f"complete graph cannot keep {corrupt_fraction:.3g} n corrupt clients below the threshold"
    )


@dataclass(frozen=True)
class SecAggParams:
    """Parameters shared by the server and all clients of SecAgg+.

    Parameters
    ----------
    dim:
        Length of the float update vector (with ``public_weights=False`` one more masked coordinate carries
        the weight).
    max_clients:
        Most clients that can take part in one round; bounds the sum for the overflow check.
    threshold:
        Shamir threshold t per neighbourhood (a client plus its neighbours): an ``int``, a fraction
        in (1/2, 1] of the neighbourhood size, or ``None`` for ``floor(2m/3) + 1``. It must exceed half
        the neighbourhood so no two disjoint groups can obtain both of a client's secrets.
    neighbours:
        ``None`` for the complete graph (SecAgg), an even degree k, or ``"log"`` for SecAgg+ with the
        degree and threshold of :func:`secagg_plus_parameters` for the round's clients (O(log n) in n).
    clip:
        Every update coordinate is clipped to ``[-clip, clip]`` before it is weighted.
    max_weight:
        Largest client weight; ``weight * update`` lies on a grid over ``[-clip, clip] * max_weight``.
    public_weights:
        ``True`` (default): every client's weight is the public 1 (uniform, DP, equal budgets), so no weight
        travels and the opened mean divides by the number of included clients: no client can cancel the
        others' weights. ``False``: the weight rides in a masked slot; the opened total weight must then lie
        in ``n_included * [min_weight, max_weight]`` or the round aborts.
    min_weight:
        Smallest legitimate client weight when weights travel (``public_weights=False``).
    value_bits:
        Bits of each quantized value; ``None`` takes the most that cannot overflow.
    modulus_bits:
        Arithmetic is modulo 2^32 (uint32, the size of a float32 upload) or 2^64.
    graph_seed:
        Public seed of the neighbour graph, mixed with the round number and a digest of the round's signed key
        book (so neither the server nor anyone else can pick the graph).
    graph_from_key_book:
        ``True`` (default): the key-book digest enters the graph seed. ``False`` is UNSAFE, only for attack
        studies (``secagg_graph_isolation``): the graph then depends on ``graph_seed`` alone, so whoever sets
        the parameters can search for a graph in which corrupt clients hold t shares of an honest client.
    authenticated:
        ``True`` (default): the malicious-server protocol of Bonawitz et al. 2017 (§6.2): clients sign every
        message with their enrolled identity key and check every key they use, run the consistency check
        before revealing shares, and commit to their self-mask seed so forged shares are caught and their
        sender identified. ``False`` is the semi-honest protocol: UNSAFE against a deviating server (key
        substitution, forged shares, replayed or edited inputs all succeed); only for attack studies.
    corrupt_fraction, dropout_fraction, security_bits:
        What SecAgg+'s ``"log"`` degree and threshold are chosen for: at most ``corrupt_fraction`` of the
        clients colluding with the server, each neighbour absent with probability ``dropout_fraction``,
        failure probability at most ``2^-security_bits`` (defaults 1/3, 0.1, 40).
    """

    dim: int
    max_clients: int
    threshold: int | float | None = None
    neighbours: int | str | None = None
    clip: float = 1.0
    max_weight: float = 1.0
    value_bits: int | None = None
    modulus_bits: int = 32
    graph_seed: int = 0
    graph_from_key_book: bool = True
    public_weights: bool = True
    min_weight: float | None = None
    authenticated: bool = True
    corrupt_fraction: float = 1 / 3
    dropout_fraction: float = 0.1
    security_bits: int = 40
    levels: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not _is_int(self.dim) or self.dim < 1:
            raise ProtocolConfigError(f"dim must be a positive integer, got {self.dim!r}")
        if not _is_int(self.max_clients) or not 1 <= self.max_clients < SERVER_ID:
            raise ProtocolConfigError(f"max_clients must be a positive integer, got {self.max_clients!r}")
        if self.modulus_bits not in _MODULI:
            raise ProtocolConfigError(f"modulus_bits must be 32 or 64, got {self.modulus_bits!r}")
        if not (isinstance(self.clip, (int, float)) and math.isfinite(self.clip) and self.clip > 0):
            raise ProtocolConfigError(f"clip must be a positive finite number, got {self.clip!r}")
        if not (isinstance(self.max_weight, (int, float)) and math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ProtocolConfigError(f"max_weight must be a positive finite number, got {self.max_weight!r}")
        if not _is_int(self.graph_seed) or self.graph_seed < 0:
            raise ProtocolConfigError(f"graph_seed must be a non-negative integer, got {self.graph_seed!r}")
        if self.public_weights and self.max_weight != 1.0:
            raise ProtocolConfigError("with public weights every weight is 1: leave max_weight at 1 "
                                      "(or set public_weights=False, min_weight, max_weight)")
        if not self.public_weights:
            w = self.min_weight
            if w is None or not (isinstance(w, (int, float)) and 0 <= w <= self.max_weight):
                raise ProtocolConfigError(f"weights that travel need min_weight in [0, max_weight], got {w!r}")
        if not isinstance(self.graph_from_key_book, bool):
            raise ProtocolConfigError(f"graph_from_key_book must be True or False, got {self.graph_from_key_book!r}")
        if not isinstance(self.authenticated, bool):
            raise ProtocolConfigError(f"authenticated must be True or False, got {self.authenticated!r}")
        for name in ("corrupt_fraction", "dropout_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise ProtocolConfigError(f"{name} must lie in [0, 1), got {value!r}")
        if not _is_int(self.security_bits) or not 1 <= self.security_bits <= 128:
            raise ProtocolConfigError(f"security_bits must be an integer in [1, 128], got {self.security_bits!r}")
        self._check_threshold()
        self._check_neighbours()
        # Largest sum is max_clients * (levels - 1); it must stay below the modulus.
        headroom = math.ceil(math.log2(self.max_clients)) if self.max_clients > 1 else 0
        bits = self.value_bits
        if bits is None:
            bits = min(self.modulus_bits - headroom, 52)
            if bits < 2:
                raise ProtocolConfigError(
                    f"{self.max_clients} clients leave fewer than 2 value bits in a {self.modulus_bits}-bit modulus"
                )
        elif not _is_int(bits) or not 2 <= bits <= min(self.modulus_bits, 52):
            raise ProtocolConfigError(f"value_bits must be in [2, {min(self.modulus_bits, 52)}], got {bits!r}")
        levels = 1 << bits
        if self.max_clients * (levels - 1) >= 1 << self.modulus_bits:
            raise ProtocolConfigError(
                f"overflow: {self.max_clients} clients x max quantized value {levels - 1} (value_bits={bits}) "
                f"does not fit in the modulus 2^{self.modulus_bits}; use value_bits <= {self.modulus_bits - headroom} "
                f"or modulus_bits=64"
            )
        object.__setattr__(self, "value_bits", bits)
        object.__setattr__(self, "levels", levels)

    def _check_threshold(self) -> None:
        t = self.threshold
        if t is None:
            return
        if isinstance(t, float):
            if not 0.5 < t <= 1.0:
                raise ProtocolConfigError(f"a fractional threshold must lie in (0.5, 1], got {t}")
        elif not _is_int(t) or not 1 <= t <= self.max_clients:
            raise ProtocolConfigError(f"threshold must be an integer in [1, max_clients={self.max_clients}], got {t!r}")

    def _check_neighbours(self) -> None:
        k = self.neighbours
        if k is None or k == "log":
            return
        if not _is_int(k) or int(k) < 2 or int(k) % 2:
            raise ProtocolConfigError(f"neighbours must be None, 'log' or an even integer >= 2, got {k!r}")

    @property
    def dtype(self) -> np.dtype:
        """Little-endian unsigned integer type of the masked vector."""
        return np.dtype(_MODULI[self.modulus_bits]).newbyteorder("<")

    @property
    def vector_length(self) -> int:
        """Masked coordinates: the weighted update, plus the weight when weights travel."""
        return self.dim if self.public_weights else self.dim + 1

    def degree(self, n: int) -> int:
        """Neighbours of each client in a round of ``n`` clients (``n - 1`` for the complete graph)."""
        if self.neighbours is None:
            return n - 1
        if self.neighbours == "log":
            return self._secagg_plus(n)[0]
        return min(int(self.neighbours), n - 1)

    def _secagg_plus(self, n: int) -> tuple[int, int]:
        return secagg_plus_parameters(n, float(self.corrupt_fraction), float(self.dropout_fraction),
                                      int(self.security_bits))

    def resolve_threshold(self, m: int) -> int:
        """Threshold for neighbourhoods of ``m`` clients (self included); refused if insecure or impossible."""
        t = self.threshold
        if t is None:
            t = min(2 * m // 3 + 1, m)
        elif isinstance(t, float):
            t = max(math.ceil(t * m), m // 2 + 1)
        if not m / 2 < t <= m:
            raise ProtocolConfigError(
                f"threshold {t} is not in (m/2, m] for neighbourhoods of m={m} clients: below m/2 two disjoint "
                f"groups could recover both secrets of a client, above m nothing can be recovered"
            )
        return int(t)

    def plan(self, round_id: int, roster: Sequence[int], seed_material: bytes = b"",
             sampled: int | None = None) -> RoundPlan:
        """The public plan of round ``round_id`` among ``roster``: graph and threshold.

        ``seed_material`` (the digest of the round's signed key book) enters the graph seed, so every party
        derives the same graph and none can choose it. ``sampled`` is the size of the round's full roster when
        ``roster`` is the subset that advertised keys: the degree and threshold are fixed by the sampled size,
        so a server that hands a client a shrunken key book cannot lower the threshold with it.
        """
        if not _is_int(round_id) or not 0 <= round_id < 1 << 64:
            raise ProtocolConfigError(f"round_id must be a non-negative 64-bit integer, got {round_id!r}")
        ids = tuple(sorted(int(c) for c in roster))
        if len(set(ids)) != len(ids):
            raise ProtocolConfigError("roster lists a client twice")
        if not ids:
            raise ProtocolConfigError("roster is empty")
        if ids[0] < 0 or ids[-1] >= SERVER_ID:
            raise ProtocolConfigError(f"client ids must lie in [0, {SERVER_ID - 1}]")
        if len(ids) > self.max_clients:
            raise ProtocolConfigError(
                f"round has {len(ids)} clients but the modulus was sized for max_clients={self.max_clients}"
            )
        n = len(ids) if sampled is None else max(int(sampled), len(ids))
        k_n = self.degree(n)
        k = min(k_n, len(ids) - 1)
        material = seed_material if self.graph_from_key_book else b""
        seed = int.from_bytes(crypto.digest(b"graph-seed", self.graph_seed.to_bytes(8, "little"),
                                            round_id.to_bytes(8, "little"), material)[:16], "little")
        graph = neighbour_graph(ids, k, seed, round_id)
        if self.neighbours == "log" and self.threshold is None:
            t = self._secagg_plus(n)[1]
        else:
            t = self.resolve_threshold(k_n + 1)
        if t > k + 1:
            raise ProtocolConfigError(f"only {len(ids)} of {n} clients advertised keys: neighbourhoods of {k + 1} "
                                      f"cannot reach the threshold t={t}")
        return RoundPlan(round_id, ids, graph, t)


@dataclass(frozen=True)
class RoundPlan:
    """Who talks to whom in one round and how many shares recover a secret."""

    round_id: int
    roster: tuple[int, ...]
    neighbours: dict[int, frozenset[int]]
    threshold: int

    @property
    def sparse(self) -> bool:
        """True for a SecAgg+ graph (not every client is every other's neighbour): its seed then matters."""
        return any(len(nb) < len(self.roster) - 1 for nb in self.neighbours.values())

    def neighbourhood(self, client_id: int) -> frozenset[int]:
        """The client and its neighbours: the holders of its shares (Bonawitz et al. include the owner)."""
        return self.neighbours[client_id] | {client_id}


def neighbour_graph(roster: Sequence[int], degree: int, seed: int, round_id: int) -> dict[int, frozenset[int]]:
    """A k-regular Harary graph over a public random permutation of the roster (SecAgg+, Bell et al. 2020).

    Position p is linked to positions p +- 1 .. p +- k/2 around a cycle; the permutation comes from a
    numpy Generator seeded with the public ``(seed, round_id)``, so every party derives the same graph.
    ``degree >= n - 1`` gives the complete graph of the original SecAgg.
    """
    ids = sorted(roster)
    n = len(ids)
    if degree >= n - 1:
        everyone = frozenset(ids)
        return {u: everyone - {u} for u in ids}
    rng = np.random.default_rng([seed, round_id])
    order = [ids[i] for i in rng.permutation(n)]
    half = degree // 2
    graph: dict[int, frozenset[int]] = {}
    for p, u in enumerate(order):
        graph[u] = frozenset(order[(p + j) % n] for j in range(-half, half + 1) if j != 0)
    return graph


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
