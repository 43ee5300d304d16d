"""Acceptance: ``ModelCache`` keeps safetensors weights under a budget.

``put``/``add_file``/``add_dir``/``load``/``get_path``/``info``/``verify``/``pin``/``delete``: weights come
back bit-exact (numpy or torch), the cached file is an ordinary safetensors file, whole models are evicted
least recently used first but never while pinned, compression is kept only where it pays, and bad names or
files are ``CacheError`` exceptions (README "Model cache"; issue 4).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamahome.cache import ModelCache
from llamahome.errors import CacheError

from ._support import MiB


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
    def block() -> dict[str, Any]:  # distinct bytes per model: identical content would be stored once
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


def test_model_cache_add_dir_of_a_sharded_model(tmp_path: Path) -> None:

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
