"""The README's KV cache examples run as written, each in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

README = Path(__file__).resolve().parents[3] / "README.md"


def kv_section_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("### KV cache", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_section_has_examples() -> None:
    assert len(kv_section_blocks()) >= 2


@pytest.mark.parametrize("index", range(2))
def test_readme_kv_example_runs(index: int, tmp_path: Path) -> None:
    code = kv_section_blocks()[index]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
