"""On-disk formats of the model cache: safetensors files and the compressed tensor container.

Safetensors (https://github.com/huggingface/safetensors) is an 8-byte little-endian header length, a JSON
header (``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}``) and one data
section that the tensors cover without holes. We parse it ourselves so that a load can be ``np.frombuffer``
views over one memory map (zero-copy), and so that a bad or truncated file is refused before it is cached.

The container (``<file>.lhz``) keeps the same tensors, each raw or compressed (see ``model_codec``)::

    magic (8 bytes, padded to 64)  tensor blobs (each 64-byte aligned)  JSON footer  u64 footer length  magic

The footer is ``{"format": "llamahome-tensors", "version": 1, "prefix": <the safetensors header text>,
"tensors": {name: entry}}``; an entry holds ``dtype``, ``shape``, ``nbytes``, ``begin`` (its offset in the
plain file's data section) and either ``{"codec": "raw", "offset"}`` or ``{"codec": "bgz", "word",
"rotate", "chunks"}``, offsets being file offsets. Writing the footer last lets tensors stream to disk as they
are compressed; keeping the original header text lets ``get_path`` rebuild the plain file byte for byte.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from llamahome.errors import ModelCacheError

__all__ = [
    "CONTAINER_MAGIC",
    "DTYPE_SIZES",
    "FLOAT_DTYPES",
    "TensorSpec",
    "SafetensorsHeader",
    "parse_safetensors_header",
    "read_safetensors_header",
    "build_safetensors_header",
    "write_order",
    "numpy_dtype",
    "dtype_code_of_numpy",
    "open_regular",
]

CONTAINER_MAGIC = b"LHZT\x00\x00\x00\x01"
#: Data sections start at, and container blobs are padded to, this boundary (cache lines, SIMD loads).
ALIGN = 64
#: Refuse headers above this size: real ones are kilobytes; a huge length means a file that is not safetensors.
MAX_HEADER_BYTES = 100 * 1024 * 1024

#: Element size in bytes of every safetensors dtype code.
DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1, "F8_E8M0": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1,
    "BOOL": 1, "C64": 8,
}  # fmt: skip
#: Float codes: their byte groups hold an exponent that compresses well.
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "C64"})

_NUMPY: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"), "C64": np.dtype("<c8"),
}  # fmt: skip


def _optional_ml_dtypes() -> dict[str, np.dtype]:
    try:  # ml_dtypes (if installed) gives numpy real bf16/fp8 dtypes; without it we hand out the raw bits
        import ml_dtypes  # type: ignore[import-not-found, unused-ignore]  # optional, may be absent
    except ImportError:
        return {}
    names = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E4M3FNUZ": "float8_e4m3fnuz",
             "F8_E5M2": "float8_e5m2", "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu"}  # fmt: skip
    return {code: np.dtype(getattr(ml_dtypes, attr)) for code, attr in names.items() if hasattr(ml_dtypes, attr)}


_ML = _optional_ml_dtypes()
_BITS_FALLBACK: dict[int, np.dtype[Any]] = {1: np.dtype("u1"), 2: np.dtype("<u2")}


def numpy_dtype(code: str) -> np.dtype:
    """The numpy dtype for a safetensors code; bf16/fp8 come as ml_dtypes types or, without them, raw uints."""
    dtype = _NUMPY.get(code) or _ML.get(code)
    if dtype is None:
        dtype = _BITS_FALLBACK[DTYPE_SIZES[code]]
    return dtype


_FROM_NUMPY: dict[str, str] = {
    "float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32", "int16": "I16",
    "int8": "I8", "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
    "complex64": "C64", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3", "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2": "F8_E5M2", "float8_e5m2fnuz": "F8_E5M2FNUZ", "float8_e8m0fnu": "F8_E8M0",
}  # fmt: skip


def dtype_code_of_numpy(dtype: np.dtype, name: str) -> str:
    """The safetensors code of a numpy dtype, or a ModelCacheError naming the tensor."""
    code = _FROM_NUMPY.get(dtype.name)
    if code is None or (dtype.itemsize > 1 and dtype.byteorder == ">"):
        raise ModelCacheError(
            f"Tensor {name!r} has dtype {dtype}, which safetensors cannot store; convert it to a little-endian "
            f"int, uint, float or bool array first."
        )
    return code


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a file: dtype code, shape and byte range (relative to the data section)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]


@dataclass
class SafetensorsHeader:
    """A parsed, validated safetensors header."""

    tensors: dict[str, TensorSpec]
    metadata: dict[str, str]
    data_start: int  # file offset of the data section
    data_len: int

    @property
    def file_size(self) -> int:
        return self.data_start + self.data_len


def _bad(where: str, problem: str) -> ModelCacheError:
    return ModelCacheError(
        f"{where} is not a valid safetensors file: {problem}. Re-export it with safetensors.save_file "
        f"(or re-download it) and try again."
    )


def parse_safetensors_header(raw_len: bytes, read_header: Any, file_size: int, where: str) -> SafetensorsHeader:
    """Validate the header bytes of a safetensors file of ``file_size`` bytes (``read_header(n)`` reads them)."""
    if len(raw_len) < 8:
        raise _bad(where, f"it is only {file_size} bytes long")
    (header_len,) = struct.unpack("<Q", raw_len)
    if header_len < 2 or header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
        raise _bad(where, f"its header length {header_len} does not fit the file ({file_size} bytes)")
    text = read_header(header_len)
    if len(text) != header_len:
        raise _bad(where, "its header is truncated")
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(where, f"its header is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _bad(where, "its header is not a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _bad(where, "its __metadata__ is not a mapping of strings to strings")
    tensors: dict[str, TensorSpec] = {}
    for name, entry in doc.items():
        tensors[name] = _parse_entry(name, entry, where)
    ranges = sorted((t.begin, t.end, t.name) for t in tensors.values() if t.end > t.begin)
    cursor = 0
    for begin, end, name in ranges:
        if begin != cursor:
            raise _bad(where, f"tensor {name!r} starts at {begin}, leaving a hole or overlap at {cursor}")
        cursor = end
    data_start = 8 + header_len
    if data_start + cursor != file_size:
        if data_start + cursor > file_size:
            raise _bad(where, f"it is truncated: the header needs {data_start + cursor} bytes, the file has "
                       f"{file_size}")  # fmt: skip
        raise _bad(where, f"it has {file_size - data_start - cursor} trailing bytes after the last tensor")
    return SafetensorsHeader(tensors=tensors, metadata=dict(metadata), data_start=data_start, data_len=cursor)


def _parse_entry(name: str, entry: Any, where: str) -> TensorSpec:
    if not isinstance(entry, dict):
        raise _bad(where, f"the entry of tensor {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise _bad(where, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _bad(where, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _bad(where, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    if (offsets[1] - offsets[0]) != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise _bad(where, f"tensor {name!r} has {offsets[1] - offsets[0]} bytes but its shape {shape} needs "
                   f"{math.prod(shape) * DTYPE_SIZES[dtype]}")  # fmt: skip
    return TensorSpec(name, dtype, tuple(shape), offsets[0], offsets[1])


def open_regular(path: str | os.PathLike[str], *, follow: bool = True) -> int:
    """Open a regular file for reading, or raise ModelCacheError saying what it is instead.

    ``O_NONBLOCK`` keeps a FIFO from blocking the open (a plain ``open()`` waits forever for a writer);
    ``fstat`` after the open checks what was actually opened, so a file swapped after a ``stat`` is caught
    too. ``follow=False`` refuses a symlink (used for files inside the cache, which are never links).
    """
    where = os.fspath(path)
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise  # callers say what a missing file means to them
    except IsADirectoryError:
        raise ModelCacheError(f"{where} is a directory; use add_dir() for a model directory.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            what = "a symlink loop" if follow else "a symlink"
            raise ModelCacheError(f"{where} is {what}, not a regular file; pass the file itself.") from None
        raise ModelCacheError(f"Cannot open {where} ({exc.strerror}); check the path and its permissions.") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = (
                "a directory"
                if stat.S_ISDIR(mode)
                else "a FIFO"
                if stat.S_ISFIFO(mode)
                else ("a socket" if stat.S_ISSOCK(mode) else "a device")
            )
            raise ModelCacheError(f"{where} is {what}, not a regular file; model files must be regular files.")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file (the data is not read; non-regular files refused)."""
    where = str(path)
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        raise ModelCacheError(f"{where} does not exist; pass the path of a .safetensors file.") from None
    with open(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return parse_safetensors_header(f.read(8), f.read, size, where)


def build_safetensors_header(
    entries: Iterable[tuple[str, str, tuple[int, ...], int]], metadata: Mapping[str, str] | None
) -> tuple[bytes, list[tuple[str, int, int]]]:
    """Lay tensors out (``(name, dtype, shape, nbytes)`` in write order) and return (prefix bytes, ranges).

    The prefix is the length plus the header, padded with spaces so that data starts on a 64-byte boundary
    (as the Rust writer pads to 8). Write tensors in the given order with no gaps after the prefix.
    """
    doc: dict[str, Any] = {}
    if metadata:
        doc["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    ranges = []
    cursor = 0
    for name, dtype, shape, nbytes in entries:
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [cursor, cursor + nbytes]}
        ranges.append((name, cursor, cursor + nbytes))
        cursor += nbytes
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-(8 + len(text))) % ALIGN)
    return struct.pack("<Q", len(text)) + text, ranges


def write_order(items: Iterable[tuple[str, str]]) -> list[str]:
    """Names ordered so every tensor starts aligned to its element size: widest elements first, then by name."""
    return [name for name, code in sorted(items, key=lambda nc: (-DTYPE_SIZES[nc[1]], nc[0]))]
