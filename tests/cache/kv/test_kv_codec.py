"""Block frames: exact round trips, compression by byte plane, and damaged frames raising CorruptEntryError."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamahome.cache.kv._codec import decode, encode, nbytes
from llamahome.errors import CorruptEntryError

from .helpers import kv_for


def joined(parts: list) -> bytes:
    return b"".join(bytes(memoryview(p).cast("B")) if isinstance(p, np.ndarray) else bytes(p) for p in parts)


def frame(dtype: str = "float16", compress: bool = True, n: int = 64) -> bytes:
    tokens = np.arange(n, dtype=np.int64)
    arrays = [a for pair in kv_for(tokens, dtype) for a in pair]
    parts, _, _ = encode(tokens, arrays, dtype, compress)
    return joined(parts)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_planes_round_trip_exactly_and_only_compressible_planes_are_compressed(dtype: str) -> None:
    tokens = np.arange(256, dtype=np.int64)
    arrays = [a for pair in kv_for(tokens, dtype) for a in pair]
    parts, raw, stored = encode(tokens, arrays, dtype, True)
    assert stored < raw and sum(nbytes(p) for p in parts[2:]) == stored
    got = decode(memoryview(joined(parts)))
    assert got.dtype == dtype and np.array_equal(got.tokens, tokens)
    for a, b in zip(got.arrays, arrays):
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_incompressible_values_are_stored_raw() -> None:
    tokens = np.arange(64, dtype=np.int64)
    rng = np.random.default_rng(0)
    k, v = (rng.integers(0, 256, (1, 2, 64, 16), dtype=np.uint8).view(np.float16) for _ in range(2))
    parts, raw, stored = encode(tokens, [k, v], "float16", True)
    assert stored == raw


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_damaged_frame_is_corrupt_never_another_error(data: st.DataObject) -> None:
    good = bytearray(frame(data.draw(st.sampled_from(["float16", "float32"])), data.draw(st.booleans())))
    kind = data.draw(st.sampled_from(["truncate", "header", "extend"]))
    if kind == "truncate":
        good = good[: data.draw(st.integers(0, len(good) - 1))]
    elif kind == "extend":
        good += b"\0" * data.draw(st.integers(1, 64))
    else:
        meta_len = int.from_bytes(good[:4], "little")
        at = data.draw(st.integers(0, 4 + meta_len - 1))
        good[at] = data.draw(st.integers(0, 255).filter(lambda b: b != good[at]))
    try:
        decoded = decode(memoryview(bytes(good)))
    except CorruptEntryError:
        return
    # A header change that still parses (a digit of a size that stays consistent cannot): shapes must hold.
    assert sum(a.nbytes for a in decoded.arrays) == decoded.nbytes
