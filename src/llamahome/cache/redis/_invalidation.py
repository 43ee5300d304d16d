"""Invalidation across machines: Redis tells this process which of the namespace's keys other clients changed.

**Mechanism: RESP3 client tracking in broadcast mode.** Redis reports every change to an entry key of the
namespace (SET, DEL, UNLINK, expiry, eviction; a FLUSHDB is a "drop everything") as an ``invalidate`` push
to the listener's connection, once ``CLIENT TRACKING ON ... BCAST PREFIX <ns>:s PREFIX <ns>:b`` is on.
Writers send nothing extra, and a write by any client (sync, async, another language) is seen.
``benchmarks/bench_coherence.py`` measures the alternatives: a PUBLISH or sharded SPUBLISH per write,
pipelined with it or in one script with it, costs every set an extra command, where tracking only costs the
server its fan-out (which pub/sub costs too).

**Own writes: the writer.** Redis would report this process's own writes too, and
receiving, parsing and checking one report per set cost a busy writer about a tenth of its set throughput
(measured: most of it is the server's side of sending the report; a reader that only drained them, without
parsing, already cost 5-10%; on a 3-primary cluster, where every own set was echoed, it ran at 0.73-0.89x
of today's). So the tracking is
not the listening connection's own: the listener opens a *writer*, one redis-py connection of its own, with
``CLIENT TRACKING ON REDIRECT <listener's id> BCAST PREFIX ... NOLOOP``: reports come to the listener, minus
the writer's own writes. On a cluster there is one listening connection and one writer per primary, each
writer redirected to its own primary's listening connection. ``RedisCache.set`` goes through the writer (on
a cluster: the writer of the primary the cluster client maps the key's slot to) when no other thread is
using one (:meth:`InvalidationListener.try_set`), so a set costs no message at all; a MOVED or ASK (the slot
moved) sends it through the cluster client instead. Redis remembers the *last* client
that changed a key in an event-loop cycle and spares a NOLOOP client only the keys it changed last, so
another machine's write after ours in the same cycle is still reported. The writer's tracking is the only
source of reports, so losing the writer counts as losing the connection: an error on it, or an idle writer
not answering a PING within the health check, drops the local copies and subscribes again with a new
listener and writer (the redirect names the listener's connection id, which a reconnect changes).

**Own writes: echoes (everything else).** Every other write of this process (sets while the writer is busy,
deletes, ``set_many``) is
reported back, once per event-loop cycle however many clients changed the key in that cycle. So before such
a write goes out, its key is *expected* with the stamp the entry carries (see ``_signing``; a delete expects
no entry); a report of an expected key is then checked on the tracking connection itself (``GETRANGE key
-16 -1``, pipelined per batch, the batch's replies compared in one go): if the entry still ends with our
latest stamp, the change was ours and the local copy stays; otherwise another machine wrote after us and the
copy is dropped. A write Redis did not apply (an error, a DEL that removed nothing) withdraws its
expectation; any other mismatch between expectations and reports only causes a check, or a drop. Reports
are matched with expectations as received (keyed by the key's bulk-string bytes), and read at most once per
BATCH_WINDOW.

**Races.** Redis sends a report after the write is applied. The owner bumps a per-key counter when it drops a
copy, and a read copies a value found in Redis into the local tiers only if that counter did not move since
before the read (see ``TieredCache``): a read that found the old value loses to the report of the new one,
whichever comes first, so no old value is kept for good.

**Lost messages.** Reports sent while this connection is down are lost. So when the connection drops (Redis
restarting or failing over included), ``on_reset`` is called at once, and again once tracking is back on every
primary: the owner drops its local copies then (a flush, not a generation number: a generation would only say
*that* something may have changed, not *what*, and would still force the same flush). A connection that goes
silent is caught by a ``ROLE`` health check every second (a demoted primary too); on a cluster the primaries
are compared with ``CLUSTER NODES`` every 5 s, and a change resubscribes. A cluster primary that does not
answer is left out (its keys cannot be read either) and joined, with another drop, when it answers again.

**Trust.** The reports come from the Redis server, not from other clients: someone with access to Redis can
change or delete entries (so make us drop copies: misses) but cannot put a value into our local tiers, since
values are only ever read from Redis through the envelope (signed with ``secret``).
"""

from __future__ import annotations

import collections
import logging
import os
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from redis._parsers import _RESP3Parser
from redis.backoff import NoBackoff
from redis.connection import Connection
from redis.exceptions import AskError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..base import Key, key_from_bytes
from ..stats import CacheStats
from ._core import CALL_ERRORS

__all__ = ["InvalidationListener", "ConnectionRecipe"]

log = logging.getLogger("llamahome.cache.redis")

HEALTH_INTERVAL = 1.0  # seconds without traffic before a ROLE check
HEALTH_TIMEOUT = 2.0  # seconds a ROLE check may take before the connection counts as lost
TOPOLOGY_INTERVAL = 5.0  # seconds between two checks of a cluster's primaries
# Reports are read at most once per window: a report after a quiet spell is read at once, while the stream of
# a busy writer (our own echoes included: one per write) costs this process one wake-up per window instead of
# one per write. Each wake-up of this thread costs the application threads tens of microseconds (the GIL and a
# context switch; measured in bench_coherence.py), so this keeps a writer's throughput; staleness grows by at
# most the window.
BATCH_WINDOW = 0.004
_MIN_DELAY, _MAX_DELAY = 0.05, 1.0  # reconnect backoff
_KEPT_OPTIONS = ("host", "port", "path", "db", "username", "password", "credential_provider", "client_name")


class _PushParser(_RESP3Parser):
    """RESP3 parser that hands invalidation pushes to the reader instead of dropping them."""

    def __init__(self, socket_read_size: int) -> None:
        super().__init__(socket_read_size)
        self.invalidation_push_handler_func = _identity


def _identity(response: Any) -> Any:
    return response


class _Incomplete(Exception):
    """The buffer ends inside a reply: read more."""


class _PushReader:
    """Reads the replies and pushes of a tracking connection straight from its socket.

    redis-py connects, authenticates and switches the connection to RESP3; after that this small parser takes
    over, because redis-py's parses a push in ~20 us and there is one per write under the namespace (our own
    included): at a busy writer's rate that cost came out of the writer's throughput. This one handles the
    RESP3 types Redis sends here (pushes, arrays, bulk/simple strings, integers, nulls, errors) in a few us.
    """

    def __init__(self, conn: Connection) -> None:
        self._buf = bytearray()  # received bytes not parsed yet: the start of an incomplete reply
        self._chunk = bytearray(1 << 16)
        self._view = memoryview(self._chunk)
        self._early: list[Any] = []
        # Anything redis-py already buffered is read through it first; then its buffer is empty for good.
        while conn.can_read(timeout=0):
            self._early.append(conn.read_response(push_request=True))
        sock = getattr(conn, "_sock", None)
        if sock is None:
            raise RedisConnectionError("the tracking connection has no socket")
        self._sock: Any = sock
        self._poll = select.poll()  # not select(): it fails on descriptors above 1023
        self._poll.register(sock, select.POLLIN)

    def wait(self, timeout: float) -> bool:
        """True when there is something to read (within ``timeout`` seconds)."""
        if self._early or self._pending():  # what is left in _buf is an incomplete reply: wait for more
            return True
        return bool(self._poll.poll(timeout * 1000))

    def _pending(self) -> bool:
        pending = getattr(self._sock, "pending", None)  # TLS: decrypted bytes select() cannot see
        return bool(pending is not None and pending())

    def read_available(
        self, waiting: collections.deque[Any], known: dict[bytes, Any], pieces: list[bytes], not_ours: list[bytes],
        pushes: list[Any],
    ) -> list[Any]:
        """Handle every complete message received so far, without blocking; return the replies to ROLE checks.

        Single-key invalidation pushes (nearly all messages) add the key's piece (see :func:`_piece`) to
        ``pieces``; other pushes are parsed into ``pushes``. Replies answer the front of ``waiting`` in order:
        a :class:`_Batch` of echo checks whose replies are exactly the expected bytes is settled by one
        comparison; a check that found another stamp adds its piece to ``not_ours``; None is a ROLE check.
        ``known`` (the echoes waited for, keyed by piece) lets the fast path skip validating our own pieces.
        """
        while self._pending() or self._poll.poll(0):
            try:
                size = self._sock.recv_into(self._chunk)
            except (BlockingIOError, InterruptedError):
                break
            if not size:
                raise RedisConnectionError("Redis closed the tracking connection")
            self._buf += self._view[:size]
            if size < len(self._chunk):
                break
        pushes += self._early  # read before this reader took over: pushes only (nothing was asked yet)
        self._early = []
        roles: list[Any] = []
        buf, size, pos = self._buf, len(self._buf), 0
        head, skip = _ONE_KEY_HEAD, len(_ONE_KEY_HEAD)
        runs = 2  # the split fast path copies the rest of the buffer: a few times per call at most
        while pos < size:
            if buf[pos] == 62:  # ">": a push
                if buf.startswith(head, pos):
                    if runs:
                        runs -= 1
                        after = _one_key_pushes(buf, pos, known, pieces)
                        if after > pos:
                            pos = after
                            continue
                    end = buf.find(b"\r\n", pos + skip)  # inlined: one single-key push
                    if end < 0:
                        break
                    digits = buf[pos + skip : end]
                    if digits.isdigit():
                        stop = end + 2 + int(digits)
                        if stop + 2 > size:
                            break
                        pieces.append(bytes(buf[pos + skip : stop + 2]))
                        pos = stop + 2
                        continue
                try:
                    reply, pos = _parse_push(buf, pos)
                except _Incomplete:
                    break
                pushes.append(reply)
                continue
            if not waiting:
                raise RedisConnectionError(f"an unexpected reply on the tracking connection: {bytes(buf[pos:pos + 80])!r}")
            asked = waiting[0]
            if type(asked) is _Batch:
                if buf.startswith(asked.expected, pos):  # the usual case: every key still holds our stamp
                    pos += len(asked.expected)
                    waiting.popleft()
                    continue
                if asked.expected.startswith(bytes(buf[pos:])):  # so far so good: the rest is on its way
                    break
                waiting.popleft()  # a push in between, or another stamp: check the replies one by one
                waiting.extendleft(reversed(asked.items()))
                continue
            try:
                reply, after = _parse(buf, pos)
            except _Incomplete:
                break
            waiting.popleft()
            if asked is None:
                roles.append(reply)
            elif buf[pos:after] != asked[1]:  # the entry's stamp is not our latest write's: not ours
                not_ours.append(asked[0])
            pos = after
        if pos:
            del buf[:pos]
        return roles


_PUSH_HEAD = b">2\r\n$10\r\ninvalidate\r\n*"
_ONE_KEY_HEAD = _PUSH_HEAD + b"1\r\n$"
# The check of echoes: ``GETRANGE key -16 -1`` (the entry's stamp) per key, all sent at once. A key goes in as
# its piece, so the commands of a batch are one join.
_CHECK_HEAD = b"*4\r\n$8\r\nGETRANGE\r\n$"
_CHECK_TAIL = b"$3\r\n-16\r\n$2\r\n-1\r\n"
_CHECK_GLUE = _CHECK_TAIL + _CHECK_HEAD


def _piece(rkey: bytes) -> bytes:
    """``rkey`` as the body of a RESP bulk string, ``<length>\\r\\n<rkey>\\r\\n``: the bytes that follow
    ``$`` in an invalidation push, so a report is matched with our echoes as received, without a parse."""
    return b"%d\r\n%b\r\n" % (len(rkey), rkey)


def _piece_key(piece: bytes) -> bytes | None:
    """The key a piece holds, or None if ``piece`` is not exactly one bulk string body."""
    digits, sep, rest = piece.partition(b"\r\n")
    if not sep or not digits.isdigit() or len(rest) != int(digits) + 2 or not rest.endswith(b"\r\n"):
        return None
    return rest[:-2]


def _stamp_reply(stamp: bytes) -> bytes:
    """GETRANGE's reply when the entry ends with ``stamp`` (b"": no entry, our delete)."""
    return b"$%d\r\n%b\r\n" % (len(stamp), stamp)


class _Batch:
    """The echo checks sent at once, and the bytes their replies make when every one is ours."""

    __slots__ = ("pieces", "stamps", "expected")

    def __init__(self, pieces: list[bytes], stamps: list[bytes]) -> None:
        self.pieces = pieces
        self.stamps = stamps
        if all(len(stamp) == 16 for stamp in stamps):  # sets only: one join
            self.expected = b"$16\r\n" + b"\r\n$16\r\n".join(stamps) + b"\r\n"
        else:
            self.expected = b"".join(map(_stamp_reply, stamps))

    def command(self) -> bytes:
        return _CHECK_HEAD + _CHECK_GLUE.join(self.pieces) + _CHECK_TAIL

    def items(self) -> list[tuple[bytes, bytes]]:
        """One ``(piece, expected reply)`` per check."""
        return [(piece, _stamp_reply(stamp)) for piece, stamp in zip(self.pieces, self.stamps)]


def _one_key_pushes(buf: bytearray, pos: int, known: dict[bytes, Any], pieces: list[bytes]) -> int:
    """Fast path: the pieces of the run of single-key invalidation pushes at ``buf[pos:]`` (appended to
    ``pieces``), and where the run ends. One C-level split instead of a parse per push: at a busy writer's
    rate (one echo per write) this is the listener's main cost.

    A piece between two push heads must be exactly ``<n>\\r\\n<n-byte key>\\r\\n``: an echo we wait for
    (in ``known``) is one by construction, any other is checked. The first that is not (the last, incomplete
    push; another reply after it; a key that happens to contain a push head: its first piece is too short for
    its length) ends the run, and the caller's general parser goes on from there.
    """
    head = _ONE_KEY_HEAD
    step = len(head)
    parts = bytes(buf[pos:] if pos else buf).split(head)
    for i in range(1, len(parts)):
        piece = parts[i]
        if piece not in known and _piece_key(piece) is None:
            break
        pieces.append(piece)
        pos += step + len(piece)
    return pos


def _parse_push(buf: bytearray, pos: int) -> tuple[Any, int]:
    """:func:`_parse`, with a fast path for the commonest message by far: an invalidation push of keys."""
    if not buf.startswith(_PUSH_HEAD, pos):
        return _parse(buf, pos)
    at = pos + len(_PUSH_HEAD)
    end = buf.find(b"\r\n", at)
    if end < 0:
        raise _Incomplete
    keys = []
    at = end + 2
    for _ in range(int(buf[pos + len(_PUSH_HEAD) : end])):
        end = buf.find(b"\r\n", at)
        if end < 0:
            raise _Incomplete
        if buf[at] != 36:  # not "$": leave it to the general parser
            return _parse(buf, pos)
        start = end + 2
        stop = start + int(buf[at + 1 : end])
        if len(buf) < stop + 2:
            raise _Incomplete
        keys.append(bytes(buf[start:stop]))
        at = stop + 2
    return _Push((b"invalidate", keys)), at


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One RESP3 value at ``buf[pos:]`` and where the next one starts; _Incomplete if it is cut off."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line, after = buf[pos], bytes(buf[pos + 1 : end]), end + 2
    if kind in b">*~":  # push, array, set
        items: list[Any] = _Push() if kind == ord(">") else []
        for _ in range(max(0, int(line))):
            item, after = _parse(buf, after)
            items.append(item)
        return (None if int(line) < 0 else items), after
    if kind in b"$=!":  # bulk, verbatim, bulk error
        size = int(line)
        if size < 0:
            return None, after
        if len(buf) < after + size + 2:
            raise _Incomplete
        data = bytes(buf[after : after + size])
        return (data[4:] if kind == ord("=") else data), after + size + 2
    if kind == ord("+"):
        return line, after
    if kind == ord("-"):
        return _ErrorReply(line), after
    if kind == ord(":"):
        return int(line), after
    if kind == ord("_"):
        return None, after
    if kind == ord("#"):
        return line == b"t", after
    if kind in b",(":
        return line, after
    if kind == ord("%"):  # map
        pairs = {}
        for _ in range(int(line)):
            key, after = _parse(buf, after)
            pairs[key], after = _parse(buf, after)
        return pairs, after
    if kind == ord("|"):  # attribute: metadata ahead of the value itself
        for _ in range(2 * int(line)):
            after = _parse(buf, after)[1]
        return _parse(buf, after)
    raise RedisConnectionError(f"unexpected RESP3 type byte {kind!r} on the tracking connection")


class _Push(list):  # type: ignore[type-arg]
    """A RESP3 push (out-of-band: not the reply to anything we sent)."""


class _ErrorReply(bytes):
    """An error reply (``-MOVED ...``, say): never equal to a stamp or a ROLE reply."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ErrorReply) and bytes(self) == bytes(other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = bytes.__hash__


class _Resync(Exception):
    """The primaries changed (failover, a node added): subscribe again on the new ones."""


_READ_ERRORS: tuple[type[BaseException], ...] = (*CALL_ERRORS, _Resync)


class ConnectionRecipe:
    """How to open a tracking connection like the cache's own: same auth, TLS, db; RESP3; bounded calls."""

    def __init__(
        self, connection_class: type[Connection], options: dict[str, Any], timeout: float,
        seeds: list[tuple[str, int]] | None = None,
    ) -> None:
        self.connection_class = connection_class
        self.options = {k: v for k, v in options.items() if k in _KEPT_OPTIONS or k.startswith("ssl")}
        self.timeout = timeout
        #: Cluster nodes to ask for the primaries (None: a standalone server).
        self.seeds = seeds

    @classmethod
    def from_pool(cls, pool: Any, timeout: float, seeds: list[tuple[str, int]] | None = None) -> ConnectionRecipe:
        return cls(pool.connection_class, dict(pool.connection_kwargs), timeout, seeds)

    def connect(self, address: tuple[str, int] | None = None) -> Connection:
        options = dict(self.options)
        if address is not None:
            options["host"], options["port"] = address
        conn = self.connection_class(
            **options,
            protocol=3,
            parser_class=_PushParser,
            socket_timeout=max(self.timeout, HEALTH_TIMEOUT),
            socket_connect_timeout=max(self.timeout, 0.5),
            retry=Retry(NoBackoff(), 0),
        )
        conn.connect()
        return conn

    def connect_writer(self, address: tuple[str, int] | None = None) -> redis.Redis:
        """The listener's writer: a redis-py client like the cache's own (RESP2, the cache's timeout) on one
        connection of its own, never reconnected behind our back (a new connection would not be tracked)."""
        options = dict(self.options)
        if address is not None:
            options["host"], options["port"] = address
        pool = redis.ConnectionPool(
            connection_class=self.connection_class,
            **options,
            socket_timeout=self.timeout,
            socket_connect_timeout=max(self.timeout, 0.5),
            retry=Retry(NoBackoff(), 0),
        )
        try:
            return redis.Redis(connection_pool=pool, single_connection_client=True, retry=Retry(NoBackoff(), 0))
        except BaseException:
            pool.disconnect()
            raise

    def primaries(self) -> list[tuple[str, int] | None]:
        """Where to subscribe: ``[None]`` for a standalone server, else every primary of the cluster."""
        if self.seeds is None:
            return [None]
        last: BaseException | None = None
        for seed in list(self.seeds):
            try:
                conn = self.connect(seed)
            except CALL_ERRORS as exc:
                last = exc
                continue
            try:
                conn.send_command("CLUSTER", "NODES")
                reply = conn.read_response()
            except CALL_ERRORS as exc:
                last = exc
                continue
            finally:
                conn.disconnect()
            primaries, everyone = _parse_nodes(reply)
            if primaries:
                self.seeds = everyone  # remember the whole cluster for the next time
                return primaries
        raise RedisConnectionError(f"no Redis Cluster node answered CLUSTER NODES ({last})")


def _parse_nodes(reply: Any) -> tuple[list[tuple[str, int] | None], list[tuple[str, int]]]:
    """(healthy primaries, all nodes) from a CLUSTER NODES reply."""
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    primaries: list[tuple[str, int] | None] = []
    everyone: list[tuple[str, int]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        address = parts[1].split("@")[0]
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or port == "0":
            continue
        node = (host, int(port))
        everyone.append(node)
        flags = parts[2].split(",")
        if "master" in flags and not {"fail", "fail?", "handshake", "noaddr"} & set(flags):
            primaries.append(node)
    return sorted(primaries, key=str), everyone


def _close_writer(writer: redis.Redis) -> None:
    try:
        writer.close()
        writer.connection_pool.disconnect()
    except CALL_ERRORS:
        pass


_listeners: weakref.WeakSet[InvalidationListener] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for listener in list(_listeners):
        listener._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class InvalidationListener:
    """A background thread that reports keys changed by other clients (``on_keys``), and calls ``on_reset``
    whenever reports may have been lost (connection down, then up again) or Redis flushed the database.

    The owner (a :class:`TieredCache`) drops its local copies in both callbacks. ``stats.invalidations``
    counts the keys reported. Call :meth:`stop` to end it (the Redis tier's ``close`` does).
    """

    def __init__(
        self,
        recipe: ConnectionRecipe,
        prefix: bytes,
        on_keys: Callable[[list[Key]], None],
        on_reset: Callable[[], None],
        stats: CacheStats,
        name: str = "redis",
    ) -> None:
        self._recipe = recipe
        self._prefix = prefix
        self._on_keys = on_keys
        self._on_reset = on_reset
        self._stats = stats
        self._name = name
        #: Times the local copies were dropped because reports may have been lost.
        self.resets = 0
        self._stop = threading.Event()
        self._start()
        _listeners.add(self)

    def _start(self) -> None:
        self._lock = threading.Lock()
        # piece of rkey (see _piece: how reports carry it) -> [writes of ours whose report has not come yet,
        # stamp of our latest write (b"": a delete)]
        self._echoes: dict[bytes, list[Any]] = {}
        self._subscribed = threading.Event()
        self._live = False  # mirrors _subscribed, read without a call on every write
        self._first_try = threading.Event()
        self._failed = threading.Event()  # the current subscription's "stop serving" flag
        # The writers: per primary (None: a standalone server), a connection whose own sets Redis does not
        # report (see try_set). One lock for them all: a set that finds it taken goes through the pool.
        self._writers: dict[tuple[str, int] | None, redis.Redis] = {}
        self._writer_lock = threading.Lock()
        self._writer_used = 0.0
        self._late: float | None = None  # when a set through the writer timed out (it holds the lock until read)
        self._late_writer: redis.Redis | None = None  # and which writer that was
        self._thread = threading.Thread(target=self._run, name=f"llamahome-invalidation-{self._name}", daemon=True)
        self._thread.start()

    def _after_fork(self) -> None:
        """In a forked child: the thread did not survive fork(), and reports to the parent are not ours.
        Listen again from scratch (its first subscription drops the local copies the child inherited)."""
        if not self._stop.is_set():
            self._stop = threading.Event()
            self._start()

    # ------------------------------------------------------------------------------------------ writers

    @property
    def _writer(self) -> redis.Redis | None:
        """The writer of a standalone server (None on a cluster, or while there is none)."""
        return self._writers.get(None)

    @property
    def has_writers(self) -> bool:
        """True while own sets can go through a writer (:meth:`try_set`)."""
        return bool(self._writers)

    @property
    def subscribed(self) -> bool:
        """True while tracking is on for every primary (reports are arriving)."""
        return self._subscribed.is_set()

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait until the first attempt to subscribe has finished (at most ``timeout`` s); True if subscribed."""
        self._first_try.wait(timeout)
        return self.subscribed

    def expect(self, writes: Iterable[tuple[bytes, bytes]]) -> bool:
        """Note that this process is about to write these ``(rkey, stamp)``: their reports may be our echoes.

        Returns False (nothing noted) while not subscribed: no report of such a write can be relied on.
        """
        if not self._subscribed.is_set():
            return False
        with self._lock:
            echoes = self._echoes
            for rkey, stamp in writes:
                piece = _piece(rkey)
                entry = echoes.get(piece)
                if entry is None:
                    echoes[piece] = [1, stamp]
                else:
                    entry[0] += 1
                    entry[1] = stamp
        return True

    def expect_one(self, rkey: bytes, stamp: bytes) -> bool:
        """:meth:`expect` for one write (the set path: no iterator, no Event call)."""
        if not self._live:
            return False
        piece = b"%d\r\n%b\r\n" % (len(rkey), rkey)  # _piece, inlined
        with self._lock:
            entry = self._echoes.get(piece)
            if entry is None:
                self._echoes[piece] = [1, stamp]
            else:
                entry[0] += 1
                entry[1] = stamp
        return True

    def try_set(self, rkey: bytes, payload: bytes, px: int | None, address: tuple[str, int] | None = None) -> bool:
        """Send a set through the writer (on a cluster: the writer of the primary at ``address``, which should
        own the key's slot), whose tracking is NOLOOP: Redis reports the key to this process only
        if another client changed it after us in the same event-loop cycle, so there is no echo to expect or
        check. False (nothing sent or changed) when there is no such writer (not subscribed, an unknown node),
        another thread is using one, or the node does not own the key's slot (MOVED, ASK, TRYAGAIN): the
        caller then sets through its pool and :meth:`expect_one`. Other errors are raised. No answer
        within the cache's timeout raises a TimeoutError but keeps the connection, and its tracking: the
        listener reads the late reply and frees the writer (or gives it up after HEALTH_TIMEOUT). Any other
        error may have cost the writer its connection, and so Redis its tracking: the listener subscribes
        again, dropping the local copies.
        """
        if address not in self._writers or not self._writer_lock.acquire(blocking=False):
            return False
        late = False
        try:
            writer = self._writers.get(address)
            if writer is None or writer.connection is None:
                return False
            conn = writer.connection
            try:
                if px is None:
                    conn.send_command("SET", rkey, payload)
                else:
                    conn.send_command("SET", rkey, payload, "PX", px)
                if not conn.can_read(timeout=self._recipe.timeout):
                    late = True
                    self._late, self._late_writer = time.monotonic(), writer
                    raise RedisTimeoutError(f"Redis did not answer within {self._recipe.timeout} s")
                conn.read_response()
            except (AskError, TryAgainError):  # (MovedError is an AskError) not this node's slot: nothing changed
                self._writer_used = time.monotonic()
                return False
            except ResponseError:  # Redis refused the write (OOM, READONLY...): nothing changed, still in step
                raise
            except BaseException:
                if not late:
                    self._writers = {}  # never used again: redis-py would reconnect it untracked
                    self._failed.set()
                raise
            self._writer_used = time.monotonic()
            return True
        finally:
            if not late:  # else the listener frees it once the reply is read
                self._writer_lock.release()

    def withdraw(self, rkeys: Iterable[bytes]) -> None:
        """The write announced by :meth:`expect` did not change these keys in Redis: no echo will come."""
        with self._lock:
            echoes = self._echoes
            for rkey in rkeys:
                piece = _piece(rkey)
                entry = echoes.get(piece)
                if entry is not None:
                    entry[0] -= 1
                    if entry[0] <= 0:
                        del echoes[piece]

    def stop(self) -> None:
        self._stop.set()
        self._failed.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------------------------------ thread

    def _run(self) -> None:
        delay = _MIN_DELAY
        while not self._stop.is_set():
            conns: list[Connection] = []
            writers: dict[tuple[str, int] | None, redis.Redis] = {}
            try:
                missing: list[tuple[str, int]] = []
                try:
                    primaries = self._recipe.primaries()
                    if primaries == [None]:  # a standalone server: the writer tracks, reports come here
                        conn = self._recipe.connect(None)
                        conns.append(conn)
                        conn.send_command("CLIENT", "ID")
                        listener_id = conn.read_response()
                        writer = writers[None] = self._recipe.connect_writer()
                        assert writer.connection is not None
                        self._track(writer.connection, redirect=listener_id)
                    for address in primaries if not writers else []:
                        try:
                            conn = self._recipe.connect(address)
                        except CALL_ERRORS:
                            if address is None:
                                raise
                            # A primary we cannot reach: nobody else may be able to either (its keys are then
                            # unreadable too), so listen to the others now and to it once it answers again.
                            missing.append(address)
                            continue
                        conns.append(conn)
                        assert address is not None
                        # As on a standalone server: this primary's writer tracks, its reports come to conn.
                        conn.send_command("CLIENT", "ID")
                        listener_id = conn.read_response()
                        writer = writers[address] = self._recipe.connect_writer(address)
                        assert writer.connection is not None
                        self._track(writer.connection, redirect=listener_id)
                    if not conns:
                        raise RedisConnectionError("no Redis primary answered")
                except CALL_ERRORS as exc:
                    log.debug("Invalidation listener: cannot subscribe yet: %s: %s", type(exc).__name__, exc)
                    self._first_try.set()
                else:
                    # Tracking is on everywhere: from now on every change is reported. Changes made before
                    # (while we were away) are unknown, so drop the local copies, and forget the echoes we
                    # were waiting for (a report may have been lost; unexpected echoes only cause misses).
                    with self._lock:
                        self._echoes.clear()
                    self._reset("subscribed")
                    self._subscribed.set()
                    self._live = True
                    self._first_try.set()
                    delay = _MIN_DELAY
                    self._serve(conns, primaries, missing, writers)
                    self._live = False
                    self._subscribed.clear()
                    if not self._stop.is_set():
                        self._reset("connection lost")
            except BaseException as exc:  # never let the thread die: log, drop, retry
                self._live = False
                self._subscribed.clear()
                log.warning("Invalidation listener failed (%s: %s); local copies dropped, retrying.",
                            type(exc).__name__, exc)
                self._reset("listener error")
            finally:
                for conn in conns:
                    try:
                        conn.disconnect()
                    except CALL_ERRORS:
                        pass
                for writer in writers.values():
                    _close_writer(writer)
            self._stop.wait(delay)
            delay = min(delay * 2, _MAX_DELAY)
        self._live = False
        self._subscribed.clear()

    def _track(self, conn: Connection, redirect: int | None = None) -> None:
        """Turn tracking on: on ``conn`` itself, or for the writer, reported to the ``redirect`` connection
        and without the writer's own changes (NOLOOP)."""
        options: list[Any] = ["REDIRECT", redirect] if redirect is not None else []
        options += ["BCAST", "PREFIX", self._prefix + b"s", "PREFIX", self._prefix + b"b"]
        if redirect is not None:
            options.append("NOLOOP")
        conn.send_command("CLIENT", "TRACKING", "ON", *options)
        reply = conn.read_response()
        if reply not in (b"OK", "OK"):
            raise RedisConnectionError(f"CLIENT TRACKING answered {reply!r}")

    def _serve(
        self, conns: list[Connection], primaries: list[tuple[str, int] | None], missing: list[tuple[str, int]],
        writers: dict[tuple[str, int] | None, redis.Redis],
    ) -> None:
        """Read reports on every connection until one fails (or the writer does), the primaries change, a
        missing primary answers again, or stop() is called."""
        failed = self._failed = threading.Event()
        if self._stop.is_set():
            failed.set()
        with self._writer_lock:
            self._writers, self._writer_used = dict(writers), time.monotonic()
        pinged = time.monotonic()
        readers = [
            threading.Thread(target=self._read, args=(conn, failed), name="llamahome-invalidation-reader", daemon=True)
            for conn in conns
        ]
        for reader in readers:
            reader.start()
        interval = HEALTH_INTERVAL if missing else TOPOLOGY_INTERVAL
        next_check = time.monotonic() + interval
        while not failed.is_set() and not self._stop.is_set():
            failed.wait(0.25)
            if self._late is not None:
                self._read_late_reply(self._late_writer, failed)
            elif len(writers) == 1 and time.monotonic() - self._writer_used > HEALTH_INTERVAL:
                self._check_writer(next(iter(writers.values())), failed)
            elif len(writers) > 1 and time.monotonic() - pinged > HEALTH_INTERVAL:  # one busy writer says
                pinged = time.monotonic()  # nothing of the others: each is checked
                for writer in writers.values():
                    if not failed.is_set():
                        self._check_writer(writer, failed)
            if self._recipe.seeds is not None and time.monotonic() >= next_check and not failed.is_set():
                next_check = time.monotonic() + interval
                try:
                    if self._recipe.primaries() != primaries:
                        log.info("Redis Cluster primaries changed; resubscribing for invalidations.")
                        failed.set()
                    elif self._any_answers(missing):
                        log.info("A Redis Cluster primary answers again; resubscribing for invalidations.")
                        failed.set()
                except CALL_ERRORS:
                    failed.set()
        failed.set()
        while True:  # a set in flight through the writer finishes first
            if self._writer_lock.acquire(timeout=0.05):
                self._writers = {}
                self._writer_lock.release()
                break
            if self._late is not None:  # held for a late reply, which no longer matters
                self._late, self._late_writer, self._writers = None, None, {}
                self._writer_lock.release()
                break
        for conn in conns:
            try:
                conn.disconnect()  # wakes a reader blocked on its socket
            except CALL_ERRORS:
                pass
        for reader in readers:
            reader.join(timeout=5)

    def _read_late_reply(self, writer: redis.Redis | None, failed: threading.Event) -> None:
        """A set through the writer timed out, holding the writer: read its reply when it comes, then free the
        writer; no reply within HEALTH_TIMEOUT counts as a lost connection."""
        assert self._late is not None
        conn = writer.connection if writer is not None else None
        try:
            if conn is None:
                raise RedisConnectionError("the writer has no connection")
            if not conn.can_read(timeout=0):
                if time.monotonic() - self._late > HEALTH_TIMEOUT:
                    raise RedisConnectionError("Redis did not answer a set through the writer")
                return
            try:
                conn.read_response()
            except ResponseError:  # the late set was refused: the connection is in step all the same
                pass
            self._writer_used = time.monotonic()
        except CALL_ERRORS as exc:
            log.info("Invalidation writer lost (%s: %s); local copies are dropped.", type(exc).__name__, exc)
            self._writers = {}
            failed.set()
        self._late, self._late_writer = None, None
        self._writer_lock.release()

    def _check_writer(self, writer: redis.Redis, failed: threading.Event) -> None:
        """PING the idle writer: if Redis closed it (a server timeout, CLIENT KILL), its tracking went with it
        and changes by others would go unreported, so that counts as a lost connection."""
        if not self._writer_lock.acquire(blocking=False):
            return  # a set is using it: alive
        try:
            if writer not in self._writers.values():
                return
            conn = writer.connection
            if conn is None:
                raise RedisConnectionError("the writer has no connection")
            conn.send_command("PING")
            if not conn.can_read(timeout=HEALTH_TIMEOUT):
                raise RedisConnectionError("the writer did not answer the health check")
            conn.read_response()
            self._writer_used = time.monotonic()
        except CALL_ERRORS as exc:
            log.info("Invalidation writer lost (%s: %s); local copies are dropped.", type(exc).__name__, exc)
            self._writers = {}
            failed.set()
        finally:
            self._writer_lock.release()

    def _any_answers(self, addresses: list[tuple[str, int]]) -> bool:
        for address in addresses:
            try:
                self._recipe.connect(address).disconnect()
            except CALL_ERRORS:
                continue
            return True
        return False

    def _read(self, conn: Connection, failed: threading.Event) -> None:
        last = time.monotonic()
        check_sent: float | None = None
        # What each reply we wait for answers, in order: a ROLE health check (None), a batch of echo checks,
        # or one echo check (a batch whose replies did not all match at once).
        waiting: collections.deque[Any] = collections.deque()
        try:
            reader = _PushReader(conn)
            next_read = 0.0
            while not failed.is_set() and not self._stop.is_set():
                if reader.wait(0.1):
                    pause = next_read - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    pieces: list[bytes] = []
                    not_ours: list[bytes] = []
                    pushes: list[Any] = []
                    flushed = False
                    for reply in reader.read_available(waiting, self._echoes, pieces, not_ours, pushes):
                        check_sent = None  # the health check's ROLE reply
                        if not isinstance(reply, list) or not reply or reply[0] != b"master":
                            raise _Resync("a tracked node is no longer a primary")
                    for push in pushes:
                        if isinstance(push, list) and push and push[0] == b"invalidate":
                            keys = push[1] if len(push) > 1 else None
                            if keys is None:
                                flushed = True
                            else:
                                pieces += map(_piece, keys)
                        # another kind of push (none is asked for): nothing to do
                    last = time.monotonic()
                    next_read = last + BATCH_WINDOW
                    if flushed:
                        self._report(None)
                    batch = self._report(pieces, not_ours) if pieces or not_ours else None
                    if batch is not None:
                        conn.send_packed_command([batch.command()])
                        waiting.append(batch)
                    continue
                now = time.monotonic()
                if check_sent is not None and now - check_sent > HEALTH_TIMEOUT:
                    raise RedisConnectionError("Redis did not answer the health check")
                if check_sent is None and now - last > HEALTH_INTERVAL:
                    conn.send_command("ROLE")
                    waiting.append(None)
                    check_sent = last = now
        except _READ_ERRORS as exc:
            if not self._stop.is_set() and not failed.is_set():
                log.info("Invalidation connection lost (%s: %s); local copies are dropped.", type(exc).__name__, exc)
        except BaseException as exc:
            if not self._stop.is_set() and not failed.is_set():  # else: its connection was closed under it
                log.warning("Invalidation reader failed: %s: %s", type(exc).__name__, exc)
        finally:
            failed.set()

    def _report(self, pieces: list[bytes] | None, not_ours: Sequence[bytes] = ()) -> _Batch | None:
        """Drop the local copies of keys changed by others (``pieces`` reported, ``not_ours`` failed their
        check); return the reports that may be our own echoes, to be checked (None if there are none).

        A report of a key we wrote is most likely our own write, but Redis reports a key once per event-loop
        cycle however many clients changed it, so another machine may have written it in the same cycle,
        after us. So an echo is checked: the stamp at the end of the entry must still be our latest write's
        (``GETRANGE key -16 -1``; our delete expects nothing there), else the key is dropped after all.
        """
        if pieces is None:  # FLUSHDB / FLUSHALL: everything changed
            self._reset("Redis flushed the database")
            return None
        changed: list[bytes] = list(not_ours)
        to_check: dict[bytes, bytes] = {}  # one check per key and batch, against our latest stamp
        with self._lock:
            echoes = self._echoes
            for piece in pieces:
                entry = echoes.get(piece)
                if entry is None:
                    changed.append(piece)
                    continue
                to_check[piece] = entry[1]
                entry[0] -= 1
                if entry[0] <= 0:
                    del echoes[piece]
        if changed:
            prefix, n = self._prefix, len(self._prefix)
            keys = []
            for piece in changed:
                rkey = _piece_key(piece)
                if rkey is not None and rkey.startswith(prefix):
                    keys.append(key_from_bytes(rkey[n:]))
            if keys:
                self._stats.add("invalidations", len(keys))
                try:
                    self._on_keys(keys)
                except Exception as exc:  # a closed tier, a full disk: the copies stay, say so
                    log.warning("Could not drop %d invalidated local copies: %s: %s", len(keys), type(exc).__name__, exc)
        return _Batch(list(to_check), list(to_check.values())) if to_check else None

    def _reset(self, why: str) -> None:
        self.resets += 1
        log.debug("Dropping local copies of network entries: %s.", why)
        try:
            self._on_reset()
        except Exception as exc:
            log.warning("Could not drop the local copies (%s): %s: %s", why, type(exc).__name__, exc)
