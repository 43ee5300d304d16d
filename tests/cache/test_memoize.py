"""memoize over a store: stable keys from arguments, sync and async functions, ttl, invalidation."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import threading
from pathlib import Path

import numpy as np
import pytest

from llamahome.cache.disk import DiskCache
from llamahome.cache.memoizing import make_key, memoize
from llamahome.cache.memory import MemoryCache
from llamahome.errors import CacheError, CacheKeyError


class Color(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Model:
    def __init__(self, name: str) -> None:
        self.name = name

    def __cache_key__(self) -> str:
        return self.name


def test_sync_function_runs_once_per_distinct_arguments() -> None:
    cache = MemoryCache(size=1)
    calls: list[tuple[int, int]] = []

    @memoize(cache)
    def add(x: int, y: int = 10) -> int:
        calls.append((x, y))
        return x + y

    assert add(1) == 11
    assert add(1) == 11
    assert add(x=1) == 11  # same bound arguments, same key
    assert add(1, 10) == 11
    assert add(1, y=2) == 3
    assert calls == [(1, 10), (1, 2)]
    assert add.key_for(1) == add.key_for(x=1, y=10)
    assert add.key_for(1).startswith("memoize:") and "add" in add.key_for(1)
    assert add.invalidate(1) is True
    assert add.invalidate(1) is False
    assert add(1) == 11 and len(calls) == 3
    assert cache.stats.hits == 3


def test_none_results_are_cached() -> None:
    cache = MemoryCache(size=1)
    calls = 0

    @memoize(cache)
    def nothing(x: int) -> None:
        nonlocal calls
        calls += 1

    nothing(1)
    nothing(1)
    assert calls == 1


def test_key_types_are_distinguished_and_stable() -> None:
    keys = {
        make_key(1),
        make_key("1"),
        make_key(1.0),
        make_key(True),
        make_key(b"1"),
        make_key((1,)),
        make_key([1]),
        make_key({1}),
        make_key(None),
        make_key(Color.RED),
        make_key(np.int64(1)),
    }
    assert len(keys) == 11
    assert make_key(("ab", "c")) != make_key(("a", "bc"))
    assert make_key({"a": 1, "b": 2}) == make_key({"b": 2, "a": 1})
    assert make_key({3, 1, 2}) == make_key({1, 2, 3})
    assert make_key(Point(1, 2)) == make_key(Point(1, 2)) != make_key(Point(2, 1))
    assert make_key(Model("a")) == make_key(Model("a")) != make_key(Model("b"))
    a = np.arange(6, dtype=np.float32)
    assert make_key(a) == make_key(a.copy()) != make_key(a.reshape(2, 3))
    assert make_key(a) != make_key(a.astype(np.float64))
    # Digests are fixed across processes and runs (no id(), no hash randomisation).
    assert make_key("hello", k=1) == "6787c818da512d347c261c6ff76f554d"


def test_torch_tensors_key_by_dtype_shape_and_bytes() -> None:
    torch = pytest.importorskip("torch")
    t = torch.arange(4, dtype=torch.bfloat16)
    assert make_key(t) == make_key(t.clone()) != make_key(t.float())


def test_unkeyable_argument_names_the_argument() -> None:
    @memoize(MemoryCache(size=1))
    def f(obj: object) -> int:
        return 1

    with pytest.raises(CacheKeyError, match=r"argument 'obj'.*__cache_key__"):
        f(object())


def test_ignore_and_custom_key() -> None:
    cache = MemoryCache(size=1)

    class Service:
        calls = 0

        @memoize(cache, ignore=("self",))
        def lookup(self, q: str) -> str:
            Service.calls += 1
            return q.upper()

    assert Service().lookup("a") == Service().lookup("a") == "A"
    assert Service.calls == 1

    @memoize(cache, key=lambda q: f"q:{q}")
    def g(q: str) -> str:
        return q * 2

    assert g("x") == "xx" and cache.get("q:x") == "xx"
    with pytest.raises(CacheError, match="does not take"):
        memoize(cache, ignore=("nope",))(g)


def test_bare_decorator_is_refused_with_advice() -> None:
    with pytest.raises(CacheError, match=r"@memoize\(cache"):
        memoize(lambda: 1)  # type: ignore[arg-type]


def test_ttl_expires(clock) -> None:  # type: ignore[no-untyped-def]
    cache = MemoryCache(size=1, clock=clock)
    calls = 0

    @memoize(cache, ttl=10)
    def f() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert f() == 1 and f() == 1
    clock.advance(11)
    assert f() == 2


def test_async_function_over_a_disk_store(tmp_path: Path) -> None:
    calls = 0
    loop_thread = threading.get_ident()

    with DiskCache(tmp_path / "d", size=10) as disk:

        @memoize(disk, ttl=60, prefix="v1")
        async def embed(text: str) -> list[float]:
            nonlocal calls
            calls += 1
            assert threading.get_ident() == loop_thread  # the coroutine itself runs on the loop
            return [float(len(text))]

        async def main() -> None:
            assert await embed("abc") == [3.0]
            assert await embed("abc") == [3.0]
            assert embed.key_for("abc").startswith("v1:")
            assert await embed.ainvalidate("abc") is True
            assert await embed("abc") == [3.0]

        asyncio.run(main())
    assert calls == 2


def test_over_a_manager_the_function_runs_once_under_concurrency(tmp_path: Path) -> None:
    from llamahome.cache import CacheConfig, CacheManager

    cfg = CacheConfig.from_dict(
        {"cache": {"memory": {"size": 1}, "disk": {"size": 4, "path": str(tmp_path / "c")}},
         "system_cache": {"temp_dir": str(tmp_path / "t")}}
    )
    calls = {"async": 0, "sync": 0}
    lock = threading.Lock()

    with CacheManager(cfg) as manager:

        @memoize(manager, ttl=60)
        async def slow_async(x: int) -> int:
            calls["async"] += 1
            await asyncio.sleep(0.05)
            return x * 2

        @memoize(manager)
        def slow_sync(x: int) -> int:
            with lock:
                calls["sync"] += 1
            threading.Event().wait(0.05)
            return x * 3

        async def main() -> list[int]:
            return await asyncio.gather(*(slow_async(7) for _ in range(20)))

        assert asyncio.run(main()) == [14] * 20
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(slow_sync(5))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [15] * 8
        assert calls == {"async": 1, "sync": 1}
        assert manager.get_sync(slow_sync.key_for(5)) == 15
        assert slow_sync.invalidate(5) is True and manager.get_sync(slow_sync.key_for(5)) is None
