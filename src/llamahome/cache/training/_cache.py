"""TrainingCache: collate batches once, serve later epochs from disk with read-ahead.

Fine-tuning re-tokenizes and re-collates the same data every epoch and starves the accelerator meanwhile.
``TrainingCache.wrap`` stores each batch of the first pass and serves later passes from the cache, in the same
order or shuffled by a seed, always produced (or decoded) a few batches ahead in a background thread::

    cache = TrainingCache("/data/cache/training", size=4096)
    batches = cache.wrap(collated_batches, "wikitext-train", fingerprint={"tokenizer": "llama3", "seq": 2048})
    for epoch in range(3):
        batches.set_epoch(epoch)
        for batch in batches:            # epoch 0 from the source, later epochs from the cache
            train_step(batch)

Layout: one directory per namespace (dataset id + fingerprint) holding one checksummed blob file per batch
and a small JSON manifest (dataset, fingerprint, batch count, completion). A namespace is served as complete
only once a pass has stored every batch and seen the source end; an interrupted pass (an exception, a
``break``, a crash) leaves it incomplete, and the next pass serves the stored prefix from the cache and
completes the rest from the source. Namespaces are evicted whole, oldest first (``cleanup_policy="fifo"``),
to stay within ``size``.

Single batches stored with ``put``/``set`` are a plain key-value store, the disk tier (``path/values``): the
training cache is a :class:`~llamahome.cache.base.Store` through it and keeps the store contract.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from llamahome.errors import (
    CacheClosedError,
    CacheValueError,
    ConfigError,
    StorageError,
    TrainingCacheError,
    ValueTooLargeError,
)

from .._legacy import remove_old_kv_files
from ..base import Key, Store
from .. import files as cf
from ..codecs import decode
from ..disk import DiskCache
from ..policies import POLICY_NAMES, Usage, check_policy_name, eviction_order
from ..stats import CacheStats, CleanupReport
from ..units import MIB, parse_size, shown
from ._pass import Cursor, SourceEnd, SyncPass, Writer, count_from, map_tensors, torch_module
from ._prefetch import ReadAhead

try:  # cross-process "this namespace is being read or written" marks; absent on Windows
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["TrainingCache", "CachedBatches", "BatchTooLargeError", "POLICIES", "namespace_id", "stable_fingerprint"]

log = logging.getLogger(__name__)

#: Eviction orders the training cache understands (the config accepts these names for every cache).
POLICIES = POLICY_NAMES

_NS_PREFIX = "ns-"
_MANIFEST = "manifest.json"
_LOCK = ".lock"
_BATCH_RE = re.compile(r"^b(\d{9})\.lhb$")
#: Where single batches stored with put() live: a DiskCache of their own (the one key-value store).
_VALUES_DIR = "values"
#: The key-value files of versions before the values store; cleanup() removes them (only these names).
_OLD_KV_DIR = "kv"
#: A namespace directory without a manifest this old (seconds) is a crash leftover, not a write in progress.
_ORPHAN_GRACE = 60.0


class BatchTooLargeError(TrainingCacheError, ValueTooLargeError):
    """A batch larger than the training cache's whole ``size``: raise ``training_cache.size``."""


def _batch_key(ns_id: str, index: int) -> bytes:
    """The key a batch file is bound to (namespace and index): a file copied or moved to another slot is a miss."""
    return f"{ns_id}/{index}".encode()


def _batch_name(index: int) -> str:
    return f"b{index:09d}.lhb"


def namespace_id(dataset_id: str, fingerprint: Any = None) -> str:
    """The directory name of a dataset's namespace: changes whenever ``dataset_id`` or ``fingerprint`` does.

    The same dataset and fingerprint give the same name in every process and every run; a fingerprint that
    cannot promise that is refused (see :func:`stable_fingerprint`).
    """
    text = json.dumps([dataset_id, stable_fingerprint(fingerprint)], sort_keys=True, separators=(",", ":"))
    return _NS_PREFIX + xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogatepass"))


#: Deepest fingerprint accepted (also what keeps a self-containing list from recursing forever).
_FINGERPRINT_DEPTH = 32


def stable_fingerprint(value: Any, _where: str = "fingerprint", _depth: int = 0) -> Any:
    """``value`` as plain JSON data that reads the same in every process, or :class:`TrainingCacheError`.

    Accepted: None, bool, int, float, str, paths (as their text), numpy scalars, and lists, tuples and dicts
    with string keys of these. Anything else is refused, because the only text it has is a ``repr`` that may
    differ per process (``<object at 0x7f...>``): such a fingerprint would never hit and would open a new
    namespace every run.
    """
    if _depth > _FINGERPRINT_DEPTH:
        raise TrainingCacheError(
            f"The {_where} is nested more than {_FINGERPRINT_DEPTH} levels deep (or contains itself); "
            "describe the data with a flat dict of strings and numbers."
        )
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic) and isinstance(value, (np.bool_, np.integer, np.floating)):
        return value.item()
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        return path if isinstance(path, str) else os.fsdecode(path)
    if isinstance(value, (list, tuple)):
        return [stable_fingerprint(v, f"{_where}[{i}]", _depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TrainingCacheError(
                    f"The {_where} has a key of type {type(key).__name__}; fingerprint dicts need string keys "
                    "(write it as str(key))."
                )
            out[key] = stable_fingerprint(item, f"{_where}[{key!r}]", _depth + 1)
        return out
    raise TrainingCacheError(
        f"The {_where} is a {type(value).__name__}, whose only text form may differ from one process to the next, "
        "so the cache would never find it again. Use a string, number, or list/dict of those describing the data "
        "and its preprocessing (e.g. {'tokenizer': name, 'seq_len': 2048, 'version': 3})."
    )


@dataclass
class _Namespace:
    """What the cache knows about one dataset namespace (mirrors its manifest, plus the batch index)."""

    id: str
    dir: Path
    dataset_id: str
    fingerprint: Any
    seq: int
    created: float
    used: float
    uses: int = 0
    complete: bool = False
    total: int | None = None
    oversize: int | None = None  # the byte budget it did not fit in, if it ever overflowed
    batches: dict[int, int] = field(default_factory=dict)  # index -> file size
    bytes: int = 0
    pins: int = 0

    def manifest(self) -> dict[str, Any]:
        return {
            "version": 1,
            "dataset_id": self.dataset_id,
            "fingerprint": self.fingerprint,
            "seq": self.seq,
            "created": self.created,
            "used": self.used,
            "uses": self.uses,
            "complete": self.complete,
            "total": self.total,
            "oversize": self.oversize,
        }

    def contiguous(self, start: int = 0) -> int:
        """The first index at or after ``start`` that is not stored."""
        index = start
        while index in self.batches:
            index += 1
        return index


def _usage(ns: _Namespace) -> Usage:
    """A namespace's usage record for the shared eviction order (``policies.ORDER_KEYS``): a namespace is
    written once, so its creation is its last write; ``used``/``uses`` count passes started."""
    return Usage(seq=ns.seq, written=ns.created, last_used=ns.used, uses=ns.uses)


# ---------------------------------------------------------------------------------------------- the cache


class TrainingCache(Store):
    """Collated training batches on disk, served back with read-ahead.

    ``size`` is the byte budget in MB (1 MB = 1 MiB; strings like ``"4GB"`` work). ``prefetch`` batches are
    produced or decoded ahead of the consumer (0 turns read-ahead off), and at most ``batch_buffer`` batches
    are held in memory by a pass (read ahead plus waiting to be written). ``cleanup_policy`` picks which
    namespace goes first when space is needed: ``fifo`` (oldest created, the default), ``time`` (same, by
    clock), ``lru`` or ``lfu`` (by passes started).

    ``put(key, batch)``/``get(key)`` store single batches; :meth:`wrap` caches a whole iterable of batches.
    Instances pickle as their configuration, so a ``DataLoader`` worker reopens the same directory.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: float | str = 512,
        batch_buffer: int = 32,
        prefetch: int = 4,
        cleanup_policy: str = "fifo",
        *,
        compression: bool = True,
        clock: Callable[[], float] = time.time,
        name: str = "training_cache",
    ) -> None:
        try:
            size_mb = parse_size(size)
        except ValueError as exc:
            raise ConfigError(f"training_cache.size: {exc}") from exc
        policy = check_policy_name(cleanup_policy, "training_cache.cleanup_policy")
        if not isinstance(batch_buffer, int) or batch_buffer < 1:
            raise ConfigError(f"training_cache.batch_buffer: must be a whole number of at least 1, not {batch_buffer!r}.")
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ConfigError(f"training_cache.prefetch: must be a whole number of 0 or more, not {prefetch!r}.")
        if prefetch > batch_buffer:
            raise ConfigError(
                f"training_cache.prefetch: prefetch ({prefetch}) is larger than batch_buffer ({batch_buffer}); "
                "batches read ahead must fit in the buffer, so lower prefetch or raise batch_buffer."
            )
        self.path = Path(path)
        self.size = size_mb
        self.max_bytes = max(1, round(size_mb * MIB))
        self.batch_buffer = batch_buffer
        self.prefetch = prefetch
        self.cleanup_policy = policy
        self.compression = bool(compression)
        self.clock = clock
        self.name = name
        # Counters of the namespaces (passes); the values store keeps its own, and `stats` adds them up.
        self._own = CacheStats(name=name, max_bytes=self.max_bytes)
        self._lock = threading.RLock()
        self._closed = False
        self._namespaces: dict[str, _Namespace] = {}
        self._seq = 0
        self._bytes = 0  # the namespaces' bytes
        self._orphans: list[Path] = []
        self._passes: weakref.WeakSet[ReadAhead[Any]] = weakref.WeakSet()
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StorageError(
                exc.errno, f"Cannot create the training cache directory {self.path} ({exc.strerror}); pick a writable path."
            ) from exc
        # Single batches (put/get/set/delete) are a plain key-value store: the disk tier, which keeps the
        # store contract (ttl, eviction order, crash safety), rather than a second index written here.
        self._values = DiskCache(
            self.path / _VALUES_DIR, size=size_mb, policy=policy, compression=self.compression, clock=clock, name=name
        )
        try:
            self._scan()
        except BaseException:
            self._values.close()
            raise

    # ------------------------------------------------------------------------------------ pickling
    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _reopen,
            (
                {
                    "path": str(self.path),
                    "size": self.size,
                    "batch_buffer": self.batch_buffer,
                    "prefetch": self.prefetch,
                    "cleanup_policy": self.cleanup_policy,
                    "compression": self.compression,
                    "clock": self.clock,
                    "name": self.name,
                },
            ),
        )

    # ------------------------------------------------------------------------------------ index
    def _scan(self) -> None:
        """Rebuild the in-memory index from the directory (the files are the truth; see module docs).

        Runs under the lock, so no batch is written mid-listing; namespaces already known are updated in
        place, because passes in flight hold them.
        """
        with self._lock:
            found: dict[str, _Namespace] = {}
            orphans: list[Path] = []
            max_seq = 0
            with os.scandir(self.path) as entries:
                for entry in entries:
                    if not entry.name.startswith(_NS_PREFIX) or not entry.is_dir(follow_symlinks=False):
                        continue
                    ns = self._load_namespace(Path(entry.path))
                    if ns is None:
                        orphans.append(Path(entry.path))
                        continue
                    found[ns.id] = ns
                    max_seq = max(max_seq, ns.seq)
            namespaces: dict[str, _Namespace] = {}
            for ns_id, ns in found.items():
                known = self._namespaces.get(ns_id)
                if known is not None:
                    known.batches, known.bytes = ns.batches, ns.bytes
                    known.complete = known.complete and ns.complete
                    known.total = known.total if known.total is not None else ns.total
                    ns = known
                namespaces[ns_id] = ns
            for ns_id, known in self._namespaces.items():
                if ns_id not in namespaces and known.pins:  # removed by another process while a pass uses it
                    known.batches, known.bytes, known.complete = {}, 0, False
                    namespaces[ns_id] = known
            self._namespaces = namespaces
            self._orphans = orphans
            self._seq = max(self._seq, max_seq)
            self._recount()

    def _recount(self) -> None:
        self._bytes = sum(ns.bytes for ns in self._namespaces.values())
        self._own.bytes = self._bytes
        self._own.entries = sum(len(ns.batches) for ns in self._namespaces.values())

    @property
    def stats(self) -> CacheStats:  # type: ignore[override]
        """The namespaces' counters and holdings plus those of the single batches stored with put()."""
        total = CacheStats.combine(self.name, [self._own, self._values.stats])
        total.max_bytes = self.max_bytes
        return total

    def _total_bytes(self) -> int:
        """Bytes held now: the namespaces' batches and the put() values (read from the values store)."""
        return self._bytes + self._values.stats.bytes

    def _load_namespace(self, directory: Path) -> _Namespace | None:
        try:
            manifest = json.loads((directory / _MANIFEST).read_text("utf-8"))
            ns = _Namespace(
                id=directory.name,
                dir=directory,
                dataset_id=str(manifest["dataset_id"]),
                fingerprint=manifest.get("fingerprint"),
                seq=int(manifest["seq"]),
                created=float(manifest["created"]),
                used=float(manifest.get("used", manifest["created"])),
                uses=int(manifest.get("uses", 0)),
                complete=bool(manifest.get("complete", False)),
                total=manifest.get("total"),
                oversize=manifest.get("oversize"),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        with os.scandir(directory) as entries:
            for entry in entries:
                match = _BATCH_RE.match(entry.name)
                if match and entry.is_file(follow_symlinks=False):
                    size = entry.stat(follow_symlinks=False).st_size
                    ns.batches[int(match.group(1))] = size
                    ns.bytes += size
        if ns.complete and (ns.total is None or any(i not in ns.batches for i in range(ns.total))):
            ns.complete = False  # a batch went missing since: serve the rest from the source and repair
        return ns

    def _write_manifest(self, ns: _Namespace) -> None:
        data = json.dumps(ns.manifest(), default=str, indent=1).encode()
        cf.write_atomic(ns.dir / _MANIFEST, [data])

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _namespace(self, dataset_id: str, fingerprint: Any) -> _Namespace:
        ns_id = namespace_id(dataset_id, fingerprint)
        with self._lock:
            ns = self._namespaces.get(ns_id)
            if ns is not None and ns.dir.is_dir():
                return ns
            now = self.clock()
            fp = stable_fingerprint(fingerprint)
            ns = _Namespace(ns_id, self.path / ns_id, dataset_id, fp, self._next_seq(), now, now)
            ns.dir.mkdir(exist_ok=True, mode=0o700)
            self._write_manifest(ns)
            self._namespaces[ns_id] = ns
            return ns

    def _namespace_state(self, ns_id: str) -> tuple[bool, int | None]:
        with self._lock:
            ns = self._namespaces.get(ns_id)
            return (False, None) if ns is None else (ns.complete, ns.total)

    def _has_batch(self, ns: _Namespace, index: int) -> bool:
        with self._lock:
            return index in ns.batches

    def _count(self, counter: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self._own, counter, getattr(self._own, counter) + amount)

    # ------------------------------------------------------------------------------------ budget
    def _busy(self, ns: _Namespace) -> bool:
        """True if a pass here or in another process is using ``ns`` (it must not be evicted)."""
        if ns.pins:
            return True
        if fcntl is None:
            return False
        try:
            fd = os.open(ns.dir / _LOCK, os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing drops the probe lock
        return False

    def _victims(self, protect: _Namespace | None) -> list[_Namespace]:
        """Namespaces holding batches (but ``protect``), first to evict first."""
        held = [ns for ns in self._namespaces.values() if ns is not protect and ns.bytes]
        return eviction_order(held, self.cleanup_policy, _usage)

    def _make_room(self, nbytes: int, protect: _Namespace | None, report: CleanupReport | None = None) -> bool:
        """Evict whole namespaces in policy order until ``nbytes`` more fit beside everything held.

        Single batches stored with put() are evicted by their own store, among themselves, in the same
        policy order; a pass makes room by evicting older namespaces only.
        """
        total = self._total_bytes()
        if total + nbytes <= self.max_bytes:
            return True
        for ns in self._victims(protect):
            unit = ns.id
            if self._busy(ns):
                continue
            removed, freed = self._drop_namespace(ns, keep_manifest=False)
            total -= freed
            self._own.evictions += removed
            if report is not None:
                report.evicted += removed
                report.bytes_freed += freed
                report.details.setdefault("evicted", []).append(unit)
            if total + nbytes <= self.max_bytes:
                return True
        return total + nbytes <= self.max_bytes

    def _drop_namespace(self, ns: _Namespace, keep_manifest: bool) -> tuple[int, int]:
        removed, freed = len(ns.batches), ns.bytes
        for index in list(ns.batches):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ns.dir / _batch_name(index))
        ns.batches.clear()
        ns.bytes = 0
        ns.complete = False
        if keep_manifest:
            self._write_manifest(ns)
        else:
            self._namespaces.pop(ns.id, None)
            self._remove_tree(ns.dir)
        self._recount()
        return removed, freed

    def _remove_tree(self, directory: Path) -> None:
        # Only our own names inside our own directory; a symlink is unlinked, never followed.
        with contextlib.suppress(FileNotFoundError):
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        continue
                    if _BATCH_RE.match(entry.name) or entry.name in (_MANIFEST, _LOCK) or cf.temp_owner(entry.name) is not None:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
            with contextlib.suppress(OSError):
                os.rmdir(directory)

    def _too_large(self, nbytes: int, what: str) -> TrainingCacheError:
        need = nbytes / MIB
        return BatchTooLargeError(
            f"{what} takes {nbytes:,} bytes on disk, more than the training cache's whole size of "
            f"{self.max_bytes:,} bytes ({self.size:g} MB); raise training_cache.size to at least {need:.2f} MB "
            "or make batches smaller."
        )

    def _store_batch(self, ns: _Namespace, index: int, parts: list[Any], raw: int) -> bool:
        """Write batch ``index`` of ``ns``; False if the namespace cannot fit in the budget (overflow)."""
        key = _batch_key(ns.id, index)
        nbytes = cf.file_size(len(key), sum(memoryview(p).nbytes for p in parts))
        if nbytes > self.max_bytes:
            raise self._too_large(nbytes, f"Batch {index} of dataset {ns.dataset_id!r}")
        with self._lock:
            if self._closed or ns.oversize is not None:
                return False
            if index in ns.batches:
                return True
            if not self._make_room(nbytes, ns):
                self._overflow(ns)
                return False
            if not ns.dir.is_dir():  # evicted by cleanup() or another process meanwhile
                ns.dir.mkdir(exist_ok=True, mode=0o700)
                self._write_manifest(ns)
                self._namespaces[ns.id] = ns
            size = cf.write_value(ns.dir / _batch_name(index), key, parts, created=self.clock(), seq=self._next_seq())
            ns.batches[index] = size
            ns.bytes += size
            self._bytes += size
            self._own.bytes = self._bytes
            self._own.entries += 1
            self._own.sets += 1
            self._own.raw_bytes += raw
            self._own.stored_bytes += size - cf.frame_offset(len(key))
            return True

    def _overflow(self, ns: _Namespace) -> None:
        stored = ns.bytes
        self._drop_namespace(ns, keep_manifest=False)
        ns.oversize = self.max_bytes
        self._own.errors += 1
        with contextlib.suppress(OSError):
            ns.dir.mkdir(exist_ok=True, mode=0o700)
            self._write_manifest(ns)
            self._namespaces[ns.id] = ns
        log.warning(
            "Dataset %r does not fit in the training cache (%s bytes stored when the %s-byte budget ran out); "
            "its batches will come from the source every pass. Raise training_cache.size to cache it.",
            ns.dataset_id,
            stored,
            self.max_bytes,
        )

    def _read_batch(self, ns: _Namespace, index: int) -> Any:
        """Batch ``index`` of ``ns`` from disk, or None if it is missing or damaged (counted, then dropped)."""
        key = _batch_key(ns.id, index)
        blob = cf.read_value_file(ns.dir / _batch_name(index), None)
        if blob is not None and blob.header.key != key and not (blob.header.legacy_blob and blob.header.key == b""):
            blob = None  # another slot's batch (batch files of earlier versions name no key: still read)
        value: Any = None
        if blob is not None:
            try:
                value = decode(blob.frame)
            except CacheValueError:
                blob = None
        if blob is None:
            with self._lock:
                size = ns.batches.pop(index, None)
                if size is not None:
                    self._own.corrupt += 1
                    ns.bytes -= size
                    ns.complete = False
                    self._recount()
                    with contextlib.suppress(OSError):
                        os.unlink(ns.dir / _batch_name(index))
            return None
        return value

    # ------------------------------------------------------------------------------------ passes
    def wrap(
        self,
        iterable: Iterable[Any],
        dataset_id: str,
        *,
        fingerprint: Any = None,
        shuffle_seed: int | None = None,
        start: int = 0,
        device: Any = None,
        pin_memory: bool = False,
    ) -> CachedBatches:
        """Cache the batches of ``iterable`` under ``dataset_id``; each iteration of the result is one pass.

        The first pass yields from ``iterable`` while storing each batch; later passes yield from the cache,
        in the same order, or shuffled by ``shuffle_seed`` (see :class:`CachedBatches`). ``fingerprint``
        (JSON-like: strings, numbers, paths, lists and string-keyed dicts of them, describing the tokenizer,
        sequence length, preprocessing version; anything else is refused) is part of the namespace, so
        changing it starts over. ``start`` resumes the first pass at that batch index. ``device`` moves torch
        tensors there with non-blocking copies from ``pin_memory`` pinned buffers (both need torch; pinning
        is skipped where CUDA is absent). ``iterable`` must be re-iterable (a list, a ``DataLoader``) for
        passes that need the source again: a pass interrupted before the cache was complete, or a dataset
        larger than ``size``.
        """
        self._check_open()
        if not isinstance(dataset_id, str) or not dataset_id:
            raise TrainingCacheError("dataset_id must be a non-empty string naming the dataset and its split.")
        if device is not None:
            torch = torch_module()
            device = torch.device(device)
            if device.type == "cuda" and not torch.cuda.is_available():
                raise TrainingCacheError(
                    f"device={str(device)!r} was asked for but CUDA is not available; pass device=None or 'cpu'."
                )
        if shuffle_seed is not None and not isinstance(shuffle_seed, (int, np.integer)):
            raise TrainingCacheError(f"shuffle_seed must be an int or None, not {type(shuffle_seed).__name__}.")
        fingerprint = stable_fingerprint(fingerprint)  # refused here, before anything runs, if unstable
        namespace = namespace_id(dataset_id, fingerprint)
        return CachedBatches(
            self, iterable, dataset_id, fingerprint, namespace, shuffle_seed, int(start), device, pin_memory
        )

    def _pin(self, ns: _Namespace) -> int | None:
        with self._lock:
            ns.pins += 1
            ns.used = self.clock()
            ns.uses += 1
            if self.cleanup_policy in ("lru", "lfu"):  # the order must survive a restart
                with contextlib.suppress(StorageError):
                    if ns.dir.is_dir():
                        self._write_manifest(ns)
        if fcntl is None:
            return None
        try:
            fd = os.open(ns.dir / _LOCK, os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            fcntl.flock(fd, fcntl.LOCK_SH)
            return fd
        except OSError:
            return None

    def _unpin(self, ns: _Namespace, fd: int | None) -> None:
        with self._lock:
            ns.pins -= 1
        if fd is not None:
            os.close(fd)

    def _open_pass(self, wrapped: CachedBatches, start: int, epoch: int) -> Iterator[Any]:
        self._check_open()
        ns = self._namespace(wrapped.dataset_id, wrapped.fingerprint)
        transform = self._transform(wrapped._device)
        pin = wrapped._pin and torch_module().cuda.is_available()
        if self.prefetch == 0:
            return SyncPass(self._pass_items(wrapped, ns, start, epoch, None, pin, None), transform)

        def make_items(stop: Any) -> Iterator[Any]:
            # stop is the pipeline: helper threads join its list so that stopping the pass waits for them too
            return self._pass_items(wrapped, ns, start, epoch, stop, pin, stop.threads.append)

        iterator: ReadAhead[Any] = ReadAhead(make_items, self.prefetch, name=wrapped.dataset_id[:24], transform=transform)
        with self._lock:
            self._passes.add(iterator)
        return iterator

    def _transform(self, device: Any) -> Callable[[Any], Any] | None:
        if device is None:
            return None
        torch = torch_module()

        def move(batch: Any) -> Any:
            # Issued from the consumer's thread on its current stream, so later kernels are ordered after
            # the copy; non_blocking lets the copy overlap with the host returning to the training loop.
            return map_tensors(batch, lambda t: t.to(device, non_blocking=True), torch)

        return move

    def _pass_items(
        self,
        wrapped: CachedBatches,
        ns: _Namespace,
        start: int,
        epoch: int,
        stop: Any,
        pin: bool,
        register: Callable[[threading.Thread], None] | None,
    ) -> Iterator[Any]:
        """The batches of one pass, in order; runs in the producer thread (or inline without read-ahead)."""
        lock_fd = self._pin(ns)
        writer: Writer | None = None
        cursor: Cursor | None = None
        torch = torch_module() if pin else None
        try:
            with self._lock:
                if ns.oversize is not None and ns.oversize < self.max_bytes:
                    ns.oversize = None  # the budget grew since it overflowed: try to cache it again
                oversize = ns.oversize is not None
                complete, total = ns.complete, ns.total
                prefix_end = ns.contiguous(start)
            if not oversize:
                capacity = max(1, self.batch_buffer - self.prefetch)
                writer = Writer(_Shelf(self, ns), capacity, threaded=stop is not None)
            cursor = Cursor(wrapped.source, writer, stop, wrapped._claim_source)
            if not (complete and total is not None):
                wrapped._claim_source(check_only=True)  # fail before serving anything, not halfway through
            if complete and total is not None:
                order: Iterable[int]
                if wrapped.shuffle_seed is not None:
                    order = np.random.default_rng([int(wrapped.shuffle_seed), epoch]).permutation(total)[start:].tolist()
                else:
                    order = range(start, total)
            else:
                # Source order; the stored prefix is read from disk while a helper thread skips the source
                # past it, so a resumed pass does not wait for the source to replay what is already cached.
                order = count_from(start, total)
                if not oversize and prefix_end > start:
                    cursor.prepare(prefix_end, register)
            for index in order:
                batch = None
                if self._has_batch(ns, index):
                    batch = self._read_batch(ns, index)
                    if batch is not None:
                        self._count("hits")
                if batch is None:
                    try:
                        batch = cursor.fetch(index)
                    except SourceEnd:
                        break
                    self._count("misses")
                if torch is not None:
                    batch = map_tensors(batch, lambda t: t.pin_memory(), torch)
                yield batch
            if writer is not None:
                writer.close()
                writer.raise_error()
                writer_done = writer
                writer = None
                self._finish_pass(ns, cursor.end, writer_done)
        finally:
            if cursor is not None:
                cursor.close()
            if writer is not None:
                writer.close()
            self._unpin(ns, lock_fd)

    def _finish_pass(self, ns: _Namespace, end: int | None, writer: Writer) -> None:
        with self._lock:
            if end is not None:
                ns.total = end
            if ns.total is None or ns.oversize is not None or writer.disabled:
                return
            complete = all(i in ns.batches for i in range(ns.total))
            if complete != ns.complete or end is not None:
                ns.complete = complete
                with contextlib.suppress(StorageError):
                    if ns.dir.is_dir():
                        self._write_manifest(ns)

    # ------------------------------------------------------------------------------------ Store API
    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError(f"The training cache {self.name!r} was closed; create a new TrainingCache to use it again.")

    def put(self, key: Key, batch: Any, ttl: float | None = None) -> None:
        """Store one batch under ``key`` (``ttl`` seconds; None: until evicted).

        Single batches live in their own key-value store (the disk tier) inside ``path``, within the same
        ``size`` as the namespaces: older namespaces not in use are evicted when the total goes over.
        """
        self._check_open()
        try:
            self._values.set(key, batch, ttl=ttl)
        except ValueTooLargeError as exc:
            raise BatchTooLargeError(
                f"The batch for key {shown(key)} does not fit in the training cache's whole size of "
                f"{self.max_bytes:,} bytes ({self.size:g} MB); raise training_cache.size or make batches smaller."
            ) from exc
        with self._lock:
            self._make_room(0, None)

    def set(self, key: Key, value: Any, ttl: float | None = None) -> None:
        """The store interface's spelling of :meth:`put`."""
        self.put(key, value, ttl=ttl)

    def get(self, key: Key, default: Any = None) -> Any:
        """The batch stored under ``key`` by :meth:`put`, or ``default`` (missing, expired or damaged)."""
        self._check_open()
        return self._values.get(key, default)

    def delete(self, key: Key) -> bool:
        """Remove the batch stored under ``key`` by :meth:`put`; True if it was there."""
        self._check_open()
        return self._values.delete(key)

    def __contains__(self, key: object) -> bool:
        return not self._closed and key in self._values

    def invalidate(self, dataset_id: str) -> int:
        """Drop every namespace of ``dataset_id`` (all fingerprints) not in use; return batches removed."""
        self._check_open()
        removed = 0
        with self._lock:
            for ns in [n for n in self._namespaces.values() if n.dataset_id == dataset_id]:
                if not self._busy(ns):
                    removed += self._drop_namespace(ns, keep_manifest=False)[0]
        return removed

    def clear(self) -> None:
        """Remove every batch and entry (namespaces in use by a pass are left alone)."""
        self._check_open()
        with self._lock:
            for ns in list(self._namespaces.values()):
                if not self._busy(ns):
                    self._drop_namespace(ns, keep_manifest=False)
            self._values.clear()

    def namespaces(self) -> list[dict[str, Any]]:
        """A description of each namespace, oldest first: dataset, fingerprint, batches, bytes, completion."""
        with self._lock:
            items = sorted(self._namespaces.values(), key=lambda n: n.seq)
            return [
                dict(n.manifest(), id=n.id, batches=len(n.batches), bytes=n.bytes, in_use=n.pins > 0) for n in items
            ]

    def cleanup(self) -> CleanupReport:
        """Re-read the directory (other processes may have written), drop crash leftovers, enforce ``size``."""
        self._check_open()
        report = CleanupReport(cache=self.name)
        self._scan()
        with self._lock:
            for orphan in self._orphans:
                if orphan.is_dir() and time.time() - orphan.stat().st_mtime < _ORPHAN_GRACE:
                    continue  # maybe a namespace being created right now by another process
                report.orphans += 1
                if orphan.is_dir():
                    self._remove_tree(orphan)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(orphan)
            for directory in [self.path / _OLD_KV_DIR, *(ns.dir for ns in self._namespaces.values())]:
                report.orphans += cf.sweep(directory)[0]
            report.orphans += remove_old_kv_files(self.path / _OLD_KV_DIR)
        values = self._values.cleanup()
        for counter in ("expired", "evicted", "orphans", "missing", "corrupt", "bytes_freed"):
            setattr(report, counter, getattr(report, counter) + getattr(values, counter))
        with self._lock:
            self._make_room(0, None, report)
        return report

    def close(self) -> None:
        """Stop every pass still reading ahead. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            passes = list(self._passes)
            self._passes.clear()
        for iterator in passes:
            iterator.close()
        self._values.close()

    def __repr__(self) -> str:
        return f"TrainingCache({str(self.path)!r}, size={self.size:g}, prefetch={self.prefetch})"


class CachedBatches(Iterable[Any]):
    """The iterable :meth:`TrainingCache.wrap` returns: each ``iter()`` is one pass (an epoch).

    The first pass starts at ``start`` (resume), later ones at 0. Cached passes are shuffled when a
    ``shuffle_seed`` was given: the order is a permutation drawn from ``(shuffle_seed, epoch)``, where the
    epoch counts passes (or is set with :meth:`set_epoch`), so a resumed run reproduces the same order.
    """

    def __init__(
        self,
        cache: TrainingCache,
        source: Iterable[Any],
        dataset_id: str,
        fingerprint: Any,
        namespace: str,
        shuffle_seed: int | None,
        start: int,
        device: Any,
        pin_memory: bool,
    ) -> None:
        self.cache = cache
        self.source = source
        self.dataset_id = dataset_id
        self.fingerprint = fingerprint
        self.shuffle_seed = shuffle_seed
        self.namespace = namespace
        self.epoch = 0
        self._start = start
        self._device = device
        self._pin = pin_memory
        # Weak: a pass whose iterator the consumer dropped must be collectable, which is what stops it.
        self._live: weakref.WeakSet[ReadAhead[Any]] = weakref.WeakSet()
        self._one_shot = iter(source) is source  # a generator or iterator: it can be read only once
        self._source_started = False

    def _claim_source(self, *, check_only: bool = False) -> None:
        """Called before each read of the source from its start; refuses to re-read a one-shot iterator."""
        if self._one_shot and self._source_started:
            raise TrainingCacheError(
                f"Dataset {self.dataset_id!r} needs its source again (the cache is not complete: an earlier pass "
                "was interrupted, or the data is larger than the cache), but the source is an iterator that was "
                "already read. Pass a re-iterable source (a list, a DataLoader, an object with __iter__)."
            )
        if not check_only:
            self._source_started = True

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch number of the next pass (it picks the shuffle order)."""
        self.epoch = int(epoch)

    @property
    def complete(self) -> bool:
        """True once every batch is stored and the source's end was seen."""
        return self.cache._namespace_state(self.namespace)[0]

    @property
    def num_batches(self) -> int | None:
        """The number of batches per pass, once a pass has seen the source end (else None)."""
        return self.cache._namespace_state(self.namespace)[1]

    def __len__(self) -> int:
        total = self.num_batches
        if total is None:
            try:
                return len(self.source)  # type: ignore[arg-type]
            except TypeError:
                raise TypeError(
                    "The number of batches is known after the first complete pass (or if the source has a len())."
                ) from None
        return total

    def iter(self, start: int | None = None, epoch: int | None = None) -> Iterator[Any]:
        """One pass from batch ``start`` (default: the resume index for the first pass, else 0)."""
        if start is None:
            start, self._start = self._start, 0
        if start < 0:
            raise TrainingCacheError(f"A pass cannot start at batch {start}; give a batch index of 0 or more.")
        if epoch is not None:
            self.epoch = int(epoch)
        epoch_now = self.epoch
        self.epoch += 1
        iterator = self.cache._open_pass(self, start, epoch_now)
        if isinstance(iterator, ReadAhead):
            self._live.add(iterator)
        return iterator

    def __iter__(self) -> Iterator[Any]:
        return self.iter()

    def close(self) -> None:
        """Stop every pass of this iterable that is still reading ahead."""
        for iterator in list(self._live):
            iterator.close()
        self._live.clear()

    def __repr__(self) -> str:
        return f"CachedBatches(dataset_id={self.dataset_id!r}, namespace={self.namespace!r})"


class _Shelf:
    """One namespace of a cache as a pass's :class:`~._pass.Writer` sees it (the boundary between the modules)."""

    def __init__(self, cache: TrainingCache, ns: _Namespace) -> None:
        self._cache = cache
        self._ns = ns

    @property
    def label(self) -> str:
        return self._ns.dataset_id

    @property
    def compression(self) -> bool:
        return self._cache.compression

    def has(self, index: int) -> bool:
        return self._cache._has_batch(self._ns, index)

    def store(self, index: int, parts: list[Any], raw: int) -> bool:
        return self._cache._store_batch(self._ns, index, parts, raw)

    def count(self, counter: str, amount: int = 1) -> None:
        self._cache._count(counter, amount)


def _reopen(kwargs: dict[str, Any]) -> TrainingCache:
    path = kwargs.pop("path")
    return TrainingCache(path, **kwargs)

