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

__all__ = ["Decoded", "DTYPES", "encode", "decode", "nbytes", "raw_frame"]

#: The dtypes a block may hold; ``bfloat16`` is carried as its 16 bits (numpy has no bfloat16).
DTYPES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
_META_LEN = struct.Struct("<I")
_MAX_META = 1 << 20
_LEVEL = 1  # level 1 is nearly as small as 3 on K/V bytes and encodes about twice as fast
_SAMPLE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Decoded:
    """A checked frame: token ids, dtype, array shapes (K0, V0, K1, V1, ...) and the stored payload.

    The payload is decoded on demand, straight into the caller's arrays (:meth:`write_into`), so a prefix of
    many blocks is assembled with one pass over its bytes. ``bfloat16`` arrays are uint16 arrays of the bits.
    """

    tokens: np.ndarray
    dtype: str
    shapes: list[tuple[int, ...]]
    codec: str
    planes: list[tuple[str, int]]
    stored: memoryview
    frame: memoryview

    @property
    def nbytes(self) -> int:
        """Size of the decoded arrays, in bytes."""
        return sum(math.prod(s) for s in self.shapes) * DTYPES[self.dtype]

    @property
    def arrays(self) -> list[np.ndarray]:
        """The arrays, decoded into new memory."""
        out = [np.empty(s, dtype=storage_dtype(self.dtype)) for s in self.shapes]
        self.write_into(out)
        return out

    def write_into(self, dests: Sequence[np.ndarray]) -> None:
        """Decode into ``dests`` (one per shape, storage dtype, last axis contiguous; slices of larger arrays
        along the token axis are fine). Raises :class:`CorruptEntryError` if a zstd plane is damaged."""
        itemsize = DTYPES[self.dtype]
        np_dtype = storage_dtype(self.dtype)
        if self.codec == "raw":
            pos = 0
            for shape, dest in zip(self.shapes, dests):
                size = math.prod(shape) * itemsize
                dest[...] = np.frombuffer(self.stored[pos : pos + size], dtype=np_dtype).reshape(shape)
                pos += size
            return
        # One byte plane at a time, written into byte i of every value of every array (no interleaved copy).
        byte_views = [dest.view(np.uint8) for dest in dests]
        count = self.nbytes // itemsize
        pos = 0
        for i, (kind, size) in enumerate(self.planes):
            chunk = self.stored[pos : pos + size]
            pos += size
            plane = np.frombuffer(_plane(kind, chunk, count), dtype=np.uint8)
            start = 0
            for shape, view in zip(self.shapes, byte_views):
                n = math.prod(shape)
                view[..., i::itemsize] = plane[start : start + n].reshape(shape)
                start += n


def _plane(kind: str, chunk: memoryview, count: int) -> bytes | memoryview:
    if kind == "raw":
        return chunk
    try:
        plain = cz.decompress(chunk, count)
    except zstandard.ZstdError as exc:
        raise _bad(f"a zstd plane does not decompress ({exc})") from exc
    if len(plain) != count:
        raise _bad("a zstd plane has the wrong size")
    return plain


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


def _byte_planes(arrays: Sequence[np.ndarray], itemsize: int, count: int) -> np.ndarray:
    """Byte plane i holds byte i of every value of every array, in order: gathered straight from the arrays
    (strided slices of a larger cache are fine), without an interleaved copy first."""
    planes = np.empty((itemsize, count), dtype=np.uint8)
    start = 0
    for a in arrays:
        if a.ndim == 0 or a.strides[-1] != a.itemsize:
            a = np.ascontiguousarray(a)
        view = a.view(np.uint8)
        n = a.size
        for i in range(itemsize):
            planes[i, start : start + n].reshape(a.shape)[...] = view[..., i::itemsize]
        start += n
    return planes


def encode(
    tokens: np.ndarray, arrays: Sequence[np.ndarray], dtype: str, compress: bool
) -> tuple[list[bytes | memoryview | np.ndarray], int, int]:
    """The frame of one block as a list of buffers, with the payload's raw and stored sizes."""
    if dtype not in DTYPES:
        raise ValueError(f"unsupported K/V dtype {dtype!r}")
    itemsize = DTYPES[dtype]
    raw_len = sum(int(a.size) for a in arrays) * itemsize
    meta: dict[str, object] = {"codec": "raw"}
    payload: list[np.ndarray | bytes] | None = None
    if compress and raw_len >= cz.MIN_COMPRESS_BYTES:
        stored: list[np.ndarray | bytes] = []
        table: list[tuple[str, int]] = []
        for plane in _byte_planes(arrays, itemsize, raw_len // itemsize):
            packed = cz.compress(plane.data, level=_LEVEL) if _plane_pays(plane) else None
            if packed is not None and cz.pays(plane.nbytes, len(packed)):
                stored.append(packed)
                table.append(("zstd", len(packed)))
            else:
                stored.append(plane)
                table.append(("raw", int(plane.nbytes)))
        if cz.pays(raw_len, sum(size for _, size in table)):
            meta, payload = {"codec": "planes", "planes": [list(entry) for entry in table]}, stored
    if payload is None:
        payload = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
    stored_len = sum(nbytes(p) for p in payload)
    meta.update(
        v=1, dtype=dtype, tokens=int(tokens.size), shapes=[list(map(int, a.shape)) for a in arrays], raw=raw_len,
        stored=stored_len,
    )
    return [_header(meta), np.ascontiguousarray(tokens, dtype="<i8"), *payload], raw_len, stored_len


def raw_frame(tokens: np.ndarray, arrays: Sequence[np.ndarray], dtype: str) -> bytearray:
    """An uncompressed frame, built with one copy of each array (what the memory tier keeps: a hit decodes
    with one copy too)."""
    itemsize = DTYPES[dtype]
    raw_len = sum(int(a.size) for a in arrays) * itemsize
    meta = {
        "v": 1, "dtype": dtype, "tokens": int(tokens.size), "shapes": [list(map(int, a.shape)) for a in arrays],
        "codec": "raw", "raw": raw_len, "stored": raw_len,
    }
    head = _header(meta)
    out = bytearray(len(head) + 8 * tokens.size + raw_len)
    out[: len(head)] = head
    pos = len(head) + 8 * tokens.size
    out[len(head) : pos] = np.ascontiguousarray(tokens, dtype="<i8").tobytes()
    np_dtype = storage_dtype(dtype)
    for a in arrays:
        n = a.size * itemsize
        np.frombuffer(out, dtype=np_dtype, count=a.size, offset=pos).reshape(a.shape)[...] = a
        pos += n
    return out


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


def _plane_table(meta: dict[str, object], stored_len: int, raw_len: int, itemsize: int) -> list[tuple[str, int]]:
    table = meta.get("planes")
    if not isinstance(table, list) or len(table) != itemsize or raw_len % itemsize:
        raise _bad("the plane table does not match the dtype")
    out: list[tuple[str, int]] = []
    for entry in table:
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in ("raw", "zstd")):
            raise _bad("a plane entry is malformed")
        size = entry[1]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad("a plane size is not a count")
        if entry[0] == "raw" and size != raw_len // itemsize:
            raise _bad("a raw plane has the wrong size")
        out.append((entry[0], size))
    if sum(size for _, size in out) != stored_len:
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
    codec = meta.get("codec")
    planes: list[tuple[str, int]] = []
    if codec == "raw":
        if stored_len != raw_len:
            raise _bad("a raw payload must be stored at its raw size")
    elif codec == "planes":
        planes = _plane_table(meta, stored_len, raw_len, itemsize)
    else:
        raise _bad(f"unknown codec {codec!r}")
    return Decoded(tokens, dtype, shapes, codec, planes, frame[tokens_end:], frame)
