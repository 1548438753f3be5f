"""Seed derivation: every random stream in a run is a pure function of the master seed.

Streams are keyed by purpose and indices (round, client), so a run resumed at round k draws
exactly what an uninterrupted run draws, and adding a consumer never shifts another's stream.
"""

from __future__ import annotations

import zlib

import numpy as np


def _key(part: int | str) -> int:
    return zlib.crc32(part.encode()) if isinstance(part, str) else int(part)


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed derived from ``seed`` and the given keys (order matters)."""
    ss = np.random.SeedSequence([int(seed), *(_key(k) for k in keys)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def derive_rng(seed: int, *keys: int | str) -> np.random.Generator:
    """A numpy Generator for the stream named by ``keys``."""
    return np.random.default_rng(derive_seed(seed, *keys))


def sample_size(n_clients: int, fraction: float) -> int:
    """Clients sampled per round: ``ceil(fraction * n)``, at least one (the 1e-9 absorbs float error)."""
    return max(1, int(np.ceil(fraction * n_clients - 1e-9)))


def sample_clients(seed: int, round_id: int, n_clients: int, fraction: float) -> list[int]:
    """The sorted client ids sampled in ``round_id`` (seeded, without replacement)."""
    rng = derive_rng(seed, "sample", round_id)
    return sorted(int(i) for i in rng.choice(n_clients, size=sample_size(n_clients, fraction), replace=False))


def seed31(seed: int, *keys: int | str) -> int:
    """:func:`derive_seed` reduced to 31 bits, what environments and agents' ``reseed`` take."""
    return derive_seed(seed, *keys) % (2**31)


def train_seed(seed: int, round_id: int, client_id: int) -> int:
    """The seed a client's local training in ``round_id`` starts from (every executor uses this one)."""
    return seed31(seed, "train", round_id, client_id)


def eval_seed(seed: int, tag: str, round_id: int, client_id: int) -> int:
    """The first episode seed of a client's ``tag`` evaluation ("local", "global", "personal") in ``round_id``."""
    return seed31(seed, "eval", tag, round_id, client_id)
