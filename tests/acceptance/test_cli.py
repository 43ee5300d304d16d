"""Acceptance: the installed ``llamahome`` console script, run in a real process.

``llamahome cache demo`` runs a verified workload on the embedded default (memory in front of disk) and
prints or emits (``--json``) what happened; ``llamahome cache config FILE`` prints the effective
configuration as a valid YAML file, and a bad file ends in one clear line and a non-zero exit (README
"The command line"; issue 2). The commands' options are tested in-process in ``tests/cli/``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llamahome.cache import CacheConfig

from ._support import child_env

CLI = Path(sys.executable).parent / "llamahome"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_demo_runs_and_prints_what_happened(tmp_path: Path) -> None:
    result = run_cli("cache", "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout.lower()
    assert "hit rate" in out and "evictions" in out and "memory" in out and "disk" in out
    assert "traceback" not in (result.stdout + result.stderr).lower()

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
