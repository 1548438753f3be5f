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
