"""``llamahome cache config`` (and commands that read a config) on hostile and absurd configurations.

Each case is answered by one short line naming the key, never an internal error later on (issue 11, item 10).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from llamahome.cli.main import cli


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def alias_bomb(levels: int = 9) -> str:
    """A "billion laughs" YAML list: nine aliases per level, nine levels (9**9 leaves when printed)."""
    parts = ["&a [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        name, previous = chr(ord("a") + level), chr(ord("a") + level - 1)
        parts.append(f"&{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


def one_line_error(result: Result, starts: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert result.stderr.startswith("Error: " + starts), result.stderr[:500]
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("command", [("cache", "config"), ("cache", "demo", "--requests", "10", "--config")])
def test_a_size_of_1e300_is_refused_at_validation(tmp_path: Path, command: tuple[str, ...]) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("cache:\n  memory:\n    size: 1e300\n")
    one_line_error(run(*command, str(path)), f"{path}: cache.memory.size: a size must be at most")


@pytest.mark.parametrize("key", ["cache.network.url", "cache.memory.type", "cache.memory.compression", "cache.disk.path"])
def test_an_alias_bomb_gives_a_short_message(tmp_path: Path, key: str) -> None:
    block, name = key.rsplit(".", 1)
    text = f"{block.split('.')[0]}:\n"
    if block.count("."):
        text += f"  {block.split('.')[1]}:\n"
    extra = "    url: redis://localhost:6379/0\n" if block.endswith("network") and name != "url" else ""
    path = tmp_path / "bomb.yaml"
    path.write_text(text + extra + f"    {name}: {alias_bomb()}\n")
    result = run("cache", "config", str(path))
    one_line_error(result, f"{path}: {key}: ")
    assert len(result.stderr) < 1000


def test_a_nul_in_the_disk_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nul.yaml"
    path.write_text('cache:\n  disk:\n    path: "./ca\\0che"\n')
    one_line_error(run("cache", "config", str(path)), f"{path}: cache.disk.path: a path cannot contain a NUL")


def test_a_number_of_5000_digits_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "long.yaml"
    path.write_text("cache:\n  memory:\n    size: 1" + "0" * 5000 + "\n")
    result = run("cache", "config", str(path))
    one_line_error(result, f"{path}: a number in the YAML is too long to read")
    assert len(result.stderr) < 1000
