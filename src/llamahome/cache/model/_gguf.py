"""A GGUF reader of our own: validates a file llama.cpp / Ollama would load, and says what it holds.

GGUF (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), versions 2 and 3: ``b"GGUF"``, u32 version,
u64 tensor count, u64 metadata count, the metadata (``key: string, type: u32, value``), the tensor infos
(``name, n_dims: u32, dims: u64 x n, ggml type: u32, offset: u64``), then the data section, aligned to
``general.alignment`` (32 by default), where each tensor lies at its offset. A file is accepted only if every
field parses and every tensor's bytes lie inside the file, so a truncated download is refused before it is
cached. The reader walks the header only (kilobytes to a few megabytes): the tensor data is never read.
The ``gguf`` package is not needed (tests use it to write files).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from llamahome.errors import ModelCacheError

__all__ = ["GGUF_MAGIC", "GGUFInfo", "read_gguf", "is_gguf"]

GGUF_MAGIC = b"GGUF"
#: Header sanity bounds: real files have a few hundred keys and up to tens of thousands of tensors.
_MAX_COUNT = 10_000_000
_MAX_DIMS = 8

#: ggml tensor types: name, (elements per block, bytes per block); from ggml.h / gguf-py's GGML_QUANT_SIZES.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}  # fmt: skip

#: ``general.file_type`` (llama.cpp's llama_ftype): the quantization a model was made with.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}  # fmt: skip

_SCALARS: dict[int, struct.Struct] = {
    0: struct.Struct("<B"), 1: struct.Struct("<b"), 2: struct.Struct("<H"), 3: struct.Struct("<h"),
    4: struct.Struct("<I"), 5: struct.Struct("<i"), 6: struct.Struct("<f"), 7: struct.Struct("<?"),
    10: struct.Struct("<Q"), 11: struct.Struct("<q"), 12: struct.Struct("<d"),
}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFInfo:
    """What a validated GGUF file holds."""

    version: int
    tensors: int
    file_size: int
    architecture: str
    quantization: str
    metadata: dict[str, Any] = field(default_factory=dict)  # scalar and string values (arrays summarised)


class _Bad(Exception):
    pass


class _Reader:
    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.size, self.pos = f, size, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise _Bad(f"it is truncated (needs {self.pos + n} bytes, has {self.size})")
        data = self.f.read(n)
        if len(data) != n:
            raise _Bad("it is truncated")
        self.pos += n
        return data

    def unpack(self, fmt: struct.Struct) -> Any:
        return fmt.unpack(self.take(fmt.size))[0]

    def u32(self) -> int:
        return int(self.unpack(_SCALARS[4]))

    def u64(self) -> int:
        return int(self.unpack(_SCALARS[10]))

    def string(self) -> str:
        n = self.u64()
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad("a string is not UTF-8") from None

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY and depth < 2:
            item, count = self.u32(), self.u64()
            if count > _MAX_COUNT * 100:
                raise _Bad(f"an array claims {count} items")
            if item in _SCALARS:  # skip fixed-size items in one step (token scores: hundreds of thousands)
                self.take(count * _SCALARS[item].size)
                return f"[{count} items]"
            for _ in range(count):
                self.value(item, depth + 1)
            return f"[{count} items]"
        raise _Bad(f"unknown metadata type {kind}")


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """Does the file start with the GGUF magic? (False for anything unreadable.)"""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def read_gguf(fd: int, where: str) -> GGUFInfo:
    """Validate the GGUF file open as ``fd`` (a regular file; the caller closes it) and describe it."""
    size = os.fstat(fd).st_size
    f = os.fdopen(os.dup(fd), "rb", buffering=1 << 20)
    try:
        return _parse(_Reader(f, size), where)
    except _Bad as exc:
        raise ModelCacheError(
            f"{where} is not a valid GGUF file: {exc}. Download it again (or re-convert it with llama.cpp's "
            f"convert_hf_to_gguf.py) and retry."
        ) from None
    finally:
        f.close()


def _parse(r: _Reader, where: str) -> GGUFInfo:
    if r.take(4) != GGUF_MAGIC:
        raise _Bad("it does not start with the GGUF magic")
    version = r.u32()
    if version not in (2, 3):
        raise _Bad(f"it is GGUF version {version}; versions 2 and 3 are supported")
    n_tensors, n_kv = r.u64(), r.u64()
    if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
        raise _Bad(f"its header claims {n_tensors} tensors and {n_kv} metadata keys")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string()
        metadata[key] = r.value(r.u32())
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _Bad(f"its general.alignment {alignment!r} is not a power of two")
    extents = []
    type_bytes: dict[str, int] = {}
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.u32()
        if n_dims > _MAX_DIMS:
            raise _Bad(f"tensor {name!r} has {n_dims} dimensions")
        dims = [r.u64() for _ in range(n_dims)]
        kind, offset = r.u32(), r.u64()
        if offset % alignment:
            raise _Bad(f"tensor {name!r} is not aligned to {alignment}")
        known = GGML_TYPES.get(kind)
        if known is None:
            extents.append((name, offset, 0))  # a newer ggml type: its size is unknown, its offset still checked
            continue
        type_name, block, block_bytes = known
        count = math.prod(dims)
        if count % block:
            raise _Bad(f"tensor {name!r} has {count} elements, not a multiple of {type_name}'s block of {block}")
        nbytes = count // block * block_bytes
        extents.append((name, offset, nbytes))
        type_bytes[type_name] = type_bytes.get(type_name, 0) + nbytes
    data_start = r.pos + (-r.pos % alignment)
    for name, offset, nbytes in extents:
        if data_start + offset + nbytes > r.size:
            raise _Bad(
                f"it is truncated: tensor {name!r} ends at byte {data_start + offset + nbytes}, the file has {r.size}"
            )
    arch = metadata.get("general.architecture")
    file_type = metadata.get("general.file_type")
    if isinstance(file_type, int) and file_type in FILE_TYPES:
        quant = FILE_TYPES[file_type]
    elif type_bytes:  # no file type recorded: name the type holding most bytes
        quant = max(type_bytes.items(), key=lambda kv: kv[1])[0]
    else:
        quant = "unknown"
    return GGUFInfo(
        version=version,
        tensors=n_tensors,
        file_size=r.size,
        architecture=arch if isinstance(arch, str) else "unknown",
        quantization=quant,
        metadata=metadata,
    )
