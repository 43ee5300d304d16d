"""The dashboard's HTTP server: one port for the page, its assets, the JSON API, ``/metrics`` and ``/healthz``.

Why the standard library's ``ThreadingHTTPServer``: the dashboard serves one page and a few small JSON
answers every couple of seconds to a handful of viewers, from a thread beside an application that already
runs a cache (``prometheus_client.start_http_server`` serves ``/metrics`` the same way). An ASGI stack would
add two dependencies and an event loop of its own for no gain at this load. What the standard server lacks
is added here: a cap on connections, idle timeouts, a bound on the request line and header block, JSON
errors, a token check, a Host check against DNS rebinding, and security headers.

Safety rules (see :func:`serve_dashboard`): loopback by default; any other address needs a token that every
request carries (``Authorization: Bearer <token>`` or ``?token=<token>``), compared in constant time; no
request changes the cache unless ``allow_actions`` is set, and then only POSTs with a JSON body (which a
cross-site form cannot send).
"""

from __future__ import annotations

import hmac
import http.client
import ipaddress
import json
import logging
import math
import os
import re
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from llamahome.errors import CacheClosedError, CacheError, ConfigError, ModelCacheError

from ._api import HistorySampler, after, history_payload, monitor_history, stats_payload

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from llamahome.cache import CacheManager

__all__ = ["DashboardServer", "TOKEN_ENV", "serve_dashboard"]

logger = logging.getLogger(__name__)

#: Environment variable read for the token when none is passed.
TOKEN_ENV = "LLAMAHOME_DASHBOARD_TOKEN"
#: A token must be at least this long and use URL-safe characters (it travels in headers and query strings).
MIN_TOKEN_LENGTH = 16
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]+$")
_TOKEN_IN_URL = re.compile(r"([?&])token=[^&\s\"]*")  # redacted from request logs
#: Bounds on what a client may send; beyond them it gets 414/431/413, never a stuck or huge thread.
MAX_REQUEST_LINE = 8192
MAX_HEADER_BYTES = 16384
MAX_BODY_BYTES = 4096
MAX_CONNECTIONS = 64
IDLE_TIMEOUT_S = 30.0

_LOOPBACK_NAMES = {"localhost", "localhost.", "127.0.0.1", "::1", "[::1]"}

# name -> (file under static/, content type)
_ASSETS = {
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
    "uPlot.iife.min.js": ("vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
}
_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _static(name: str) -> bytes:
    node = resources.files(__package__ or __name__.rpartition(".")[0]).joinpath("static")
    for part in name.split("/"):
        node = node.joinpath(part)
    return node.read_bytes()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: addresses no other machine can reach."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str | None, host: str) -> str | None:
    """The token to require (None: none), or ConfigError when ``host`` is not loopback and none is given."""
    if token is None or token == "":
        if not is_loopback(host):
            raise ConfigError(
                f"Serving the dashboard on {host} lets other machines reach it, so it needs a token: pass "
                f"--token (or set {TOKEN_ENV}), e.g. one from "
                "`python -c \"import secrets; print(secrets.token_urlsafe(24))\"`, and open the page as "
                "http://HOST:PORT/?token=TOKEN."
            )
        return None
    if len(token) < MIN_TOKEN_LENGTH or not _TOKEN_RE.match(token):
        raise ConfigError(
            f"The dashboard token must be at least {MIN_TOKEN_LENGTH} characters of letters, digits and "
            "._~+/=- (it travels in URLs and headers); generate one with "
            "`python -c \"import secrets; print(secrets.token_urlsafe(24))\"`."
        )
    return token


class _BoundedReader:
    """Wraps the request stream while headers are parsed: past ``budget`` bytes, the standard parser's own
    "line too long" error fires, so the client gets a 431 instead of the server reading megabytes."""

    def __init__(self, raw: Any, budget: int) -> None:
        self._raw = raw
        self._left = budget

    def readline(self, limit: int = -1) -> bytes:
        cap = self._left + 1 if limit < 0 else min(limit, self._left + 1)
        line: bytes = self._raw.readline(cap)
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong("header block")
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class _Server(ThreadingHTTPServer):
    """A threading server with a cap on simultaneous connections (each extra one gets a 503 and is closed)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # the default backlog of 5 drops bursts of connections (clients retry after 1 s, 3 s)
    dashboard: _Dashboard

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily) -> None:
        self.address_family = family
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's fully qualified name, a DNS query that can hang for
        # seconds on a machine without a network; the name is only used in CGI environments.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                body = b'{"error": "Too many connections to the dashboard; retry shortly.", "status": 503}'
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 2\r\n"
                    b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


@dataclass
class _Dashboard:
    """What the handler needs: the manager, the rules, the history and the Prometheus registry."""

    manager: CacheManager
    token: str | None
    loopback: bool
    allow_actions: bool
    refresh: float
    sampler: HistorySampler
    registry: CollectorRegistry
    started: float = field(default_factory=time.time)
    assets: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    page: str = ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llamahome-dashboard"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S  # an idle keep-alive or a slow client frees its thread after this long
    server: _Server
    raw_requestline: bytes

    # --- parsing and errors ----------------------------------------------------------------------------
    def parse_request(self) -> bool:
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline, self.request_version, self.command = "", "HTTP/1.0", ""
            self.close_connection = True
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, f"Request line longer than {MAX_REQUEST_LINE} bytes.")
            return False
        raw = self.rfile
        self.rfile = _BoundedReader(raw, MAX_HEADER_BYTES)  # type: ignore[assignment]
        try:
            if not super().parse_request():
                return False
        finally:
            self.rfile = raw
        if len(self.requestline.split()) < 3:  # "GET /": HTTP/0.9, which has no headers (so no Host, no token)
            self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 requests are not supported; send HTTP/1.1.")
            return False
        return True

    def send_response_only(self, code: int, message: str | None = None) -> None:
        # The standard server answers HTTP/0.9 (and unparsable request lines) with a bare body; always send a
        # status line and headers so every client can read the error.
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        super().send_response_only(code, message)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard parser's errors (and ours without a route) as a small JSON body; the connection
        closes, since the rest of a malformed request may still be in the stream."""
        self.close_connection = True
        self._send_json(int(code), {"error": message or HTTPStatus(code).phrase, "status": int(code)})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        logger.debug("%s %s", self.address_string(), _TOKEN_IN_URL.sub(r"\1token=***", format % args))

    # --- responses -------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(_finite(data), separators=(",", ":"), default=str, allow_nan=False).encode()
        self._send(status, body, "application/json", headers)

    # --- methods ---------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _not_allowed(self) -> None:
        self.close_connection = True  # a body we will not read may follow
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported here.")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _dispatch(self, method: str) -> None:
        dash = self.server.dashboard
        if method == "POST":
            # One POST per connection: an error answered before its body is read cannot leave that body in the
            # stream to be parsed as the next request.
            self.close_connection = True
        try:
            url = urlsplit(self.path)
            try:
                query = parse_qs(url.query, max_num_fields=16, strict_parsing=False)
            except ValueError as exc:
                raise _HTTPError(HTTPStatus.BAD_REQUEST, "Too many query parameters.") from exc
            self._check_host(dash)
            self._check_token(dash, query)
            route = _ROUTES.get(url.path)
            if route is None:
                raise _HTTPError(HTTPStatus.NOT_FOUND, f"No such page: {url.path[:200]}. Try / or /api/stats.")
            allowed, handler = route
            if method != allowed:
                self.close_connection = True
                raise _HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, f"Use {allowed} for {url.path}.", {"Allow": allowed})
            if method == "GET" and (self._content_length() or self.headers.get("Transfer-Encoding")):
                self.close_connection = True  # do not read a body; the next request would start inside it
            handler(self, dash, query)
        except _HTTPError as exc:
            self._send_json(exc.status, {"error": exc.message, "status": int(exc.status)}, exc.headers)
        except CacheClosedError:
            self._send_json(503, {"error": "The cache manager is closed.", "status": 503})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            logger.exception("Dashboard request %s %s failed", method, self.path[:200])
            self.close_connection = True
            self._send_json(500, {"error": "Internal error; see the server's log.", "status": 500})

    def _check_host(self, dash: _Dashboard) -> None:
        # Without a token, a page on another site could rebind its own name to 127.0.0.1 and read the API;
        # the browser would still send that site's name as Host, so only loopback names are served.
        if dash.token is not None or not dash.loopback:
            return
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not is_loopback(name):
            raise _HTTPError(HTTPStatus.FORBIDDEN, "This dashboard answers only to localhost, 127.0.0.1 and [::1].")

    def _check_token(self, dash: _Dashboard, query: dict[str, list[str]]) -> None:
        if dash.token is None:
            return
        given = ""
        auth = self.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        elif query.get("token"):
            given = query["token"][0]
        if not given or not hmac.compare_digest(given.encode("utf-8", "replace"), dash.token.encode()):
            raise _HTTPError(
                HTTPStatus.UNAUTHORIZED,
                "This dashboard needs its token: open /?token=TOKEN, or send Authorization: Bearer TOKEN.",
                {"WWW-Authenticate": 'Bearer realm="llamahome"'},
            )

    def _content_length(self) -> int:
        value = (self.headers.get("Content-Length") or "0").strip()
        if not (value.isascii() and value.isdigit()) or len(value) > 12:
            self.close_connection = True
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "Content-Length must be a whole number of bytes.")
        return int(value)

    def _read_json_body(self) -> dict[str, Any]:
        """The body of an action: JSON (which a cross-site form cannot send), small, on the same origin."""
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host", ""):
            raise _HTTPError(HTTPStatus.FORBIDDEN, "Cross-origin requests cannot run actions.")
        if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
            raise _HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Send actions as Content-Type: application/json.")
        if self.headers.get("Transfer-Encoding"):
            raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "Send actions with a Content-Length, not chunked.")
        length = self._content_length()
        if length > MAX_BODY_BYTES:
            raise _HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"Action bodies are at most {MAX_BODY_BYTES} bytes.")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "The body is not valid JSON.") from exc
        if not isinstance(data, dict):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "The body must be a JSON object.")
        return data


# --- routes --------------------------------------------------------------------------------------------
def _page(h: _Handler, dash: _Dashboard, query: dict[str, list[str]]) -> None:
    h._send(200, dash.page.encode(), "text/html; charset=utf-8", {"Content-Security-Policy": _PAGE_CSP})


def _asset(name: str) -> Any:
    def serve(h: _Handler, dash: _Dashboard, query: dict[str, list[str]]) -> None:
        body, content_type = dash.assets[name]
        h._send(200, body, content_type)

    return serve


def _metrics(h: _Handler, dash: _Dashboard, query: dict[str, list[str]]) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    h._send(200, generate_latest(dash.registry), CONTENT_TYPE_LATEST)


def _healthz(h: _Handler, dash: _Dashboard, query: dict[str, list[str]]) -> None:
    if dash.manager.closed:
        raise _HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, "The cache manager is closed.")
    h._send_json(200, {"status": "ok", "uptime": time.time() - dash.started})


def _stats(h: _Handler, dash: _Dashboard, query: dict[str, list[str]]) -> None:
    if dash.manager.closed:
        raise CacheClosedError("closed")
    h._send_json(200, stats_payload(dash.manager, started=dash.started, actions=dash.allow_actions,
                                    refresh=dash.refresh))  # fmt: skip


def _history(h: _Handler, dash: _Dashboard, query: dict[str, list[str]]) -> None:
    since = None
    if query.get("since"):
        try:
            since = float(query["since"][0])
        except ValueError as exc:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "since must be a time in seconds since the epoch.") from exc
        if not math.isfinite(since):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "since must be a finite number.")
    source = (query.get("source") or ["recent"])[0]
    if source == "recent":
        data = history_payload(after(dash.sampler.ring, since), dash.sampler.interval, "recent")
    elif source == "monitor":
        data = monitor_history(dash.manager, since)
    else:
        raise _HTTPError(HTTPStatus.BAD_REQUEST, "source must be recent (the last half hour) or monitor.")
    h._send_json(200, data)


def _require_actions(dash: _Dashboard) -> None:
    if not dash.allow_actions:
        raise _HTTPError(
            HTTPStatus.FORBIDDEN,
            "Actions are off: this dashboard only reads. Start it with --allow-actions to allow cleanup and prune.",
        )


def _cleanup(h: _Handler, dash: _Dashboard, query: dict[str, list[str]]) -> None:
    _require_actions(dash)
    h._read_json_body()
    report = dash.manager.cleanup_sync()
    logger.info("Dashboard action: cleanup (%d removed, %d bytes freed)", report.removed, report.bytes_freed)
    h._send_json(200, {"action": "cleanup", "report": report.as_dict()})


def _prune(h: _Handler, dash: _Dashboard, query: dict[str, list[str]]) -> None:
    _require_actions(dash)
    name = h._read_json_body().get("model")
    if not isinstance(name, str) or not name:
        raise _HTTPError(HTTPStatus.BAD_REQUEST, 'Name the model to prune: {"model": "NAME"}.')
    try:
        removed = dash.manager.model_cache.delete(name)
    except ModelCacheError as exc:
        raise _HTTPError(HTTPStatus.CONFLICT, str(exc)) from exc
    if not removed:
        raise _HTTPError(HTTPStatus.NOT_FOUND, f"Model {name!r} is not in the model cache.")
    logger.info("Dashboard action: pruned model %r", name)
    h._send_json(200, {"action": "prune", "model": name, "removed": True})


_ROUTES: dict[str, tuple[str, Any]] = {
    "/": ("GET", _page),
    "/index.html": ("GET", _page),
    "/metrics": ("GET", _metrics),
    "/healthz": ("GET", _healthz),
    "/api/stats": ("GET", _stats),
    "/api/history": ("GET", _history),
    "/api/actions/cleanup": ("POST", _cleanup),
    "/api/actions/prune": ("POST", _prune),
    **{f"/static/{name}": ("GET", _asset(name)) for name in _ASSETS},
}


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no spelling for them, and browsers reject them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# --- the public handle -----------------------------------------------------------------------------------
class DashboardServer:
    """A running dashboard; ``url`` is the page's address (with the token, if any), ``close()`` stops it."""

    def __init__(self, server: _Server, thread: threading.Thread, dashboard: _Dashboard) -> None:
        self._server = server
        self._thread = thread
        self.dashboard = dashboard
        self._closed = False

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://host:port`` without the token (for building API addresses)."""
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        elif host in ("0.0.0.0", ""):
            host = socket.gethostname()
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The page's address; carries ``?token=...`` when the dashboard has a token."""
        token = self.dashboard.token
        return f"{self.base_url}/" + (f"?token={quote(token, safe='')}" if token else "")

    @property
    def token(self) -> str | None:
        return self.dashboard.token

    def close(self) -> None:
        """Stop serving, the sampler and the server thread. Idempotent; the manager stays open."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.dashboard.sampler.close()

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.base_url
        return f"<DashboardServer {state} actions={'on' if self.dashboard.allow_actions else 'off'}>"


def _render_page(token: str | None, refresh: float) -> str:
    page = _static("index.html").decode()
    suffix = f"?token={quote(token, safe='')}" if token else ""
    # The token is URL-safe by construction (check_token), so it needs no HTML escaping beyond quote().
    return page.replace("{{ASSET_QUERY}}", suffix).replace("{{TOKEN}}", quote(token or "", safe="")).replace(
        "{{REFRESH_MS}}", str(int(refresh * 1000))
    )


def serve_dashboard(
    manager: CacheManager,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    allow_actions: bool = False,
    *,
    refresh: float = 2.0,
    history_size: int = 900,
) -> DashboardServer:
    """Serve a live dashboard of ``manager`` at ``http://host:port/`` from a daemon thread.

    Endpoints: ``/`` (the page), ``/metrics`` (Prometheus), ``/api/stats`` and ``/api/history`` (JSON),
    ``/healthz``; with ``allow_actions``, ``POST /api/actions/cleanup`` and ``POST /api/actions/prune``
    (``{"model": NAME}``). ``host`` defaults to loopback; any other address needs ``token`` (or the
    ``LLAMAHOME_DASHBOARD_TOKEN`` environment variable), which every request must then carry. ``port=0``
    picks a free port. ``refresh`` is how often (seconds) the page polls and history is sampled; the last
    ``history_size`` samples are kept (30 minutes at the defaults).
    """
    from llamahome.cache import CacheManager

    if not isinstance(manager, CacheManager):
        raise ConfigError(
            f"serve_dashboard takes a CacheManager, not {type(manager).__name__}; for a single store, "
            "serve_metrics(...) or its .stats are the way to watch it."
        )
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    token = check_token(token, host)
    if not (isinstance(refresh, (int, float)) and math.isfinite(refresh) and 0.1 <= refresh <= 3600):
        raise ConfigError(f"The dashboard's refresh must be between 0.1 and 3600 seconds, not {refresh!r}.")
    from llamahome.monitoring.prometheus import make_registry

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        server = _Server((host, port), family)
    except OSError as exc:
        raise CacheError(
            f"Cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}. Pick another --port "
            "(0 picks a free one) or stop what is using it."
        ) from exc
    sampler = HistorySampler(manager, interval=refresh, size=history_size)
    dashboard = _Dashboard(
        manager=manager,
        token=token,
        loopback=is_loopback(host),
        allow_actions=bool(allow_actions),
        refresh=float(refresh),
        sampler=sampler,
        registry=make_registry(manager),
    )
    dashboard.assets = {name: (_static(path), ctype) for name, (path, ctype) in _ASSETS.items()}
    dashboard.page = _render_page(token, refresh)
    server.dashboard = dashboard
    sampler.start()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="llamahome-dashboard", daemon=True
    )
    thread.start()
    if allow_actions:
        logger.warning("Dashboard actions are on: cleanup and prune can be run from %s", host)
    return DashboardServer(server, thread, dashboard)
