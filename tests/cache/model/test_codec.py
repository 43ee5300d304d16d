"""The model codec (``_codec``): byte streams + zstd are a lossless permutation of a tensor's bits."""

from __future__ import annotations

import numpy as np

from llamahome.cache.model._codec import decode_chunk, encode_chunk, word_of


def test_codec_streams_are_a_bit_permutation() -> None:
    raw = (np.random.default_rng(0).standard_normal(5000) * 0.02).astype(np.float32).view(np.uint8)
    word, rotate = word_of("F32")
    assert (word, rotate) == (4, True)
    chunk = encode_chunk(raw, word, rotate)
    assert [compressed for _, compressed in chunk.streams][3] is True  # the exponent stream pays
    assert chunk.stored < raw.nbytes * 0.9
    # Lay the streams out as a container would and decode them back.
    blob = b"".join(p if isinstance(p, bytes) else p.tobytes() for p, _ in chunk.streams)
    offsets, at = [], 0
    for payload, compressed in chunk.streams:
        size = len(payload) if isinstance(payload, bytes) else payload.nbytes
        offsets.append([at, size, int(compressed)])
        at += size
    entry = {"word": word, "rotate": rotate, "chunks": [[raw.nbytes, offsets]]}
    out = np.empty(raw.nbytes, dtype=np.uint8)
    decode_chunk(entry, 0, np.frombuffer(blob, dtype=np.uint8), out)
    assert out.tobytes() == raw.tobytes()
