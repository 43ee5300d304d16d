"""Every acceptance test runs in its own empty working directory.

The defaults write ``./cache`` and ``.cache/temp`` relative to the working directory, as a user's script
would; ``monkeypatch.chdir`` keeps that inside the test's tmp directory. (``clock`` and
``real_weights_path`` come from ``tests/conftest.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path
