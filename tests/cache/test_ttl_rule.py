"""One ttl rule for every store (issue 11, item 15): ``base.validate_ttl`` decides, every store applies it.

- None: no expiry; a number of seconds (``inf`` included: never expires).
- Zero or less: "already expired": nothing is stored and the old value is gone.
- NaN, booleans, strings (stores take seconds; only configs read "1h") and ints too large for a float:
  ``CacheValueError`` (a ``CacheError``), the store unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llamahome.cache import DiskCache, MemoryCache, SystemCache, TrainingCache
from llamahome.cache.base import Store, validate_ttl
from llamahome.errors import CacheError, CacheValueError

BAD_TTLS = [float("nan"), True, False, "1h", "10", b"10", 10**400, [1], object()]
BAD_IDS = ["nan", "True", "False", "1h", "str-number", "bytes", "10**400", "list", "object"]

MAKERS: dict[str, Callable[[Path, Any], Store]] = {
    "memory": lambda path, clock: MemoryCache(size=1, clock=clock),
    "disk": lambda path, clock: DiskCache(path / "disk", size=1, clock=clock),
    "system": lambda path, clock: SystemCache(path / "system", size=1, clock=clock),
    "training": lambda path, clock: TrainingCache(path / "training", size=1, clock=clock),
}


@pytest.fixture(params=sorted(MAKERS))
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Iterator[Store]:
    s = MAKERS[request.param](tmp_path, clock)
    yield s
    s.close()


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=BAD_IDS)
def test_bad_ttls_are_refused_with_a_cache_value_error(store: Store, ttl: Any) -> None:
    store.set("k", b"old")
    with pytest.raises(CacheValueError) as info:
        store.set("k", b"new", ttl=ttl)
    assert isinstance(info.value, CacheError)
    assert len(str(info.value)) < 200
    assert store.get("k") == b"old"


@pytest.mark.parametrize("ttl", [0, -1, 0.0, -math.inf])
def test_ttl_zero_or_less_deletes_the_old_value(store: Store, ttl: float) -> None:
    store.set("k", b"old")
    store.set("k", b"new", ttl=ttl)
    assert "k" not in store and store.get("k") is None
    assert store.stats.entries == 0


def test_positive_and_infinite_ttls(store: Store, clock: Any) -> None:
    store.set("short", b"1", ttl=5)
    store.set("never", b"2", ttl=math.inf)
    store.set("int", b"3", ttl=10**6)
    clock.advance(6)
    assert store.get("short") is None
    assert store.get("never") == b"2" and store.get("int") == b"3"


def test_validate_ttl_is_the_rule() -> None:
    assert validate_ttl(None) is None
    assert validate_ttl(3) == 3.0 and validate_ttl(0) == 0.0 and validate_ttl(-1) == -1.0
    assert validate_ttl(math.inf) == math.inf
    for bad in BAD_TTLS:
        with pytest.raises(CacheValueError):
            validate_ttl(bad)
