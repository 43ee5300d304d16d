"""The dashboard in a real browser: headless Chromium loads the page, the page updates itself, the DOM shows
the manager's current hit rate and models. Skipped where Chromium is absent, except in CI (CI=true), where
`.ci/run` installs it and a missing browser is a failure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamahome.cache import CacheManager
from llamahome.monitoring import serve_dashboard
from llamahome.monitoring.dashboard import _server

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    reason = "headless Chromium is not installed (apt-get install chromium; .ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}, and CI must run the browser test.")
    pytest.skip(reason)


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        binary,
        "--headless",
        "--no-sandbox",  # CI containers run as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    # Chromium's crash reporter and caches write under $HOME; keep them in the test's directory too.
    home = profile.parent / "home"
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache")}
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False, env=env)


def _put_model(manager: CacheManager, name: str, rows: int) -> None:
    manager.model_cache.put(name, {"w": np.ones((rows, 64), dtype=np.float32)})


def test_page_updates_live_in_chromium(manager: CacheManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    browser = _chromium()
    manager.set_sync("a", b"x")
    manager.set_sync("b", b"y")
    for key in ("a", "b", "a", "b", "a", "c", "d", "e"):  # 5 hits of 8: 62.5%
        manager.get_sync(key)
    _put_model(manager, "tiny-llama-a", 64)
    assert manager.stats.hit_rate == 0.625

    # Right after the page's first answer, the cache moves on: two more hits (7 of 10) and a second model.
    # The final DOM can only show them if the page updated itself after its first load.
    real = _server.stats_payload
    calls = {"n": 0}

    def first_then_move(*args: Any, **kwargs: Any) -> dict[str, Any]:
        payload = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            manager.get_sync("a")
            manager.get_sync("b")
            _put_model(manager, "tiny-llama-b", 128)
        return payload

    monkeypatch.setattr(_server, "stats_payload", first_then_move)
    with serve_dashboard(manager, port=0, refresh=0.5) as server:
        dom = _run_chromium(browser, tmp_path / "profile", "--virtual-time-budget=6000", "--dump-dom", server.url)
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        updates = int(re.search(r'data-updates="(\d+)"', html).group(1))  # type: ignore[union-attr]
        assert updates >= 2, html[:2000]
        expected = f"{manager.stats.hit_rate * 100:.1f}%"
        assert expected == "70.0%"
        assert f'id="hit-rate">{expected}<' in html
        assert "7 hits of 10 lookups" in html
        assert 'data-model="tiny-llama-a"' in html and 'data-model="tiny-llama-b"' in html
        assert 'class="pill pill-live"' in html  # no fetch failed
        assert html.count("<canvas") >= 3  # the three uPlot charts were drawn

        shot = tmp_path / "dashboard.png"
        result = _run_chromium(
            browser, tmp_path / "profile", "--window-size=1280,1500", "--virtual-time-budget=4000",
            f"--screenshot={shot}", server.url,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_page_with_a_token_in_chromium(manager: CacheManager, tmp_path: Path) -> None:
    """Opened as /?token=..., the page loads its assets and polls the API with the token."""
    browser = _chromium()
    token = "browser-token-0123456789"
    _put_model(manager, "guarded-model", 32)
    with serve_dashboard(manager, port=0, refresh=0.5, token=token) as server:
        dom = _run_chromium(browser, tmp_path / "profile", "--virtual-time-budget=4000", "--dump-dom", server.url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'class="pill pill-live"' in dom.stdout and 'data-model="guarded-model"' in dom.stdout
    assert int(re.search(r'data-updates="(\d+)"', dom.stdout).group(1)) >= 1  # type: ignore[union-attr]
