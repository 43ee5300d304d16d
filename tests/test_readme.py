"""Every ```python block of README.md runs as written, as a file, in an empty directory (issue 17).

A block is run with ``python FILE`` in a fresh working directory and its own ``TMPDIR``, under a time limit,
and must exit 0 and leave behind nothing but what it names (the quick start names ``./cache``; the rest
clean up after themselves). Marks on the line before a fence, as HTML comments a reader never sees:

- ``<!-- partial -->``: deliberately incomplete (it shows a fragment); only compiled, never run.
- ``<!-- needs: redis-server -->``: run against a throwaway redis-server whose URL is in ``$REDIS_URL``;
  skipped, with one reason, where redis-server is not installed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = re.compile(r"^<!--\s*(partial|needs:\s*redis-server)\s*-->$")
#: Partial blocks weaken the promise that a reader can copy what they see; keep them rare.
MAX_PARTIAL = 2


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    heading: str
    code: str
    mark: str | None

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.heading})"


def python_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    heading, previous, i = "top", "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("# ").strip()
        if line.strip() == "```python":
            start, body = i + 1, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            match = MARK.match(previous.strip())
            mark = re.sub(r"\s+", " ", match.group(1)) if match else None
            blocks.append(Block(start, heading, "\n".join(body) + "\n", mark))
            previous = lines[i]  # the closing fence
        elif line.strip():
            previous = line
        i += 1
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_its_examples_and_few_partial_ones() -> None:
    assert len(BLOCKS) >= 8, [str(b) for b in BLOCKS]
    assert sum(b.mark == "partial" for b in BLOCKS) <= MAX_PARTIAL


def test_a_block_in_a_fence_with_a_mark_is_found() -> None:
    text = "# T\n\n<!-- needs: redis-server -->\n```python\nprint(1)\n```\n\n```python\nx = 1\n```\n"
    assert [(b.line, b.heading, b.code, b.mark) for b in python_blocks(text)] == [
        (4, "T", "print(1)\n", "needs: redis-server"),
        (8, "T", "x = 1\n", None),
    ]


@pytest.mark.parametrize(
    "block", [pytest.param(b, marks=pytest.mark.redis) if b.mark == "needs: redis-server" else b for b in BLOCKS], ids=str
)
def test_readme_block_runs_as_written(block: Block, tmp_path: Path, run_script, request: pytest.FixtureRequest) -> None:
    if block.mark == "partial":
        compile(block.code, str(block), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return
    env = {}
    if block.mark == "needs: redis-server":
        env["REDIS_URL"] = request.getfixturevalue("scratch_redis_url")
    script = tmp_path / "readme_block.py"
    script.write_text(block.code, encoding="utf-8")
    result = run_script(script, env=env)
    assert result.returncode == 0, f"{block} failed:\n{result.stdout}\n{result.stderr}"
    # Nothing left behind that the block does not name (the quick start's "./cache" is named in it).
    unnamed = [name for name in result.leftovers() if name.split("/")[-1] not in block.code]
    assert not unnamed, f"{block} left {unnamed} behind"
