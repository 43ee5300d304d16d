"""`llamahome cache models ls|add|rm|verify|path|prune` and `llamahome cache scan`, through click's CliRunner."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from safetensors.numpy import save_file

from llamahome.cache.model import ModelCache
from llamahome.cli.main import cli

MIB = 1024 * 1024


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_error(result: Result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr


def _weights(seed: int, n: int = 64 * 1024) -> dict[str, np.ndarray]:
    return {"w": np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)}


def _file(tmp_path: Path, name: str, seed: int, n: int = 64 * 1024) -> Path:
    path = tmp_path / f"{name}.safetensors"
    save_file(_weights(seed, n), str(path))
    return path


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A model cache with two models added through the CLI."""
    root = tmp_path / "models"
    for name, seed in (("alpha", 1), ("beta", 2)):
        result = run("cache", "models", "add", str(_file(tmp_path, name, seed)), "--dir", str(root))
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"added {name}: safetensors, ")
    return root


def test_ls_table_and_json(models: Path) -> None:
    result = run("cache", "models", "ls", "--dir", str(models))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "FORMAT", "ON", "DISK", "ORIGINAL", "RATIO", "SHARED", "LAST", "USED", "PINNED"]
    assert lines[1].startswith("alpha ") and lines[2].startswith("beta ")
    assert "2 model(s)" in result.stdout
    doc = json.loads(run("cache", "models", "ls", "--dir", str(models), "--json").stdout)
    assert [m["name"] for m in doc["models"]] == ["alpha", "beta"]
    assert {"size", "raw_size", "ratio", "shared_bytes", "own_bytes", "last_used", "pinned", "format"} <= set(
        doc["models"][0]
    )


def test_ls_of_an_empty_cache_and_of_a_directory_that_is_not_one(tmp_path: Path) -> None:
    ModelCache(tmp_path / "empty")
    assert "No models cached" in run("cache", "models", "ls", "--dir", str(tmp_path / "empty")).stdout
    (tmp_path / "mine").mkdir()
    assert_error(run("cache", "models", "ls", "--dir", str(tmp_path / "mine")), "not a LlamaHome model cache")
    assert_error(run("cache", "models", "ls", "--dir", str(tmp_path / "nope")), "no such model cache directory")
    assert not (tmp_path / "nope").exists()  # a typo never creates a cache


def test_add_errors(tmp_path: Path, models: Path) -> None:
    result = CliRunner().invoke(cli, ["cache", "models", "add", "--dir", str(models)])
    assert result.exit_code == 2 and "give either PATH or --hf REPO_ID" in result.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nonsense")
    assert_error(run("cache", "models", "add", str(bad), "--dir", str(models)), "not a valid safetensors file")
    assert_error(
        run("cache", "models", "add", "--hf", "org/none", "--hf-cache", str(tmp_path), "--dir", str(models)),
        "org/none is not in the Hugging Face hub cache",
    )


def test_add_a_directory_and_from_the_hub_cache(tmp_path: Path) -> None:
    src = tmp_path / "tiny"
    src.mkdir()
    save_file(_weights(3), str(src / "model.safetensors"))
    (src / "config.json").write_text('{"model_type": "llama"}')
    root = tmp_path / "models"
    assert run("cache", "models", "add", str(src), "--dir", str(root)).exit_code == 0
    assert run("cache", "models", "path", "tiny", "--dir", str(root)).stdout.strip() == str(root / "tiny")
    hub = tmp_path / "hub" / "models--org--tiny"
    (hub / "blobs").mkdir(parents=True)
    (hub / "refs").mkdir()
    snapshot = hub / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    for file in src.iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, hub / "blobs" / digest)
        (snapshot / file.name).symlink_to(f"../../blobs/{digest}")
    (hub / "refs" / "main").write_text("c" * 40)
    result = run("cache", "models", "add", "--hf", "org/tiny", "--hf-cache", str(tmp_path / "hub"), "--dir", str(root))
    assert result.exit_code == 0 and result.stdout.startswith("added org--tiny: safetensors, ")
    # identical content to "tiny": stored once
    doc = json.loads(run("cache", "models", "ls", "--dir", str(root), "--json").stdout)
    shared = {m["name"]: m["shared_bytes"] for m in doc["models"]}
    assert shared["org--tiny"] > 0 and shared["org--tiny"] == shared["tiny"]


def test_rm_verify_and_path(models: Path) -> None:
    path = Path(run("cache", "models", "path", "alpha", "--dir", str(models)).stdout.strip())
    assert path == models / "alpha" / "model.safetensors" and path.is_file()
    result = run("cache", "models", "verify", "--dir", str(models))
    assert result.exit_code == 0 and result.stdout.splitlines() == ["ok  alpha", "ok  beta"]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    os.unlink(path)  # a new inode: the source file the cache linked stays intact
    path.write_bytes(bytes(data))
    result = run("cache", "models", "verify", "--dir", str(models))
    assert result.exit_code == 1 and "DAMAGED  alpha" in result.stdout and "1 damaged model(s): alpha" in result.stderr
    assert run("cache", "models", "rm", "alpha", "--dir", str(models)).stdout == "removed alpha\n"
    assert_error(run("cache", "models", "rm", "alpha", "--dir", str(models)), "Model 'alpha' is not cached")
    assert_error(
        run("cache", "models", "path", "alpha", "--dir", str(models)), "Model 'alpha' is not in the model cache"
    )
    assert_error(
        run("cache", "models", "verify", "zeta", "--dir", str(models)), "Model 'zeta' is not in the model cache"
    )


def test_prune_dry_run_frees_what_the_real_run_frees(tmp_path: Path) -> None:
    root = tmp_path / "models"
    cache = ModelCache(root, size=64, compression=False)
    for i in range(4):
        cache.put(f"m{i}", _weights(i, 256 * 1024))
    cache.add_file("m0-copy", _file(tmp_path, "m0", 0, 256 * 1024))  # same content as m0: shared
    before = json.loads(run("cache", "models", "ls", "--dir", str(root), "--json").stdout)
    dry = run("cache", "models", "prune", "--to", "0.6MB", "--dry-run", "--dir", str(root))
    assert dry.exit_code == 0 and "would remove" in dry.stdout
    assert json.loads(run("cache", "models", "ls", "--dir", str(root), "--json").stdout)["models"] == before["models"]
    real = run("cache", "models", "prune", "--to", "0.6MB", "--dir", str(root))
    assert real.exit_code == 0
    would = [line.replace("would remove", "removed") for line in dry.stdout.splitlines()]
    assert would[:-1] == real.stdout.splitlines()[:-1]  # the same models
    freed = [
        line.split("(")[1].split(" bytes")[0] for line in (dry.stdout.splitlines()[-1], real.stdout.splitlines()[-1])
    ]
    assert freed[0] == freed[1] and int(freed[0]) > 0  # the same bytes
    assert ModelCache(root).stats.bytes <= 0.6 * MIB
    bad = CliRunner().invoke(cli, ["cache", "models", "prune", "--to", "lots", "--dir", str(root)])
    assert bad.exit_code == 2 and "Invalid value for '--to'" in bad.stderr


# --- scan -----------------------------------------------------------------------------------------------


def _machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, bytes]:
    """A hub cache with one blob, a torch hub checkpoint and a LlamaHome model cache holding the same bytes."""
    content = np.random.default_rng(9).integers(0, 256, 2 * MIB, dtype=np.uint8)
    src = tmp_path / "w.safetensors"
    save_file({"w": content}, str(src))
    data = src.read_bytes()
    hub = tmp_path / "hf" / "hub"
    blob = hub / "models--org--m" / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    snap = hub / "models--org--m" / "snapshots" / ("d" * 40)
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(blob)  # followed by nobody: counted once
    torch_home = tmp_path / "torch"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / "m.safetensors").write_bytes(data)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    models = tmp_path / "llamahome" / "models"
    ModelCache(models, size=64, compression=False).add_file("m", src, link=False)
    return hub, models, data


def test_scan_reports_sizes_and_identical_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub, models, data = _machine(tmp_path, monkeypatch)
    result = run("cache", "scan", "--llamahome", str(models))
    assert result.exit_code == 0, result.output
    assert "1 set(s) of identical files, 4.0 MiB held more than once" in result.stdout
    doc = json.loads(run("cache", "scan", "--llamahome", str(models), "--json").stdout)
    sizes = {loc["kind"]: loc["bytes"] for loc in doc["locations"]}
    assert sizes["huggingface hub"] == len(data) and sizes["torch hub"] == len(data)
    assert sizes["huggingface datasets"] == 0
    assert len(doc["duplicates"]) == 1 and len(doc["duplicates"][0]) == 3
    assert doc["linked"] == []  # read-only by default


def test_scan_dedupe_links_only_read_only_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub, models, data = _machine(tmp_path, monkeypatch)
    cached = models / "m" / "model.safetensors"
    torch_file = tmp_path / "torch" / "hub" / "checkpoints" / "m.safetensors"
    # The LlamaHome location may be the model cache or a directory above it (the disk path the manager uses).
    dry = json.loads(run("cache", "scan", "--llamahome", str(models.parent), "--dedupe", "--dry-run", "--json").stdout)
    assert [item["path"] for item in dry["linked"]] == [str(cached)]  # torch's checkpoint is not read-only
    assert cached.stat().st_nlink == 1  # nothing changed
    real = json.loads(run("cache", "scan", "--llamahome", str(models), "--dedupe", "--json").stdout)
    assert real["linked"] == dry["linked"]
    blob = next((hub / "models--org--m" / "blobs").iterdir())
    assert cached.stat().st_ino == blob.stat().st_ino and torch_file.stat().st_nlink == 1
    cache = ModelCache(models)
    assert cache.verify("m") and np.asarray(cache.load("m")["w"]).nbytes == 2 * MIB
