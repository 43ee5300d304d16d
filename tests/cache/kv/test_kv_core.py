"""KVCache's engine-independent core with plain numpy arrays: no torch needed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from llamahome.cache import KVCache
from llamahome.cache.kv import KVPrefix
from llamahome.errors import CacheClosedError, CacheValueError, ConfigError, StorageError

from .helpers import kv_for

B = 16  # block_tokens in these tests


def make(tmp_path: Path, **kw) -> KVCache:
    kw.setdefault("block_tokens", B)
    kw.setdefault("size", 64)
    return KVCache(tmp_path / "kv", **kw)


def prompt(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 32000, n)


def assert_prefix_exact(prefix: KVPrefix, tokens: np.ndarray, dtype: str = "float32") -> None:
    want = kv_for(tokens[: prefix.tokens], dtype)
    assert len(prefix.layers) == len(want)
    for (k, v), (wk, wv) in zip(prefix.layers, want):
        assert k.dtype == wk.dtype and k.shape == wk.shape
        assert np.array_equal(k.view(np.uint8), wk.view(np.uint8))  # bit-exact
        assert np.array_equal(v.view(np.uint8), wv.view(np.uint8))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("compression", [True, False])
def test_store_then_lookup_is_bit_exact(tmp_path: Path, dtype: str, compression: bool) -> None:
    kv = make(tmp_path, compression=compression)
    tokens = prompt(0, 4 * B + 5)
    assert kv.store("model-a", tokens, kv_for(tokens, dtype)) == 4 * B  # the partial block is not stored
    assert kv.match("model-a", tokens) == 4 * B
    prefix = kv.lookup("model-a", tokens)
    assert prefix.tokens == 4 * B and prefix.blocks == 4 and prefix.dtype == dtype
    assert_prefix_exact(prefix, tokens, dtype)
    # From disk alone (a new instance has an empty memory tier).
    fresh = make(tmp_path, compression=compression)
    assert_prefix_exact(fresh.lookup("model-a", tokens), tokens, dtype)


def test_compression_pays_on_fp16_and_is_reported(tmp_path: Path) -> None:
    kv = make(tmp_path, compression=True)
    tokens = prompt(1, 8 * B)
    kv.store("m", tokens, kv_for(tokens, "float16"))
    assert 0 < kv.stats.compression_ratio < 0.9  # byte grouping makes the exponent bytes compress
    off = KVCache(tmp_path / "raw", block_tokens=B, compression=False)
    off.store("m", tokens, kv_for(tokens, "float16"))
    assert off.stats.compression_ratio == 1.0
    assert kv.stats.bytes < off.stats.bytes


def test_partial_reuse_takes_exactly_the_shared_blocks(tmp_path: Path) -> None:
    kv = make(tmp_path)
    first = prompt(2, 4 * B)
    kv.store("m", first, kv_for(first))
    second = first.copy()
    second[3 * B + 2] += 1  # differs inside the 4th block
    assert kv.match("m", second) == 3 * B
    prefix = kv.lookup("m", second)
    assert prefix.tokens == 3 * B and prefix.blocks == 3
    assert_prefix_exact(prefix, second)
    sets = kv.stats.sets
    assert kv.store("m", second, kv_for(second)) == B  # only the new 4th block is written
    assert kv.stats.sets == sets + 1
    assert kv.match("m", second) == 4 * B and kv.match("m", first) == 4 * B


def test_a_change_in_the_first_block_reuses_nothing(tmp_path: Path) -> None:
    kv = make(tmp_path)
    tokens = prompt(3, 3 * B)
    kv.store("m", tokens, kv_for(tokens))
    other = tokens.copy()
    other[0] += 1
    assert kv.match("m", other) == 0
    assert not kv.lookup("m", other)


def test_another_model_id_never_hits(tmp_path: Path) -> None:
    kv = make(tmp_path)
    tokens = prompt(4, 2 * B)
    kv.store("model-a", tokens, kv_for(tokens))
    assert kv.match("model-b", tokens) == 0 and kv.lookup("model-b", tokens).tokens == 0
    assert kv.stats.misses == 1


def test_max_tokens_and_short_prompts(tmp_path: Path) -> None:
    kv = make(tmp_path)
    tokens = prompt(5, 3 * B)
    kv.store("m", tokens, kv_for(tokens))
    assert kv.lookup("m", tokens, max_tokens=3 * B - 1).tokens == 2 * B
    assert kv.lookup("m", tokens[: B - 1]).tokens == 0
    assert kv.store("m", tokens[: B - 1], kv_for(tokens[: B - 1])) == 0


def test_store_from_a_start_offset_takes_arrays_for_the_new_part_only(tmp_path: Path) -> None:
    kv = make(tmp_path)
    tokens = prompt(6, 3 * B)
    kv.store("m", tokens[:B], kv_for(tokens[:B]))
    tail = [(k[..., B:, :], v[..., B:, :]) for k, v in kv_for(tokens)]
    assert kv.store("m", tokens, tail, start=B) == 2 * B
    assert_prefix_exact(kv.lookup("m", tokens), tokens)
    with pytest.raises(CacheValueError, match="multiple of block_tokens"):
        kv.store("m", tokens, tail, start=3)


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    kv = make(tmp_path)
    tokens = prompt(7, 2 * B)
    with pytest.raises(CacheValueError, match="fewer than"):
        kv.store("m", tokens, [(k[..., :B, :], v[..., :B, :]) for k, v in kv_for(tokens)])
    with pytest.raises(CacheValueError, match="float16"):
        kv.store("m", tokens, [(np.zeros((1, 2, 2 * B, 4), np.int32),) * 2])
    with pytest.raises(CacheValueError, match="one sequence"):
        kv.match("m", np.zeros((2, 2 * B), np.int64))
    with pytest.raises(CacheValueError, match="integers"):
        kv.match("m", np.zeros(2 * B, np.float32))
    with pytest.raises(CacheValueError, match="fingerprint"):
        kv.match("", tokens)
    with pytest.raises(CacheValueError, match="share one dtype"):
        kv.store("m", tokens, [(kv_for(tokens)[0][0], kv_for(tokens, "float16")[0][1])])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"block_tokens": 0}, "block_tokens"),
        ({"block_tokens": 2.5}, "block_tokens"),
        ({"cleanup_policy": "fifo"}, "lru"),
        ({"size": -1}, "kv_cache.size"),
        ({"memory_size": "lots"}, "kv_cache.memory_size"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        KVCache(tmp_path / "kv", **kwargs)


def test_closed_cache_refuses_work(tmp_path: Path) -> None:
    kv = make(tmp_path)
    kv.close()
    kv.close()
    with pytest.raises(CacheClosedError):
        kv.match("m", prompt(8, B))


def test_directory_is_private_and_marked(tmp_path: Path) -> None:
    kv = make(tmp_path)
    tokens = prompt(9, B)
    kv.store("m", tokens, kv_for(tokens))
    root = tmp_path / "kv"
    assert (root / "KVCACHE").is_file()
    assert os.stat(root).st_mode & 0o777 == 0o700
    files = list((root / "blocks").rglob("*.kvb"))
    assert len(files) == 1 and os.stat(files[0]).st_mode & 0o777 == 0o600


def test_a_foreign_non_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kv").mkdir()
    (tmp_path / "kv" / "thesis.tex").write_text("precious")
    with pytest.raises(StorageError, match="not a KV cache directory"):
        make(tmp_path)
    assert (tmp_path / "kv" / "thesis.tex").read_text() == "precious"


def test_memory_tier_serves_without_the_disk(tmp_path: Path) -> None:
    kv = make(tmp_path, memory_size=8)
    tokens = prompt(10, 2 * B)
    kv.store("m", tokens, kv_for(tokens))
    for path in (tmp_path / "kv" / "blocks").rglob("*.kvb"):
        path.unlink()
    assert_prefix_exact(kv.lookup("m", tokens), tokens)
    no_memory = make(tmp_path, memory_size=0)
    assert no_memory.lookup("m", tokens).tokens == 0


def test_clear_removes_every_block(tmp_path: Path) -> None:
    kv = make(tmp_path)
    tokens = prompt(11, 2 * B)
    kv.store("m", tokens, kv_for(tokens))
    kv.clear()
    assert kv.match("m", tokens) == 0 and kv.stats.entries == 0 and kv.stats.bytes == 0
    assert (tmp_path / "kv" / "KVCACHE").exists()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_blocks_read_from_disk_are_kept_in_memory(tmp_path: Path, dtype: str) -> None:
    tokens = prompt(12, 3 * B)
    make(tmp_path).store("m", tokens, kv_for(tokens, dtype))
    kv = make(tmp_path, memory_size=8)  # a new process: empty memory tier
    assert_prefix_exact(kv.lookup("m", tokens), tokens, dtype)
    for path in (tmp_path / "kv" / "blocks").rglob("*.kvb"):
        path.unlink()
    assert_prefix_exact(kv.lookup("m", tokens), tokens, dtype)  # served from memory now
