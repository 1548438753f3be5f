"""Bridge between SEAL's seeded ciphertext serialization and the compact CKKS wire codec.

SEAL's symmetric-key encryption can replace the uniformly random half c1 = a of a fresh
ciphertext by the 64-byte seed it was expanded from (``Encryptor.encrypt_symmetric`` returning a
``Serializable``). The Python bindings only save such objects to a file, compressed with SEAL's
default compressor, so this module

* saves into a private scratch directory, decompresses (zstd/zlib, as the header says) and reads
  out c0 and the seed (:func:`split_seeded`), and
* rebuilds an uncompressed seeded serialization from (c0, seed) that ``Ciphertext.load`` expands
  back into a full ciphertext (:func:`build_seeded`).

Only the local client's own SEAL output is decompressed here; bytes from peers never reach
this code (the server works on the compact codec in numpy, the key holder rebuilds from fields).
The layout is that of SEAL 4.x (``Ciphertext::save_members``); :class:`SealCodec` checks it
field by field and the key holder runs a round-trip self-test at construction, so a SEAL
version with another layout fails loudly instead of producing wrong ciphertexts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import os
import shutil
import struct
import tempfile
import threading
import weakref
import zlib
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from protocols.errors import ProtocolConfigError

_SEAL_MAGIC = 0xA15E
_HEADER = struct.Struct("<HBBBBHQ")  # magic, header_size, major, minor, compr_mode, reserved, total size
_MEMBERS = struct.Struct("<4QBQQQdQ")  # parms_id, is_ntt_form, size, N, coeff_modulus_size, scale, correction
_COUNT = struct.Struct("<Q")
_COMPR_NONE, _COMPR_ZLIB, _COMPR_ZSTD = 0, 1, 2
#: PRNG descriptor: one type byte then the 512-bit seed (UniformRandomGeneratorInfo::save_members).
PRNG_INFO_SIZE = 1 + 64
_PRNG_TYPES = frozenset({1, 2})  # blake2xb, shake256


class _Zstd:
    """``ZSTD_decompress`` from the zstd that SEAL itself is linked with (or a system libzstd)."""

    def __init__(self) -> None:
        self._fn = None
        candidates = [getattr(getattr(seal, "_sealapi_cpp", None), "__file__", None), ctypes.util.find_library("zstd")]
        for path in candidates:
            if not path:
                continue
            try:
                lib = ctypes.CDLL(path)
                fn, is_error = lib.ZSTD_decompress, lib.ZSTD_isError
            except (OSError, AttributeError):
                continue
            fn.restype = ctypes.c_size_t
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
            is_error.restype = ctypes.c_uint
            is_error.argtypes = [ctypes.c_size_t]
            self._fn, self._is_error = fn, is_error
            return

    def decompress(self, src: bytes, size: int) -> bytes:
        if self._fn is None:
            raise ProtocolConfigError("SEAL writes zstd-compressed objects but no zstd decompressor was found")
        dst = ctypes.create_string_buffer(size)
        n = self._fn(dst, size, src, len(src))
        if self._is_error(n) or n != size:
            raise ProtocolConfigError(f"zstd could not decompress SEAL's output ({n} of {size} bytes)")
        return dst.raw


_ZSTD = _Zstd()


class ScratchDir:
    """A private (mode 0700) directory for SEAL's file-only save/load bindings, removed on collection.

    Only ciphertexts pass through it (public data); keys are never written to disk.
    """

    def __init__(self) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.path = tempfile.mkdtemp(prefix="securefrl-ckks-", dir=base)
        self._counter = itertools.count()
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, True)

    def file(self) -> str:
        """A file name unique to the calling thread (files are reused, not accumulated)."""
        return os.path.join(self.path, f"ct-{threading.get_ident()}.bin")

    def cleanup(self) -> None:
        self._finalizer()


@dataclass(frozen=True)
class SealCodec:
    """Splits and rebuilds SEAL 4.x seeded single-prime CKKS ciphertext serializations.

    Parameters
    ----------
    parms_id:
        The 4-word parameter hash of the context's first (only) level.
    poly_modulus_degree, scale:
        Ring degree N and CKKS scale every ciphertext must carry.
    version:
        (major, minor) SEAL version written into rebuilt headers.
    """

    parms_id: tuple[int, int, int, int]
    poly_modulus_degree: int
    scale: float
    version: tuple[int, int]

    @property
    def _c0_bytes(self) -> int:
        return 8 * self.poly_modulus_degree

    @property
    def members_size(self) -> int:
        """Uncompressed members of a seeded ciphertext: fields, c0 array, PRNG descriptor."""
        return _MEMBERS.size + (_HEADER.size + _COUNT.size + self._c0_bytes) + (_HEADER.size + PRNG_INFO_SIZE)

    def split_seeded(self, data: bytes) -> tuple[np.ndarray, bytes]:
        """Return (c0 as uint64[N], 65-byte PRNG descriptor) from SEAL's saved seeded ciphertext."""
        magic, hsize, major, _minor, compr, _res, total = _HEADER.unpack_from(data, 0)
        if magic != _SEAL_MAGIC or hsize != _HEADER.size or major != 4 or total != len(data):
            raise ProtocolConfigError("unexpected SEAL serialization header; this code reads SEAL 4.x")
        body = data[_HEADER.size :]
        if compr == _COMPR_ZSTD:
            members = _ZSTD.decompress(body, self.members_size)
        elif compr == _COMPR_ZLIB:
            members = zlib.decompress(body)
        elif compr == _COMPR_NONE:
            members = body
        else:
            raise ProtocolConfigError(f"unknown SEAL compression mode {compr}")
        if len(members) != self.members_size:
            raise ProtocolConfigError(
                f"SEAL ciphertext has {len(members)} member bytes, expected {self.members_size}: "
                "not a seeded single-prime CKKS ciphertext of this SEAL layout"
            )
        *pid, ntt, size, n, levels, scale, correction = _MEMBERS.unpack_from(members, 0)
        if (tuple(pid), ntt, size, n, levels, scale, correction) != (
            self.parms_id,
            1,
            2,
            self.poly_modulus_degree,
            1,
            self.scale,
            1,
        ):
            raise ProtocolConfigError("SEAL ciphertext fields do not match the expected seeded CKKS layout")
        off = _MEMBERS.size
        arr_hdr = _HEADER.unpack_from(members, off)
        (count,) = _COUNT.unpack_from(members, off + _HEADER.size)
        if arr_hdr[0] != _SEAL_MAGIC or arr_hdr[4] != _COMPR_NONE or count != self.poly_modulus_degree:
            raise ProtocolConfigError("SEAL ciphertext does not hold exactly c0 followed by a seed")
        off += _HEADER.size + _COUNT.size
        c0 = np.frombuffer(members, dtype="<u8", count=self.poly_modulus_degree, offset=off)
        off += self._c0_bytes
        info_hdr = _HEADER.unpack_from(members, off)
        if info_hdr[0] != _SEAL_MAGIC or info_hdr[6] != _HEADER.size + PRNG_INFO_SIZE:
            raise ProtocolConfigError("SEAL ciphertext does not end in a PRNG seed descriptor")
        prng = members[off + _HEADER.size :]
        if prng[0] not in _PRNG_TYPES:
            raise ProtocolConfigError(f"unknown SEAL PRNG type {prng[0]}")
        return c0, prng

    def build_seeded(self, c0: bytes, prng: bytes) -> bytes:
        """Uncompressed SEAL serialization of the seeded ciphertext (c0, seed) for ``Ciphertext.load``."""
        major, minor = self.version
        members = b"".join(
            (
                _MEMBERS.pack(*self.parms_id, 1, 2, self.poly_modulus_degree, 1, self.scale, 1),
                _HEADER.pack(
                    _SEAL_MAGIC,
                    _HEADER.size,
                    major,
                    minor,
                    _COMPR_NONE,
                    0,
                    _HEADER.size + _COUNT.size + self._c0_bytes,
                ),
                _COUNT.pack(self.poly_modulus_degree),
                c0,
                _HEADER.pack(_SEAL_MAGIC, _HEADER.size, major, minor, _COMPR_NONE, 0, _HEADER.size + PRNG_INFO_SIZE),
                prng,
            )
        )
        header = _HEADER.pack(_SEAL_MAGIC, _HEADER.size, major, minor, _COMPR_NONE, 0, _HEADER.size + len(members))
        return header + members


def seal_version(data: bytes) -> tuple[int, int]:
    """(major, minor) SEAL version from a serialization header this SEAL build wrote."""
    _magic, _hsize, major, minor, *_ = _HEADER.unpack_from(data, 0)
    return major, minor
