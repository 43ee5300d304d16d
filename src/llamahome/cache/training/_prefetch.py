"""Read-ahead: run an iterator in a background thread, a bounded number of items ahead of its consumer.

The consumer gets exactly the producer's items, in order; an exception raised by the producer reaches the
consumer as the same exception object. The background thread stops, promptly and without leaking, when

- the consumer calls ``close()`` (or leaves a ``with`` block),
- the consumer's iterator is garbage-collected (``break`` out of a ``for`` loop, an exception in the loop body),
- the interpreter exits (daemon thread, plus an ``atexit`` hook that stops every live pipeline).

A producer blocked inside user code (a slow source) cannot be interrupted; it notices the stop as soon as that
call returns, and being a daemon thread it never holds up interpreter exit.

    from llamahome.cache.training import read_ahead   # also: llamahome.cache.prefetch

    for batch in read_ahead(slow_batches(), prefetch=4):
        train_step(batch)          # the next four batches are being produced meanwhile
"""

from __future__ import annotations

import atexit
import itertools
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["ReadAhead", "read_ahead", "Stopped", "THREAD_PREFIX", "live_pipelines", "stop_all"]

T = TypeVar("T")

#: Every background thread of the training cache has a name starting with this (tests look for leftovers).
THREAD_PREFIX = "llamahome-readahead"

_counter = itertools.count(1)
_live: set[_Pipeline] = set()
_live_lock = threading.Lock()

#: How long a stop triggered by garbage collection waits for the producer, in seconds. Short: it runs in the
#: consumer's thread, and a producer stuck in slow user code finishes on its own (it is a daemon thread).
GC_JOIN_TIMEOUT = 1.0


class Stopped(Exception):
    """Raised inside the producer when the consumer has gone; the producer unwinds and exits."""


class _Pipeline:
    """The state shared by a consumer and its producer thread: a bounded queue and the stop flag.

    Deliberately holds no reference to the consumer's iterator, so that the iterator can be collected
    (and its finalizer stop this pipeline) while the producer is still running.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.cond = threading.Condition(threading.Lock())
        self.items: deque[Any] = deque()
        self.stopped = False
        self.finished = False
        self.error: BaseException | None = None
        self.threads: list[threading.Thread] = []

    # producer side --------------------------------------------------------------------------------
    def put(self, item: Any) -> None:
        with self.cond:
            while len(self.items) >= self.capacity and not self.stopped:
                self.cond.wait()
            if self.stopped:
                raise Stopped
            self.items.append(item)
            self.cond.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self.cond:
            self.finished = True
            self.error = error
            self.cond.notify_all()

    @property
    def stopping(self) -> bool:
        return self.stopped

    # consumer side --------------------------------------------------------------------------------
    def get(self) -> tuple[bool, Any]:
        """(True, item), or (False, None) at the end; raises the producer's error after its last item."""
        with self.cond:
            while not self.items and not self.finished and not self.stopped:
                self.cond.wait()
            if self.items:
                item = self.items.popleft()
                self.cond.notify_all()
                return True, item
            error, self.error = self.error, None
        if error is not None:
            raise error
        return False, None

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Tell the producer to stop, drop what it read ahead, and wait for its threads; True if they ended."""
        with self.cond:
            self.stopped = True
            self.items.clear()
            self.cond.notify_all()
        current = threading.current_thread()
        ended = True
        for thread in list(self.threads):
            if thread is not current:
                thread.join(timeout)
                ended = ended and not thread.is_alive()
        if ended:
            with _live_lock:
                _live.discard(self)
        return ended


def _run(pipeline: _Pipeline, make_items: Callable[[_Pipeline], Iterator[Any]]) -> None:
    error: BaseException | None = None
    items: Iterator[Any] | None = None
    try:
        items = make_items(pipeline)
        for item in items:
            pipeline.put(item)
    except Stopped:
        pass
    except BaseException as exc:  # the consumer must see every producer failure, SystemExit included
        error = exc
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            try:
                close()  # run the producer's own finally blocks (unpin, flush) in this thread
            except BaseException as exc:  # noqa: BLE001 - reported to the consumer below
                error = error or exc
        pipeline.finish(error)
        del items, error
        with _live_lock:
            _live.discard(pipeline)


def _finalize(pipeline: _Pipeline) -> None:
    pipeline.stop(GC_JOIN_TIMEOUT)


class ReadAhead(Iterator[T], Generic[T]):
    """An iterator whose items are produced up to ``prefetch`` ahead by a background thread.

    ``make_items(stop)`` is called in the background thread and returns the producer iterator; it may poll
    ``stop.stopping`` between expensive steps. Use :func:`read_ahead` for a plain iterable.
    """

    def __init__(
        self,
        make_items: Callable[[Any], Iterator[T]],
        prefetch: int,
        *,
        name: str = "",
        transform: Callable[[T], T] | None = None,
    ) -> None:
        self._pipeline = _Pipeline(prefetch)
        self._transform = transform
        self._done = False
        label = f"{THREAD_PREFIX}-{next(_counter)}" + (f"-{name}" if name else "")
        thread = threading.Thread(target=_run, args=(self._pipeline, make_items), name=label, daemon=True)
        self._pipeline.threads.append(thread)
        with _live_lock:
            _live.add(self._pipeline)
        self._finalizer = weakref.finalize(self, _finalize, self._pipeline)
        thread.start()

    def __iter__(self) -> ReadAhead[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        try:
            ok, item = self._pipeline.get()
        except BaseException:
            self._done = True
            raise
        if not ok:
            self._done = True
            raise StopIteration
        return self._transform(item) if self._transform is not None else item

    def add_thread(self, thread: threading.Thread) -> None:
        """Join ``thread`` too when this iterator stops (for helper threads the producer starts)."""
        self._pipeline.threads.append(thread)

    def close(self, timeout: float | None = 5.0) -> bool:
        """Stop the producer and wait up to ``timeout`` seconds for it; True if every thread ended."""
        self._done = True
        ended = self._pipeline.stop(timeout)
        if ended:
            self._finalizer.detach()
        return ended

    @property
    def alive(self) -> bool:
        """True while a background thread of this iterator still runs."""
        return any(t.is_alive() for t in self._pipeline.threads)

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_ahead(iterable: Iterable[T], prefetch: int = 4) -> ReadAhead[T]:
    """Iterate ``iterable`` in a background thread, up to ``prefetch`` items ahead of the consumer."""

    def produce(_: Any) -> Iterator[T]:
        yield from iterable

    return ReadAhead(produce, prefetch)


def live_pipelines() -> int:
    """How many read-ahead pipelines still have a running producer (for tests and diagnostics)."""
    with _live_lock:
        return len(_live)


def stop_all(timeout: float | None = 1.0) -> None:
    """Stop every live read-ahead pipeline (run at interpreter exit)."""
    with _live_lock:
        pipelines = list(_live)
    for pipeline in pipelines:
        pipeline.stop(timeout)


atexit.register(stop_all)
