"""SystemCache: scratch files and directories that vanish after ``max_age``, plus small keyed values.

Converted checkpoints, downloads in progress and other scratch work go to ``temp_dir``; ``cleanup()`` removes
what is older than ``max_age``, then the oldest beyond ``size``::

    cache = SystemCache(".cache/temp", size=256, max_age=86400)
    with cache.temp_file(suffix=".bin") as path:      # removed on exit (unless keep=True)
        convert_checkpoint(src, path)
    scratch = cache.temp_dir()                        # a plain path: kept until it ages out
    with cache.in_use(scratch):                       # never cleaned up while this block runs
        unpack_archive(archive, scratch)

Safety rules, each with a reason:

- Only what this cache created is ever removed: every scratch item is recorded in a private registry
  (``temp_dir/.llamahome-system/registry``) before it is created, and cleanup walks the registry, never the
  directory. A user's own files in ``temp_dir`` are never touched.
- Cleanup never follows a symbolic link: items are removed through directory file descriptors with
  ``O_NOFOLLOW`` and ``lstat``, so a link (planted inside a scratch directory, or put in place of a scratch
  file) is unlinked itself and its target survives.
- An item in use is never removed: :meth:`in_use` (and the context managers) hold an ``flock`` on the item's
  lock file, which cleanup in any process on the machine respects.
- Everything is private to the user: directories 0700, files 0600.

Keyed values (``set``/``get``/``delete``) are the disk tier in ``temp_dir/.llamahome-system/values``: the
system cache is a :class:`~llamahome.cache.base.Store` through it and keeps the store contract; a value without
a ttl lives ``max_age`` seconds. Scratch items and values share ``size``: cleanup removes scratch items (oldest
by policy) until both fit, and the values store evicts values among themselves.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamahome.errors import CacheClosedError, CacheError, CacheValueError, ConfigError, StorageError, ValueTooLargeError

from .base import Key, Store, validate_ttl
from ._legacy import remove_old_kv_files
from . import files as cf
from .disk import DiskCache
from .policies import POLICY_NAMES, Usage, check_policy_name, eviction_order
from .stats import CacheStats, CleanupReport
from .units import MIB, parse_duration, parse_size, shown

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: in-use marks hold within this process only
    fcntl = None  # type: ignore[assignment]

__all__ = ["SystemCache", "ScratchPath", "POLICIES"]

#: Orders for removing items beyond ``size`` (``policies.ORDER_KEYS``; a scratch item's ``created`` is reset by
#: ``touch``, so it is both its first-insertion and its last-write time: ``time`` and ``fifo`` agree here).
POLICIES = POLICY_NAMES

_META = ".llamahome-system"
_REGISTRY = "registry"
_LOCKS = "locks"
#: Keyed values live in a disk-tier store of their own (the one key-value store), in this meta subdirectory.
_VALUES = "values"
#: The key-value files of versions before the values store; cleanup() removes them (only these names).
_OLD_KV = "kv"
_NAME_RE = re.compile(r"^[A-Za-z0-9._+=@,-]{1,200}$")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
#: A registry record whose item does not exist yet may be a creation in progress (record first, then item).
_MISSING_GRACE = 60.0


@dataclass
class _Record:
    name: str
    kind: str  # "file" or "dir"
    created: float
    used: float
    uses: int = 0
    ttl: float | None = None

    def as_json(self) -> bytes:
        return json.dumps(self.__dict__, separators=(",", ":")).encode()


def _usages(records: list[_Record]) -> dict[str, Usage]:
    """Usage records for the shared eviction order. Records carry no sequence number (several processes write
    them), so ``seq`` is the rank by ``(created, name)``: oldest first, and the name makes ties total."""
    ranked = sorted(records, key=lambda r: (r.created, r.name))
    return {r.name: Usage(seq=i, written=r.created, last_used=r.used, uses=r.uses) for i, r in enumerate(ranked)}


def _check_part(text: str, what: str) -> str:
    if text and not _NAME_RE.match(text):
        raise CacheError(
            f"The {what} {text!r} may only use letters, digits and ._+=@,- (no path separators); pick a plainer one."
        )
    return text


class ScratchPath(os.PathLike):  # type: ignore[type-arg]
    """A scratch file or directory the cache created: a path, and a context manager that removes it.

    Use it as a path (``open(p)``, ``os.fspath(p)``, ``p.path``, ``p / "name"``) and it is kept until it ages
    out; use it in a ``with`` block and it is marked in use inside the block and removed at the end (unless
    it was created with ``keep=True``).
    """

    def __init__(self, cache: SystemCache, path: Path, keep: bool) -> None:
        self._cache = cache
        self.path = path
        self.keep = keep
        self._hold: contextlib.ExitStack | None = None

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"ScratchPath({str(self.path)!r})"

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ScratchPath):
            return self.path == other.path
        if isinstance(other, (str, os.PathLike)):
            return self.path == Path(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.path)

    def __getattr__(self, attribute: str) -> Any:
        # Everything else a Path offers (write_bytes, stat, name, suffix, ...) works on the scratch path.
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self.path, attribute)

    def __enter__(self) -> Path:
        stack = contextlib.ExitStack()
        stack.enter_context(self._cache.in_use(self.path))
        self._hold = stack
        return self.path

    def __exit__(self, *exc_info: object) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.close()  # release our own mark first, or removal would see the item as in use
        if not self.keep:
            self._cache.remove(self.path)


class SystemCache(Store):
    """Scratch files and keyed values under ``temp_dir``, removed after ``max_age`` seconds or beyond ``size``.

    ``size`` is in MB (1 MB = 1 MiB; strings like ``"512KB"`` work); ``max_age`` in seconds (``"1d"`` works).
    ``cleanup_policy`` orders removals beyond ``size``: ``time``/``fifo`` (oldest first), ``lru`` or ``lfu``.
    ``clock`` is injectable so tests can age items without waiting.
    """

    def __init__(
        self,
        temp_dir: str | os.PathLike[str] = ".cache/temp",
        size: float | str = 256,
        max_age: float | str = 86400,
        cleanup_policy: str = "time",
        *,
        clock: Callable[[], float] = time.time,
        name: str = "system_cache",
    ) -> None:
        try:
            size_mb = parse_size(size)
        except ValueError as exc:
            raise ConfigError(f"system_cache.size: {exc}") from exc
        try:
            self.max_age = parse_duration(max_age)
        except ValueError as exc:
            raise ConfigError(f"system_cache.max_age: {exc}") from exc
        policy = check_policy_name(cleanup_policy, "system_cache.cleanup_policy")
        self.size = size_mb
        self.max_bytes = max(1, round(size_mb * MIB))
        self.cleanup_policy = policy
        self.clock = clock
        self.name = name
        # Counters of the scratch items; the values store keeps its own, and `stats` adds them up.
        self._items = CacheStats(name=name, max_bytes=self.max_bytes)
        self._lock = threading.RLock()
        self._closed = False
        self._in_use: Counter[str] = Counter()
        # Resolved once: a temp_dir that is itself a link is the user's choice; nothing below is followed.
        self.root = Path(temp_dir).resolve()
        self._meta = self.root / _META
        self._item_bytes = 0  # scratch items' size at the last scan
        self._item_count = 0
        # Keyed values are a plain key-value store: the disk tier (ttl, eviction order, crash safety and the
        # store contract), not a second index written here. Without a ttl a value lives max_age seconds.
        self._values_options: dict[str, Any] = {"size": size_mb, "policy": policy, "clock": clock, "name": name}
        self._store: DiskCache | None = None
        # temp_dir is created by the first scratch item or value, not here: a CacheManager that never uses
        # scratch space leaves no `.cache/temp` behind. One that exists already (made by another process, or
        # an earlier run) is opened now.
        if os.path.lexists(self.root):
            self._attach()
        else:
            self._check_creatable()

    def _attach(self) -> DiskCache:
        """Create temp_dir and its private subdirectories and open the values store (once); return it."""
        with self._lock:
            if self._store is None:
                self._make_dirs()
                store = DiskCache(self._meta / _VALUES, **self._values_options)
                try:
                    self._refresh_items()
                except BaseException:
                    store.close()
                    raise
                self._store = store
            return self._store

    def _attached(self) -> DiskCache | None:
        """The values store, or None while temp_dir does not exist (then there is nothing to read or clean)."""
        if self._store is None and os.path.lexists(self.root):
            return self._attach()
        return self._store

    def _make_dirs(self) -> None:
        created_root = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            if created_root:
                os.chmod(self.root, 0o700)
            for sub in (self._meta, self._meta / _REGISTRY, self._meta / _LOCKS):
                sub.mkdir(exist_ok=True, mode=0o700)
                if sub.is_symlink() or not sub.is_dir():
                    raise StorageError(f"{sub} is not a private directory of the system cache; remove it and retry.")
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(
                exc.errno, f"Cannot create the system cache directory {self.root} ({exc.strerror}); pick a writable temp_dir."
            ) from exc

    def _check_creatable(self) -> None:
        """Fail at construction, not at the first write, when ``temp_dir`` could never be created."""
        ancestor = self.root.parent
        while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise StorageError(
                errno.EACCES,
                f"Cannot create the system cache directory {self.root}: {ancestor} is not a writable directory; "
                "pick a writable temp_dir.",
            )

    # ------------------------------------------------------------------------------------ helpers
    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError(f"The system cache {self.name!r} was closed; create a new SystemCache to use it again.")

    def _open_dir(self, path: Path) -> int:
        return os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)

    def _write_record(self, record: _Record) -> None:
        cf.write_atomic(self._meta / _REGISTRY / f"{record.name}.json", [record.as_json()])

    def _read_record(self, name: str) -> _Record | None:
        try:
            data = json.loads((self._meta / _REGISTRY / f"{name}.json").read_bytes())
            record = _Record(
                name=str(data["name"]),
                kind=str(data["kind"]),
                created=float(data["created"]),
                used=float(data.get("used", data["created"])),
                uses=int(data.get("uses", 0)),
                ttl=None if data.get("ttl") is None else float(data["ttl"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        # The record names the item to delete: accept only a plain name that matches its own file name.
        if record.name != name or not _NAME_RE.match(name) or record.kind not in ("file", "dir"):
            return None
        return record

    def _records(self) -> list[_Record]:
        records = []
        with os.scandir(self._meta / _REGISTRY) as entries:
            for entry in entries:
                if entry.name.endswith(".json") and not entry.name.startswith("."):
                    record = self._read_record(entry.name[: -len(".json")])
                    if record is not None:
                        records.append(record)
        return records

    def _name_of(self, path: str | os.PathLike[str]) -> str:
        candidate = Path(os.fspath(path))
        if not candidate.is_absolute():
            candidate = Path.cwd() / candidate
        if candidate.parent != self.root and Path(os.path.normpath(candidate.parent)) != self.root:
            raise CacheError(f"{path} is not a scratch item of the system cache in {self.root}; pass a path it returned.")
        name = candidate.name
        if not _NAME_RE.match(name) or self._read_record(name) is None:
            raise CacheError(f"{path} was not created by the system cache in {self.root}; pass a path it returned.")
        return name

    # ------------------------------------------------------------------------------------ scratch items
    def _create(self, kind: str, suffix: str, prefix: str, ttl: float | None) -> Path:
        self._check_open()
        _check_part(suffix, "suffix")
        _check_part(prefix, "prefix")
        ttl = validate_ttl(ttl)
        if ttl is not None and not ttl > 0:
            # A key-value set with ttl <= 0 deletes; a scratch item that expires at once would be useless.
            raise CacheValueError(f"A scratch item's ttl must be a positive number of seconds, not {ttl!r}.")
        self._attach()
        for _ in range(100):
            name = f"{prefix}{secrets.token_hex(8)}{suffix}"
            if not _NAME_RE.match(name) or name.startswith(_META):
                raise CacheError(f"The scratch name {name!r} is not usable; choose a shorter or plainer prefix and suffix.")
            path = self.root / name
            if os.path.lexists(path):
                continue
            now = self.clock()
            record = _Record(name, kind, now, now, 0, ttl)
            try:
                # Record first, then the item: a crash in between leaves a record with no item (cleaned up
                # later), never an item nobody knows the cache created.
                self._write_record(record)
                if kind == "file":
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600))
                else:
                    os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            except OSError as exc:
                self._forget(name)
                raise StorageError(exc.errno, f"Cannot create a scratch {kind} in {self.root} ({exc.strerror}).") from exc
            with self._lock:
                self._item_count += 1
                self._items.entries = self._item_count
            return path
        raise StorageError(f"Could not find a free scratch name in {self.root}; run cleanup() or pick another prefix.")

    def temp_file(self, suffix: str = "", prefix: str = "lh-", *, keep: bool = False, ttl: float | None = None) -> ScratchPath:
        """A new empty file (0600) in ``temp_dir``: ``with cache.temp_file(".bin") as path:`` removes it at
        the end of the block unless ``keep``; used as a plain path it is kept until it ages out."""
        return ScratchPath(self, self._create("file", suffix, prefix, ttl), keep)

    def temp_dir(self, suffix: str = "", prefix: str = "lh-", *, keep: bool = False, ttl: float | None = None) -> ScratchPath:
        """A new empty directory (0700) in ``temp_dir``; like :meth:`temp_file` for directories."""
        return ScratchPath(self, self._create("dir", suffix, prefix, ttl), keep)

    def new_temp_file(self, suffix: str = "", prefix: str = "lh-", *, ttl: float | None = None) -> Path:
        """A new empty file kept until it ages out (``max_age``, or ``ttl`` seconds if given)."""
        return self._create("file", suffix, prefix, ttl)

    def new_temp_dir(self, suffix: str = "", prefix: str = "lh-", *, ttl: float | None = None) -> Path:
        """A new empty directory kept until it ages out (``max_age``, or ``ttl`` seconds if given)."""
        return self._create("dir", suffix, prefix, ttl)

    @contextlib.contextmanager
    def in_use(self, path: str | os.PathLike[str]) -> Iterator[Path]:
        """Mark a scratch item in use for the block: no cleanup, in any process, removes it meanwhile."""
        self._check_open()
        name = self._name_of(path)
        fd = None
        with self._lock:
            self._in_use[name] += 1
        try:
            if fcntl is not None:
                fd = os.open(self._meta / _LOCKS / f"{name}.lock", os.O_RDONLY | os.O_CREAT | _O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_SH)
            record = self._read_record(name)
            if record is not None:
                record.used = self.clock()
                record.uses += 1
                with contextlib.suppress(OSError):
                    self._write_record(record)
            yield self.root / name
        finally:
            if fd is not None:
                os.close(fd)
            with self._lock:
                self._in_use[name] -= 1
                if self._in_use[name] <= 0:
                    del self._in_use[name]

    def touch(self, path: str | os.PathLike[str]) -> None:
        """Restart a scratch item's age (it was just used and should stay ``max_age`` longer)."""
        name = self._name_of(path)
        record = self._read_record(name)
        if record is not None:
            record.created = record.used = self.clock()
            self._write_record(record)

    def remove(self, path: str | os.PathLike[str]) -> bool:
        """Remove a scratch item now (unless another holder has it in use); True if it was removed."""
        self._check_open()
        try:
            name = self._name_of(path)
        except CacheError:
            return False
        record = self._read_record(name)
        if record is None:
            return False
        with self._lock:
            removed = self._remove_item(record) is not None
            if removed:
                self._items.deletes += 1
            return removed

    def _lock_probe(self, name: str) -> int | None | bool:
        """An exclusive lock fd on the item's lock file, None without fcntl, or False if someone holds it."""
        if name in self._in_use:
            return False
        if fcntl is None:
            return None
        path = self._meta / _LOCKS / f"{name}.lock"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | _O_CLOEXEC, 0o600)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        return fd

    def _remove_item(self, record: _Record) -> int | None:
        """Remove the item (not following links) and its record; bytes freed, or None if it is in use."""
        probe = self._lock_probe(record.name)
        if probe is False:
            return None
        try:
            freed = 0
            root_fd = self._open_dir(self.root)
            try:
                freed = _remove_at(root_fd, record.name)
            finally:
                os.close(root_fd)
            self._forget(record.name)
            with self._lock:
                self._item_count = max(0, self._item_count - 1)
                self._item_bytes = max(0, self._item_bytes - freed)
                self._items.entries = self._item_count
                self._items.bytes = self._item_bytes
            return freed
        finally:
            if isinstance(probe, int) and not isinstance(probe, bool):
                with contextlib.suppress(OSError):
                    os.unlink(self._meta / _LOCKS / f"{record.name}.lock")
                os.close(probe)

    def _forget(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._meta / _REGISTRY / f"{name}.json")

    def items(self) -> list[dict[str, Any]]:
        """Every scratch item, oldest first: name, path, kind, age (s), bytes, and whether it is in use."""
        now = self.clock()
        out: list[dict[str, Any]] = []
        if self._attached() is None:
            return out
        root_fd = self._open_dir(self.root)
        try:
            for record in sorted(self._records(), key=lambda r: r.created):
                out.append(
                    {
                        "name": record.name,
                        "path": str(self.root / record.name),
                        "kind": record.kind,
                        "age": now - record.created,
                        "bytes": _size_at(root_fd, record.name),
                        "in_use": self._lock_probe_held(record.name),
                    }
                )
        finally:
            os.close(root_fd)
        return out

    def _lock_probe_held(self, name: str) -> bool:
        probe = self._lock_probe(name)
        if probe is False:
            return True
        if isinstance(probe, int) and not isinstance(probe, bool):
            os.close(probe)
        return False

    def _refresh_items(self) -> list[tuple[_Record, int | None]]:
        """Each record with its item's size now (None: the item is missing); updates stats."""
        result: list[tuple[_Record, int | None]] = []
        root_fd = self._open_dir(self.root)
        try:
            for record in self._records():
                result.append((record, _size_at(root_fd, record.name)))
        finally:
            os.close(root_fd)
        with self._lock:
            self._item_bytes = sum(size or 0 for _, size in result)
            self._item_count = sum(1 for _, size in result if size is not None)
            self._items.bytes = self._item_bytes
            self._items.entries = self._item_count
        return result

    # ------------------------------------------------------------------------------------ keyed values
    @property
    def stats(self) -> CacheStats:  # type: ignore[override]
        """The scratch items' counters and holdings plus those of the keyed values."""
        store = self._attached()
        total = CacheStats.combine(self.name, [self._items] + ([store.stats] if store is not None else []))
        total.max_bytes = self.max_bytes
        return total

    def set(self, key: Key, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` (bytes, or anything the codecs take) under ``key`` for ``ttl`` seconds (default
        ``max_age``). The ttl rule is every store's: ``ttl <= 0`` deletes, a bad ttl is CacheValueError."""
        self._check_open()
        ttl = validate_ttl(ttl)
        try:
            self._attach().set(key, value, ttl=self.max_age if ttl is None else ttl)
        except ValueTooLargeError as exc:
            raise ValueTooLargeError(
                f"The value for {shown(key)} does not fit in the system cache's size of {self.max_bytes:,} bytes; "
                "raise system_cache.size or store it as a scratch file."
            ) from exc

    put = set

    def get(self, key: Key, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` (missing, expired or damaged)."""
        self._check_open()
        store = self._attached()
        if store is None:  # nothing was ever stored here: a miss, counted like the values store counts one
            with self._lock:
                self._items.misses += 1
            return default
        return store.get(key, default)

    def delete(self, key: Key) -> bool:
        """Remove the value under ``key``; True if it was there."""
        self._check_open()
        store = self._attached()
        return store is not None and store.delete(key)

    def __contains__(self, key: object) -> bool:
        store = None if self._closed else self._attached()
        return store is not None and key in store

    # ------------------------------------------------------------------------------------ maintenance
    def cleanup(self) -> CleanupReport:
        """Remove items and values older than ``max_age``, then the oldest beyond ``size``.

        Never removes an item in use, anything the cache did not create, or anything a link points to.
        """
        self._check_open()
        report = CleanupReport(cache=self.name)
        store = self._attached()
        if store is None:  # temp_dir was never created: nothing to clean
            return report
        with self._cleanup_lock(), self._lock:
            now = self.clock()
            for record, size in self._refresh_items():
                if size is None:
                    if now - record.created >= _MISSING_GRACE:
                        self._forget(record.name)
                        report.missing += 1
                    continue
                limit = record.ttl if record.ttl is not None else self.max_age
                if now - record.created >= limit:
                    freed = self._remove_item(record)
                    if freed is None:
                        report.details.setdefault("in_use", []).append(record.name)
                        continue
                    report.expired += 1
                    report.bytes_freed += freed
                    self._items.expirations += 1
            report.orphans += cf.sweep(self._meta / _REGISTRY)[0] + remove_old_kv_files(self._meta / _OLD_KV)
            values = store.cleanup()
            for counter in ("expired", "evicted", "orphans", "missing", "corrupt", "bytes_freed"):
                setattr(report, counter, getattr(report, counter) + getattr(values, counter))
            self._evict(report, store)
        return report

    def _evict(self, report: CleanupReport, store: DiskCache) -> None:
        """Remove the oldest (by policy) scratch items not in use until items and values fit ``size``.

        The values are kept within ``size`` by their own store, evicted among themselves in the same order.
        """
        items = [(r, s) for r, s in self._refresh_items() if s is not None]
        total = self._item_bytes + store.stats.bytes
        if total <= self.max_bytes:
            return
        usages = _usages([record for record, _ in items])
        records = eviction_order([record for record, _ in items], self.cleanup_policy, lambda r: usages[r.name])
        for record in records:
            if total <= self.max_bytes:
                break
            freed = self._remove_item(record)
            if freed is None:
                report.details.setdefault("in_use", []).append(record.name)
                continue
            total -= freed
            report.evicted += 1
            report.bytes_freed += freed
            self._items.evictions += 1

    @contextlib.contextmanager
    def _cleanup_lock(self) -> Iterator[None]:
        # One cleanup at a time across processes sharing temp_dir, so two never race over the same item.
        if fcntl is None:
            yield
            return
        fd = os.open(self._meta / "cleanup.lock", os.O_RDONLY | os.O_CREAT | _O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def clear(self) -> None:
        """Remove every scratch item not in use and every keyed value."""
        self._check_open()
        store = self._attached()
        if store is None:
            return
        with self._cleanup_lock(), self._lock:
            for record in self._records():
                self._remove_item(record)
            store.clear()
            self._refresh_items()

    def close(self) -> None:
        """Close the values store; scratch items stay on disk until a later cleanup. Idempotent."""
        self._closed = True
        if self._store is not None:
            self._store.close()

    def __repr__(self) -> str:
        return f"SystemCache({str(self.root)!r}, size={self.size:g}, max_age={self.max_age:g})"


# ---------------------------------------------------------------------------------------------- fd-based walks


def _size_at(parent_fd: int, name: str) -> int | None:
    """Bytes under ``name`` (relative to ``parent_fd``), counting links as themselves; None if missing."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    try:
        fd = os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=parent_fd)
    except OSError:
        return 0
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                total += _size_at(fd, entry.name) or 0
    finally:
        os.close(fd)
    return total


def _remove_at(parent_fd: int, name: str) -> int:
    """Remove ``name`` under ``parent_fd`` without following any link; return the bytes freed."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        # A regular file, or a link (whatever it points to): unlink the name itself.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent_fd)
        return st.st_size
    try:
        fd = os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=parent_fd)
    except OSError:
        # Swapped for a link between stat and open: remove the link itself.
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=parent_fd)
        return 0
    freed = 0
    try:
        with os.scandir(fd) as entries:
            names = [entry.name for entry in entries]
        for child in names:
            freed += _remove_at(fd, child)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=parent_fd)
    return freed

