"""ModelCache: bit-exact round trips, real weights, sharded imports, eviction, pins, processes, bad input."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from llamahome.cache.model import _io as model_io
from llamahome.cache.model import ModelCache, ModelNotFoundError
from llamahome.errors import CacheError, CacheClosedError, ConfigError, ModelCacheError

torch = pytest.importorskip("torch")

MIB = 1024 * 1024


def _tensor(dtype: str, seed: int = 0, shape: tuple[int, ...] = (64, 48)) -> torch.Tensor:
    """A deterministic tensor: weight-like floats (compressible exponents), random ints and bools."""
    gen = torch.Generator().manual_seed(seed)
    if dtype in ("float32", "float16", "bfloat16"):
        return (torch.randn(shape, generator=gen) * 0.05).to(getattr(torch, dtype))
    if dtype == "int8":
        return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8)
    if dtype == "int64":
        return torch.randint(-(2**62), 2**62, shape, generator=gen, dtype=torch.int64)
    if dtype == "bool":
        return torch.rand(shape, generator=gen) > 0.5
    raise AssertionError(dtype)


def _bits(value: object) -> bytes:
    """The raw bytes of an array or tensor (bf16 compared bit for bit)."""
    if isinstance(value, torch.Tensor):
        flat = value.contiguous().reshape(-1)
        return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    return np.ascontiguousarray(value).tobytes()


DTYPES = ["float32", "float16", "bfloat16", "int8", "int64", "bool"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compression", [False, True])
@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_round_trip_is_bit_exact(tmp_path: Path, dtype: str, compression: bool, framework: str) -> None:
    cache = ModelCache(tmp_path, size=64, compression=compression)
    source = {"w": _tensor(dtype, 1), "b": _tensor(dtype, 2, (48,)), "s": _tensor(dtype, 3, ())}
    # numpy callers hand numpy arrays (numpy has no bfloat16: that one goes in as a torch tensor).
    given = {k: v.numpy() for k, v in source.items()} if framework == "numpy" and dtype != "bfloat16" else source
    info = cache.put("m", given)
    floats = dtype in ("float32", "float16", "bfloat16")
    # Weight-like floats pay, and so do 0/1 bytes; random int8 / int64 do not save 10%.
    assert info.compressed is (compression and (floats or dtype == "bool"))
    assert info.tensors == 3
    for mmap in (True, False):
        out = cache.load("m", framework=framework, mmap=mmap)
        assert set(out) == {"w", "b", "s"}
        for key, value in source.items():
            assert tuple(out[key].shape) == tuple(value.shape)
            assert _bits(out[key]) == _bits(value)
            if framework == "torch":
                assert out[key].dtype == value.dtype
    if framework == "numpy":
        expected = np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)  # bf16: raw bits
        assert out["w"].dtype == expected
    assert cache.verify("m")


def test_empty_and_odd_shapes_round_trip(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, size=16)
    tensors = {
        "empty": np.zeros((0, 7), dtype=np.float32),
        "odd": np.arange(13, dtype=np.int16),
        "scalar": np.float64(2.5) * np.ones(()),
        "f64": np.linspace(0, 1, 4000),
        "u8": np.arange(255, dtype=np.uint8),
    }
    for compression in (False, True):
        cache.put("odd", tensors, compression=compression)
        for framework in ("numpy", "torch"):
            out = cache.load("odd", framework=framework)
            for key, value in tensors.items():
                got = out[key].numpy() if framework == "torch" else out[key]
                assert got.shape == value.shape and got.dtype == value.dtype and np.array_equal(got, value)


def test_writes_into_loaded_tensors_never_reach_the_cache(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, size=16, compression=False)
    cache.put("m", {"w": np.arange(100, dtype=np.float32)})
    first = cache.load("m", framework="torch")
    first["w"][:] = -1  # copy-on-write mapping: allowed, private to this process
    again = cache.load("m")
    assert np.array_equal(again["w"], np.arange(100, dtype=np.float32))
    assert cache.verify("m")


# --- real weights -------------------------------------------------------------------------------------------


def test_real_weights_compressed_and_linked(tmp_path: Path, real_weights_path: Path) -> None:
    reference = load_file(real_weights_path)
    cache = ModelCache(tmp_path / "models", size=512)
    packed = cache.add_file("minilm-z", real_weights_path, compression=True)
    assert packed.compressed and packed.raw_size == real_weights_path.stat().st_size
    assert packed.ratio <= 0.83  # ZipNN reports 0.82 on such fp32 weights
    plain = cache.add_file("minilm", real_weights_path, compression=False)
    assert not plain.compressed and plain.ratio == 1.0
    stored = tmp_path / "models" / "minilm" / "model.safetensors"
    assert stored.stat().st_ino == real_weights_path.stat().st_ino or stored.stat().st_nlink == 1  # link or reflink

    for name in ("minilm-z", "minilm"):
        out = cache.load(name, framework="numpy", mmap=True)
        assert set(out) == set(reference)
        for key, value in reference.items():
            assert out[key].dtype == value.dtype and np.array_equal(out[key], value)

    torch_out = cache.load("minilm-z", framework="torch", mmap=False)
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(torch_out[key], torch.from_numpy(reference[key]))

    # get_path gives a byte-identical safetensors file that safetensors itself opens.
    path = cache.get_path("minilm-z")
    assert path.name == "model.safetensors" and path.read_bytes() == real_weights_path.read_bytes()
    assert cache.verify("minilm-z") and cache.verify("minilm")
    assert cache.info("minilm-z").size == packed.stored_size + packed.raw_size  # the decoded copy counts

    assert cache.delete("minilm")
    assert real_weights_path.exists() and real_weights_path.stat().st_size == plain.raw_size


def test_real_weights_as_bf16_compress_to_two_thirds(tmp_path: Path, real_weights_path: Path) -> None:
    reference = load_file(real_weights_path)
    # The biggest tensors carry the ratio; a few keep the test quick.
    names = sorted(reference, key=lambda k: -reference[k].nbytes)[:6]
    bf16 = {k: torch.from_numpy(reference[k]).to(torch.bfloat16) for k in names if reference[k].dtype == np.float32}
    cache = ModelCache(tmp_path, size=256)
    info = cache.put("bf16", bf16)
    assert info.ratio <= 0.67  # ZipNN reports 0.67 on bf16 weights
    out = cache.load("bf16", framework="torch")
    assert all(torch.equal(out[k].view(torch.int16), v.view(torch.int16)) for k, v in bf16.items())


# --- sharded models -----------------------------------------------------------------------------------------


def _sharded_model(root: Path, shards: int = 3) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    tensors: dict[str, np.ndarray] = {}
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {f"layer{i}.weight": (rng.standard_normal((96, 64)) * 0.02).astype(np.float32),
                f"layer{i}.bias": np.arange(64, dtype=np.int64)}  # fmt: skip
        save_file(part, str(root / file))
        tensors.update(part)
        weight_map.update({k: file for k in part})
    index = {"metadata": {"total_size": sum(v.nbytes for v in tensors.values())}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    (root / "config.json").write_text("{}")
    return tensors


@pytest.mark.parametrize("compression", [False, True])
def test_sharded_import(tmp_path: Path, compression: bool) -> None:
    tensors = _sharded_model(tmp_path / "src")
    cache = ModelCache(tmp_path / "cache", size=16, compression=compression)
    info = cache.add_dir("sharded", tmp_path / "src")
    assert info.sharded and info.compressed is compression and info.tensors == 6
    assert info.files == tuple(f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3))
    out = cache.load("sharded")
    assert set(out) == set(tensors) and all(np.array_equal(out[k], v) for k, v in tensors.items())

    directory = cache.get_path("sharded")  # a whole model directory (issue 15): what from_pretrained() takes
    assert directory.is_dir() and (directory / "config.json").read_text() == "{}"
    assert info.extra_files == ("config.json",)
    index = directory / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    for key, file in weight_map.items():
        assert np.array_equal(load_file(index.parent / file)[key], tensors[key])
    assert cache.verify("sharded")


def test_add_dir_with_a_single_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    save_file({"w": np.ones(10, dtype=np.float32)}, str(src / "model.safetensors"), metadata={"format": "np"})
    cache = ModelCache(tmp_path / "cache", size=4)
    info = cache.add_dir("one", src)
    assert info.files == ("model.safetensors",) and info.metadata == {"format": "np"} and not info.sharded
    assert np.array_equal(cache.load("one")["w"], np.ones(10, dtype=np.float32))


# --- eviction, pins, bookkeeping ----------------------------------------------------------------------------


def _blob(seed: int, kib: int = 300) -> dict[str, np.ndarray]:
    return {"w": np.random.default_rng(seed).integers(0, 256, kib * 1024, dtype=np.uint8)}


def test_lru_eviction_order(tmp_path: Path, clock) -> None:
    cache = ModelCache(tmp_path, size=1, compression=False, clock=clock)  # 1 MiB: three 300 KiB models fit
    for name in ("a", "b", "c"):
        cache.put(name, _blob(ord(name)))
        clock.advance(1)
    cache.load("a")  # a is now the most recently used
    clock.advance(1)
    assert [i.name for i in cache.list_info()] == ["b", "c", "a"]
    cache.put("d", _blob(4))
    assert cache.list() == ["a", "c", "d"]
    assert cache.stats.evictions == 1
    cache.put("e", _blob(5, kib=600))  # needs two victims: c, then a
    assert cache.list() == ["d", "e"]
    assert cache.stats.evictions == 3 and cache.stats.bytes <= MIB


def test_info_and_stats(tmp_path: Path, clock) -> None:
    cache = ModelCache(tmp_path, size=4, compression=False, clock=clock)
    cache.put("m", {"w": np.zeros(1000, dtype=np.float32)}, {"source": "test"})
    clock.advance(5)
    cache.load("m")
    cache.load("m", mmap=False)
    with pytest.raises(ModelNotFoundError):
        cache.load("nope")
    info = cache.info("m")
    assert info.hits == 2 and info.last_used == clock() and info.created == clock() - 5
    assert info.metadata == {"source": "test"} and info.size == info.raw_size == info.stored_size
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.sets, stats.entries, stats.bytes) == (2, 1, 1, 1, info.size)
    assert "m" in cache and "x" not in cache and len(cache) == 1


def test_lfu_policy(tmp_path: Path, clock) -> None:
    cache = ModelCache(tmp_path, size=1, compression=False, cleanup_policy="lfu", clock=clock)
    for name in ("a", "b", "c"):
        cache.put(name, _blob(ord(name)))
        clock.advance(1)
    cache.load("a")
    cache.load("a")
    cache.load("c")
    cache.put("d", _blob(4))  # b was never loaded
    assert cache.list() == ["a", "c", "d"]
    with pytest.raises(ConfigError):
        ModelCache(tmp_path, cleanup_policy="random")


def test_pinned_models_are_never_evicted(tmp_path: Path, clock) -> None:
    cache = ModelCache(tmp_path, size=1, compression=False, clock=clock)
    cache.put("a", _blob(1))
    clock.advance(1)
    cache.put("b", _blob(2))
    clock.advance(1)
    with cache.pin("a") as info:
        assert info.pinned and cache.info("a").pinned
        cache.put("c", _blob(3))
        cache.put("d", _blob(4))  # a is the oldest but pinned: b goes
        assert cache.list() == ["a", "c", "d"]
        with pytest.raises(ModelCacheError, match="pinned"):
            cache.delete("a")
        with pytest.raises(ModelCacheError, match="pinned"):
            cache.put("big", _blob(5, kib=900))  # only a pinned model could make room
        assert cache.cleanup().evicted == 0
    assert not cache.info("a").pinned
    cache.put("big", _blob(5, kib=700))
    assert "a" not in cache and "big" in cache
    with pytest.raises(ModelNotFoundError):
        with cache.pin("a"):
            pass


def test_cleanup_evicts_down_to_a_smaller_budget(tmp_path: Path, clock) -> None:
    big = ModelCache(tmp_path, size=2, compression=False, clock=clock)
    for name in ("a", "b", "c"):
        big.put(name, _blob(ord(name)))
        clock.advance(1)
    sizes = {i.name: i.size for i in big.list_info()}
    small = ModelCache(tmp_path, size=0.5, compression=False, clock=clock)
    report = small.cleanup()
    assert report.evicted == 2 and report.details["evicted"] == ["a", "b"]
    assert report.bytes_freed == sizes["a"] + sizes["b"] and small.list() == ["c"]
    assert small.stats.bytes == sizes["c"] <= small.max_bytes


def test_cleanup_removes_orphans_and_damaged_entries(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, size=4)
    cache.put("ok", _blob(1, kib=4))
    dead = tmp_path / ".tmp" / f"999999999-{'d' * 32}"  # a writer that died (names as the cache makes them)
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 100)
    live = cache._new_tmp()  # a writer still running (this process) is left alone
    (tmp_path / ".trash" / ("0" * 32)).mkdir()
    (tmp_path / "broken").mkdir()  # a model directory whose manifest is damaged
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"y" * 50)
    (tmp_path / "ok" / f".decoding-999999999-{'c' * 32}").write_bytes(b"z" * 10)  # a get_path() that died
    report = cache.cleanup()
    assert (report.orphans, report.corrupt, report.bytes_freed) == (3, 1, 50)
    assert sorted(os.listdir(tmp_path / "ok")) == [".access", ".verified", "manifest.json", "model.safetensors"]
    assert cache.list() == ["ok"] and live.exists()
    assert sorted(os.listdir(tmp_path / ".tmp")) == [live.name]


def test_verify_detects_damage(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, size=4, compression=True)
    cache.put("m", {"w": (np.random.default_rng(0).standard_normal(20000) * 0.1).astype(np.float32)})
    assert cache.info("m").compressed and cache.verify("m")
    stored = tmp_path / "m" / "model.safetensors.lhz"
    data = bytearray(stored.read_bytes())
    data[200] ^= 0xFF
    stored.write_bytes(bytes(data))
    assert not cache.verify("m")
    assert cache.stats.corrupt == 1


def test_mapping_survives_eviction(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, size=4, compression=False)
    cache.put("m", {"w": np.arange(50_000, dtype=np.int32)})
    out = cache.load("m")  # mmap views; the load released its lock
    assert cache.delete("m")
    assert not (tmp_path / "m").exists()
    assert int(out["w"].sum()) == sum(range(50_000))  # the unlinked file stays mapped
    with pytest.raises(ModelNotFoundError):
        cache.load("m")


def test_put_replaces_and_identical_add_keeps_one_copy(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, size=4)
    cache.put("m", {"w": np.ones(10, dtype=np.float32)})
    cache.put("m", {"w": np.zeros(10, dtype=np.float32)})
    assert np.array_equal(cache.load("m")["w"], np.zeros(10, dtype=np.float32))
    first = cache.info("m").created
    cache.put("m", {"w": np.zeros(10, dtype=np.float32)})  # identical content: the existing copy stays
    assert cache.info("m").created == first and cache.info("m").hits == 1
    assert os.listdir(tmp_path / ".trash") == [] and os.listdir(tmp_path / ".tmp") == []


def test_misaligned_tensors_in_imported_files(tmp_path: Path) -> None:
    # Other writers may place a float32 at an odd offset; numpy views it unaligned, torch gets a copy.
    header = {"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "b": {"dtype": "F32", "shape": [2, 2], "data_offsets": [3, 19]}}  # fmt: skip
    values = np.array([[1.5, -2.0], [3.25, 1e-3]], dtype=np.float32)
    src = tmp_path / "odd.safetensors"
    src.write_bytes(_with_header(header, bytes([7, 8, 9]) + values.tobytes()))
    assert load_file(src)["b"].tolist() == values.tolist()
    cache = ModelCache(tmp_path / "cache", size=4, compression=False)
    cache.add_file("odd", src)
    for framework in ("numpy", "torch"):
        for mmap in (True, False):
            out = cache.load("odd", framework=framework, mmap=mmap)
            got = out["b"].numpy() if framework == "torch" else out["b"]
            assert got.tolist() == values.tolist() and bytes(np.asarray(out["a"])) == bytes([7, 8, 9])
    # The staged device path (CUDA in production) on the CPU: same tensors.
    staged = model_io.plain_to_device(tmp_path / "cache" / "odd" / "model.safetensors", "cpu")
    assert staged["b"].dtype == torch.float32 and staged["b"].tolist() == values.tolist()


def test_device_argument_checks(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, size=4)
    cache.put("m", {"w": np.ones(4, dtype=np.float32)})
    with pytest.raises(ModelCacheError, match="framework='torch'"):
        cache.load("m", device="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ModelCacheError, match="CUDA"):
            cache.load("m", framework="torch", device="cuda")
    with pytest.raises(ModelCacheError, match="framework"):
        cache.load("m", framework="jax")


def test_progress_bar_can_be_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = ModelCache(tmp_path, size=4, progress=True)
    cache.put("m", {"w": np.ones(100_000, dtype=np.float32)})
    assert "caching m" in capsys.readouterr().err
    quiet = ModelCache(tmp_path, size=4, progress=False)
    quiet.put("n", {"w": np.ones(100, dtype=np.float32)})
    assert capsys.readouterr().err == ""


def test_from_config_and_close(tmp_path: Path) -> None:
    from llamahome.cache.config import CacheConfig

    cfg = CacheConfig.from_dict({"model_cache": {"size": "2GB", "compression": False, "cleanup_policy": "lru"}})
    cache = ModelCache.from_config(cfg.model_cache, tmp_path)
    assert cache.max_bytes == 2048 * MIB and cache.compression is False
    cache.close()
    with pytest.raises(CacheClosedError):
        cache.list()


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a/b", "..", ".hidden", "", "a\\b", "x\x00y", "../escape", "n" * 201])
def test_bad_names(tmp_path: Path, name: str) -> None:
    cache = ModelCache(tmp_path, size=4)
    with pytest.raises(ModelCacheError, match="not allowed"):
        cache.put(name, {"w": np.ones(3)})
    with pytest.raises(ModelCacheError):
        cache.load(name)
    assert os.listdir(tmp_path / ".tmp") == []


def _safetensors_bytes() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    return struct.pack("<Q", len(header)) + header + np.arange(4, dtype=np.float32).tobytes()


def _with_header(header: dict[str, object], data: bytes = bytes(16)) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is a text file, not weights\n", "header length"),
        (b"", "only 0 bytes"),
        (_safetensors_bytes()[:-3], "truncated"),
        (_safetensors_bytes() + b"junk", "trailing bytes"),
        (struct.pack("<Q", 9) + b"{not json", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (_with_header({"w": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}), "needs 20"),
        (_with_header({"w": {"dtype": "Q99", "shape": [4], "data_offsets": [0, 16]}}), "unknown dtype"),
        (_with_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}), "hole"),
        (_with_header({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}), "invalid shape"),
        (
            _with_header({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "__metadata__": {"a": 1}}),
            "__metadata__",
        ),
    ],
)
def test_bad_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    cache = ModelCache(tmp_path / "cache", size=4)
    with pytest.raises(ModelCacheError, match=message):
        cache.add_file("bad", bad)
    assert cache.list() == [] and os.listdir(tmp_path / "cache" / ".tmp") == []


def test_other_bad_inputs(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache", size=1)
    with pytest.raises(ModelCacheError, match="does not exist"):
        cache.add_file("m", tmp_path / "missing.safetensors")
    with pytest.raises(ModelCacheError, match="raise model_cache.size"):
        cache.put("huge", _blob(1, kib=2048), compression=False)  # larger than the whole budget
    with pytest.raises(ModelCacheError, match="raise model_cache.size"):
        cache.put("huge", _blob(1, kib=2048), compression=True)  # random bytes do not compress either
    with pytest.raises(ModelCacheError, match="numpy arrays or torch tensors"):
        cache.put("m", {"w": [1, 2, 3]})
    with pytest.raises(ModelCacheError, match="non-empty"):
        cache.put("m", {})
    with pytest.raises(ModelCacheError, match="safetensors cannot store"):
        cache.put("m", {"w": np.array(["text"])})
    with pytest.raises(ModelCacheError, match="metadata"):
        cache.put("m", {"w": np.ones(2)}, {"n": 1})  # type: ignore[dict-item]
    src = tmp_path / "src"
    _sharded_model(src)
    (src / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ModelCacheError, match="missing"):
        cache.add_dir("m", src)
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../x.safetensors"}}))
    with pytest.raises(ModelCacheError, match="same directory"):
        cache.add_dir("m", src)
    with pytest.raises(ModelCacheError, match="not a directory"):
        cache.add_dir("m", tmp_path / "nowhere")
    with pytest.raises(ModelNotFoundError) as caught:
        cache.load("absent")
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, CacheError)
    assert str(caught.value).startswith("Model 'absent' is not in the model cache")
    assert cache.list() == [] and os.listdir(tmp_path / "cache" / ".tmp") == []


# --- processes ----------------------------------------------------------------------------------------------

_ADDER = textwrap.dedent(
    """
    import sys, time
    from llamahome.cache.model import ModelCache
    cache = ModelCache(sys.argv[1], size=64, compression=True)
    while time.time() < float(sys.argv[3]):  # start together
        time.sleep(0.001)
    cache.add_file("shared", sys.argv[2])
    """
)


def test_two_processes_adding_the_same_model_leave_one_copy(tmp_path: Path) -> None:
    import time

    src = tmp_path / "w.safetensors"
    rng = np.random.default_rng(3)
    weights = {f"t{i}": (rng.standard_normal(400_000) * 0.02).astype(np.float32) for i in range(3)}
    save_file(weights, str(src))
    start = time.time() + 1.5
    procs = [
        subprocess.Popen([sys.executable, "-c", _ADDER, str(tmp_path / "cache"), str(src), str(start)])
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    cache = ModelCache(tmp_path / "cache", size=64)
    assert cache.list() == ["shared"] and cache.verify("shared")
    out = cache.load("shared")
    assert all(np.array_equal(out[k], v) for k, v in weights.items())
    assert os.listdir(tmp_path / "cache" / ".tmp") == [] and os.listdir(tmp_path / "cache" / ".trash") == []
    assert sorted(os.listdir(tmp_path / "cache" / "shared")) == [
        ".access",
        ".verified",
        "manifest.json",
        "model.safetensors.lhz",
    ]


_PINNER = textwrap.dedent(
    """
    import sys
    from llamahome.cache.model import ModelCache
    cache = ModelCache(sys.argv[1], size=64)
    with cache.pin("m"):
        print("pinned", flush=True)
        sys.stdin.readline()
    """
)


def test_a_pin_in_another_process_blocks_eviction(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, size=1, compression=False)
    cache.put("m", _blob(1))
    proc = subprocess.Popen([sys.executable, "-c", _PINNER, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "pinned"
        assert cache.info("m").pinned
        with pytest.raises(ModelCacheError, match="pinned"):
            cache.delete("m")
        cache.put("n", _blob(2, kib=600))  # fits beside m: nothing to evict
        with pytest.raises(ModelCacheError, match="pinned"):
            cache.put("o", _blob(3, kib=800))  # would need m's room
        assert cache.list() == ["m", "n"]  # a put that cannot succeed evicts nothing
    finally:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
    assert not cache.info("m").pinned
    assert cache.delete("m")


def test_model_cache_files_and_directories_are_private(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "models", size=64, compression=True)
    try:
        cache.put("m", {"w": np.random.default_rng(0).random(50_000)})
        cache.load("m")
        cache.get_path("m")
        for path in [tmp_path / "models", *(tmp_path / "models").rglob("*")]:
            mode = path.stat().st_mode & 0o777
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    finally:
        cache.close()
