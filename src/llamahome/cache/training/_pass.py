"""The machinery of one pass of :meth:`TrainingCache.wrap`: what runs beside the training loop.

- :class:`Writer` compresses and writes the batches of a first pass off the critical path, with a bounded queue.
- :class:`Cursor` gives random access over a sequential source (restart and skip), storing what it passes by.
- :class:`SyncPass` is a pass without read-ahead; :func:`snapshot` takes a private copy of a batch.

It knows the storage only through :class:`Shelf` (one namespace's batches), which ``_cache`` implements: the
namespaces, manifests and byte budget live there, and nothing here reaches into them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from llamahome.errors import StorageError, TrainingCacheError

from ..codecs import decode, encode_parts
from ._prefetch import THREAD_PREFIX

__all__ = ["Cursor", "Shelf", "SourceEnd", "SyncPass", "Writer", "count_from", "map_tensors", "snapshot", "torch_module"]

log = logging.getLogger("llamahome.cache.training")


class Shelf(Protocol):
    """One namespace's stored batches, as a pass writes them (implemented by the training cache)."""

    @property
    def label(self) -> str:
        """The dataset id, for log messages."""
        ...

    @property
    def compression(self) -> bool:
        """True if batches are stored compressed."""
        ...

    def has(self, index: int) -> bool:
        """True if batch ``index`` is stored."""
        ...

    def store(self, index: int, parts: list[Any], raw: int) -> bool:
        """Store batch ``index`` (an encoded frame in ``parts``); False once the namespace cannot fit."""
        ...

    def count(self, counter: str, amount: int = 1) -> None:
        """Add ``amount`` to the cache's stats counter ``counter``."""
        ...


def snapshot(batch: Any) -> tuple[bytearray, int]:
    """An uncompressed frame of ``batch`` in a fresh buffer: a private copy the consumer cannot mutate.

    Taken in the producer before the batch is handed on, so a training step that edits its batch in place
    (masking labels, say) cannot change what is stored; compression then happens off the critical path.
    """
    encoded = encode_parts(batch, compress=False)
    buf = bytearray(encoded.size)
    view = memoryview(buf)
    offset = 0
    for part in encoded.parts:
        part_view = memoryview(part).cast("B")
        view[offset : offset + part_view.nbytes] = part_view
        offset += part_view.nbytes
    return buf, encoded.raw_size


# ---------------------------------------------------------------------------------------------- torch helpers


def torch_module() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is optional
        raise TrainingCacheError("pin_memory and device need torch; install it with pip install torch.") from exc
    return torch


def map_tensors(value: Any, fn: Callable[[Any], Any], torch: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn, torch) for k, v in value.items()}
    if isinstance(value, list):
        return [map_tensors(v, fn, torch) for v in value]
    if isinstance(value, tuple):
        return tuple(map_tensors(v, fn, torch) for v in value)
    return value


# ---------------------------------------------------------------------------------------------- writer


class Writer:
    """Compresses and writes one pass's batches, in a background thread when read-ahead is on.

    Holds at most ``capacity`` snapshots; the producer blocks when the disk falls behind, so memory stays
    bounded by ``batch_buffer``. Errors are kept and re-raised in the producer at its next submit.
    """

    def __init__(self, shelf: Shelf, capacity: int, threaded: bool) -> None:
        self.shelf = shelf
        self.capacity = max(1, capacity)
        self.error: BaseException | None = None
        self.disabled = False  # the namespace overflowed or the disk failed: stop storing, keep serving
        self.seconds = 0.0  # time spent compressing and writing (for the benchmark)
        self._queue: deque[tuple[int, bytearray, int] | None] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._pending: set[int] = set()
        self._threaded = threaded
        self._thread: threading.Thread | None = None  # started on the first batch to write

    def wants(self, index: int) -> bool:
        if self.disabled:
            return False
        with self._cond:
            if index in self._pending:
                return False
        return not self.shelf.has(index)

    def submit(self, index: int, batch: Any) -> None:
        self.raise_error()
        if not self.wants(index):
            return
        snap, raw = snapshot(batch)
        if not self._threaded:
            self._write(index, snap, raw)
            self.raise_error()
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"{THREAD_PREFIX}-writer", daemon=True)
            self._thread.start()
        with self._cond:
            while len(self._queue) >= self.capacity and self._thread.is_alive():
                self._cond.wait(0.1)  # with a timeout, so a writer that died cannot block the producer
            self._pending.add(index)
            self._queue.append((index, snap, raw))
            self._cond.notify_all()

    def raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            self.disabled = True
            raise error

    def _write(self, index: int, snap: bytearray, raw: int) -> None:
        if self.disabled:
            return
        began = time.perf_counter()
        try:
            if self.shelf.compression:
                encoded = encode_parts(decode(snap), compress=True)
                parts, raw = encoded.parts, encoded.raw_size
            else:
                parts = [snap]
            if not self.shelf.store(index, parts, raw):
                self.disabled = True
        except StorageError as exc:
            # A full or read-only disk must not stop training: stop caching this pass and say so once.
            self.shelf.count("errors")
            log.warning("The training cache stopped storing %r: %s", self.shelf.label, exc)
            self.disabled = True
        except BaseException as exc:  # noqa: BLE001 - a dead writer would block the producer: report instead
            self.error = exc
            self.disabled = True
        finally:
            self.seconds += time.perf_counter() - began

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                item = self._queue[0]
            if item is None:
                return
            index, snap, raw = item
            self._write(index, snap, raw)
            with self._cond:
                self._queue.popleft()
                self._pending.discard(index)
                self._cond.notify_all()

    def close(self) -> None:
        """Write what is queued (it is valid data) and stop the thread."""
        if self._thread is not None:
            with self._cond:
                self._queue.append(None)
                self._cond.notify_all()
            self._thread.join()


# ---------------------------------------------------------------------------------------------- source cursor


class SourceEnd(Exception):
    """The source has no batch at the requested index."""


class Cursor:
    """Random access over a sequential source: fetch(i) advances (or restarts) the source to batch ``i``.

    Batches passed over on the way are stored if the cache lacks them, so a resumed pass that skips ahead
    still completes the namespace. A ``Sequence`` source is indexed directly instead.
    """

    def __init__(
        self, source: Iterable[Any], writer: Writer | None, stop: Any, claim: Callable[[], None] | None = None
    ) -> None:
        self.source = source
        self.writer = writer
        self.stop = stop
        self.claim = claim
        self.iterator: Iterator[Any] | None = None
        self.position = 0
        self.end: int | None = None
        self.indexable = isinstance(source, Sequence) and not isinstance(source, (str, bytes))
        self._skipper: threading.Thread | None = None
        self._skip_error: BaseException | None = None

    def _restart(self) -> None:
        if self.claim is not None:
            self.claim()
        self.iterator = iter(self.source)
        self.position = 0

    def prepare(self, target: int, register: Callable[[threading.Thread], None] | None) -> None:
        """Start skipping the source to ``target`` in a helper thread, while the cached prefix is served."""
        if self.indexable or target <= 0:
            return

        def skip() -> None:
            try:
                self._restart()
                assert self.iterator is not None
                while self.position < target and not getattr(self.stop, "stopping", False):
                    next(self.iterator)
                    self.position += 1
            except StopIteration:
                self.end = self.position
            except BaseException as exc:  # noqa: BLE001 - re-raised in the producer by fetch()
                self._skip_error = exc

        self._skipper = threading.Thread(target=skip, name=f"{THREAD_PREFIX}-skip", daemon=True)
        if register is not None:
            register(self._skipper)
        self._skipper.start()

    def _join_skipper(self) -> None:
        if self._skipper is not None:
            self._skipper.join()
            self._skipper = None
            if self._skip_error is not None:
                error, self._skip_error = self._skip_error, None
                raise error

    def fetch(self, index: int) -> Any:
        self._join_skipper()
        if self.end is not None and index >= self.end:
            raise SourceEnd
        if self.indexable:
            try:
                batch = self.source[index]  # type: ignore[index]
            except IndexError:
                self.end = len(self.source)  # type: ignore[arg-type]
                raise SourceEnd from None
            if self.writer is not None:
                self.writer.submit(index, batch)
            return batch
        if self.iterator is None or index < self.position:
            self._restart()
        assert self.iterator is not None
        while True:
            try:
                batch = next(self.iterator)
            except StopIteration:
                self.end = self.position
                raise SourceEnd from None
            current = self.position
            self.position += 1
            if self.writer is not None:
                self.writer.submit(current, batch)
            if current == index:
                return batch

    def close(self) -> None:
        self._join_skipper_quietly()
        close = getattr(self.iterator, "close", None)
        self.iterator = None
        if close is not None:
            with contextlib.suppress(Exception):
                close()

    def _join_skipper_quietly(self) -> None:
        if self._skipper is not None:
            self._skipper.join()
            self._skipper = None


class SyncPass(Iterator[Any]):
    """A pass without read-ahead (``prefetch=0``): batches are produced and stored in the consumer's thread."""

    def __init__(self, items: Iterator[Any], transform: Callable[[Any], Any] | None) -> None:
        self._items = items
        self._transform = transform

    def __next__(self) -> Any:
        batch = next(self._items)
        return self._transform(batch) if self._transform is not None else batch

    def close(self) -> None:
        close = getattr(self._items, "close", None)
        if close is not None:
            close()

    @property
    def alive(self) -> bool:
        return False


def count_from(start: int, total: int | None) -> Iterator[int]:
    index = start
    while total is None or index < total:
        yield index
        index += 1
