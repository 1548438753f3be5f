"""Checks that no party's raw observation leaves it: in the bytes on the wire, or in another node's memory.

Two tests of the VFRL claim "no agent ever sees another's raw observation":

* :func:`find_in_messages` searches recorded messages (ciphertexts, and the plaintexts the senders
  encrypted when the log kept them) for byte signatures of raw observation values;
* :func:`find_in_object` walks everything reachable from a node object (e.g. the Q-network agent) and
  searches every array, tensor and byte string it holds for the same signatures, and reports any
  reference to a forbidden object (another party, the environment).

Signatures are 8-byte patterns: two adjacent features of one observation as consecutive float32 (how
any array encoding of the raw slice would lay them out) and each feature as float64. Eight bytes keep
chance matches in kilobytes of random-looking ciphertext negligible (~ n_bytes * n_sigs / 2^64), unlike
4-byte float32 singles. A slice of one feature only gets float32 4-byte signatures (then chance matches
in large logs are possible; audit with several features per party).
"""

from __future__ import annotations

import gc
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from securefrl.vertical.wire import WireRecord


@dataclass(frozen=True)
class Leak:
    """Where a raw-observation signature was found."""

    where: str
    owner: int
    detail: str


def observation_signatures(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-byte (uint64) and 4-byte (uint32, single-feature slices only) signatures of raw observation rows."""
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float32))
    sig8: list[np.ndarray] = [rows.astype(np.float64).view(np.uint64).ravel()]
    if rows.shape[1] >= 2:
        pairs = np.ascontiguousarray(np.stack([rows[:, :-1], rows[:, 1:]], axis=-1))
        sig8.append(pairs.view(np.uint64).ravel())
    sig4 = rows.view(np.uint32).ravel() if rows.shape[1] == 1 else np.zeros(0, np.uint32)
    # Exact zeros (and their +-0 patterns) say nothing about an observation and occur in every header.
    sig8_all = np.unique(np.concatenate(sig8))
    sig8_all = sig8_all[(sig8_all != 0) & (sig8_all != np.uint64(1 << 63))]
    sig4 = np.unique(sig4[(sig4 != 0) & (sig4 != np.uint32(1 << 31))])
    return sig8_all, sig4


def _windows(data: bytes, width: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    if len(raw) < width:
        return np.zeros(0, dtype=np.uint64 if width == 8 else np.uint32)
    win = np.lib.stride_tricks.sliding_window_view(raw, width)
    dtype = np.dtype("<u8") if width == 8 else np.dtype("<u4")
    return np.ascontiguousarray(win).view(dtype).ravel()


def contains_signature(data: bytes, signatures: tuple[np.ndarray, np.ndarray]) -> bool:
    """Whether ``data`` contains, at any byte offset, one of the signatures."""
    sig8, sig4 = signatures
    if sig8.size and np.isin(_windows(data, 8), sig8).any():
        return True
    return bool(sig4.size and np.isin(_windows(data, 4), sig4).any())


def find_in_messages(records: Iterable[WireRecord], observations: dict[int, np.ndarray]) -> list[Leak]:
    """Messages (bytes, and kept plaintexts) that contain a raw observation of party ``owner``."""
    sigs = {owner: observation_signatures(rows) for owner, rows in observations.items()}
    leaks = []
    for rec in records:
        for label, blob in (("bytes", rec.data), ("plaintext", rec.plaintext)):
            if blob is None:
                continue
            for owner, sig in sigs.items():
                if contains_signature(blob, sig):
                    leaks.append(Leak(f"{rec.sender}->{rec.recipient}:{rec.kind}@{rec.step}", owner, label))
    return leaks


_SKIP = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
         types.CodeType, types.FrameType, str, int, bool, type(None))


def reachable(root: object, limit: int = 500_000) -> Iterator[object]:
    """Every object reachable from ``root`` through references (not through modules, classes or functions)."""
    seen = {id(root)}
    stack = [root]
    while stack:
        obj = stack.pop()
        yield obj
        for ref in gc.get_referents(obj):
            if isinstance(ref, _SKIP) or id(ref) in seen:
                continue
            seen.add(id(ref))
            if len(seen) > limit:
                raise RuntimeError(f"more than {limit} objects reachable from {type(root).__name__}")
            stack.append(ref)


def find_in_object(root: object, observations: dict[int, np.ndarray], forbidden: Sequence[object] = ()) -> list[Leak]:
    """Arrays, tensors or bytes reachable from ``root`` that hold a raw observation, and forbidden references."""
    sigs = {owner: observation_signatures(rows) for owner, rows in observations.items()}
    forbidden_ids = {id(o): o for o in forbidden}
    leaks = []
    for obj in reachable(root):
        if id(obj) in forbidden_ids:
            leaks.append(Leak(f"reference to {type(obj).__name__}", -1, "forbidden object reachable"))
            continue
        if isinstance(obj, torch.Tensor):
            blob = obj.detach().cpu().contiguous().numpy().tobytes()
        elif isinstance(obj, np.ndarray):
            blob = np.ascontiguousarray(obj).tobytes()
        elif isinstance(obj, (bytes, bytearray)):
            blob = bytes(obj)
        elif isinstance(obj, float):
            blob = np.float64(obj).tobytes()
        else:
            continue
        for owner, sig in sigs.items():
            if contains_signature(blob, sig):
                leaks.append(Leak(f"{type(obj).__name__} of shape {getattr(obj, 'shape', len(blob))}", owner,
                                  "raw observation bytes held"))
    return leaks
