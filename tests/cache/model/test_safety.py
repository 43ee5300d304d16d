"""ModelCache safety (issue 11): only its own files are deleted, damage is a miss, hostile files are refused.

Each test here failed on the code before the fix it names.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from llamahome.cache.model import ModelCache, ModelNotFoundError
from llamahome.errors import CacheError, ModelCacheError, StorageError

MARKER = ".llamahome-cache.json"  # the model cache marker (ModelCache.MARKER)


def _weights(seed: int = 0, n: int = 20_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": (rng.standard_normal(n) * 0.05).astype(np.float32), "b": rng.standard_normal(64).astype(np.float32)}


def _flip(path: Path, offsets: tuple[int, ...] = (-300, -200, -100)) -> None:
    """Flip three bytes in place (the same inode: what a bad write or a shared hard link would do)."""
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        for off in offsets:
            f.seek(off % size)
            byte = f.read(1)
            f.seek(off % size)
            f.write(bytes([byte[0] ^ 0x5A]))


# --- item 2: the cache deletes only what it created ----------------------------------------------------------


def test_cleanup_never_deletes_a_users_directory(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "models", size=4)
    cache.put("m", _weights())
    user = tmp_path / "models" / "llama"  # the user put a model of their own here
    user.mkdir()
    (user / "model.safetensors").write_bytes(b"precious")
    (tmp_path / "models" / "notes.txt").write_text("mine")
    report = cache.cleanup()
    assert (user / "model.safetensors").read_bytes() == b"precious"
    assert (tmp_path / "models" / "notes.txt").exists()
    assert report.corrupt == 0 and report.details["foreign"] == ["llama", "notes.txt"]
    assert cache.list() == ["m"]
    cache.clear()
    assert (user / "model.safetensors").read_bytes() == b"precious" and cache.list() == []
    with pytest.raises(ModelCacheError, match="not made by the model cache"):
        cache.delete("llama")
    with pytest.raises(ModelCacheError, match="not made by the model cache"):
        cache.put("llama", _weights())  # would have replaced the user's directory
    assert (user / "model.safetensors").read_bytes() == b"precious"


def test_a_non_empty_directory_that_is_not_a_model_cache_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "llama").mkdir(parents=True)
    (models / "llama" / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelCacheError, match="not empty and is not a LlamaHome model cache"):
        ModelCache(models)
    assert sorted(os.listdir(models)) == ["llama"]  # nothing was created in it either
    other = tmp_path / "other"
    other.mkdir()
    (other / MARKER).write_text(json.dumps({"kind": "llamahome-disk-cache", "format": 1}))
    with pytest.raises(ModelCacheError, match="'llamahome-disk-cache' cache"):
        ModelCache(other)
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / MARKER).write_text(json.dumps({"kind": "llamahome-model-cache", "format": 99}))
    with pytest.raises(ModelCacheError, match="newer LlamaHome"):
        ModelCache(newer)


def test_a_new_or_empty_directory_gets_a_marker(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for root in (tmp_path / "empty", tmp_path / "new" / "deep"):
        ModelCache(root)
        assert json.loads((root / MARKER).read_text()) == {"kind": "llamahome-model-cache", "format": 1}
        ModelCache(root)  # and reopens


def test_a_cache_written_before_the_marker_still_opens(tmp_path: Path) -> None:
    root = tmp_path / "models"
    ModelCache(root).put("old", _weights())
    (root / MARKER).unlink()  # what today's code leaves: .locks, .tmp, .trash and model directories
    cache = ModelCache(root)
    assert cache.list() == ["old"] and cache.verify("old")
    assert np.array_equal(cache.load("old")["w"], _weights()["w"])
    assert (root / MARKER).exists()


def test_cleanup_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    root = tmp_path / "models"
    cache = ModelCache(root)
    cache.put("m", _weights())
    (root / ".trash" / ("a" * 32)).symlink_to(outside)  # in the trash, named as the cache names trash
    (root / ".tmp" / f"999999999-{'b' * 32}").symlink_to(outside)
    (root / "linked").symlink_to(outside)  # a "model" that is a symlink
    (root / "m" / f".decoding-999999999-{'c' * 32}").symlink_to(outside / "keep.txt")
    cache.cleanup()
    cache.clear()
    assert (outside / "keep.txt").read_text() == "keep"
    assert not os.path.lexists(root / ".trash" / ("a" * 32))  # the link itself is gone, never its target
    assert "linked" not in cache.list()


def test_a_symlinked_bookkeeping_directory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    root = tmp_path / "models"
    ModelCache(root)
    os.rmdir(root / ".trash")
    (root / ".trash").symlink_to(outside)
    with pytest.raises(ModelCacheError, match="not a directory the model cache made"):
        ModelCache(root)
    assert (outside / "keep.txt").exists()


def test_a_damaged_entry_holding_foreign_files_is_left_alone(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "models")
    cache.put("m", _weights())
    (tmp_path / "models" / "m" / "manifest.json").write_text("{damaged")
    (tmp_path / "models" / "m" / "my-notes.md").write_text("mine")
    report = cache.cleanup()
    assert report.corrupt == 0 and "m" in report.details["foreign"]
    assert (tmp_path / "models" / "m" / "my-notes.md").exists()


# --- item 4: paths from a manifest never leave the model's directory --------------------------------------


@pytest.mark.parametrize("field", ["file", "stored", "index"])
def test_a_tampered_manifest_cannot_reach_outside_the_cache(tmp_path: Path, field: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("victim")
    root = tmp_path / "a" / "models"
    cache = ModelCache(root, compression=True)
    cache.put("m", _weights())
    assert cache.info("m").compressed
    manifest_path = root / "m" / "manifest.json"
    doc = json.loads(manifest_path.read_text())
    if field == "index":
        doc["index"], doc["index_checksum"] = "../../../victim.txt", "0" * 32
    else:
        doc["parts"][0][field] = "../../../victim.txt"
    manifest_path.write_text(json.dumps(doc))
    assert cache.verify("m") is False  # damaged, and nothing outside was touched
    assert victim.read_text() == "victim"
    with pytest.raises(ModelNotFoundError, match="damaged manifest"):
        cache.get_path("m")
    with pytest.raises(ModelNotFoundError):
        cache.load("m")
    report = cache.cleanup()
    assert report.corrupt == 1 and cache.list() == []
    assert victim.read_text() == "victim"


def test_get_path_never_returns_a_path_outside_the_cache(tmp_path: Path) -> None:
    victim = tmp_path / "victim.safetensors"
    save_file(_weights(), str(victim))
    root = tmp_path / "models"
    cache = ModelCache(root, compression=False)
    cache.put("m", _weights(1))
    manifest_path = root / "m" / "manifest.json"
    doc = json.loads(manifest_path.read_text())
    doc["parts"][0]["file"] = doc["parts"][0]["stored"] = "../../victim.safetensors"
    manifest_path.write_text(json.dumps(doc))
    with pytest.raises(ModelNotFoundError):
        cache.get_path("m")
    # A symlink planted in place of a model file is damage too, never followed.
    cache.put("n", _weights(2))
    (root / "n" / "model.safetensors").unlink()
    (root / "n" / "model.safetensors").symlink_to(victim)
    with pytest.raises(ModelNotFoundError, match="damaged"):
        cache.get_path("n")
    assert victim.exists()


# --- item 5: damaged weights are never returned ---------------------------------------------------------


@pytest.mark.parametrize(
    ("compression", "mmap", "framework"),
    [(False, True, "numpy"), (False, False, "numpy"), (False, True, "torch"), (False, False, "torch"),
     (True, True, "numpy"), (True, False, "numpy"), (True, True, "torch")],
)  # fmt: skip
def test_flipped_bytes_are_a_miss_not_a_value(tmp_path: Path, compression: bool, mmap: bool, framework: str) -> None:
    if framework == "torch":
        pytest.importorskip("torch")
    cache = ModelCache(tmp_path / "models", compression=compression)
    info = cache.put("m", _weights())
    assert info.compressed is compression
    cache.load("m", framework=framework, mmap=mmap)  # a good load first (records the file as checked)
    _flip(tmp_path / "models" / "m" / (info.files[0] + (".lhz" if compression else "")))
    with pytest.raises(ModelNotFoundError, match="damaged"):
        cache.load("m", framework=framework, mmap=mmap)
    assert cache.stats.corrupt == 1
    assert "m" not in cache  # removed: the next add stores it again
    cache.put("m", _weights())
    assert np.array_equal(np.asarray(cache.load("m", framework="numpy")["w"]), _weights()["w"])


def test_a_mapped_load_notices_a_rewrite_that_restores_the_mtime(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "models", compression=False)
    cache.put("m", _weights())
    path = tmp_path / "models" / "m" / "model.safetensors"
    cache.load("m")
    st = path.stat()
    _flip(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the ctime still moves
    with pytest.raises(ModelNotFoundError, match="damaged"):
        cache.load("m")


def test_verify_option_and_get_path_check(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "models", compression=False)
    cache.put("m", _weights())
    path = tmp_path / "models" / "m" / "model.safetensors"
    _flip(path)
    damaged = cache.load("m", verify=False)  # documented: no hashing at all, the caller's choice
    assert not np.array_equal(damaged["w"], _weights()["w"])
    with pytest.raises(ModelNotFoundError, match="damaged"):
        cache.get_path("m")
    with pytest.raises(ModelCacheError, match="verify must be"):
        cache.load("m", verify="yes")  # type: ignore[arg-type]


def test_a_hard_linked_original_rewritten_in_place_is_caught(tmp_path: Path) -> None:
    src = tmp_path / "model.safetensors"
    save_file(_weights(), str(src))
    cache = ModelCache(tmp_path / "models", compression=False)
    cache.add_file("m", src)
    assert np.array_equal(cache.load("m")["w"], _weights()["w"])  # free: the import recorded the check
    _flip(src)  # the user's file shares the inode (hard link) and is rewritten
    with pytest.raises(ModelNotFoundError, match="damaged"):
        cache.load("m")
    assert src.exists()  # dropping the cache's link never touches the user's file


# --- item 7: malformed manifests and lock files ---------------------------------------------------------


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.__setitem__("parts", "x"),
        lambda d: d.__setitem__("parts", [1, 2]),
        lambda d: d["parts"][0].__setitem__("raw_size", "big"),
        lambda d: d["parts"][0].__setitem__("compressed", "no"),
        lambda d: d.__setitem__("created", None),
        lambda d: d.__setitem__("metadata", [1]),
        lambda d: d.clear(),
    ],
)
def test_a_malformed_manifest_is_a_damaged_entry(tmp_path: Path, mutate) -> None:  # type: ignore[no-untyped-def]
    cache = ModelCache(tmp_path / "models", size=4)
    cache.put("good", _weights(1))
    cache.put("bad", _weights(2))
    path = tmp_path / "models" / "bad" / "manifest.json"
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelNotFoundError, match="damaged manifest"):
        cache.load("bad")
    assert cache.verify("bad") is False
    assert [i.name for i in cache.list_info()] == ["good"]
    report = cache.cleanup()  # one damaged entry does not break cleanup for the whole cache
    assert report.corrupt == 1 and cache.list() == ["good"]
    assert cache.verify("good")


def test_a_lock_that_is_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "models")
    cache.put("m", _weights())
    os.unlink(tmp_path / "models" / ".lock")
    os.mkdir(tmp_path / "models" / ".lock")
    with pytest.raises(StorageError, match="lock file .* is a directory"):
        cache.cleanup()
    with pytest.raises(CacheError, match="lock file"):
        cache.put("n", _weights())
    (tmp_path / "models" / ".locks" / "m.use").unlink(missing_ok=True)
    os.mkdir(tmp_path / "models" / ".locks" / "m.use")
    with pytest.raises(StorageError, match="is a directory"):
        cache.load("m")


# --- item 9: non-regular files are refused -------------------------------------------------------------


def test_add_file_refuses_a_fifo_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    cache = ModelCache(tmp_path / "models")
    errors: list[BaseException] = []

    def add() -> None:
        try:
            cache.add_file("m", fifo)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    worker = threading.Thread(target=add, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # the old code blocks in open(): release it so the test process can exit
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("add_file on a FIFO hung")
    assert len(errors) == 1 and isinstance(errors[0], ModelCacheError)
    assert "FIFO" in str(errors[0]) and "regular file" in str(errors[0])


def test_add_file_refuses_a_symlink_loop_and_a_directory(tmp_path: Path) -> None:
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    cache = ModelCache(tmp_path / "models")
    with pytest.raises(ModelCacheError, match="symlink loop"):
        cache.add_file("m", loop)
    with pytest.raises(ModelCacheError, match="is a directory"):
        cache.add_file("m", tmp_path)
    good = tmp_path / "w.safetensors"
    save_file(_weights(), str(good))
    link = tmp_path / "link.safetensors"
    link.symlink_to(good)  # a symlink to a real file (as in the Hugging Face hub cache) is fine
    assert cache.add_file("m", link).tensors == 2


# --- issue 17: clear() and progress -----------------------------------------------------------------------


def test_clear_removes_every_model_but_pinned_ones(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "models")
    for name in ("a", "b", "c"):
        cache.put(name, _weights(ord(name)))
    with cache.pin("b"):
        cache.clear()
        assert cache.list() == ["b"]
    cache.clear()
    assert cache.list() == [] and len(cache) == 0
    assert os.listdir(tmp_path / "models" / ".trash") == []


def test_import_progress_moves_by_bytes_and_leaves_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llamahome.cache.model import _io as model_io

    big = {"w": (np.random.default_rng(0).standard_normal(5 * 1024 * 1024) * 0.02).astype(np.float32)}  # 20 MiB
    steps: list[int] = []
    for compress in (False, True):
        steps.clear()
        tmp = tmp_path / f"t{compress}"
        tmp.mkdir()
        prefix = b"\0" * 64
        item = model_io.TensorItem("w", "F32", (big["w"].size,), 0, big["w"].view(np.uint8))
        model_io.write_part(tmp, "model.safetensors", prefix, [item], compress=compress, threads=2,
                            progress=steps.append)  # fmt: skip
        assert len(steps) >= 3 and sum(steps) == big["w"].nbytes  # several steps through one tensor
    cache = ModelCache(tmp_path / "models", size=64, progress=True)
    cache.put("m", big)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1].split("\r")[-1]
    assert last.startswith("caching m: 20.0 MiB -> ") and "x) in " in last and last.endswith(" s")
    cache.load("m", mmap=False)
    assert "loading m" in capsys.readouterr().err  # decoding a compressed model shows progress too
    quiet = ModelCache(tmp_path / "quiet", size=64)  # not a terminal (pytest captures): nothing printed
    quiet.put("m", big)
    quiet.load("m")
    assert capsys.readouterr().err == ""


def test_get_path_checks_the_shard_index_too(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    weight_map = {}
    for i in range(2):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({f"t{i}": np.full(16, i, dtype=np.float32)}, str(src / file))
        weight_map[f"t{i}"] = file
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cache = ModelCache(tmp_path / "models", compression=False)
    cache.add_dir("m", src)
    assert cache.get_path("m").is_dir()
    index = tmp_path / "models" / "m" / "model.safetensors.index.json"
    index.write_text(index.read_text().replace("t1", "t9"))
    with pytest.raises(ModelNotFoundError, match="damaged"):
        cache.get_path("m")
