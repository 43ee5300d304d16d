"""Redis fixtures: real redis-server processes on free loopback ports (standalone and a 3-node cluster).

Every server runs with persistence off (``--save "" --appendonly no``) in its own tmp dir, listens on
127.0.0.1 only, and is killed at teardown. Tests that need one are skipped with the reason when
``redis-server`` (or ``redis-cli``, for the cluster) is not installed.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
_MISSING_SERVER = "redis-server is not installed; install it (apt-get install redis-server) to run the Redis tests."


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(cluster: bool = False) -> int:
    """A loopback port that is free now (for a cluster node, its bus port +10000 too)."""
    for _ in range(200):
        port = random.randint(20000, 50000) if cluster else _ephemeral_port()
        if _port_free(port) and (not cluster or _port_free(port + 10000)):
            return port
    raise RuntimeError("No free loopback port found for redis-server.")


def _ephemeral_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """Send one inline command to 127.0.0.1:port and return the raw reply (no client library involved)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall((" ".join(args) + "\r\n").encode())
        return sock.recv(65536)


class RedisServer:
    """One redis-server process that tests can kill, restart on the same port, pause and resume."""

    def __init__(self, workdir: Path, port: int | None = None, *extra: str) -> None:
        if REDIS_SERVER is None:
            pytest.skip(_MISSING_SERVER)
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        args = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--daemonize", "no", "--logfile", "", *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} on port {self.port}.")
            try:
                if _command(self.port, "PING", timeout=0.5).startswith((b"+PONG", b"-NOAUTH")):
                    return self  # up (a password-protected server answers NOAUTH)
            except OSError:
                pass
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within 10 s.")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused process must run to die cleanly
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def command(self, *args: str) -> bytes:
        return _command(self.port, *args)


class RedisClusterNodes:
    """Three cluster-enabled redis-server processes joined by ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path) -> None:
        if REDIS_SERVER is None:
            pytest.skip(_MISSING_SERVER)
        if REDIS_CLI is None:
            pytest.skip("redis-cli is not installed; it is needed to create the test cluster (apt-get install redis-tools).")
        self.nodes: list[RedisServer] = []
        for i in range(3):
            port = free_port(cluster=True)
            node_dir = workdir / f"node{i}"
            self.nodes.append(
                RedisServer(node_dir, port, "--cluster-enabled", "yes", "--cluster-config-file",
                            str(node_dir / "nodes.conf"), "--cluster-node-timeout", "2000")
            )

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisClusterNodes:
        try:
            for node in self.nodes:
                node.start()
            assert REDIS_CLI is not None
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run(
                [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
            )
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if all(b"cluster_state:ok" in node.command("CLUSTER", "INFO") for node in self.nodes):
                    return self
                time.sleep(0.05)
            raise RuntimeError("The test Redis cluster did not reach cluster_state:ok within 20 s.")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep apart through a unique namespace (``redis_namespace``)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_restartable(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, free to be killed, restarted on the same port, or paused."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A 3-primary Redis Cluster on loopback (no replicas), shared by the session."""
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()
