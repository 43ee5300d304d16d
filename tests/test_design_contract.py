"""Acceptance tests: the public contract of DESIGN.md §2 and the issues' words, used as an outside user would.

Only public imports (``llamahome.cache``, ``llamahome.errors``, ``llamahome.monitoring``,
``llamahome.resources``) and the ``llamahome`` console script. Each test says which words it checks. Every test
runs in its own tmp directory (``monkeypatch.chdir``), since the defaults write ``./cache`` and ``.cache/temp``.
"""

from __future__ import annotations

import ast
import asyncio
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from llamahome.cache import (
    AsyncScheduler,
    CacheConfig,
    CacheManager,
    DiskCache,
    MemoryCache,
    ModelCache,
    SystemCache,
    TieredCache,
    TrainingCache,
)
from llamahome.errors import CacheError, ConfigError
from llamahome.monitoring import CacheMetricsCollector, CacheMonitor
from llamahome.resources import ResourceManager

MiB = 1024 * 1024
KiB = 1024
CLI = Path(sys.executable).parent / "llamahome"

SEED_YAML = """\
cache:
  memory:
    size: 1000  # MB
    type: "lru"
    compression: true
  disk:
    size: 10000  # MB
    path: "./cache"
    cleanup_interval: 3600  # seconds
model_cache:
  size: 1024  # MB
  format: "safetensors"
  compression: true
  cleanup_policy: "lru"
training_cache:
  size: 512  # MB
  batch_buffer: 32
  prefetch: 4
  cleanup_policy: "fifo"
system_cache:
  size: 256  # MB
  temp_dir: ".cache/temp"
  max_age: 86400  # seconds
  cleanup_policy: "time"
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def small_config(**kwargs: Any) -> CacheConfig:
    """The shortcut kwargs of the contract, small enough for tests."""
    base: dict[str, Any] = {"memory_size": 1, "disk_size": 8}
    base.update(kwargs)
    return CacheConfig(**base)


# ============================================================================ configuration
def assert_seed_values(cfg: CacheConfig) -> None:
    assert cfg.cache.memory.size == 1000
    assert cfg.cache.memory.type == "lru"
    assert cfg.cache.memory.compression is True
    assert cfg.cache.disk.size == 10000
    assert Path(cfg.cache.disk.path) == Path("./cache")
    assert cfg.cache.disk.cleanup_interval == 3600
    assert cfg.cleanup_interval == 3600
    assert cfg.model_cache.size == 1024
    assert cfg.model_cache.format == "safetensors"
    assert cfg.model_cache.compression is True
    assert cfg.model_cache.cleanup_policy == "lru"
    assert cfg.training_cache.size == 512
    assert cfg.training_cache.batch_buffer == 32
    assert cfg.training_cache.prefetch == 4
    assert cfg.training_cache.cleanup_policy == "fifo"
    assert cfg.system_cache.size == 256
    assert Path(cfg.system_cache.temp_dir) == Path(".cache/temp")
    assert cfg.system_cache.max_age == 86400
    assert cfg.system_cache.cleanup_policy == "time"


def test_config_defaults_are_the_seeds_values() -> None:
    assert_seed_values(CacheConfig())


def test_config_from_yaml_reads_the_seeds_five_blocks_in_one_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text(SEED_YAML, encoding="utf-8")
    assert_seed_values(CacheConfig.from_yaml(path))
    assert_seed_values(CacheConfig.from_yaml(str(path)))
    assert_seed_values(CacheConfig.from_dict(yaml.safe_load(SEED_YAML)))


def test_config_every_block_and_key_is_optional(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text("cache:\n  memory:\n    size: 64\ntraining_cache:\n  prefetch: 8\n", encoding="utf-8")
    cfg = CacheConfig.from_yaml(path)
    assert cfg.cache.memory.size == 64
    assert cfg.training_cache.prefetch == 8
    # Everything else keeps the seed's value.
    assert cfg.cache.memory.type == "lru" and cfg.cache.disk.size == 10000 and cfg.cleanup_interval == 3600
    assert cfg.training_cache.batch_buffer == 32 and cfg.system_cache.max_age == 86400
    assert CacheConfig.from_dict({}).cache.memory.size == 1000
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert CacheConfig.from_yaml(empty).model_cache.size == 1024


@pytest.mark.parametrize(
    ("given", "megabytes", "nbytes"),
    [
        (512, 512, 512 * MiB),
        (0.5, 0.5, 512 * KiB),
        ("512KB", 0.5, 512 * KiB),
        ("4GB", 4096, 4096 * MiB),
        ("1.5GiB", 1536, 1536 * MiB),
        ("64MB", 64, 64 * MiB),
    ],
)
def test_config_sizes_are_mib_numbers_or_unit_strings(given: Any, megabytes: float, nbytes: int) -> None:
    cfg = CacheConfig.from_dict(
        {
            "cache": {"memory": {"size": given}, "disk": {"size": given}},
            "model_cache": {"size": given},
            "training_cache": {"size": given},
            "system_cache": {"size": given},
        }
    )
    for block in (cfg.cache.memory, cfg.cache.disk, cfg.model_cache, cfg.training_cache, cfg.system_cache):
        assert block.size == pytest.approx(megabytes)
        assert block.size_bytes == nbytes


def test_config_shortcut_kwargs() -> None:
    cfg = CacheConfig(memory_size=512, disk_size="2GB", disk_path="/tmp/somewhere", cleanup_interval=60)
    assert cfg.cache.memory.size == 512
    assert cfg.cache.memory.size_bytes == 512 * MiB
    assert cfg.cache.disk.size == 2048
    assert Path(cfg.cache.disk.path) == Path("/tmp/somewhere")
    assert cfg.cleanup_interval == 60 == cfg.cache.disk.cleanup_interval
    # The seed's ResourceManager line passes a float of megabytes.
    assert CacheConfig(memory_size=1234.5 * 0.3).cache.memory.size == pytest.approx(370.35)


@pytest.mark.parametrize(
    ("data", "must_mention"),
    [
        ({"cache": {"memory": {"type": "random"}}}, "cache.memory.type"),
        ({"cache": {"memory": {"size": 0}}}, "cache.memory.size"),
        ({"cache": {"disk": {"size": -5}}}, "cache.disk.size"),
        ({"cache": {"memory": {"size": "lots"}}}, "cache.memory.size"),
        ({"cache": {"memory": {"sise": 10}}}, "size"),  # "did you mean"
        ({"model_cache": {"format": "pickle"}}, "model_cache.format"),
        ({"cache": {"disk": {"cleanup_interval": 0}}}, "cleanup_interval"),
        ({"training_cache": {"cleanup_policy": "newest"}}, "training_cache.cleanup_policy"),
    ],
)
def test_config_bad_input_is_a_config_error_naming_the_yaml_path(data: dict[str, Any], must_mention: str) -> None:
    with pytest.raises(ConfigError) as info:
        CacheConfig.from_dict(data)
    assert isinstance(info.value, CacheError)
    assert must_mention in str(info.value)


def test_config_unknown_key_gets_a_did_you_mean_hint() -> None:
    with pytest.raises(ConfigError, match=r"(?i)did you mean.*size"):
        CacheConfig.from_dict({"cache": {"memory": {"sise": 10}}})


def test_config_malformed_yaml_names_its_line_and_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cache:\n  memory:\n    size: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line"):
        CacheConfig.from_yaml(bad)
    with pytest.raises(ConfigError):
        CacheConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError):
        CacheConfig(cleanup_interval=0)


# ============================================================================ MemoryCache and DiskCache
def make_store(kind: str, root: Path, **kwargs: Any) -> Any:
    """The two sync classes built with the contract's exact words."""
    kwargs.setdefault("size", 1)
    kwargs.setdefault("policy", "lru")
    kwargs.setdefault("compression", False)
    if kind == "memory":
        return MemoryCache(**kwargs)
    return DiskCache(root / "disk", **kwargs)


STORES = ["memory", "disk"]


@pytest.mark.parametrize("kind", STORES)
def test_store_basic_words(kind: str, tmp_path: Path) -> None:
    cache = make_store(kind, tmp_path)
    try:
        assert cache.get("missing") is None
        assert cache.get("missing", default="fallback") == "fallback"
        assert cache.get("missing", "positional") == "positional"
        cache.set("key", b"value", ttl=None)
        cache.set("other", "text")
        assert cache.get("key") == b"value"
        assert "key" in cache and "missing" not in cache
        assert cache.delete("key") is True
        assert cache.delete("key") is False
        assert "key" not in cache and cache.get("key") is None
        stats = cache.stats
        assert stats.sets == 2
        assert stats.hits == 1 and stats.misses == 4
        assert stats.hit_rate == pytest.approx(0.2)
        assert stats.entries == 1
        assert 0 < stats.bytes <= stats.max_bytes == 1 * MiB
        report = cache.cleanup()
        assert report is not None
        cache.clear()
        assert "other" not in cache and cache.stats.entries == 0 and cache.stats.bytes == 0
        # bytes keys are keys too
        cache.set(b"bkey", 1)
        assert cache.get(b"bkey") == 1
    finally:
        cache.close()
    with pytest.raises(CacheError):
        cache.get("key")


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("compression", [False, True])
def test_store_value_types_round_trip(kind: str, compression: bool, tmp_path: Path) -> None:
    import torch

    cache = make_store(kind, tmp_path, size=16, compression=compression)
    values: dict[str, Any] = {
        "bytes": b"\x00\x01raw" * 1000,
        "str": "héllo wörld " * 500,
        "int": 2**62,
        "negative": -17,
        "float": 3.25,
        "bool": True,
        "none_is_not_a_miss": None,
        "dict": {"text": "hi", "ids": [1, 2, 3], "nested": {"p": 0.5, "ok": False}},
        "list": [1, "two", 3.0, None, [4]],
        "empty": "",
        "tuple": (1, "a"),
        "np_f32_scalar": np.float32(1.5),  # numpy scalars come back as themselves, not 0-d arrays
        "np_f64_scalar": np.float64(2.25),
        "np_i64_scalar": np.int64(7),
        "np_bool_scalar": np.bool_(True),
        "zero_d": np.array(3.5),
    }
    arrays = {
        "f32": np.arange(4096, dtype=np.float32).reshape(64, 64) / 7,
        "i64": np.arange(10_000, dtype=np.int64),
        "u8": np.frombuffer(os.urandom(5000), dtype=np.uint8),
        "f16": np.linspace(-1, 1, 999, dtype=np.float16),
        "bool_arr": np.array([[True, False], [False, True]]),
    }
    tensor = torch.arange(1000, dtype=torch.float32).reshape(10, 100) / 3
    bf16 = torch.linspace(-2, 2, 512).to(torch.bfloat16)
    try:
        for k, v in values.items():
            cache.set(k, v)
        for k, v in arrays.items():
            cache.set(k, v)
        cache.set("tensor", tensor)
        cache.set("bf16", bf16)
        for k, v in values.items():
            got = cache.get(k, default="MISS")
            assert type(got) is type(v), (k, got)
            assert np.array_equal(got, v) if isinstance(v, np.ndarray) else got == v, k
        for k, v in arrays.items():
            got = cache.get(k)
            assert isinstance(got, np.ndarray), k
            assert got.dtype == v.dtype and got.shape == v.shape, k
            assert np.array_equal(got, v), k
        got_t = cache.get("tensor")
        assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float32 and got_t.shape == (10, 100)
        assert torch.equal(got_t, tensor)
        got_b = cache.get("bf16")
        assert isinstance(got_b, torch.Tensor) and got_b.dtype == torch.bfloat16 and torch.equal(got_b, bf16)
    finally:
        cache.close()


@pytest.mark.parametrize("kind", STORES)
def test_store_sizes_accept_unit_strings(kind: str, tmp_path: Path) -> None:
    cache = make_store(kind, tmp_path, size="512KB")
    try:
        assert cache.stats.max_bytes == 512 * KiB
    finally:
        cache.close()
    cache = make_store(kind, tmp_path / "b", size=0.25)
    try:
        assert cache.stats.max_bytes == 256 * KiB
    finally:
        cache.close()


# Policies by name. Four 120 KB entries fit in 512 KB; a fifth forces exactly one eviction.
# After the inserts, k0 is read three times: lru keeps it (k1 goes), lfu keeps it (one of the unread goes),
# fifo and time evict it (first in, oldest by age).
VALUE = 120_000


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize(
    ("policy", "victims"),
    [("lru", {"k1"}), ("lfu", {"k1", "k2", "k3"}), ("fifo", {"k0"}), ("time", {"k0"})],
)
def test_store_policies_by_name_evict_in_their_order(kind: str, policy: str, victims: set[str], tmp_path: Path, clock: Any) -> None:
    cache = make_store(kind, tmp_path, size="512KB", policy=policy, clock=clock)
    try:
        for i in range(4):
            cache.set(f"k{i}", os.urandom(VALUE))
            clock.advance(1)
        assert cache.stats.evictions == 0
        assert all(f"k{i}" in cache for i in range(4))
        for _ in range(3):
            assert cache.get("k0") is not None
            clock.advance(1)
        cache.set("k4", os.urandom(VALUE))
        gone = {f"k{i}" for i in range(4) if f"k{i}" not in cache}
        assert len(gone) == 1 and gone <= victims, (policy, gone)
        assert "k4" in cache
        assert cache.stats.evictions == 1
        assert cache.stats.bytes <= 512 * KiB
    finally:
        cache.close()


@pytest.mark.parametrize("kind", STORES)
def test_store_bound_holds_under_many_sets(kind: str, tmp_path: Path) -> None:
    cache = make_store(kind, tmp_path, size="256KB")
    try:
        for i in range(200):
            cache.set(f"key-{i}", os.urandom(1000 + (i * 37) % 9000))
            assert cache.stats.bytes <= 256 * KiB
        assert cache.stats.evictions > 0
        assert cache.get("key-199") is not None
    finally:
        cache.close()


@pytest.mark.parametrize("kind", STORES)
def test_store_ttl_expires_and_cleanup_removes_it(kind: str, tmp_path: Path, clock: Any) -> None:
    cache = make_store(kind, tmp_path, clock=clock)
    try:
        cache.set("short", b"x", ttl=10)
        cache.set("forever", b"y", ttl=None)
        clock.advance(5)
        assert cache.get("short") == b"x"
        clock.advance(6)
        report = cache.cleanup()
        assert report.expired == 1
        assert "short" not in cache and cache.get("short") is None
        assert cache.get("forever") == b"y"
        assert cache.stats.expirations == 1
    finally:
        cache.close()


@pytest.mark.parametrize("kind", STORES)
def test_store_value_larger_than_the_tier_is_a_clear_error(kind: str, tmp_path: Path) -> None:
    cache = make_store(kind, tmp_path, size="64KB")
    try:
        cache.set("small", b"ok")
        with pytest.raises(CacheError) as info:
            cache.set("huge", os.urandom(200 * KiB))
        message = str(info.value)
        assert message.endswith(".") and len(message) > 30
        assert "huge" not in cache and cache.get("small") == b"ok"
    finally:
        cache.close()


@pytest.mark.parametrize("kind", STORES)
def test_store_rejects_bad_keys_with_a_cache_error(kind: str, tmp_path: Path) -> None:
    cache = make_store(kind, tmp_path)
    try:
        for bad in (1, None, ("a", "b"), 2.5):
            with pytest.raises(CacheError):
                cache.set(bad, b"v")
            with pytest.raises(CacheError):
                cache.get(bad)
    finally:
        cache.close()


class Custom:
    def __init__(self) -> None:
        self.x = 1


@pytest.mark.parametrize(("kind", "compression"), [("disk", False), ("disk", True), ("memory", True)])
def test_no_pickle_by_default_and_the_error_names_the_type_and_the_opt_in(kind: str, compression: bool, tmp_path: Path) -> None:
    cache = make_store(kind, tmp_path, compression=compression)
    try:
        with pytest.raises(CacheError) as info:
            cache.set("obj", Custom())
        assert "Custom" in str(info.value)
        assert "pickle" in str(info.value)
        assert "obj" not in cache
    finally:
        cache.close()
    opted = (
        MemoryCache(size=1, compression=True, allow_pickle=True)
        if kind == "memory"
        else DiskCache(tmp_path / "opted", size=1, compression=compression, allow_pickle=True)
    )
    try:
        opted.set("obj", Custom())
        assert opted.get("obj").x == 1
    finally:
        opted.close()


# ============================================================================ DiskCache specifics
HOSTILE_KEYS: list[Any] = [
    "../escape",
    "../../../../etc/passwd",
    "/absolute/path",
    "a/../../b",
    "..",
    ".",
    "nul\x00byte",
    "k" * 10_240,
    b"\xff\xfe\x00not-utf8/../",
    "CON",
    "new\nline",
    "",
]


def test_disk_hostile_keys_stay_inside_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "jail"
    root.mkdir()
    cache = DiskCache(root / "disk", size=4)
    try:
        for i, key in enumerate(HOSTILE_KEYS):
            try:
                cache.set(key, f"value-{i}".encode() + os.urandom(70_000 if i % 2 else 10))
            except CacheError:
                pytest.fail(f"hostile key {key!r} was refused")
        for i, key in enumerate(HOSTILE_KEYS):
            got = cache.get(key)
            assert got is not None and got.startswith(f"value-{i}".encode()), key
    finally:
        cache.close()
    # Nothing was written outside the cache's directory.
    outside = [p for p in tmp_path.rglob("*") if root not in p.parents and p != root]
    assert outside == []
    assert [p.name for p in root.iterdir()] == ["disk"]
    reopened = DiskCache(root / "disk", size=4)
    try:
        assert all(key in reopened for key in HOSTILE_KEYS)
    finally:
        reopened.close()


def test_disk_is_private_by_default(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        cache = DiskCache(tmp_path / "private", size=4)
        try:
            cache.set("small", b"s")
            cache.set("large", os.urandom(2 * MiB))
            cache.set("array", np.zeros(300_000, dtype=np.float32))
            paths = [tmp_path / "private", *(tmp_path / "private").rglob("*")]
            for p in paths:
                mode = stat.S_IMODE(p.stat().st_mode)
                if p.is_dir():
                    assert mode == 0o700, (p, oct(mode))
                else:
                    assert mode == 0o600, (p, oct(mode))
        finally:
            cache.close()
    finally:
        os.umask(old)


def test_disk_values_survive_close_and_reopen_and_are_not_pickled(tmp_path: Path) -> None:
    path = tmp_path / "persist"
    cache = DiskCache(path, size=4)
    cache.set("dict", {"a": [1, 2]})
    cache.set("arr", np.arange(100_000, dtype=np.int32))
    cache.close()
    blob = b"".join(p.read_bytes() for p in path.rglob("*") if p.is_file())
    # pickle protocol 2+ frames start with PROTO (0x80) then a protocol number, and name their classes.
    assert b"numpy.core.multiarray" not in blob and b"_reconstruct" not in blob
    again = DiskCache(path, size=4)
    try:
        assert again.get("dict") == {"a": [1, 2]}
        assert np.array_equal(again.get("arr"), np.arange(100_000, dtype=np.int32))
    finally:
        again.close()


def test_tiered_reads_down_promotes_up_and_deletes_everywhere(tmp_path: Path) -> None:
    memory = MemoryCache(size=1)
    disk = DiskCache(tmp_path / "d", size=4)
    tiered = TieredCache(memory, disk)
    try:
        tiered.set("k", b"v")
        assert "k" in memory and "k" in disk
        memory.clear()
        assert tiered.get("k") == b"v"
        assert "k" in memory  # promoted
        assert tiered.delete("k") is True
        assert "k" not in memory and "k" not in disk and tiered.get("k") is None
    finally:
        tiered.close()
        memory.close()
        disk.close()


# ============================================================================ CacheManager
def test_manager_contract_end_to_end(tmp_path: Path) -> None:
    import torch

    async def main() -> None:
        async with CacheManager(small_config()) as cache:
            assert isinstance(cache.memory, MemoryCache)
            assert isinstance(cache.disk, DiskCache)
            assert isinstance(cache.model_cache, ModelCache)
            assert isinstance(cache.training_cache, TrainingCache)
            assert isinstance(cache.system_cache, SystemCache)
            assert isinstance(cache.cleanup_scheduler, AsyncScheduler)

            assert await cache.get("key") is None
            assert await cache.get("key", default="d") == "d"
            await cache.set("key", b"value", ttl=None)
            assert await cache.get("key", default=None) == b"value"
            # The tiers behind get/set: written through to both.
            assert "key" in cache.memory and "key" in cache.disk
            assert await cache.delete("key") is True
            assert await cache.delete("key") is False
            assert await cache.get("key") is None

            values: dict[str, Any] = {
                "b": b"\x00raw",
                "s": "text",
                "i": 42,
                "f": 1.5,
                "d": {"ids": [1, 2, 3], "meta": {"lang": "en"}},
                "l": [1, "a", None],
            }
            for k, v in values.items():
                await cache.set(k, v)
            arr = np.arange(12, dtype=np.float32).reshape(3, 4)
            ten = torch.arange(6, dtype=torch.int64)
            await cache.set("arr", arr)
            await cache.set("ten", ten)
            for k, v in values.items():
                assert await cache.get(k) == v
            got_arr = await cache.get("arr")
            assert got_arr.dtype == np.float32 and np.array_equal(got_arr, arr)
            assert torch.equal(await cache.get("ten"), ten)
            # And from the disk tier alone (a fresh process would see this).
            cache.memory.clear()
            assert await cache.get("d") == values["d"]
            assert np.array_equal(await cache.get("arr"), arr)

            report = await cache.cleanup()
            assert report is not None
        assert (tmp_path / "cache").is_dir()  # the seed's default ./cache, relative to the working directory

    asyncio.run(main())


def test_manager_start_stop_explicitly_and_default_config(tmp_path: Path) -> None:
    async def main() -> None:
        cache = CacheManager()  # config defaults to CacheConfig()
        assert cache.config.cache.memory.size == 1000
        await cache.start()
        await cache.set("k", "v")
        assert await cache.get("k") == "v"
        await cache.stop()

    asyncio.run(main())
    assert (tmp_path / "cache").is_dir()


def test_manager_get_or_set_runs_the_factory_once_under_concurrency() -> None:
    calls: list[str] = []

    async def main() -> None:
        async with CacheManager(small_config()) as cache:

            async def factory() -> dict[str, Any]:
                calls.append("async")
                await asyncio.sleep(0.05)
                return {"answer": 42}

            results = await asyncio.gather(*(cache.get_or_set("q", factory) for _ in range(50)))
            assert results == [{"answer": 42}] * 50
            assert calls == ["async"]

            def sync_factory() -> str:
                calls.append("sync")
                return "computed"

            assert await cache.get_or_set("s", sync_factory) == "computed"
            assert await cache.get_or_set("s", sync_factory) == "computed"
            assert calls == ["async", "sync"]
            assert await cache.get("q") == {"answer": 42}

    asyncio.run(main())


def test_manager_cleanup_removes_expired_entries_and_reports_them() -> None:
    async def main() -> None:
        async with CacheManager(small_config()) as cache:
            await cache.set("short", b"x", ttl=0.05)
            await cache.set("long", b"y")
            await asyncio.sleep(0.15)
            report = await cache.cleanup()
            # One report with one part per cache; the expired entry was in both tiers.
            assert sum(part.expired for part in report.parts) == 2
            assert report.expired == 2  # top-level counters are totals over the parts
            assert report.removed == 2
            assert await cache.get("short") is None
            assert await cache.get("long") == b"y"

    asyncio.run(main())


def test_manager_scheduled_cleanup_uses_cfg_cleanup_interval() -> None:
    async def main() -> None:
        cfg = small_config(cleanup_interval=0.05)
        async with CacheManager(cfg) as cache:
            await cache.set("short", b"x" * 100, ttl=0.01)
            await asyncio.sleep(0.4)
            assert "short" not in cache.memory and "short" not in cache.disk

    asyncio.run(main())


def test_manager_refuses_pickle_and_too_large_values_with_cache_errors() -> None:
    async def main() -> None:
        async with CacheManager(small_config()) as cache:
            with pytest.raises(CacheError, match="pickle"):
                await cache.set("obj", Custom())
            with pytest.raises(CacheError):
                await cache.set("huge", os.urandom(12 * MiB))
            with pytest.raises(CacheError):
                await cache.set(123, b"v")  # type: ignore[arg-type]

    asyncio.run(main())


# ============================================================================ the seed's snippets, verbatim
SNIPPET_MONITORED = '''from llamahome.monitoring import CacheMetricsCollector
from llamahome.cache import CacheManager

class MonitoredCacheManager(CacheManager):
    def __init__(self, config: CacheConfig):
        super().__init__(config)
        self.metrics = CacheMetricsCollector()
        
    async def get_metrics(self):
        return {
            "hit_rate": await self.metrics.get_hit_rate(),
            "memory_usage": await self.metrics.get_memory_usage(),
            "eviction_count": await self.metrics.get_eviction_count()
        }
'''

SNIPPET_RESOURCES = '''from llamahome.resources import ResourceManager

async with ResourceManager() as resources:
    cache_size = await resources.get_available_memory() * 0.3  # 30% of available memory
    cache_config = CacheConfig(memory_size=cache_size)
    cache = CacheManager(cache_config)
'''


def run_source(source: str, namespace: dict[str, Any]) -> None:
    code = compile(source, "<seed>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # noqa: S307 - the seed's own code
    if asyncio.iscoroutine(result):
        asyncio.run(result)


def test_seed_monitored_cache_manager_reports_true_numbers() -> None:
    ns: dict[str, Any] = {"__name__": "user"}
    run_source("from llamahome.cache import CacheConfig\n" + SNIPPET_MONITORED, ns)
    Monitored = ns["MonitoredCacheManager"]

    async def main() -> None:
        cfg = CacheConfig(memory_size="512KB", disk_size=8)
        async with Monitored(cfg) as cache:
            assert isinstance(cache.metrics, CacheMetricsCollector)
            await cache.set("a", b"1")
            assert await cache.get("a") == b"1"
            assert await cache.get("a") == b"1"
            assert await cache.get("a") == b"1"
            assert await cache.get("nope") is None
            metrics = await cache.get_metrics()
            assert metrics["hit_rate"] == pytest.approx(0.75)
            assert metrics["memory_usage"] == cache.memory.stats.bytes > 0
            assert metrics["eviction_count"] == 0
            for i in range(12):
                await cache.set(f"big{i}", os.urandom(100_000))
            metrics = await cache.get_metrics()
            caches = (cache.memory, cache.disk, cache.model_cache, cache.training_cache, cache.system_cache)
            evicted = sum(c.stats.evictions for c in caches)
            assert cache.memory.stats.evictions > 0
            assert metrics["eviction_count"] == evicted
            assert metrics["memory_usage"] == cache.memory.stats.bytes <= 512 * KiB
            assert 0.0 <= metrics["hit_rate"] <= 1.0

    asyncio.run(main())


def test_seed_resource_manager_yields_a_memory_tier_of_30_percent_of_available_memory() -> None:
    import psutil

    ns: dict[str, Any] = {"__name__": "user"}
    run_source("from llamahome.cache import CacheConfig\n" + SNIPPET_MONITORED, ns)
    before = psutil.virtual_memory().available / MiB
    run_source(SNIPPET_RESOURCES, ns)
    after = psutil.virtual_memory().available / MiB
    cache = ns["cache"]
    try:
        assert isinstance(cache, CacheManager)
        assert ns["cache_config"].cache.memory.size == pytest.approx(ns["cache_size"])
        tier_mb = cache.memory.stats.max_bytes / MiB
        assert tier_mb == pytest.approx(ns["cache_size"], abs=1 / MiB + 1e-6)
        low, high = sorted((before, after))
        assert 0.3 * low * 0.9 <= tier_mb <= 0.3 * high * 1.1
    finally:
        cache.close()


def test_resource_manager_words() -> None:
    async def main() -> None:
        async with ResourceManager() as resources:
            available = await resources.get_available_memory()
            total = await resources.get_total_memory()
            assert 0 < available <= total
            assert total < 64 * 1024 * 1024  # megabytes, not bytes
            assert await resources.get_free_disk(".") > 0

    asyncio.run(main())


def test_cache_monitor_gives_recommendations_for_a_thrashing_memory_tier() -> None:
    async def main() -> None:
        # The seed's default: compression on. Random values do not compress, so that advice must come too.
        async with CacheManager(CacheConfig(memory_size="256KB", disk_size=16)) as cache:
            assert isinstance(cache.monitor, CacheMonitor)
            for _ in range(3):
                for i in range(60):  # ~1.2 MB cycled through a 256 KB LRU tier: memory hits nothing
                    if await cache.get(f"k{i}") is None:
                        await cache.set(f"k{i}", os.urandom(20_000))
            assert cache.memory.stats.hit_rate < 0.5 and cache.memory.stats.evictions > 100
            recs = await cache.monitor.get_cache_recommendations()
            text = " ".join(str(r) for r in recs)
            assert "cache.memory.size" in text
            assert "cache.memory.compression" in text
            assert "0.25 MB" in text and " 0 MB" not in text and "-0%" not in text
            metrics = await cache.monitor.get_metrics()
            assert isinstance(metrics, dict)

    asyncio.run(main())


# ============================================================================ typed caches
def test_model_cache_issue_api(tmp_path: Path) -> None:
    import safetensors.numpy
    import torch

    cache = ModelCache(tmp_path / "models", size=8, compression=True, cleanup_policy="lru")
    rng = np.random.default_rng(0)
    weights = {
        "layer.weight": (rng.standard_normal((256, 256)) * 0.02).astype(np.float32),
        "layer.bias": np.zeros(256, dtype=np.float32),
        "ids": np.arange(100, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "q": rng.integers(-128, 127, 1000).astype(np.int8),
        "half": rng.standard_normal(500).astype(np.float16),
    }
    try:
        cache.put("tiny", weights, metadata={"arch": "test"})
        assert cache.list() == ["tiny"]
        loaded = cache.load("tiny")
        assert set(loaded) == set(weights)
        for k, v in weights.items():
            assert loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v), k
        as_torch = cache.load("tiny", framework="torch", device="cpu", mmap=False)
        assert isinstance(as_torch["layer.weight"], torch.Tensor)
        assert np.array_equal(as_torch["layer.weight"].numpy(), weights["layer.weight"])
        path = cache.get_path("tiny")
        from_file = safetensors.numpy.load_file(str(path))
        assert all(np.array_equal(from_file[k], v) for k, v in weights.items())
        info = cache.info("tiny")
        assert info.name == "tiny" and info.raw_size > 0 and info.size > 0 and 0 < info.ratio <= 1.0
        assert info.hits >= 1 and info.last_used > 0
        assert cache.verify("tiny") is True

        # Bad input: each a clear CacheError.
        for bad_name in ("a/b", "../up", "x\\y"):
            with pytest.raises(CacheError):
                cache.put(bad_name, weights)
        with pytest.raises(CacheError):
            # 12 MiB of incompressible weights > the 8 MB budget
            cache.put("too-big", {"w": np.frombuffer(os.urandom(12 * MiB), dtype=np.float32)})
        not_st = tmp_path / "not.safetensors"
        not_st.write_bytes(b"this is not a safetensors file at all")
        with pytest.raises(CacheError):
            cache.add_file("bogus", not_st)
        with pytest.raises(CacheError):
            cache.load("never-cached")

        assert cache.delete("tiny") is True
        assert cache.list() == []
    finally:
        cache.close()


def test_model_cache_cleanup_evicts_whole_models_least_recently_used_first(tmp_path: Path, clock: Any) -> None:
    cache = ModelCache(tmp_path / "models", size=4, compression=False, cleanup_policy="lru", clock=clock)
    def block() -> dict[str, np.ndarray]:  # distinct content: identical models would be stored once
        return {"w": np.frombuffer(os.urandom(MiB), dtype=np.uint8)}

    try:
        for name in ("a", "b", "c"):
            cache.put(name, block())
            clock.advance(10)
        cache.load("a")  # a is now the most recently used
        clock.advance(10)
        cache.put("d", block())  # over budget: b goes first
        cache.cleanup()
        names = set(cache.list())
        assert "b" not in names and {"a", "d"} <= names
        assert sum(cache.info(n).size for n in names) <= 4 * MiB
    finally:
        cache.close()


@pytest.mark.parametrize("compression", [False, True])
def test_model_cache_adds_real_weights_and_loads_them_bit_exact(
    tmp_path: Path, real_weights_path: Path, compression: bool
) -> None:
    import safetensors.numpy

    cache = ModelCache(tmp_path / "models", size=256, compression=compression)
    try:
        info = cache.add_file("minilm", real_weights_path)
        reference = safetensors.numpy.load_file(str(real_weights_path))
        if compression:
            # fp32 weights: compression pays (ZipNN reports 0.82), so it is kept.
            assert info.compressed is True and info.ratio <= 0.83
        else:
            assert info.compressed is False
        loaded = cache.load("minilm", mmap=True)
        assert set(loaded) == set(reference)
        for k, v in reference.items():
            assert loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v), k
        # A path other tools open as an ordinary safetensors file.
        from_path = safetensors.numpy.load_file(str(cache.get_path("minilm")))
        assert all(np.array_equal(from_path[k], v) for k, v in reference.items())
    finally:
        cache.close()


def test_model_cache_refuses_a_truncated_safetensors_file(tmp_path: Path) -> None:
    import safetensors.numpy

    good = tmp_path / "good.safetensors"
    safetensors.numpy.save_file({"w": np.arange(100_000, dtype=np.float32)}, str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cache = ModelCache(tmp_path / "models", size=16)
    try:
        with pytest.raises(CacheError):
            cache.add_file("cut", truncated)
        assert "cut" not in cache.list()
        rand = cache.put("random", {"r": np.frombuffer(os.urandom(MiB), dtype=np.uint8)})
        assert rand.compressed is False  # random bytes do not pay, so they are stored plain
    finally:
        cache.close()


def test_training_cache_issue_api(tmp_path: Path) -> None:
    cache = TrainingCache(tmp_path / "train", size=16, batch_buffer=32, prefetch=4, cleanup_policy="fifo")
    produced: list[int] = []

    class Source:
        def __iter__(self) -> Any:
            for i in range(10):
                produced.append(i)
                yield {"input_ids": np.full((4, 16), i, dtype=np.int64), "step": [i]}

    try:
        cache.put("one", {"ids": [1, 2, 3]})
        assert cache.get("one") == {"ids": [1, 2, 3]}
        batches = cache.wrap(Source(), "ds-train")
        first = [int(b["input_ids"][0, 0]) for b in batches]
        assert first == list(range(10)) and produced == list(range(10))
        second = [int(b["input_ids"][0, 0]) for b in batches]
        assert second == list(range(10))
        assert produced == list(range(10))  # served from the cache, the source is not run again
        shuffled = cache.wrap(Source(), "ds-train", shuffle_seed=7)
        s1 = [int(b["input_ids"][0, 0]) for b in shuffled]
        s2 = [int(b["input_ids"][0, 0]) for b in cache.wrap(Source(), "ds-train", shuffle_seed=7)]
        assert sorted(s1) == list(range(10)) and s1 == s2 and s1 != list(range(10))
        assert produced == list(range(10))
    finally:
        cache.close()
    assert not [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon]


def test_training_cache_source_errors_reach_the_consumer_unchanged(tmp_path: Path) -> None:
    class SourceBroke(RuntimeError):
        pass

    boom = SourceBroke("batch 3 is broken")

    def source() -> Any:
        for i in range(5):
            if i == 3:
                raise boom
            yield [i, i + 1]

    cache = TrainingCache(tmp_path / "train", size=4)
    try:
        seen = []
        with pytest.raises(SourceBroke) as info:
            for batch in cache.wrap(list_of(source), "broken"):
                seen.append(batch)
        assert info.value is boom
        assert seen == [[0, 1], [1, 2], [2, 3]]
    finally:
        cache.close()


class list_of:
    """A re-iterable source made from a generator function."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __iter__(self) -> Any:
        return iter(self.fn())


def test_training_cache_size_smaller_than_one_batch_is_a_clear_error_not_a_deadlock(tmp_path: Path) -> None:
    cache = TrainingCache(tmp_path / "train", size="64KB")
    big = [{"x": np.frombuffer(os.urandom(800_000), dtype=np.float64)} for _ in range(3)]  # incompressible
    try:
        with pytest.raises(CacheError):
            for _ in cache.wrap(big, "too-big"):
                pass
    finally:
        cache.close()


def test_system_cache_issue_api(tmp_path: Path, clock: Any) -> None:
    temp = tmp_path / "scratch"
    cache = SystemCache(temp, size=16, max_age=100, cleanup_policy="time", clock=clock)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    try:
        with cache.temp_file(suffix=".bin") as f:
            path = Path(f)
            assert path.suffix == ".bin" and temp in path.parents
            path.write_bytes(b"data")
        plain = Path(cache.temp_file(suffix=".txt"))
        plain.write_text("kept until max_age")
        with cache.temp_dir() as d:
            assert Path(d).is_dir() and temp in Path(d).parents
        cache.put("k", b"bytes")
        assert cache.get("k") == b"bytes"
        # Things the cache did not create, and a symlink pointing outside temp_dir.
        foreign = temp / "foreign.txt"
        foreign.write_text("not yours")
        link = temp / "link-out"
        link.symlink_to(outside)

        clock.advance(50)
        cache.cleanup()
        assert plain.exists() and cache.get("k") == b"bytes"
        clock.advance(60)
        cache.cleanup()
        assert not plain.exists()
        assert cache.get("k") is None
        assert foreign.exists() and outside.read_text() == "keep me"
    finally:
        cache.close()


# ============================================================================ errors
def test_every_public_error_derives_from_cache_error() -> None:
    import llamahome.errors as errors

    names = [n for n in dir(errors) if n.endswith("Error") and isinstance(getattr(errors, n), type)]
    assert {"CacheError", "ConfigError"} <= set(names)
    for name in names:
        assert issubclass(getattr(errors, name), CacheError), name
    assert issubclass(ConfigError, CacheError)


# ============================================================================ command line
def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_demo_runs_and_prints_what_happened(tmp_path: Path) -> None:
    result = run_cli("cache", "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout.lower()
    assert "hit rate" in out and "evictions" in out and "memory" in out and "disk" in out
    assert "traceback" not in (result.stdout + result.stderr).lower()
    import json

    result = run_cli("cache", "demo", "--json", "--requests", "2000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert 0 < figures["hit_rate"] <= 1 and figures["mismatches"] == 0
    tiers = {t["name"]: t for t in figures["tiers"]}
    assert set(tiers) == {"memory", "disk"}  # the embedded default: memory in front of disk, no server
    assert all(t["bytes"] <= t["max_bytes"] for t in tiers.values())


def test_cli_config_validates_and_prints_the_effective_configuration(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text("cache:\n  memory:\n    size: 64\n    type: lfu\n", encoding="utf-8")
    result = run_cli("cache", "config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["cache"]["memory"]["size"] == 64
    assert printed["cache"]["memory"]["type"] == "lfu"
    assert printed["cache"]["disk"]["cleanup_interval"] == 3600
    assert printed["model_cache"]["format"] == "safetensors"
    assert printed["training_cache"]["prefetch"] == 4
    assert printed["system_cache"]["max_age"] == 86400
    # The printed configuration is itself a valid configuration file.
    again = tmp_path / "again.yaml"
    again.write_text(result.stdout, encoding="utf-8")
    assert CacheConfig.from_yaml(again).cache.memory.type == "lfu"


@pytest.mark.parametrize(
    "content", ["cache:\n  memory:\n    type: random\n", "cache:\n  memory: [unclosed\n", None]
)
def test_cli_config_errors_end_in_one_clear_line_and_a_nonzero_exit(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "bad.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    result = run_cli("cache", "config", str(path), cwd=tmp_path)
    assert result.returncode != 0
    both = result.stdout + result.stderr
    assert "Traceback" not in both
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].rstrip().endswith(".")


# ============================================================================ more of the issues' words
@pytest.mark.parametrize("kind", STORES)
def test_time_policy_evicts_entries_past_their_ttl_before_the_oldest(kind: str, tmp_path: Path, clock: Any) -> None:
    cache = make_store(kind, tmp_path, size="512KB", policy="time", clock=clock)
    try:
        cache.set("oldest", os.urandom(VALUE))
        clock.advance(1)
        cache.set("dying", os.urandom(VALUE), ttl=5)
        clock.advance(1)
        cache.set("k2", os.urandom(VALUE))
        cache.set("k3", os.urandom(VALUE))
        clock.advance(10)  # "dying" is now past its ttl
        cache.set("k4", os.urandom(VALUE))
        assert "oldest" in cache and "k4" in cache
        assert cache.get("dying") is None
    finally:
        cache.close()


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "time"])
def test_manager_builds_every_policy_named_in_the_yaml(policy: str, tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text(
        f"cache:\n  memory:\n    size: 512KB\n    type: {policy}\n    compression: false\n"
        f"  disk:\n    size: 8\n    path: ./c\n",
        encoding="utf-8",
    )
    cfg = CacheConfig.from_yaml(path)
    assert cfg.cache.network is None  # the optional Redis block is off by default

    async def main() -> None:
        async with CacheManager(cfg) as cache:
            assert cache.memory.stats.max_bytes == 512 * KiB
            assert cache.disk.stats.max_bytes == 8 * MiB
            await cache.set("k", [1, 2])
            assert await cache.get("k") == [1, 2]

    asyncio.run(main())
    assert (tmp_path / "c").is_dir()


def test_disk_numpy_zero_copy_mmap_when_asked(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "d", size=16)
    arr = np.arange(1_000_000, dtype=np.float32)
    try:
        cache.set("arr", arr)
        view = cache.get("arr", mmap=True)
        assert np.array_equal(view, arr) and view.dtype == np.float32
        assert not view.flags.writeable
        assert not view.flags.owndata
    finally:
        cache.close()


def test_manager_is_closed_after_stop_with_a_cache_error() -> None:
    async def main() -> None:
        cache = CacheManager(small_config())
        async with cache:
            await cache.set("k", 1)
        with pytest.raises(CacheError):
            await cache.get("k")

    asyncio.run(main())


def test_async_scheduler_words() -> None:
    runs: list[str] = []

    async def main() -> None:
        scheduler = AsyncScheduler()

        def sync_job() -> None:
            runs.append("sync")

        async def async_job() -> None:
            runs.append("async")

        def failing() -> None:
            runs.append("fail")
            raise RuntimeError("job failed")

        await scheduler.schedule(sync_job, interval=0.03)
        handle = await scheduler.schedule(async_job, interval=0.03)
        await scheduler.schedule(failing, interval=0.03)
        await asyncio.sleep(0.2)
        handle.cancel()
        await asyncio.sleep(0.05)
        cancelled_at = runs.count("async")
        await asyncio.sleep(0.1)
        assert runs.count("async") == cancelled_at
        await scheduler.stop()
        frozen = len(runs)
        await asyncio.sleep(0.1)
        assert len(runs) == frozen
        assert runs.count("sync") >= 3 and runs.count("fail") >= 3 and cancelled_at >= 3

    asyncio.run(main())


def test_memoize_over_the_manager_and_over_a_store() -> None:
    import llamahome.cache

    memoize = llamahome.cache.__getattr__("memoize")  # the exported decorator, whatever was imported before

    calls: list[str] = []

    async def main() -> None:
        async with CacheManager(small_config()) as cache:

            @memoize(cache, ttl=60)
            async def embed(text: str) -> list[float]:
                calls.append(text)
                return [float(len(text))]

            assert await embed("hello") == [5.0]
            assert await embed("hello") == [5.0]
            assert await embed("hi") == [2.0]
            assert calls == ["hello", "hi"]

    asyncio.run(main())
    store = MemoryCache(size=1)

    @memoize(store)
    def tokenize(text: str) -> list[int]:
        calls.append("tok:" + text)
        return [ord(c) for c in text]

    assert tokenize("ab") == [97, 98] == tokenize("ab")
    assert calls.count("tok:ab") == 1
    store.close()


def test_model_cache_add_dir_of_a_sharded_model(tmp_path: Path) -> None:
    import json

    import safetensors.numpy

    src = tmp_path / "hf-model"
    src.mkdir()
    rng = np.random.default_rng(1)
    shards = {
        "model-00001-of-00002.safetensors": {"a": rng.standard_normal((64, 64)).astype(np.float32)},
        "model-00002-of-00002.safetensors": {"b": rng.standard_normal(100).astype(np.float32)},
    }
    weight_map = {}
    for fname, tensors in shards.items():
        safetensors.numpy.save_file(tensors, str(src / fname))
        weight_map.update({k: fname for k in tensors})
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (src / "config.json").write_text("{}")
    cache = ModelCache(tmp_path / "models", size=16, compression=False)
    try:
        cache.add_dir("sharded", src)
        loaded = cache.load("sharded")
        assert set(loaded) == {"a", "b"}
        assert np.array_equal(loaded["a"], shards["model-00001-of-00002.safetensors"]["a"])
        assert np.array_equal(loaded["b"], shards["model-00002-of-00002.safetensors"]["b"])
        assert cache.info("sharded").sharded is True
    finally:
        cache.close()


def test_training_cache_interrupted_pass_is_completed_later_never_served_as_complete(tmp_path: Path) -> None:
    produced: list[int] = []

    class Source:
        def __iter__(self) -> Any:
            for i in range(8):
                produced.append(i)
                yield [i]

    cache = TrainingCache(tmp_path / "train", size=4, prefetch=2)
    try:
        batches = cache.wrap(Source(), "interrupted")
        for batch in batches:
            if batch == [2]:
                break
        assert [b[0] for b in batches] == list(range(8))  # completed, from the start, in order
        before = len(produced)
        assert [b[0] for b in batches] == list(range(8))
        assert len(produced) == before  # the third pass is served from the cache
        resumed = cache.wrap(Source(), "interrupted", start=5)
        assert [b[0] for b in resumed] == [5, 6, 7]
    finally:
        cache.close()


def test_system_cache_never_removes_a_file_in_use(tmp_path: Path, clock: Any) -> None:
    cache = SystemCache(tmp_path / "scratch", size=16, max_age=100, clock=clock)
    try:
        path = Path(cache.temp_file(suffix=".part"))
        path.write_bytes(b"download in progress")
        with cache.in_use(path):
            clock.advance(1000)
            cache.cleanup()
            assert path.exists()
        clock.advance(1000)
        cache.cleanup()
        assert not path.exists()
    finally:
        cache.close()


def test_manager_get_or_set_once_across_coroutines_and_threads() -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def factory() -> str:
        with lock:
            calls.append(1)
        import time

        time.sleep(0.1)
        return "value"

    async def main() -> None:
        async with CacheManager(small_config()) as cache:
            loop = asyncio.get_running_loop()
            results: list[Any] = []

            def in_thread() -> None:
                fut = asyncio.run_coroutine_threadsafe(cache.get_or_set("shared", factory), loop)
                results.append(fut.result(timeout=10))

            threads = [threading.Thread(target=in_thread) for _ in range(8)]
            for t in threads:
                t.start()
            coros = await asyncio.gather(*(cache.get_or_set("shared", factory) for _ in range(50)))
            await asyncio.to_thread(lambda: [t.join() for t in threads])
            assert coros == ["value"] * 50 and results == ["value"] * 8
            assert len(calls) == 1

    asyncio.run(main())


def test_memory_bound_counts_numpy_nbytes(tmp_path: Path) -> None:
    cache = MemoryCache(size=1, policy="lru", compression=False)
    try:
        cache.set("a", np.zeros(600 * KiB, dtype=np.uint8))
        assert 600 * KiB <= cache.stats.bytes <= 1 * MiB
        cache.set("b", np.zeros(600 * KiB, dtype=np.uint8))
        assert "a" not in cache and "b" in cache and cache.stats.evictions == 1
        with pytest.raises(CacheError):
            cache.set("c", np.zeros(2 * MiB, dtype=np.uint8))
    finally:
        cache.close()


CHILD = """
import sys, os
from llamahome.cache import DiskCache
cache = DiskCache(sys.argv[1], size="256KB")
for i in range(60):
    cache.set(f"child-{i}", os.urandom(10_000))
cache.set("from-child", b"hello parent")
cache.close()
"""


def test_disk_two_processes_share_one_directory_and_the_bound_holds(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    parent = DiskCache(path, size="256KB")
    try:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)])
        for i in range(60):
            parent.set(f"parent-{i}", os.urandom(10_000))
        assert child.wait(timeout=60) == 0
        assert parent.get("from-child") == b"hello parent"
        assert parent.stats.bytes <= 256 * KiB
    finally:
        parent.close()
    again = DiskCache(path, size="256KB")
    try:
        assert 0 < again.stats.bytes <= 256 * KiB
        assert again.get("from-child") == b"hello parent"
    finally:
        again.close()


def test_disk_damaged_value_file_is_a_miss_and_a_counter_never_a_wrong_value(tmp_path: Path) -> None:
    path = tmp_path / "d"
    cache = DiskCache(path, size=16)
    try:
        cache.set("big", os.urandom(1 * MiB))
        cache.set("other", b"fine")
        biggest = max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        assert biggest.stat().st_size >= 1 * MiB
        with open(biggest, "r+b") as f:
            f.seek(512 * KiB)
            byte = f.read(1)
            f.seek(512 * KiB)
            f.write(bytes([byte[0] ^ 0xFF]))
        assert cache.get("big", default="MISS") == "MISS"
        assert cache.stats.corrupt == 1
        assert "big" not in cache
        assert cache.get("other") == b"fine"
    finally:
        cache.close()


def test_disk_garbage_index_opens_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "d"
    cache = DiskCache(path, size=16)
    cache.set("k", b"v")
    cache.close()
    for p in path.rglob("*"):
        if p.is_file() and p.stat().st_size < 1 * MiB and ("index" in p.name or p.suffix in (".db", ".sqlite")):
            p.write_bytes(b"this is not a database" * 100)
    reopened = DiskCache(path, size=16)
    try:
        assert reopened.get("k") in (b"v", None)
        reopened.set("k2", b"v2")
        assert reopened.get("k2") == b"v2"
    finally:
        reopened.close()


def test_manager_cleanup_keeps_what_the_typed_caches_hold_under_the_disk_path(tmp_path: Path) -> None:
    weights = {"w": np.arange(300_000, dtype=np.float32)}

    async def main() -> None:
        async with CacheManager(small_config(disk_size=4)) as cache:
            cache.model_cache.put("m", weights)
            cache.training_cache.put("batch", {"ids": [1, 2, 3]})
            scratch = Path(cache.system_cache.temp_file(suffix=".tmp"))
            scratch.write_bytes(b"scratch")
            await cache.set("k", b"v")
            disk_bytes = cache.disk.stats.bytes
            await cache.cleanup()
            await cache.cleanup()
            assert np.array_equal(cache.model_cache.load("m")["w"], weights["w"])
            assert cache.model_cache.verify("m") is True
            assert cache.training_cache.get("batch") == {"ids": [1, 2, 3]}
            assert scratch.exists()
            assert await cache.get("k") == b"v"
            # The disk tier's bound covers its own entries, not the model cache's files beside them.
            assert cache.disk.stats.bytes == disk_bytes < 1 * MiB

    asyncio.run(main())


def test_prometheus_exposition_is_served_and_parses() -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from llamahome.monitoring import serve_metrics

    async def main() -> None:
        async with CacheManager(small_config()) as cache:
            await cache.set("k", b"v")
            await cache.get("k")
            await cache.get("missing")
            server = serve_metrics(cache, port=0)
            try:
                body = await asyncio.to_thread(lambda: urllib.request.urlopen(server.url, timeout=5).read())
            finally:
                server.close()
            families = list(text_string_to_metric_families(body.decode()))
            names = {f.name for f in families}
            assert names and all(n.startswith("llamahome_cache_") for n in names)
            labels = {key for f in families for s in f.samples for key in s.labels}
            assert {"cache", "tier"} <= labels
            hits = [
                s.value
                for f in families
                for s in f.samples
                if s.name.startswith("llamahome_cache_hits") and s.labels.get("tier") == "memory"
            ]
            assert hits and hits[0] >= 1

    asyncio.run(main())


def test_config_more_bad_input_and_unit_spellings() -> None:
    with pytest.raises(ConfigError, match="(?i)did you mean 'cache'"):
        CacheConfig.from_dict({"cahce": {}})
    with pytest.raises(ConfigError):
        CacheConfig.from_dict(["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cache.memory.compression"):
        CacheConfig.from_dict({"cache": {"memory": {"compression": "maybe"}}})
    with pytest.raises(ConfigError, match="system_cache.max_age"):
        CacheConfig.from_dict({"system_cache": {"max_age": -1}})
    assert CacheConfig.from_dict({"cache": {"memory": {"size": "100MiB"}}}).cache.memory.size_bytes == 100 * MiB
    assert CacheConfig.from_dict({"cache": {"memory": {"size": "1GiB"}}}).cache.memory.size == 1024
    assert CacheConfig(disk_size="1.5GiB").cache.disk.size_bytes == 1536 * MiB


def test_two_seed_monitored_managers_each_observe_their_own(tmp_path: Path) -> None:
    ns: dict[str, Any] = {"__name__": "user"}
    run_source("from llamahome.cache import CacheConfig\n" + SNIPPET_MONITORED, ns)
    Monitored = ns["MonitoredCacheManager"]

    async def main() -> None:
        one = Monitored(CacheConfig(memory_size=1, disk_size=8, disk_path=str(tmp_path / "one")))
        two = Monitored(CacheConfig(memory_size=1, disk_size=8, disk_path=str(tmp_path / "two")))
        async with one, two:
            await one.set("a", 1)
            await two.set("a", 1)
            for _ in range(3):
                await one.get("a")
            await one.get("x")
            await two.get("a")
            await two.get("x")
            await two.get("y")
            assert (await one.get_metrics())["hit_rate"] == pytest.approx(0.75)
            assert (await two.get_metrics())["hit_rate"] == pytest.approx(1 / 3)

    asyncio.run(main())


def test_a_memory_hit_never_leaves_the_event_loop() -> None:
    from concurrent.futures import ThreadPoolExecutor

    class Refusing(ThreadPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            raise AssertionError("a memory hit went to a worker thread")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ordinary = ThreadPoolExecutor(max_workers=2)
        loop.set_default_executor(ordinary)  # asyncio.run shuts it down at the end
        async with CacheManager(small_config()) as cache:
            await cache.set("hot", {"v": 1})
            refusing = Refusing(max_workers=1)
            loop.set_default_executor(refusing)
            try:
                for _ in range(100):
                    assert await cache.get("hot") == {"v": 1}
            finally:
                loop.set_default_executor(ordinary)
                refusing.shutdown()

    asyncio.run(main())


def test_model_cache_never_evicts_a_pinned_model(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "models", size=3, compression=False)
    block = {"w": np.frombuffer(os.urandom(MiB), dtype=np.uint8)}
    try:
        cache.put("reader", block)
        with cache.pin("reader"):
            view = cache.load("reader")["w"]
            for name in ("b", "c", "d", "e"):
                cache.put(name, block)
            cache.cleanup()
            assert "reader" in cache.list()
            assert np.array_equal(view, block["w"])
    finally:
        cache.close()


def test_system_cache_never_follows_a_symlink_out_of_a_scratch_dir(tmp_path: Path, clock: Any) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.bin").write_bytes(b"precious")
    cache = SystemCache(tmp_path / "scratch", size=16, max_age=10, clock=clock)
    try:
        scratch = Path(cache.temp_dir())
        (scratch / "out").symlink_to(outside, target_is_directory=True)
        (scratch / "file.txt").write_text("mine")
        clock.advance(100)
        cache.cleanup()
        assert not scratch.exists()
        assert (outside / "data.bin").read_bytes() == b"precious"
    finally:
        cache.close()


def test_training_cache_workers_stop_when_the_consumer_raises(tmp_path: Path) -> None:
    import gc
    import time

    class ConsumerBroke(Exception):
        pass

    before = set(threading.enumerate())
    cache = TrainingCache(tmp_path / "train", size=8, prefetch=4)
    source = [[i] * 100 for i in range(50)]
    try:
        with pytest.raises(ConsumerBroke):
            for batch in cache.wrap(source, "consumer-raises"):
                if batch[0] == 3:
                    raise ConsumerBroke()
        gc.collect()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and set(threading.enumerate()) - before:
            time.sleep(0.02)
        assert set(threading.enumerate()) - before == set()
        # The interrupted pass is not complete: the next one serves all 50 batches in order.
        assert [b[0] for b in cache.wrap(source, "consumer-raises")] == list(range(50))
    finally:
        cache.close()


def test_misuse_raises_cache_errors_not_bare_python_errors(tmp_path: Path) -> None:
    """'Every error the library raises derives from CacheError': wrong arguments included."""
    with pytest.raises(ConfigError):
        CacheManager("cache.yaml")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        CacheManager({"cache": {}})  # type: ignore[arg-type]
    for bad in ("soon", None, 0, -1, float("nan")):
        with pytest.raises(ConfigError):
            asyncio.run(AsyncScheduler().schedule(lambda: None, interval=bad))  # type: ignore[arg-type]
    with pytest.raises(CacheError):
        asyncio.run(AsyncScheduler().schedule(lambda: None, interval=1, delay="later"))  # type: ignore[arg-type]
    with pytest.raises(CacheError):
        MemoryCache(size="lots")
    with pytest.raises(CacheError):
        MemoryCache(policy="random")
    with pytest.raises(CacheError):
        DiskCache(tmp_path / "d", policy="random")
    with pytest.raises(CacheError):
        MemoryCache(size=1).set("k", 1, ttl="soon")  # type: ignore[arg-type]
    with pytest.raises(CacheError):
        TieredCache()

    async def main() -> None:
        async with CacheManager(small_config()) as cache:
            with pytest.raises(CacheError):
                await cache.get_or_set("k", 5)  # type: ignore[arg-type]
            with pytest.raises(CacheError):
                cache.get_or_set_sync("k", "not callable")  # type: ignore[arg-type]

    asyncio.run(main())


def test_disk_bad_ttl_type_is_a_cache_error(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "d", size=1)
    try:
        with pytest.raises(CacheError):
            cache.set("k", 1, ttl="soon")  # type: ignore[arg-type]
    finally:
        cache.close()


def test_exports_stay_the_real_objects_whatever_was_imported_first() -> None:
    # A fresh interpreter, as a user's script that imported every submodule first: an export named like its
    # submodule would be rebound to the module by the import system.
    script = (
        "import importlib, pkgutil, types, llamahome.cache as c\n"
        "for m in pkgutil.iter_modules(c.__path__):\n"
        "    importlib.import_module('llamahome.cache.' + m.name)\n"
        "from llamahome.cache import memoize\n"
        "assert callable(memoize) and not isinstance(memoize, types.ModuleType), type(memoize)\n"
        "bad = [n for n in c.__all__ if isinstance(getattr(c, n), types.ModuleType)]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_manager_ttl_holds_across_tiers_and_promotion_does_not_extend_it() -> None:
    async def main() -> None:
        async with CacheManager(small_config()) as cache:
            await cache.set("t", b"short-lived", ttl=0.3)
            cache.memory.clear()
            assert await cache.get("t") == b"short-lived"  # from disk, promoted into memory
            assert "t" in cache.memory
            await asyncio.sleep(0.4)
            assert await cache.get("t") is None
            assert "t" not in cache.memory and "t" not in cache.disk

    asyncio.run(main())


def test_tiered_cache_stats_per_tier_and_combined(tmp_path: Path) -> None:
    memory = MemoryCache(size=1)
    disk = DiskCache(tmp_path / "d", size=4)
    tiered = TieredCache(memory, disk)
    try:
        tiered.set("a", b"1")
        tiered.set("b", b"2")
        memory.delete("b")
        assert tiered.get("a") == b"1"  # memory hit
        assert tiered.get("b") == b"2"  # disk hit, promoted
        assert tiered.get("c") is None  # miss everywhere
        assert memory.stats.hits == 1 and disk.stats.hits == 1
        combined = tiered.stats
        assert combined.hits == 2 and combined.misses == 1
        assert combined.hit_rate == pytest.approx(2 / 3)
    finally:
        tiered.close()
        memory.close()
        disk.close()


def test_training_cache_new_fingerprint_is_a_new_namespace_and_old_ones_go_first(tmp_path: Path) -> None:
    runs: list[str] = []

    def source(tag: str) -> Any:
        class Source:
            def __iter__(self) -> Any:
                runs.append(tag)
                for i in range(4):
                    yield {"x": np.frombuffer(os.urandom(100_000), dtype=np.uint8), "i": [i]}

        return Source()

    cache = TrainingCache(tmp_path / "train", size=1, prefetch=2)  # 1 MB: room for two datasets of ~400 KB
    try:
        for _ in range(2):
            assert [b["i"][0] for b in cache.wrap(source("a"), "ds", fingerprint={"tok": "v1"})] == [0, 1, 2, 3]
        assert runs == ["a"]  # the second pass came from the cache
        for _ in range(2):
            assert [b["i"][0] for b in cache.wrap(source("b"), "ds", fingerprint={"tok": "v2"})] == [0, 1, 2, 3]
        assert runs == ["a", "b"]  # a changed fingerprint starts over, once
        for _ in range(2):
            assert [b["i"][0] for b in cache.wrap(source("c"), "other")] == [0, 1, 2, 3]
        assert runs == ["a", "b", "c"]
        assert cache.stats.bytes <= 1 * MiB
        # Over budget, the oldest namespace ("a") was evicted whole; the newest is intact.
        list(cache.wrap(source("c2"), "other"))
        assert runs == ["a", "b", "c"]
        list(cache.wrap(source("a2"), "ds", fingerprint={"tok": "v1"}))
        assert runs[-1] == "a2"
    finally:
        cache.close()
