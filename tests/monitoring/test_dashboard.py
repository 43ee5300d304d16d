"""The dashboard server over real HTTP on a free loopback port, in front of a real CacheManager."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llamahome.cache import CacheManager
from llamahome.errors import ConfigError
from llamahome.monitoring import DashboardServer, serve_dashboard
from llamahome.monitoring.dashboard import _server

from .conftest import small_config
from .dashboard_client import raw, request

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
def dashboard(manager: CacheManager) -> Iterator[DashboardServer]:
    with serve_dashboard(manager, port=0, refresh=0.1) as server:
        yield server


def _stats(server: DashboardServer) -> dict:
    reply = request(server.base_url + "/api/stats")
    assert reply.status == 200 and reply.headers["Content-Type"] == "application/json"
    return reply.json()


def _put_model(manager: CacheManager, name: str) -> None:
    manager.model_cache.put(name, {"w": np.arange(4096, dtype=np.float32).reshape(64, 64)})


def test_stats_move_with_the_workload(manager: CacheManager, dashboard: DashboardServer) -> None:
    before = _stats(dashboard)
    for i in range(20):
        manager.set_sync(f"k{i}", b"v" * 500)
    for i in range(30):  # 20 hits, 10 misses
        manager.get_sync(f"k{i}")
    _put_model(manager, "tiny-llama")
    after = _stats(dashboard)

    assert after["manager"]["hits"] - before["manager"]["hits"] == 20
    assert after["manager"]["misses"] - before["manager"]["misses"] == 10
    assert after["hit_rate"] == pytest.approx(manager.stats.hit_rate)
    memory = after["caches"]["cache/memory"]
    assert memory["entries"] - before["caches"]["cache/memory"]["entries"] == 20
    assert memory["bytes"] == manager.memory.stats.bytes and memory["max_bytes"] == manager.memory.stats.max_bytes
    assert (memory["cache"], memory["tier"]) == ("cache", "memory")
    assert set(after["caches"]) == set(manager.caches)
    assert [m["name"] for m in after["models"]] == ["tiny-llama"]
    assert after["models"][0]["size"] == manager.model_cache.info("tiny-llama").size
    assert after["eviction_count"] == sum(s.stats.evictions for s in manager.caches.values())
    assert after["scratch"]["max_bytes"] == manager.system_cache.stats.max_bytes
    assert after["actions"] is False and after["refresh"] == 0.1


def test_history_samples_the_counters(manager: CacheManager, dashboard: DashboardServer) -> None:
    first = request(dashboard.base_url + "/api/history").json()
    assert first["source"] == "recent" and first["fields"][:2] == ["hits", "misses"]
    assert len(first["time"]) >= 1
    last = first["time"][-1]
    again = request(f"{dashboard.base_url}/api/history?since={last}").json()
    assert last not in again["time"]  # the last point a poller has never comes back twice
    manager.set_sync("a", b"x")
    for _ in range(7):
        manager.get_sync("a")
    deadline = time.monotonic() + 10
    while True:
        later = request(f"{dashboard.base_url}/api/history?since={first['time'][-1]}").json()
        if later["time"] and later["series"]["manager/all"]["hits"][-1] == 7:
            break
        assert time.monotonic() < deadline, "the sampler never recorded the new hits"
        time.sleep(0.05)
    assert all(t > first["time"][-1] for t in later["time"])  # since= returns only newer points
    assert later["series"]["cache/memory"]["entries"][-1] == 1
    assert set(later["series"]) == {"manager/all", *manager.caches}
    columns = later["series"]["cache/disk"]
    assert all(len(columns[f]) == len(later["time"]) for f in later["fields"])


def test_history_of_the_monitor(manager: CacheManager, dashboard: DashboardServer) -> None:
    manager.set_sync("k", b"v")
    manager.monitor.record_snapshot()
    data = request(dashboard.base_url + "/api/history?source=monitor").json()
    assert data["source"] == "monitor" and data["interval"] == manager.monitor.snapshot_interval
    assert data["series"]["cache/memory"]["sets"] == [1]
    assert request(dashboard.base_url + "/api/history?source=other").status == 400
    assert request(dashboard.base_url + "/api/history?since=yesterday").status == 400
    assert request(dashboard.base_url + "/api/history?since=nan").status == 400


def test_metrics_parse_with_prometheus_parser(manager: CacheManager, dashboard: DashboardServer) -> None:
    manager.set_sync("a", b"x" * 100)
    manager.get_sync("a")
    manager.get_sync("missing")
    reply = request(dashboard.base_url + "/metrics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    samples = {
        (s.name, s.labels["cache"], s.labels["tier"]): s.value
        for family in text_string_to_metric_families(reply.body.decode())
        for s in family.samples
    }
    assert samples[("llamahome_cache_hits_total", "manager", "all")] == 1
    assert samples[("llamahome_cache_misses_total", "manager", "all")] == 1
    assert samples[("llamahome_cache_bytes", "cache", "memory")] == manager.memory.stats.bytes
    assert samples[("llamahome_cache_hit_ratio", "manager", "all")] == 0.5


def test_page_assets_and_health(dashboard: DashboardServer) -> None:
    page = request(dashboard.url)
    assert page.status == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    html = page.body.decode()
    assert "{{" not in html and 'id="hit-rate"' in html
    # Offline: every script, style and image comes from this server, none from a CDN.
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    for name in _server._ASSETS:
        assert f"static/{name}" in html or name == "favicon.svg"
        reply = request(f"{dashboard.base_url}/static/{name}")
        assert reply.status == 200 and len(reply.body) > 100, name
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
    health = request(dashboard.base_url + "/healthz")
    assert health.status == 200 and health.json()["status"] == "ok"
    head = request(dashboard.base_url + "/api/stats", method="HEAD")
    assert head.status == 200 and head.body == b""


def test_no_cached_value_reaches_the_page(manager: CacheManager, dashboard: DashboardServer) -> None:
    secret = "VALUE-7f3a-do-not-show"
    manager.set_sync("user:1", {"prompt": secret})
    manager.get_sync("user:1")
    manager.training_cache.put("batch:1", np.array([1, 2, 3]))
    for path in ("/", "/api/stats", "/api/history", "/metrics", "/static/dashboard.js"):
        body = request(dashboard.base_url + path).body.decode()
        assert secret not in body and "user:1" not in body, path


def test_bad_requests_get_clean_errors(dashboard: DashboardServer) -> None:
    base, port = dashboard.base_url, dashboard.port
    unknown = request(base + "/nope")
    assert unknown.status == 404 and unknown.json()["error"].startswith("No such page")
    assert request(base + "/api/stats", method="POST", body=b"{}").status == 405
    put = request(base + "/api/stats", method="PUT", body=b"{}")
    assert put.status == 405 and put.headers["Content-Type"] == "application/json"
    too_many = request(base + "/api/history?" + "&".join(f"p{i}=1" for i in range(40)))
    assert too_many.status == 400

    huge_headers = raw(port, b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
    assert huge_headers.status == 431 and json.loads(huge_headers.body)["status"] == 431
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 300) for i in range(90))
    assert raw(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n").status == 431
    long_line = raw(port, b"GET /" + b"x" * 10_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert long_line.status == 414
    garbage = raw(port, b"HELLO\r\n\r\n")
    assert garbage.status == 400 and json.loads(garbage.body)["status"] == 400
    assert raw(port, b"GET / HTTP/9.9\r\n\r\n").status in (400, 505)
    assert raw(port, b"GET /healthz\r\n\r\n").status == 400  # HTTP/0.9: no headers, so no Host and no token
    smuggled = raw(port, b"POST /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 40\r\n\r\n"
                         b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n")  # fmt: skip
    assert smuggled.status == 404 and smuggled.headers["Connection"] == "close"  # the body is never parsed
    for length in (b"abc", b"-5", b"1e3", b"\xb2"):  # \xb2 is "²" in latin-1, a digit to str.isdigit
        bad = raw(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " + length + b"\r\n\r\n")
        assert bad.status == 400 and "Content-Length" in json.loads(bad.body)["error"]
    # After all that the server still answers.
    assert request(base + "/healthz").status == 200


def test_random_requests_never_crash_the_server(dashboard: DashboardServer) -> None:
    rng = random.Random(16)
    alphabet = b"GETPOST /?&=%:;,\"'<>\\\x00\x7f\xff[]HTTP/1.1abcXYZ0123456789\t "

    def junk(n: int) -> bytes:
        return bytes(rng.choice(alphabet) for _ in range(n))

    statuses = set()
    for i in range(120):
        if i % 2:  # anything at all
            data = junk(rng.randint(1, 400)) + b"\r\n\r\n"
        else:  # a well-formed request line and Host, then random paths, queries and header lines
            path = rng.choice([b"/", b"/api/stats", b"/api/history", b"/static/", b"/metrics"]) + junk(rng.randint(0, 60))
            headers = b"".join(junk(rng.randint(0, 80)).replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"
                               for _ in range(rng.randint(0, 6)))  # fmt: skip
            data = b"GET " + path.replace(b" ", b"%20") + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n"
        try:
            reply = raw(dashboard.port, data)
        except (ValueError, IndexError, ConnectionError):
            continue  # the server closed without a reply (e.g. an empty request line): acceptable
        assert reply.status < 500, (data, reply)
        statuses.add(reply.status)
    assert {400, 404} <= statuses
    assert request(dashboard.base_url + "/healthz").status == 200


def test_too_many_connections_get_503(dashboard: DashboardServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", dashboard.port), timeout=10) for _ in range(_server.MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)  # let the server accept them all
        extra = raw(dashboard.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert extra.status == 503 and extra.headers["Retry-After"] == "2"
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while request(dashboard.base_url + "/healthz").status != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_loopback_answers_only_to_loopback_names(dashboard: DashboardServer) -> None:
    rebound = raw(dashboard.port, b"GET /api/stats HTTP/1.1\r\nHost: attacker.example:8765\r\n\r\n")
    assert rebound.status == 403
    for host in (b"localhost:1", b"127.0.0.1", b"[::1]:8765"):
        assert raw(dashboard.port, b"GET /healthz HTTP/1.1\r\nHost: " + host + b"\r\n\r\n").status == 200


def test_token_rules(manager: CacheManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_server.TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match="needs a token"):
        serve_dashboard(manager, host="0.0.0.0", port=0)
    with pytest.raises(ConfigError, match="at least 16"):
        serve_dashboard(manager, port=0, token="short")
    with pytest.raises(ConfigError, match="at least 16"):
        serve_dashboard(manager, port=0, token="has spaces and <html> in it")
    with pytest.raises(ConfigError, match="between 0.1 and 3600"):
        serve_dashboard(manager, port=0, refresh=0)
    with pytest.raises(ConfigError, match="takes a CacheManager"):
        serve_dashboard(manager.memory, port=0)  # type: ignore[arg-type]
    assert _server.check_token(None, "::1") is None and _server.check_token(None, "localhost") is None
    assert _server.check_token(TOKEN, "192.168.1.7") == TOKEN

    with serve_dashboard(manager, port=0, token=TOKEN) as server:
        base = server.base_url
        assert server.url == f"{base}/?token={TOKEN}"
        for path in ("/", "/api/stats", "/api/history", "/metrics", "/healthz", "/static/dashboard.js"):
            missing = request(base + path)
            assert missing.status == 401, path
            assert missing.headers["WWW-Authenticate"].startswith("Bearer")
            assert "token" in missing.json()["error"]
            assert request(f"{base}{path}?token=wrong-token-0123456789").status == 401
            assert request(base + path, headers={"Authorization": "Bearer " + TOKEN[:-1] + "X"}).status == 401
            assert request(base + path, headers={"Authorization": f"Bearer {TOKEN}"}).status == 200, path
            assert request(f"{base}{path}?token={TOKEN}").status == 200, path
        page = request(server.url).body.decode()
        assert f"static/dashboard.js?token={TOKEN}" in page  # assets load with the token too
        # With a token, the Host check is the token's job (a name other than localhost is fine).
        named = raw(server.port, f"GET /healthz HTTP/1.1\r\nHost: cachebox.lan\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        assert named.status == 200

    monkeypatch.setenv(_server.TOKEN_ENV, TOKEN)
    with serve_dashboard(manager, port=0) as server:
        assert server.token == TOKEN
        assert request(server.base_url + "/api/stats").status == 401


def test_no_action_without_allow_actions(manager: CacheManager, dashboard: DashboardServer) -> None:
    _put_model(manager, "keep-me")
    headers = {"Content-Type": "application/json"}
    for path, body in (("/api/actions/cleanup", b"{}"), ("/api/actions/prune", b'{"model": "keep-me"}')):
        reply = request(dashboard.base_url + path, method="POST", headers=headers, body=body)
        assert reply.status == 403 and "--allow-actions" in reply.json()["error"]
    assert manager.model_cache.list() == ["keep-me"]


def test_actions_when_allowed(manager: CacheManager) -> None:
    _put_model(manager, "old-model")
    _put_model(manager, "pinned-model")
    with serve_dashboard(manager, port=0, allow_actions=True, token=TOKEN) as server:
        base = server.base_url
        auth = {"Authorization": f"Bearer {TOKEN}"}
        ok = {**auth, "Content-Type": "application/json"}
        assert request(base + "/api/stats", headers=auth).json()["actions"] is True
        assert request(base + "/api/actions/cleanup", headers=auth).status == 405  # GET never acts
        assert request(base + "/api/actions/cleanup", method="POST", body=b"{}",
                       headers={"Content-Type": "application/json"}).status == 401  # fmt: skip
        form = request(base + "/api/actions/prune", method="POST", body=b"model=old-model",
                       headers={**auth, "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert form.status == 415
        cross = request(base + "/api/actions/prune", method="POST", body=b'{"model": "old-model"}',
                        headers={**ok, "Origin": "http://attacker.example"})  # fmt: skip
        assert cross.status == 403
        assert request(base + "/api/actions/prune", method="POST", body=b"[1]", headers=ok).status == 400
        assert request(base + "/api/actions/prune", method="POST", body=b"{bad", headers=ok).status == 400
        big = request(base + "/api/actions/prune", method="POST", body=b" " * 10_000, headers=ok)
        assert big.status == 413
        assert manager.model_cache.list() == ["old-model", "pinned-model"]

        cleanup = request(base + "/api/actions/cleanup", method="POST", body=b"{}", headers=ok)
        assert cleanup.status == 200 and cleanup.json()["report"]["cache"]
        prune = request(base + "/api/actions/prune", method="POST", body=b'{"model": "old-model"}',
                        headers={**ok, "Origin": base})  # fmt: skip
        assert prune.status == 200 and prune.json()["removed"] is True
        assert manager.model_cache.list() == ["pinned-model"]
        gone = request(base + "/api/actions/prune", method="POST", body=b'{"model": "old-model"}', headers=ok)
        assert gone.status == 404
        with manager.model_cache.pin("pinned-model"):
            busy = request(base + "/api/actions/prune", method="POST", body=b'{"model": "pinned-model"}', headers=ok)
        assert busy.status == 409 and "pinned" in busy.json()["error"]
        assert request(base + "/api/actions/prune", method="POST", body=b"{}", headers=ok).status == 400


def test_closed_manager_reports_unavailable(tmp_path: Path) -> None:
    manager = CacheManager(small_config(tmp_path))
    with serve_dashboard(manager, port=0) as server:
        manager.close()
        assert request(server.base_url + "/healthz").status == 503
        reply = request(server.base_url + "/api/stats")
        assert reply.status == 503 and "closed" in reply.json()["error"]


def test_close_stops_threads_and_frees_the_port(manager: CacheManager) -> None:
    before = threading.active_count()
    server = serve_dashboard(manager, port=0, refresh=0.1)
    port = server.port
    assert request(server.base_url + "/healthz").status == 200
    server.close()
    server.close()  # idempotent
    assert threading.active_count() == before
    assert "closed" in repr(server)
    with serve_dashboard(manager, port=port) as again:  # the port is free for a restarted dashboard
        assert request(again.base_url + "/healthz").status == 200


def test_port_in_use_is_a_clear_error(manager: CacheManager, dashboard: DashboardServer) -> None:
    with pytest.raises(Exception, match="Pick another --port"):
        serve_dashboard(manager, port=dashboard.port)


def test_cli_serve_runs_until_sigterm(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(_server.TOKEN_ENV, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llamahome", "cache", "serve", "--dir", str(tmp_path / "cache"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("Serving the cache dashboard at http://127.0.0.1:"), line
        url = line.split(" at ", 1)[1].strip()
        assert request(url + "healthz").status == 200
        assert request(url + "api/stats").json()["caches"]["cache/disk"]["max_bytes"] > 0
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Stopped." in out and "Traceback" not in err
    assert not (tmp_path / ".cache").exists()  # --dir keeps scratch files under the cache directory


def test_cli_serve_demo_fills_every_panel(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llamahome", "cache", "serve", "--demo", "--port", "0", "--refresh", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(" at ", 1)[1].strip()
        deadline = time.monotonic() + 60
        while True:
            stats = request(url + "api/stats").json()
            if stats["manager"]["hits"] > 0 and stats["caches"]["cache/memory"]["evictions"] > 0:
                break
            assert time.monotonic() < deadline, stats["manager"]
            time.sleep(0.2)
        assert sorted(m["name"] for m in stats["models"]) == ["tiny-llama-2l", "tiny-llama-4l"]
        assert stats["datasets"][0]["dataset_id"] == "demo-corpus/train" and stats["datasets"][0]["complete"]
        assert stats["scratch"]["items"] == 1
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert list(tmp_path.iterdir()) == []  # the demo's temporary directory is gone, nothing left in cwd


def test_cli_serve_refuses_an_open_host_without_token(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from llamahome.cli.main import cli

    assert "  serve " in CliRunner().invoke(cli, ["cache", "--help"]).output
    result = CliRunner().invoke(cli, ["cache", "serve", "--dir", str(tmp_path), "--host", "0.0.0.0", "--port", "0"],
                                env={_server.TOKEN_ENV: ""})  # fmt: skip
    assert result.exit_code == 1
    assert "needs a token" in result.output and "Traceback" not in result.output
    missing = CliRunner().invoke(cli, ["cache", "serve", "--dir", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "no such cache directory" in missing.output
    both = CliRunner().invoke(cli, ["cache", "serve", "--demo", "--dir", str(tmp_path)])
    assert both.exit_code == 2 and "temporary directory" in both.output


def test_history_times_round_trip_through_since() -> None:
    from llamahome.monitoring import SnapshotRing
    from llamahome.monitoring.dashboard._api import after, history_payload

    ring = SnapshotRing(10)
    ring.append({"manager/all": (1, 0, 0, 0, 0, 0, 0)}, at=100.0004)  # a time that rounding would move down
    last = json.loads(json.dumps(history_payload(after(ring, None), 2.0, "recent")))["time"][-1]
    assert after(ring, last) == []  # the poller's next ?since= returns nothing it already has


def test_request_logs_never_show_the_token(manager: CacheManager, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG", logger="llamahome.monitoring.dashboard._server"):
        with serve_dashboard(manager, port=0, token=TOKEN) as server:
            assert request(f"{server.base_url}/healthz?x=1&token={TOKEN}").status == 200
            assert request(f"{server.base_url}/healthz?token=wrong-guess-0123456789").status == 401
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/healthz?x=1&token=***" in logged and TOKEN not in logged and "wrong-guess" not in logged
