"""Crash safety and several processes with whole models and shared content (issue 15): kill -9 during an import
leaves no half model and nothing that cleanup does not reclaim; concurrent imports sharing content stay whole."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from llamahome.cache.model import ModelCache

_DIE_DURING_IMPORT = textwrap.dedent(
    """
    import os, signal, sys
    from llamahome.cache.model import ModelCache, _io

    point = sys.argv[3]
    calls = [0]

    def die_on_second(original):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        return wrapper

    if point == "hash":  # raw import: after the first shard is linked and hashed
        _io.hash_file = die_on_second(_io.hash_file)
    else:  # compressed import: in the middle of writing a container
        _io._HashingWriter.write = die_on_second(_io._HashingWriter.write)
    ModelCache(sys.argv[1], size=64, compression=point != "hash").add_dir("m", sys.argv[2])
    """
)

_ADD = textwrap.dedent(
    """
    import sys
    from llamahome.cache.model import ModelCache
    ModelCache(sys.argv[1], size=64, compression=False).add_dir(sys.argv[3], sys.argv[2])
    """
)


def _model_dir(root: Path, seed: int = 0, shards: int = 3) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {f"layer{i}.w": (rng.standard_normal(64 * 1024) * 0.02).astype(np.float32)}
        save_file(tensors, str(root / file))
        weight_map.update({k: file for k in tensors})
    import json

    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "config.json").write_text('{"model_type": "llama"}')
    return root


def _disk_bytes(root: Path) -> int:
    seen = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            st = path.lstat()
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


@pytest.mark.parametrize("point", ["hash", "write"])
def test_kill_9_during_an_import_leaves_no_half_model(tmp_path: Path, point: str) -> None:
    src = _model_dir(tmp_path / "src")
    root = tmp_path / "models"
    ModelCache(root, size=64)
    proc = subprocess.run([sys.executable, "-c", _DIE_DURING_IMPORT, str(root), str(src), point], timeout=120)
    assert proc.returncode == -9
    cache = ModelCache(root, size=64)
    assert cache.list() == [] and "m" not in cache
    assert len(list((root / ".tmp").iterdir())) == 1  # the dead writer's work, invisible to readers
    report = cache.cleanup()
    assert report.orphans == 1 and list((root / ".tmp").iterdir()) == []
    assert _disk_bytes(root) < 4096  # nothing left behind but the marker
    info = cache.add_dir("m", src)  # and the import works again
    assert cache.verify("m") and info.tensors == 3


def test_concurrent_imports_sharing_content_stay_whole(tmp_path: Path) -> None:
    base = _model_dir(tmp_path / "base")
    tunes = []
    for k in range(2):
        tuned = tmp_path / f"tuned{k}"
        shutil.copytree(base, tuned)
        shard = tuned / "model-00003-of-00003.safetensors"
        tensors = load_file(shard)
        tensors["layer2.w"] = tensors["layer2.w"] + np.float32(k + 1)
        save_file(tensors, str(shard))
        tunes.append(tuned)
    root = tmp_path / "models"
    cache = ModelCache(root, size=64, compression=False)
    cache.add_dir("base", base)
    shard_bytes = (base / "model-00003-of-00003.safetensors").stat().st_size
    before = _disk_bytes(root)
    procs = [subprocess.Popen([sys.executable, "-c", _ADD, str(root), str(tuned), tuned.name]) for tuned in tunes]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    assert cache.list() == ["base", "tuned0", "tuned1"]
    assert all(cache.verify(name) for name in cache.list())
    assert 2 * shard_bytes <= _disk_bytes(root) - before <= 2 * shard_bytes + 64 * 1024
    for k, name in enumerate(("tuned0", "tuned1")):
        out = cache.load(name)
        assert np.array_equal(
            out["layer2.w"], load_file(base / "model-00003-of-00003.safetensors")["layer2.w"] + (k + 1)
        )
        assert np.array_equal(out["layer0.w"], load_file(base / "model-00001-of-00003.safetensors")["layer0.w"])
