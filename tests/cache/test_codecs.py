"""Codec round trips, compression kept and skipped, pickle refused by default, damaged frames rejected."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamahome.cache import codecs
from llamahome.cache.compression import group_bytes, pays, ungroup_bytes
from llamahome.errors import CacheError, CacheValueError

SCALARS = [b"", b"\x00\xffbytes", "", "héllo wörld ✓", 0, -1, 2**100, 1.5, -0.0, True, False, None]


@pytest.mark.parametrize("value", SCALARS, ids=repr)
@pytest.mark.parametrize("compress", [False, True])
def test_scalars_round_trip_with_type(value: object, compress: bool) -> None:
    out = codecs.decode(codecs.encode(value, compress=compress))
    assert out == value and type(out) is type(value)


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_infinite_floats(value: float) -> None:
    assert codecs.decode(codecs.encode(value)) == value


def test_nan_round_trips() -> None:
    assert math.isnan(codecs.decode(codecs.encode(float("nan"))))
    out = codecs.decode(codecs.encode({"x": float("nan"), "a": np.zeros(2)}))
    assert math.isnan(out["x"])


def test_json_like_round_trip() -> None:
    value = {"prompt": "hi", "tokens": [1, 2, 3], "nested": {"p": 0.5, "ok": True, "none": None}}
    assert codecs.decode(codecs.encode(value)) == value


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "int64", "uint16", "bool", "complex64"])
@pytest.mark.parametrize("compress", [False, True])
def test_numpy_arrays_keep_dtype_shape_and_bits(dtype: str, compress: bool) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((7, 33)) * 100).astype(dtype)
    out = codecs.decode(codecs.encode(arr, compress=compress))
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert out.tobytes() == arr.tobytes()


def test_non_contiguous_and_zero_dim_arrays() -> None:
    arr = np.arange(20.0).reshape(4, 5).T
    assert np.array_equal(codecs.decode(codecs.encode(arr)), arr)
    zero = np.array(3.25, dtype=np.float32)
    out = codecs.decode(codecs.encode(zero))
    assert out.shape == () and out == zero
    empty = np.zeros((0, 3), dtype=np.int32)
    assert codecs.decode(codecs.encode(empty)).shape == (0, 3)


def test_batch_tree_round_trip_keeps_tuples_bytes_and_arrays() -> None:
    batch = {
        "input_ids": np.arange(512, dtype=np.int64).reshape(2, 256),
        "mask": np.ones((2, 256), dtype=bool),
        "meta": ("run-1", 3, [b"\x00raw"]),
    }
    out = codecs.decode(codecs.encode(batch, compress=True))
    assert out["meta"] == ("run-1", 3, [b"\x00raw"])
    assert np.array_equal(out["input_ids"], batch["input_ids"]) and out["mask"].dtype == bool


def test_uncompressed_arrays_are_zero_copy_views() -> None:
    frame = bytearray(codecs.encode(np.arange(1024, dtype=np.float32)))  # 4096 bytes: no tail padding
    out = codecs.decode(frame)
    assert out.flags.writeable
    frame[-4:] = np.float32(-1).tobytes()
    assert out[-1] == -1  # a view of the buffer, not a copy
    assert not codecs.decode(bytes(frame)).flags.writeable


def test_token_ids_compress_and_random_bytes_do_not() -> None:
    ids = np.random.default_rng(1).integers(0, 32000, size=64 * 1024, dtype=np.int64)
    packed = codecs.encode_parts(ids, compress=True)
    assert packed.compressed and packed.size < ids.nbytes * 0.9
    noise = np.random.default_rng(2).bytes(64 * 1024)
    kept = codecs.encode_parts(noise, compress=True)
    assert not kept.compressed and codecs.decode(kept.to_bytes()) == noise


def test_small_values_are_never_compressed() -> None:
    assert not codecs.encode_parts(b"a" * 100, compress=True).compressed
    assert codecs.encode_parts(b"a" * 10_000, compress=True).compressed


def test_float_weights_use_byte_grouping() -> None:
    weights = (np.random.default_rng(3).standard_normal(256 * 1024) * 0.02).astype(np.float32)
    grouped = codecs.encode_parts(weights, compress=True)
    assert grouped.compressed and grouped.size < weights.nbytes * 0.9
    assert codecs.decode(grouped.to_bytes()).tobytes() == weights.tobytes()


@given(st.binary(max_size=4096), st.sampled_from([1, 2, 4, 8]))
@settings(max_examples=50, deadline=None)
def test_group_bytes_is_invertible(data: bytes, itemsize: int) -> None:
    assert ungroup_bytes(group_bytes(data, itemsize), itemsize).tobytes() == data


def test_pays_needs_ten_percent() -> None:
    assert pays(1000, 900) and not pays(1000, 901)


class Custom:
    def __init__(self) -> None:
        self.x = 1


def test_pickle_refused_by_default_with_a_helpful_message() -> None:
    with pytest.raises(CacheValueError, match="allow_pickle=True"):
        codecs.encode(Custom())
    with pytest.raises(CacheValueError, match="Custom"):
        codecs.encode({"k": Custom()})


def test_pickle_opt_in_round_trips_and_decode_needs_opt_in_too() -> None:
    frame = codecs.encode(Custom(), allow_pickle=True)
    assert codecs.decode(frame, allow_pickle=True).x == 1
    with pytest.raises(CacheValueError, match="pickle"):
        codecs.decode(frame)


def test_raw_pickle_bytes_are_not_executed() -> None:
    # bytes that happen to be a pickle are just bytes
    evil = pickle.dumps(Custom())
    assert codecs.decode(codecs.encode(evil)) == evil
    with pytest.raises(CacheValueError):
        codecs.decode(evil)


@pytest.mark.parametrize("bad", [object(), {1: "int key"}, np.array([object()]), {1, 2}])
def test_unsupported_values_raise_cache_error(bad: object) -> None:
    with pytest.raises(CacheError):
        codecs.encode(bad)


@given(st.binary(max_size=300).filter(lambda data: not data.startswith(codecs.MAGIC)))
@settings(max_examples=200, deadline=None)
def test_garbage_never_decodes_to_a_value_silently(data: bytes) -> None:
    # Bytes that are not a frame must raise: a decode that returns anything here is the failure.
    with pytest.raises(CacheValueError):
        codecs.decode(data)


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40) | st.binary(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@given(_VALUES, st.booleans(), st.integers(min_value=1, max_value=10_000))
@settings(max_examples=200, deadline=None)
def test_a_truncated_frame_never_decodes(value: object, compress: bool, cut: int) -> None:
    frame = codecs.encode(value, compress=compress)
    with pytest.raises(CacheValueError):
        codecs.decode(frame[: max(0, len(frame) - cut)])


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_frame_shaped_garbage_is_a_value_or_a_cache_value_error(tail: bytes) -> None:
    # Behind a valid magic anything may follow; the decoder answers with a value or CacheValueError, never
    # with another exception (IndexError, struct.error, UnicodeDecodeError, ...).
    try:
        codecs.decode(codecs.MAGIC + tail)
    except CacheValueError:
        pass


def test_truncated_and_bit_flipped_frames_raise() -> None:
    frame = codecs.encode(np.arange(100.0), compress=False)
    with pytest.raises(CacheValueError):
        codecs.decode(frame[:-8])
    packed = bytearray(codecs.encode(b"z" * 5000, compress=True))
    packed[-3] ^= 0xFF
    with pytest.raises(CacheValueError):
        codecs.decode(bytes(packed))


class TestTorch:
    torch = pytest.importorskip("torch")

    @pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8", "int64", "bool"])
    @pytest.mark.parametrize("compress", [False, True])
    def test_tensor_round_trip(self, dtype: str, compress: bool) -> None:
        torch = self.torch
        t = (torch.randn(64, 33) * 10).to(getattr(torch, dtype))
        out = codecs.decode(codecs.encode(t, compress=compress))
        assert isinstance(out, torch.Tensor) and out.dtype == t.dtype and out.shape == t.shape
        assert torch.equal(out, t)

    def test_tensor_batch_dict(self) -> None:
        torch = self.torch
        batch = {"input_ids": torch.arange(10), "labels": [torch.ones(2, dtype=torch.bfloat16)]}
        out = codecs.decode(codecs.encode(batch))
        assert torch.equal(out["input_ids"], batch["input_ids"])
        assert out["labels"][0].dtype == torch.bfloat16


@pytest.mark.parametrize("value", [b"plain bytes" * 50, "text \ud800 with a lone surrogate", "", b""], ids=repr)
@pytest.mark.parametrize("container", [bytes, bytearray, memoryview])
def test_plain_bytes_and_text_decode_alike_from_any_buffer(value: object, container: type) -> None:
    # bytes frames take a fast path; other buffers the general one: both give the same value and type.
    frame = codecs.encode(value)
    out = codecs.decode(container(frame))
    assert out == value and type(out) is type(value)


def test_plain_frames_with_a_wrong_length_or_bad_text_are_damaged() -> None:
    frame = codecs.encode(b"abcdef")
    with pytest.raises(CacheValueError):
        codecs.decode(frame[:-1])  # payload shorter than the header says
    with pytest.raises(CacheValueError):
        codecs.decode(frame + b"x")
    text = bytearray(codecs.encode("abc"))
    text[-1] = 0xFF  # not UTF-8
    with pytest.raises(CacheValueError):
        codecs.decode(bytes(text))


def test_plain_bytes_header_is_the_prefix_of_a_bytes_frame() -> None:
    plain_bytes_header = codecs.plain_bytes_header
    for value in (b"", b"x", bytes(range(256)) * 300):
        assert codecs.encode(value) == plain_bytes_header(len(value)) + value
    assert len(plain_bytes_header(0)) == len(plain_bytes_header(10**9))
    assert not codecs.encode("text").startswith(plain_bytes_header(4))  # a str frame is not a bytes frame
