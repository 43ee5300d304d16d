"""Lossless tensor compression for model weights: dtype-aware byte streams + zstd, kept only where it pays.

Why this shape (after ZipNN, https://arxiv.org/abs/2411.05239): a float's exponent byte is highly
predictable across a weight tensor while its low mantissa bytes are close to random. So each value is first
rotated left by one bit (the sign moves to the bottom, the exponent fills the top byte), then the bytes are
split into streams (byte 0 of every value, byte 1, ...). Each stream is compressed on its own and kept
compressed only if that saves at least 2% of it; the exponent stream gets zstd's optimal parser (which
approaches its entropy: about 2.6 bits a value on real weights), the others zstd's fastest level. A tensor is
stored compressed only if all its streams together save at least ``MIN_SAVING`` (10%).

Tensors are cut into chunks of ``CHUNK_BYTES`` so that encoding and decoding spread over threads (zstd
releases the GIL; so do numpy's copies). Decoding is bit-exact by construction: rotation and byte splitting
are permutations of bits, and zstd is lossless.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from ..compression import MIN_COMPRESS_BYTES, MIN_SAVING
from ._format import DTYPE_SIZES, FLOAT_DTYPES

__all__ = [
    "CHUNK_BYTES",
    "ChunkResult",
    "chunk_ranges",
    "word_of",
    "encode_chunk",
    "assemble_entry",
    "decode_chunk",
]

#: Raw bytes per chunk: the unit of parallel work and of one set of byte streams.
CHUNK_BYTES = 8 * 1024 * 1024
#: A single stream is kept compressed only if it saves at least this share of itself.
STREAM_MIN_SAVING = 0.02
#: A stream whose fast compression already saves this much is structured: worth zstd's optimal parser.
_STRONG_IF_BELOW = 0.85
_WORD_UINT: dict[int, np.dtype[Any]] = {2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}

# The optimal parser with small search tables: about entropy on exponent streams at ~30 MB/s a thread
# (zstd level 19 reaches the same ratio at ~2 MB/s; levels 1-12 are 10-20% larger on this data).
_STRONG = zstandard.ZstdCompressionParameters(
    strategy=zstandard.STRATEGY_BTULTRA, window_log=20, chain_log=12, hash_log=12, search_log=1,
    min_match=4, target_length=8, write_content_size=True,
)  # fmt: skip
_FAST = zstandard.ZstdCompressionParameters.from_level(1, write_content_size=True)

_local = threading.local()

Payload = bytes | np.ndarray


def _compressors() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdCompressor]:
    # zstandard objects must not be shared between threads: one pair per thread.
    pair = getattr(_local, "compressors", None)
    if pair is None:
        pair = _local.compressors = (
            zstandard.ZstdCompressor(compression_params=_FAST),
            zstandard.ZstdCompressor(compression_params=_STRONG),
        )
    return pair


def _decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "decompressor", None)
    if dec is None:
        dec = _local.decompressor = zstandard.ZstdDecompressor()
    return dec


def word_of(dtype: str) -> tuple[int, bool]:
    """(bytes per value that form streams, whether to rotate the sign bit out of the exponent byte)."""
    if dtype == "C64":  # two float32s
        return 4, True
    size = DTYPE_SIZES[dtype]
    return (size, dtype in FLOAT_DTYPES) if size in _WORD_UINT else (1, False)


def chunk_ranges(nbytes: int, word: int) -> list[tuple[int, int]]:
    """Byte ranges of a tensor's chunks (each a whole number of values)."""
    step = max(word, CHUNK_BYTES - CHUNK_BYTES % word)
    return [(start, min(start + step, nbytes)) for start in range(0, nbytes, step)]


@dataclass
class ChunkResult:
    """The streams of one chunk: (payload, compressed?) each, plus their raw length."""

    raw: int
    streams: list[tuple[Payload, bool]]

    @property
    def stored(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p.nbytes for p, _ in self.streams)


def _streams(raw: np.ndarray, word: int, rotate: bool) -> list[np.ndarray]:
    if word == 1:
        return [raw]
    if rotate:
        u = raw.view(_WORD_UINT[word])
        bits = word * 8
        r = np.left_shift(u, 1)
        r |= np.right_shift(u, bits - 1)
        grid = r.view(np.uint8).reshape(-1, word)
    else:
        grid = raw.reshape(-1, word)
    return [np.ascontiguousarray(grid[:, i]) for i in range(word)]


def encode_chunk(raw: np.ndarray, word: int, rotate: bool) -> ChunkResult:
    """Split one chunk (a flat uint8 array) into streams and compress each where that saves >= 2%."""
    fast, strong = _compressors()
    out: list[tuple[Payload, bool]] = []
    for stream in _streams(raw, word, rotate):
        n = stream.nbytes
        best: bytes | None = None
        if n >= MIN_COMPRESS_BYTES:
            best = fast.compress(stream.data)
            if len(best) <= n * _STRONG_IF_BELOW:
                other = strong.compress(stream.data)
                if len(other) < len(best):
                    best = other
        if best is not None and len(best) <= n * (1.0 - STREAM_MIN_SAVING):
            out.append((best, True))
        else:
            out.append((stream, False))
    return ChunkResult(raw=raw.nbytes, streams=out)


def assemble_entry(
    dtype: str, shape: tuple[int, ...], nbytes: int, chunks: list[ChunkResult], base: int
) -> tuple[dict[str, Any], list[Payload]] | None:
    """Container entry for a compressed tensor whose blob starts at file offset ``base``, or None.

    None means compression does not pay for this tensor (saves < ``MIN_SAVING``): store it raw.
    """
    stored = sum(c.stored for c in chunks)
    if nbytes < MIN_COMPRESS_BYTES or stored > nbytes * (1.0 - MIN_SAVING):
        return None
    word, rotate = word_of(dtype)
    payloads: list[Payload] = []
    layout = []
    offset = base
    for chunk in chunks:
        streams = []
        for payload, compressed in chunk.streams:
            size = len(payload) if isinstance(payload, bytes) else payload.nbytes
            streams.append([offset, size, int(compressed)])
            payloads.append(payload)
            offset += size
        layout.append([chunk.raw, streams])
    entry = {"dtype": dtype, "shape": list(shape), "nbytes": nbytes, "codec": "bgz", "word": word,
             "rotate": rotate, "stored": stored, "chunks": layout}  # fmt: skip
    return entry, payloads


def decode_chunk(entry: dict[str, Any], index: int, source: np.ndarray, out: np.ndarray) -> None:
    """Decode chunk ``index`` of a ``bgz`` entry from ``source`` (the file's bytes) into ``out``.

    ``out`` is the tensor's flat uint8 output; the chunk lands at its own byte range of it.
    """
    word = int(entry["word"])
    start = sum(int(c[0]) for c in entry["chunks"][:index])
    raw_len, streams = entry["chunks"][index]
    target = out[start : start + raw_len]
    count = raw_len // word
    grid = target.reshape(count, word) if word > 1 else target.reshape(count, 1)
    dec = _decompressor()
    for i, (offset, size, compressed) in enumerate(streams):
        src = source[offset : offset + size]
        if compressed:
            data = dec.decompress(src.data, max_output_size=count)
            if len(data) != count:
                raise ValueError(f"a compressed stream decoded to {len(data)} bytes instead of {count}")
            src = np.frombuffer(data, dtype=np.uint8)
        elif size != count:
            raise ValueError(f"a raw stream has {size} bytes instead of {count}")
        grid[:, i] = src
    if entry.get("rotate") and word > 1:
        values = target.view(_WORD_UINT[word])
        low = np.right_shift(values, 1)
        np.left_shift(values, word * 8 - 1, out=values)
        values |= low
