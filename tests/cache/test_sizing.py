"""sizing: what a value is charged in a byte-bounded memory tier."""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest

from llamahome.cache.sizing import key_size, sizeof


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (b"", 0),
        (b"abc", 3),
        (bytearray(10), 10),
        ("abc", 3),
        ("é", 2),
        ("🔑", 4),
        (memoryview(b"12345")[1:3], 2),
        (np.zeros((3, 4), dtype=np.float32), 48),
    ],
)
def test_payload_sizes(value: object, size: int) -> None:
    assert sizeof(value) == size


def test_scalars_are_their_getsizeof() -> None:
    for value in (0, 10**30, 1.5, True, None):
        assert sizeof(value) == sys.getsizeof(value)


def test_containers_add_their_own_size_and_their_items() -> None:
    value = {"a": [b"xx", "yyy"], "b": (1,)}
    expected = (
        sys.getsizeof(value) + 1 + 1  # dict + keys "a", "b"
        + sys.getsizeof(value["a"]) + 2 + 3
        + sys.getsizeof(value["b"]) + sys.getsizeof(1)
    )
    assert sizeof(value) == expected


def test_shared_objects_are_counted_once_and_cycles_end() -> None:
    arr = np.zeros(1000, dtype=np.uint8)
    inner = [b"x" * 100]
    value = [arr, arr, inner, inner]
    assert sizeof(value) == sys.getsizeof(value) + 1000 + sys.getsizeof(inner) + 100
    loop: list[object] = []
    loop.append(loop)
    assert sizeof(loop) == sys.getsizeof(loop)


def test_deep_nesting_does_not_hit_the_recursion_limit() -> None:
    value: list[object] = []
    for _ in range(sys.getrecursionlimit() * 2):
        value = [value]
    assert sizeof(value) > 0


def test_a_view_is_charged_for_the_array_it_keeps_alive() -> None:
    base = np.zeros(10_000, dtype=np.uint8)
    assert sizeof(base[:10]) == 10_000
    assert sizeof(base[:10].reshape(2, 5)) == 10_000


def test_an_array_over_a_foreign_buffer_is_charged_for_the_buffer() -> None:
    buf = b"\0" * 4096
    assert sizeof(np.frombuffer(buf, dtype=np.uint8)[:16]) == 4096
    with mmap.mmap(-1, 8192) as mm:
        view = np.frombuffer(mm, dtype=np.uint8, count=8)
        assert sizeof(view) == 8192
        del view


def test_torch_tensors_are_charged_for_their_storage() -> None:
    torch = pytest.importorskip("torch")
    t = torch.zeros(100, dtype=torch.float32)
    assert sizeof(t) == 400
    assert sizeof(t[:10]) == 400  # a slice keeps the whole storage alive
    assert sizeof({"w": t, "b": t}) == sys.getsizeof({"w": t, "b": t}) + 2 + 400


@pytest.mark.parametrize(("key", "size"), [("abc", 3), (b"abc", 3), ("ключ", 8), (b"", 0)])
def test_key_sizes(key: str | bytes, size: int) -> None:
    assert key_size(key) == size
