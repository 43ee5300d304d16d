"""The demo's figures agree with each other (issue 17): per-tier hit counts match the tiers' own stats, and a
warm run's hit rate never exceeds the ceiling printed beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llamahome.cli.main import cli


def demo(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["cache", "demo", "--json", "--requests", "800", "--items", "300", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("compression", [True, False])
def test_hits_are_attributed_to_the_tier_that_served_them(tmp_path: Path, compression: bool) -> None:
    # Without compression the memory tier's hits take a lock-free path whose count reaches `stats` only when
    # stats are read: the demo once read a stale copy and called every memory hit a disk hit.
    config = tmp_path / "cache.yaml"
    config.write_text(f"cache:\n  memory:\n    size: 0.0625\n    compression: {str(compression).lower()}\n")
    report = demo("--config", str(config), "--disk-size", "64MB")
    tiers = {tier["name"]: tier for tier in report["tiers"]}
    assert report["counts"]["memory_hit"] == tiers["memory"]["hits"] > 0
    assert report["counts"]["disk_hit"] == tiers["disk"]["hits"] > 0
    assert report["memory_hit_rate"] == report["counts"]["memory_hit"] / report["requests"]


def test_a_warm_run_reports_a_ceiling_it_does_not_exceed(tmp_path: Path) -> None:
    cold = demo("--dir", str(tmp_path / "d"))
    assert cold["warm_items"] == 0 and cold["hit_rate"] == pytest.approx(cold["best_hit_rate"]) and cold["hit_rate"] < 1
    warm = demo("--dir", str(tmp_path / "d"))
    assert warm["warm_items"] == warm["distinct_items"]
    assert warm["hit_rate"] == warm["best_hit_rate"] == 1.0
    text = CliRunner().invoke(cli, ["cache", "demo", "--requests", "800", "--items", "300", "--dir", str(tmp_path / "d")])
    line = next(line for line in text.stdout.splitlines() if line.strip().startswith("hit rate"))
    assert "100.0% (memory" in line and "of a possible 100.0%" in line and "from an earlier run" in line
