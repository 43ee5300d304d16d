"""A block's frame: its token ids and per-layer K/V arrays as bytes, compressed where it pays, bit-exact.

Layout (inside a checksummed blob file, see :mod:`._store`; the same bytes travel to the network tier)::

    u32 meta_len | meta (JSON, UTF-8) | zero padding to a multiple of 8 | tokens (int64) | payload

``meta`` says ``dtype`` (a numpy dtype name, or ``bfloat16``), ``shapes`` (K then V of every layer, each with
the token axis second to last), ``codec`` (``raw`` or ``planes``), ``raw`` and ``stored`` (payload sizes).
The raw payload is every array's bytes in that order. ``planes`` splits it into byte planes (byte 0 of every
value, then byte 1, ...; for bf16/fp16 the low/mantissa bytes, then the high sign/exponent bytes) and keeps
each plane zstd-compressed where that saves :data:`~llamahome.cache.compression.MIN_SAVING` (``planes``
lists ``[codec, stored size]`` per plane): the exponent planes shrink well, the mantissa planes are stored
as they are and cost nothing to decode. Decoding writes every plane straight into its interleaved place.

Every field is checked on decode (sizes, shapes, dtype, token count), and decompression is bounded by the
declared raw size, so a damaged or hostile frame raises :class:`CorruptEntryError`, never a wrong array.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zstandard

from llamahome.errors import CorruptEntryError

from .. import compression as cz

__all__ = ["Decoded", "DTYPES", "encode", "decode", "nbytes"]

#: The dtypes a block may hold; ``bfloat16`` is carried as its 16 bits (numpy has no bfloat16).
DTYPES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
_META_LEN = struct.Struct("<I")
_MAX_META = 1 << 20
_LEVEL = 1  # level 1 is nearly as small as 3 on K/V bytes and encodes about twice as fast
_SAMPLE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Decoded:
    """A decoded block: token ids, the dtype name and the arrays (K0, V0, K1, V1, ...) as numpy views.

    ``bfloat16`` arrays are uint16 views of the raw bits."""

    tokens: np.ndarray
    dtype: str
    arrays: list[np.ndarray]
    payload: np.ndarray  # the raw payload the arrays view (uint8)

    @property
    def nbytes(self) -> int:
        return int(self.payload.nbytes)


def nbytes(part: bytes | memoryview | np.ndarray) -> int:
    """Size in bytes of one frame buffer."""
    return int(part.nbytes) if isinstance(part, np.ndarray | memoryview) else len(part)


def storage_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that carries ``dtype``'s bits."""
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)


def _pad8(n: int) -> int:
    return -n % 8


def _header(meta: dict[str, object]) -> bytes:
    text = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return _META_LEN.pack(len(text)) + text + b"\0" * _pad8(_META_LEN.size + len(text))


def _plane_pays(plane: np.ndarray) -> bool:
    """Does zstd shrink this byte plane? Judged on a sample, so incompressible mantissa planes cost no encode."""
    sample = plane[: _SAMPLE_BYTES]
    return cz.pays(sample.nbytes, len(cz.compress(sample.data, level=_LEVEL)))


def encode(
    tokens: np.ndarray, arrays: Sequence[np.ndarray], dtype: str, compress: bool
) -> tuple[list[bytes | memoryview | np.ndarray], int, int]:
    """The frame of one block as a list of buffers, with the payload's raw and stored sizes."""
    if dtype not in DTYPES:
        raise ValueError(f"unsupported K/V dtype {dtype!r}")
    raw_parts = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
    raw_len = sum(p.nbytes for p in raw_parts)
    meta: dict[str, object] = {"codec": "raw"}
    payload: list[np.ndarray | bytes] = list(raw_parts)
    itemsize = DTYPES[dtype]
    if compress and raw_len >= cz.MIN_COMPRESS_BYTES and raw_len % itemsize == 0:
        joined = np.concatenate(raw_parts) if len(raw_parts) > 1 else raw_parts[0]
        planes = cz.group_bytes(joined, itemsize).reshape(itemsize, -1)
        stored: list[np.ndarray | bytes] = []
        table: list[tuple[str, int]] = []
        for plane in planes:
            packed = cz.compress(plane.data, level=_LEVEL) if _plane_pays(plane) else None
            if packed is not None and cz.pays(plane.nbytes, len(packed)):
                stored.append(packed)
                table.append(("zstd", len(packed)))
            else:
                stored.append(plane)
                table.append(("raw", int(plane.nbytes)))
        if cz.pays(raw_len, sum(size for _, size in table)):
            meta, payload = {"codec": "planes", "planes": [list(entry) for entry in table]}, stored
    stored_len = sum(nbytes(p) for p in payload)
    meta.update(
        v=1, dtype=dtype, tokens=int(tokens.size), shapes=[list(map(int, a.shape)) for a in arrays], raw=raw_len,
        stored=stored_len,
    )
    return [_header(meta), np.ascontiguousarray(tokens, dtype="<i8"), *payload], raw_len, stored_len


def _bad(why: str) -> CorruptEntryError:
    return CorruptEntryError(f"KV block frame is damaged: {why}.")


def _meta(frame: memoryview) -> tuple[dict[str, object], int]:
    if frame.nbytes < _META_LEN.size:
        raise _bad("shorter than its header")
    (meta_len,) = _META_LEN.unpack_from(frame, 0)
    if meta_len > _MAX_META or _META_LEN.size + meta_len > frame.nbytes:
        raise _bad("meta length out of range")
    try:
        meta = json.loads(bytes(frame[_META_LEN.size : _META_LEN.size + meta_len]))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad("meta is not JSON") from exc
    if not isinstance(meta, dict) or meta.get("v") != 1:
        raise _bad("unknown frame version")
    end = _META_LEN.size + meta_len
    return meta, end + _pad8(end)


def _int(meta: dict[str, object], name: str) -> int:
    value = meta.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(f"field {name!r} is not a count")
    return value


def _shapes(meta: dict[str, object]) -> list[tuple[int, ...]]:
    shapes = meta.get("shapes")
    if not isinstance(shapes, list) or not shapes or len(shapes) % 2:
        raise _bad("shapes must list K and V of every layer")
    out = []
    for shape in shapes:
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _bad("a shape is not a list of sizes")
        out.append(tuple(shape))
    return out


def _planes(meta: dict[str, object], stored: memoryview, raw_len: int, itemsize: int) -> np.ndarray:
    """Byte planes (each raw or zstd) written straight into their interleaved places: no grouped copy."""
    table = meta.get("planes")
    if not isinstance(table, list) or len(table) != itemsize or raw_len % itemsize:
        raise _bad("the plane table does not match the dtype")
    count = raw_len // itemsize
    out = np.empty(raw_len, dtype=np.uint8)
    grid = out.reshape(count, itemsize)
    pos = 0
    for i, entry in enumerate(table):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], int) and entry[1] >= 0):
            raise _bad("a plane entry is malformed")
        kind, size = entry
        chunk = stored[pos : pos + size]
        pos += size
        if chunk.nbytes != size:
            raise _bad("the planes run past the payload")
        plain: bytes | memoryview
        if kind == "zstd":
            try:
                plain = cz.decompress(chunk, count)
            except zstandard.ZstdError as exc:
                raise _bad(f"a zstd plane does not decompress ({exc})") from exc
        elif kind == "raw":
            plain = chunk
        else:
            raise _bad(f"unknown plane codec {kind!r}")
        if nbytes(plain) != count:
            raise _bad("a plane has the wrong size")
        grid[:, i] = np.frombuffer(plain, dtype=np.uint8)
    if pos != stored.nbytes:
        raise _bad("the planes do not fill the payload")
    return out


def decode(frame: memoryview) -> Decoded:
    """Parse and check a frame; raises :class:`CorruptEntryError` on any inconsistency."""
    frame = frame.cast("B") if frame.format != "B" else frame
    meta, offset = _meta(frame)
    dtype = meta.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _bad(f"unknown dtype {dtype!r}")
    n_tokens, raw_len, stored_len = _int(meta, "tokens"), _int(meta, "raw"), _int(meta, "stored")
    shapes = _shapes(meta)
    itemsize = DTYPES[dtype]
    if sum(math.prod(s) for s in shapes) * itemsize != raw_len:
        raise _bad("shapes do not add up to the payload size")
    if any(len(s) < 2 or s[-2] != n_tokens for s in shapes):
        raise _bad("an array's token axis does not match the token count")
    tokens_end = offset + 8 * n_tokens
    if tokens_end + stored_len != frame.nbytes:
        raise _bad("sizes do not add up to the frame length")
    tokens = np.frombuffer(frame[offset:tokens_end], dtype="<i8").astype(np.int64)
    stored = frame[tokens_end:]
    codec = meta.get("codec")
    if codec == "raw":
        if stored_len != raw_len:
            raise _bad("a raw payload must be stored at its raw size")
        payload = np.frombuffer(stored, dtype=np.uint8)
    elif codec == "planes":
        payload = _planes(meta, stored, raw_len, itemsize)
    else:
        raise _bad(f"unknown codec {codec!r}")
    arrays, pos, np_dtype = [], 0, storage_dtype(dtype)
    for shape in shapes:
        size = math.prod(shape) * itemsize
        arrays.append(payload[pos : pos + size].view(np_dtype).reshape(shape))
        pos += size
    return Decoded(tokens, dtype, arrays, payload)
