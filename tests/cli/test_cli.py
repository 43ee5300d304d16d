"""The `llamahome` command line, through click's CliRunner, plus the real console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import yaml
from click.testing import CliRunner, Result

from llamahome.cache.config import CacheConfig
from llamahome.cache.disk import DiskCache
from llamahome.cache.units import format_bytes
from llamahome.cli.demo import DEMO_DISK_MB, DEMO_MEMORY_MB
from llamahome.cli.main import EXIT_INTERNAL, _Group, cli, main
from llamahome.cli.workload import KINDS, Workload, values_equal
from llamahome.errors import StorageError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cache.yaml"
MIB = 1024 * 1024


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def assert_one_line_error(result: Result, message: str, exit_code: int = 1) -> None:
    assert result.exit_code == exit_code, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: " + message), result.stderr
    assert result.stderr.count("\n") == 1


# ------------------------------------------------------------------------------------------------ basics
def test_help_lists_the_cache_commands() -> None:
    result = run("cache", "--help")
    assert result.exit_code == 0
    for command in ("demo", "config", "stats", "clear", "cleanup"):
        assert f"  {command} " in result.stdout


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.startswith("llamahome, version ")


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["cache", "demoo"])
    assert result.exit_code == 2
    assert "No such command 'demoo'" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------------ config
def test_config_without_file_prints_the_defaults() -> None:
    result = run("cache", "config")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("# LlamaHome cache: effective configuration from defaults")
    assert yaml.safe_load(result.stdout) == CacheConfig().to_dict()


def test_config_of_the_example_file() -> None:
    result = run("cache", "config", str(EXAMPLE))
    assert result.exit_code == 0, result.stderr
    assert f"from {EXAMPLE} (valid)" in result.stdout.splitlines()[0]
    assert CacheConfig.from_dict(yaml.safe_load(result.stdout)) == CacheConfig.from_yaml(EXAMPLE)


def test_config_fills_in_defaults_and_normalises_units(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text("cache:\n  memory:\n    size: 2GB\n    type: LFU\nsystem_cache:\n  max_age: 1h\n")
    data = yaml.safe_load(run("cache", "config", str(path)).stdout)
    assert data["cache"]["memory"] == {"size": 2048, "type": "lfu", "compression": True}
    assert data["cache"]["disk"] == {"size": 10000, "path": "./cache", "cleanup_interval": 3600}
    assert data["system_cache"]["max_age"] == 3600
    assert data["model_cache"] == CacheConfig().to_dict()["model_cache"]


def test_config_masks_the_redis_secret(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text("cache:\n  network:\n    url: redis://db:6379/0\n    secret: hunter2\n")
    result = run("cache", "config", str(path), "--json")
    assert result.exit_code == 0
    assert "hunter2" not in result.stdout
    assert json.loads(result.stdout)["cache"]["network"] == {
        "url": "redis://db:6379/0", "namespace": "llamahome", "ttl": None, "secret": "********", "timeout": 0.05,
        "cluster": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "cache:\n  memory:\n    type: lruu\n",
            "{p}: cache.memory.type: unknown policy 'lruu'; use one of lru, lfu, fifo, time. Did you mean 'lru'?",
        ),
        ("cache:\n  memory:\n    sise: 5\n", "{p}: cache.memory.sise: unknown key. Did you mean 'size'?"),
        ("cache:\n  disk:\n    size: big\n", "{p}: cache.disk.size: cannot read 'big' as a size"),
        ("model_cache:\n  format: gguf\n", "{p}: model_cache.format: unsupported format 'gguf'; only 'safetensors'"),
        ("cache:\n  disk:\n    cleanup_interval: 0\n", "{p}: cache.disk.cleanup_interval: must be larger than zero"),
        (
            "cache:\n  memory: {size: 1\n",
            "{p}, line 3, column 1: malformed YAML (expected ',' or '}}', but got '<stream end>', while parsing a flow mapping that starts on line 2)",
        ),
        ("- cache\n", "{p}: the top level must be a mapping of blocks"),
    ],
)
def test_config_errors_end_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert_one_line_error(run("cache", "config", str(path)), message.format(p=path))


def test_config_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("cache:\n  memory:\n    type: x\n    size: 0\n")
    result = run("cache", "config", str(path))
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"Error: {path}: 2 problems in the configuration:",
        "  cache.memory.size: a size must be larger than zero, not 0; give the tier a positive budget.",
        "  cache.memory.type: unknown policy 'x'; use one of lru, lfu, fifo, time.",
    ]


def test_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert_one_line_error(
        run("cache", "config", str(missing)), f"{missing}: no such configuration file; check the path."
    )


def test_config_of_a_directory(tmp_path: Path) -> None:
    assert_one_line_error(run("cache", "config", str(tmp_path)), f"{tmp_path}: is a directory")


# ------------------------------------------------------------------------------------------------ demo
def demo_json(*args: str) -> dict:
    result = run("cache", "demo", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_demo_runs_a_verified_workload_on_memory_in_front_of_disk() -> None:
    report = demo_json("--requests", "1500", "--items", "600", "--memory-size", "256KB")
    assert report["requests"] == 1500 == report["hits"] + report["misses"]
    assert report["mismatches"] == 0 and report["verified"] == report["hits"] > 0
    # every distinct item misses once at least; nothing can beat that
    assert report["misses"] >= report["distinct_items"]
    assert 0 < report["hit_rate"] <= report["best_hit_rate"] < 1
    assert report["hit_rate"] == pytest.approx(report["memory_hit_rate"] + report["disk_hit_rate"])
    tiers = {t["name"]: t for t in report["tiers"]}
    memory = tiers["memory"]
    assert memory["max_bytes"] == 256 * 1024
    assert 0 < memory["bytes"] <= memory["max_bytes"]
    assert memory["evictions"] > 0  # the working set is larger than the memory tier
    assert report["setup"].startswith("memory 256 KiB (lru, compressed) -> disk 64.0 MiB in ")
    disk = tiers["disk"]
    assert disk["max_bytes"] == int(DEMO_DISK_MB * MIB)
    assert disk["evictions"] == 0 and disk["entries"] == report["distinct_items"]
    assert report["disk_hit_rate"] > 0
    assert report["hit_rate"] == pytest.approx(report["best_hit_rate"])  # disk holds everything ever set
    restart = report["after_restart"]
    assert restart["checked"] == restart["found"] == report["distinct_items"] and restart["mismatches"] == 0
    assert report["ops_per_second"] > 0 and report["median_us"]["set"] > 0


def test_demo_is_reproducible_from_its_seed() -> None:
    a = demo_json("--requests", "400", "--items", "200", "--seed", "7")
    b = demo_json("--requests", "400", "--items", "200", "--seed", "7")
    c = demo_json("--requests", "400", "--items", "200", "--seed", "8")
    keys = ("hits", "misses", "distinct_items", "memory_hit_rate")
    assert [a[k] for k in keys] == [b[k] for k in keys]
    assert a["distinct_items"] != c["distinct_items"] or a["hits"] != c["hits"]


def test_demo_prints_a_readable_summary() -> None:
    result = run("cache", "demo", "--requests", "500", "--items", "300")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"memory {format_bytes(DEMO_MEMORY_MB * MIB)} (lru, compressed)" in lines[1]
    assert lines[0].startswith("LlamaHome cache demo: 500 requests for ")
    labels = [line.split()[0] for line in lines[1:]]
    assert labels[:3] == ["tiers", "hit", "memory"]
    assert "timings" in labels and "checked" in labels and "took" in labels
    assert labels[3:4] == ["disk"] and "restart" in labels
    assert "all matched" in result.stdout


def test_demo_keeps_the_disk_tier_under_dir_and_stats_reads_it(tmp_path: Path) -> None:
    where = tmp_path / "demo-cache"
    result = run("cache", "demo", "--dir", str(where), "--requests", "300", "--items", "100")
    assert result.exit_code == 0, result.stderr
    assert f"kept       the disk tier in {where}" in result.stdout
    assert (where / "index.sqlite3").is_file()
    first = json.loads(run("cache", "stats", "--dir", str(where), "--json").stdout)
    assert first["entries"] > 0 and first["bytes"] > 0 and first["disk_bytes"] >= first["bytes"] * 0.5
    # a second run starts warm: every request is now a hit
    again = demo_json("--dir", str(where), "--requests", "300", "--items", "100")
    assert again["misses"] == 0 and again["hit_rate"] == 1.0


def test_demo_takes_sizes_and_policy_from_config(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text(
        "cache:\n  memory:\n    size: 512KB\n    type: fifo\n    compression: false\n  disk:\n    size: 32MB\n"
    )
    report = demo_json("--config", str(path), "--requests", "600", "--items", "300")
    tiers = {t["name"]: t for t in report["tiers"]}
    assert tiers["memory"]["max_bytes"] == 512 * 1024
    assert "memory 512 KiB (fifo) " in report["setup"]
    assert tiers["disk"]["max_bytes"] == 32 * MIB
    override = demo_json("--config", str(path), "--memory-size", "2MB", "--requests", "200", "--items", "100")
    assert {t["name"]: t for t in override["tiers"]}["memory"]["max_bytes"] == 2 * MIB


def test_demo_bad_size_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["cache", "demo", "--memory-size", "big"])
    assert result.exit_code == 2
    assert "Invalid value for '--memory-size': cannot read 'big' as a size" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_bad_config_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("cache:\n  memory:\n    type: mru\n")
    assert_one_line_error(
        run("cache", "demo", "--config", str(path)), f"{path}: cache.memory.type: unknown policy 'mru'"
    )


def test_demo_dir_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = run("cache", "demo", "--dir", str(tmp_path / "file" / "sub"), "--requests", "10")
    assert_one_line_error(result, f"{tmp_path / 'file' / 'sub'}: Not a directory.")


# ------------------------------------------------------------------------------------------------ workload
def test_workload_is_zipf_skewed_and_covers_every_kind() -> None:
    workload = Workload(requests=5000, items=1000, skew=1.0, seed=1)
    requests = list(workload)
    counts: dict[int, int] = {}
    for request in requests:
        counts[request.item] = counts.get(request.item, 0) + 1
        assert request.key == f"{request.kind}:{request.item}"
    ranked = sorted(counts.values(), reverse=True)
    assert ranked[0] > 20 * ranked[len(ranked) // 2]  # a hot head and a long tail
    assert {r.kind for r in requests} == {kind for kind, _ in KINDS}
    assert workload.distinct() == len(counts)


def test_workload_values_are_deterministic_llm_shapes() -> None:
    workload = Workload(requests=10, items=50, seed=3)
    by_kind: dict[str, int] = {}
    for item in range(50):
        by_kind.setdefault(workload.kind(item), item)
    for kind, item in by_kind.items():
        from llamahome.cli.workload import Request

        request = Request(f"{kind}:{item}", kind, item)
        value = workload.compute(request)
        assert values_equal(value, workload.compute(request))
        if kind == "embedding":
            assert value.dtype == np.float32 and value.shape == (384,)
            assert float(np.linalg.norm(value)) == pytest.approx(1.0, rel=1e-5)
        elif kind == "tokens":
            assert value.dtype == np.int32 and 32 <= value.size <= 512
        else:
            assert value["model"] == "llama-3.1-8b-instruct" and 40 <= value["usage"]["completion_tokens"] < 400


def test_values_equal_is_strict_about_arrays() -> None:
    a = np.arange(4, dtype=np.float32)
    assert values_equal(a, a.copy())
    assert not values_equal(a, a.astype(np.float64))
    assert not values_equal(a, a.reshape(2, 2))
    assert not values_equal(a, list(a))
    assert values_equal({"x": 1}, {"x": 1}) and not values_equal({"x": 1}, {"x": 2})


# ------------------------------------------------------------------------------------------------ disk commands
@pytest.fixture
def disk_dir(tmp_path: Path) -> Path:
    where = tmp_path / "disk"
    cache = DiskCache(where, size=8)
    try:
        for i in range(40):
            cache.set(f"emb:{i}", np.full(4096, i, dtype=np.float32))  # 16 KiB each
    finally:
        cache.close()
    return where


def test_stats_of_a_disk_cache(disk_dir: Path) -> None:
    data = json.loads(run("cache", "stats", "--dir", str(disk_dir), "--json", "--size", "8MB").stdout)
    assert data["entries"] == 40
    assert 40 * 16384 <= data["bytes"] <= 40 * (16384 + 1024)
    assert data["max_bytes"] == 8 * MIB and data["files"] >= 1
    text = run("cache", "stats", "--dir", str(disk_dir)).stdout
    assert text.splitlines()[0] == f"Disk cache {disk_dir}"
    assert "entries    40" in text


def test_cleanup_enforces_the_given_bound(disk_dir: Path) -> None:
    result = run("cache", "cleanup", "--dir", str(disk_dir), "--size", "256KB")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"Cleaned {disk_dir}: 0 expired, ")
    data = json.loads(run("cache", "stats", "--dir", str(disk_dir), "--json").stdout)
    assert 0 < data["bytes"] <= 256 * 1024 and data["entries"] < 40


def test_cleanup_json_report(disk_dir: Path) -> None:
    report = json.loads(run("cache", "cleanup", "--dir", str(disk_dir), "--json").stdout)
    assert report["expired"] == report["evicted"] == report["corrupt"] == 0


def test_clear_asks_first(disk_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["cache", "clear", "--dir", str(disk_dir)], input="n\n")
    assert result.exit_code == 1 and "Remove all 40 entries" in result.stdout
    assert json.loads(run("cache", "stats", "--dir", str(disk_dir), "--json").stdout)["entries"] == 40
    result = run("cache", "clear", "--dir", str(disk_dir), "--yes")
    assert result.exit_code == 0 and result.stdout.startswith("Removed 40 entries (")
    assert json.loads(run("cache", "stats", "--dir", str(disk_dir), "--json").stdout)["entries"] == 0


@pytest.mark.parametrize("command", ["stats", "cleanup", "clear"])
def test_disk_commands_refuse_what_is_not_a_cache(tmp_path: Path, command: str) -> None:
    extra = ["--yes"] if command == "clear" else []
    missing = tmp_path / "missing"
    assert_one_line_error(run("cache", command, "--dir", str(missing), *extra), f"{missing}: no such cache directory")
    assert not missing.exists()  # a typo never creates a cache
    assert_one_line_error(
        run("cache", command, "--dir", str(tmp_path), *extra), f"{tmp_path}: not a LlamaHome disk cache"
    )


def test_disk_command_bad_size(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["cache", "stats", "--dir", str(tmp_path), "--size", "-1"])
    assert result.exit_code == 2 and "Invalid value for '--size'" in result.stderr


# ------------------------------------------------------------------------------------------------ error handling
def _failing_group(exc: BaseException) -> click.Group:
    @click.group(cls=_Group)
    @click.option("--debug", is_flag=True)
    def root(debug: bool) -> None:
        pass

    @root.command()
    def boom() -> None:
        raise exc

    return root


def test_cache_errors_and_os_errors_become_one_line() -> None:
    result = CliRunner().invoke(_failing_group(StorageError("The disk is read-only; remount it.")), ["boom"])
    assert result.exit_code == 1 and result.stderr == "Error: The disk is read-only; remount it.\n"
    error = PermissionError(13, "Permission denied", "/var/cache/x")
    result = CliRunner().invoke(_failing_group(error), ["boom"])
    assert result.exit_code == 1
    assert (
        result.stderr
        == "Error: /var/cache/x: Permission denied. Check that the path exists and that you may read and write it.\n"
    )


def test_os_error_without_a_path_and_broken_pipes() -> None:
    result = CliRunner().invoke(_failing_group(OSError(28, "No space left on device")), ["boom"])
    assert result.exit_code == 1 and result.stderr == "Error: No space left on device (operating system error).\n"
    result = CliRunner().invoke(_failing_group(BrokenPipeError(32, "Broken pipe")), ["boom"])
    assert result.exit_code == 1 and result.stderr == ""  # `llamahome ... | head` stops quietly


def test_unexpected_errors_say_it_is_a_bug_and_debug_shows_the_traceback() -> None:
    result = CliRunner().invoke(_failing_group(RuntimeError("oops")), ["boom"])
    assert result.exit_code == EXIT_INTERNAL
    assert result.stderr.startswith("Error: internal error (RuntimeError: oops). This is a bug")
    assert "Traceback" not in result.stderr
    result = CliRunner().invoke(_failing_group(RuntimeError("oops")), ["--debug", "boom"])
    assert isinstance(result.exception, RuntimeError)


def test_main_returns_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "config"]) == 0
    assert "cache:" in capsys.readouterr().out
    assert main(["cache", "config", "/nonexistent/cache.yaml"]) == 1
    assert capsys.readouterr().err.startswith("Error: /nonexistent/cache.yaml: no such configuration file")


# ------------------------------------------------------------------------------------------------ real processes
def _console_script() -> list[str]:
    script = Path(sys.executable).parent / "llamahome"
    return [str(script)] if script.exists() else [sys.executable, "-m", "llamahome"]


@pytest.mark.parametrize("launcher", ["script", "module"])
def test_installed_command_line(tmp_path: Path, launcher: str) -> None:
    base = _console_script() if launcher == "script" else [sys.executable, "-m", "llamahome"]
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    ok = subprocess.run([*base, "cache", "config", str(EXAMPLE)], capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout) == CacheConfig().to_dict()
    bad = tmp_path / "bad.yaml"
    bad.write_text("cache:\n  memory:\n    type: lruu\n")
    failed = subprocess.run([*base, "cache", "config", str(bad)], capture_output=True, text=True, env=env, timeout=60)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr == (
        f"Error: {bad}: cache.memory.type: unknown policy 'lruu'; use one of lru, lfu, fifo, time. Did you mean 'lru'?\n"
    )


def test_demo_in_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*_console_script(), "cache", "demo", "--requests", "300", "--items", "150"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "hit rate" in proc.stdout and "all matched" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # the default disk tier lives in a temporary directory
