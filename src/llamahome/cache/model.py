"""ModelCache: model weights as safetensors on disk, least recently used model evicted first.

    from llamahome.cache import ModelCache

    models = ModelCache("~/.cache/llamahome/models", size=4096)         # MB (1 MB = 1 MiB)
    models.add_file("minilm", "all-MiniLM-L6-v2/model.safetensors")    # validated, linked or compressed
    weights = models.load("minilm", framework="torch")                  # zero-copy when stored raw
    with models.pin("minilm"):                                          # never evicted while pinned
        path = models.get_path("minilm")                                # a real .safetensors for other tools

Layout under ``path``: one directory per model (``manifest.json``, its data files, ``.access``) plus
``.lock`` (the index lock), ``.locks/`` (per-model locks), ``.tmp/`` (models being written) and ``.trash/``
(models being removed). A model is written completely in ``.tmp/`` and published by one ``rename``, so
readers see a whole model or none. Readers hold a shared ``flock`` on the model's use lock while loading
(and for the whole of a ``pin``); eviction and ``delete`` need it exclusively, so a model is never removed
from under a reader. A process that mapped a model keeps a valid mapping even after it is evicted: the files
are unlinked, never truncated or rewritten in place.

Missing models raise :class:`ModelNotFoundError` (a ``ModelCacheError`` and a ``KeyError``).
"""

from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llamahome.errors import (
    CacheClosedError,
    ConfigError,
    CorruptEntryError,
    ModelCacheError,
    ModelNotFoundError,
    StorageError,
)

from . import model_io
from ._procs import pid_alive
from .model_format import (
    build_safetensors_header,
    dtype_code_of_numpy,
    read_safetensors_header,
    write_order,
)
from .model_io import PartResult, TensorItem
from .model_locks import FileLock
from .stats import CacheStats, CleanupReport
from .units import MIB, size_to_bytes

__all__ = ["ModelCache", "ModelInfo", "ModelNotFoundError", "POLICIES"]

#: Eviction orders by name: the first model of the sorted list is evicted first.
POLICIES: dict[str, Callable[[ModelInfo], tuple[float, ...]]] = {
    "lru": lambda m: (m.last_used, m.created),
    "lfu": lambda m: (m.hits, m.last_used),
    "fifo": lambda m: (m.created, m.last_used),
    "time": lambda m: (m.created, m.last_used),
}

_MANIFEST = "manifest.json"
_ACCESS = ".access"
_NAME_MAX = 200
_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
#: Imports at least this large show a progress bar (when stderr is a terminal).
PROGRESS_MIN_BYTES = 256 * MIB


class _Replaced(ModelNotFoundError):
    """The model's files were swapped by a concurrent put() of the same name while we read them."""


@dataclass(frozen=True)
class ModelInfo:
    """One cached model as ``info()`` and ``list_info()`` describe it.

    ``size`` is what the model holds on disk now (its data files plus any decoded copy made by
    ``get_path``); ``stored_size`` the data files alone; ``raw_size`` the plain safetensors size;
    ``ratio`` = stored_size / raw_size. ``pinned`` is True while any process pins or loads it.
    """

    name: str
    size: int
    raw_size: int
    stored_size: int
    ratio: float
    compressed: bool
    files: tuple[str, ...]
    tensors: int
    created: float
    last_used: float
    hits: int
    pinned: bool
    sharded: bool
    metadata: dict[str, str] = field(default_factory=dict)


class ModelCache:
    """Model weights kept as safetensors (or a compressed container of the same tensors) under a byte budget.

    ``size`` is megabytes (1 MB = 1 MiB; a string such as ``"4GB"`` works too). ``compression`` stores each
    tensor compressed only where that saves >= 10% (bit-exact). ``cleanup_policy`` picks the model evicted
    first: ``lru`` (default), ``lfu``, ``fifo`` or ``time`` (oldest added). ``clock`` supplies timestamps
    (inject one in tests); ``threads`` bounds the encode/decode thread pools; ``progress`` forces the import
    progress bar on or off (default: on for imports >= 256 MiB when stderr is a terminal).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: float | str = 1024,
        compression: bool = True,
        cleanup_policy: str = "lru",
        *,
        clock: Callable[[], float] = time.time,
        name: str = "model_cache",
        threads: int | None = None,
        progress: bool | None = None,
    ) -> None:
        if cleanup_policy not in POLICIES:
            raise ConfigError(
                f"model_cache.cleanup_policy must be one of {', '.join(sorted(POLICIES))}, not {cleanup_policy!r}."
            )
        self.max_bytes = size_to_bytes(size)
        if self.max_bytes <= 0:
            raise ConfigError(f"model_cache.size must be positive, not {size!r}.")
        self.root = Path(os.path.expanduser(os.fspath(path))).resolve()
        self.compression = bool(compression)
        self.cleanup_policy = cleanup_policy
        self.name = name
        self.threads = max(1, threads if threads is not None else min(8, os.cpu_count() or 1))
        self.progress = progress
        self._clock = clock
        self._closed = False
        self._stats = CacheStats(name=name, max_bytes=self.max_bytes)
        try:
            # Private to the user: the directories are 0700 (files inside are 0600, except hard-linked
            # imports, which keep the user's own inode and mode but sit where nobody else can reach them).
            for sub in ("", ".locks", ".tmp", ".trash"):
                (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(self.root / sub, 0o700)
        except OSError as exc:
            raise StorageError(
                f"Cannot create the model cache directory {self.root} ({exc.strerror}); choose a writable path."
            ) from exc

    @classmethod
    def from_config(cls, block: Any, path: str | os.PathLike[str], **kwargs: Any) -> ModelCache:
        """Build from a ``model_cache`` config block (``cfg.model_cache``) at ``path``."""
        return cls(path, size=block.size, compression=block.compression, cleanup_policy=block.cleanup_policy,
                   **kwargs)  # fmt: skip

    # --- writing ---------------------------------------------------------------------------------------------

    def put(
        self,
        name: str,
        tensors: Mapping[str, Any],
        metadata: Mapping[str, str] | None = None,
        *,
        compression: bool | None = None,
    ) -> ModelInfo:
        """Store ``tensors`` (numpy arrays or torch tensors by name) as model ``name``, replacing any old one.

        Written atomically: readers see the old model or the new one, never a mix. Evicts other models if
        the budget needs room; raises ModelCacheError if the model alone is larger than the budget.
        """
        self._check_open()
        self._check_name(name)
        meta = _check_metadata(metadata)
        items = _tensor_items(tensors)
        order = write_order((it.name, it.dtype) for it in items)
        by_name = {it.name: it for it in items}
        prefix, ranges = build_safetensors_header(
            ((n, by_name[n].dtype, by_name[n].shape, by_name[n].nbytes) for n in order), meta
        )
        for n, begin, _ in ranges:
            by_name[n].begin = begin
        compress = self.compression if compression is None else compression
        raw_size = len(prefix) + sum(it.nbytes for it in items)
        if not compress:
            self._check_fits(name, raw_size)
        tmp = self._new_tmp()
        try:
            with self._progress_bar(raw_size, f"caching {name}") as bar:
                part = model_io.write_part(
                    tmp, "model.safetensors", prefix, items, compress=compress, threads=self.threads, progress=bar
                )
            manifest = self._manifest(name, [("model.safetensors", part)], meta, source="put")
            return self._commit(name, tmp, manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def add_file(
        self, name: str, path: str | os.PathLike[str], *, compression: bool | None = None, link: bool = True
    ) -> ModelInfo:
        """Add an existing ``.safetensors`` file as model ``name`` (validated first; the file is not moved).

        Without compression (or where it does not pay) the cache reflinks or hard-links the file, and copies
        it when neither is possible (another file system) or ``link=False``. A hard link shares the file with
        you: do not rewrite the original in place while it is cached (``verify`` would report it). Replaces
        any model of the same name.
        """
        self._check_open()
        self._check_name(name)
        src = Path(path)
        header = read_safetensors_header(src)
        compress = self.compression if compression is None else compression
        return self._import(name, [("model.safetensors", src, header)], None, compress, "file", link)

    def add_dir(
        self, name: str, path: str | os.PathLike[str], *, compression: bool | None = None, link: bool = True
    ) -> ModelInfo:
        """Add a model directory: one ``.safetensors`` file, or shards listed by a ``*.safetensors.index.json``.

        Only the safetensors files and the index are cached (config and tokenizer files are not).
        """
        self._check_open()
        self._check_name(name)
        root = Path(path)
        if not root.is_dir():
            raise ModelCacheError(f"{root} is not a directory; use add_file() for a single .safetensors file.")
        indexes = sorted(root.glob("*.safetensors.index.json"))
        if len(indexes) > 1:
            raise ModelCacheError(
                f"{root} holds several index files ({', '.join(p.name for p in indexes)}); add one model at a time."
            )
        compress = self.compression if compression is None else compression
        if not indexes:
            files = sorted(root.glob("*.safetensors"))
            if len(files) != 1:
                found = "no .safetensors file" if not files else f"{len(files)} .safetensors files and no index json"
                raise ModelCacheError(
                    f"{root} has {found}; a model directory needs one .safetensors file, or shards plus their "
                    f"model.safetensors.index.json."
                )
            return self._import(name, [(files[0].name, files[0], read_safetensors_header(files[0]))], None,
                                compress, "dir", link)  # fmt: skip
        index_path = indexes[0]
        shards = _read_index(index_path)
        parts = []
        for shard in shards:
            shard_path = root / shard
            if not shard_path.is_file():
                raise ModelCacheError(f"{index_path.name} lists {shard}, which is missing from {root}.")
            parts.append((shard, shard_path, read_safetensors_header(shard_path)))
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        headers = {shard: header for shard, _, header in parts}
        for tensor, shard in weight_map.items():
            if tensor not in headers[shard].tensors:
                raise ModelCacheError(f"{index_path.name} maps tensor {tensor!r} to {shard}, which does not hold it.")
        return self._import(name, parts, index_path, compress, "dir", link)

    def _import(
        self,
        name: str,
        parts: list[tuple[str, Path, Any]],
        index_path: Path | None,
        compress: bool,
        source: str,
        link: bool,
    ) -> ModelInfo:
        raw_total = sum(header.file_size for _, _, header in parts)
        if not compress:
            self._check_fits(name, raw_total)
        tmp = self._new_tmp()
        try:
            written: list[tuple[str, PartResult]] = []
            with self._progress_bar(raw_total, f"caching {name}") as bar:
                for file_name, src, header in parts:
                    written.append((file_name, self._import_part(tmp, file_name, src, header, compress, bar, link)))
            index_name = None
            if index_path is not None:
                index_name = index_path.name
                model_io.link_or_copy(index_path, tmp / index_name, hard_link=False)
            metadata = parts[0][2].metadata if len(parts) == 1 else {}
            manifest = self._manifest(name, written, metadata, source=source, index=index_name)
            return self._commit(name, tmp, manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _import_part(
        self, tmp: Path, file_name: str, src: Path, header: Any, compress: bool, bar: Any, link: bool
    ) -> PartResult:
        if compress and header.data_len:
            data, _ = model_io.map_file(src)
            if data.nbytes != header.file_size:
                raise ModelCacheError(f"{src} changed while it was being added; try again.")
            prefix = bytes(data[: header.data_start])
            items = model_io.tensor_items_from_header(header, data[header.data_start :])
            part = model_io.write_part(tmp, file_name, prefix, items, compress=True, threads=self.threads,
                                       progress=bar, write_plain=False)  # fmt: skip
            if part is not None:
                part.raw_checksum = model_io.hash_file(src)
                return part
            bar.update(-header.data_len)
        model_io.link_or_copy(src, tmp / file_name, progress=bar, hard_link=link)
        digest = model_io.hash_file(tmp / file_name)
        size = (tmp / file_name).stat().st_size
        if size != header.file_size:
            raise ModelCacheError(f"{src} changed while it was being added; try again.")
        return PartResult(file_name, False, size, size, digest, digest, len(header.tensors), 0)

    def _manifest(
        self,
        name: str,
        parts: list[tuple[str, PartResult]],
        metadata: Mapping[str, str],
        *,
        source: str,
        index: str | None = None,
    ) -> dict[str, Any]:
        return {
            "version": 1,
            "name": name,
            "created": self._clock(),
            "source": source,
            "metadata": dict(metadata),
            "index": index,
            "parts": [
                {"file": file_name, "stored": p.stored, "compressed": p.compressed, "raw_size": p.raw_size,
                 "stored_size": p.stored_size, "checksum": p.checksum, "raw_checksum": p.raw_checksum,
                 "tensors": p.tensors, "compressed_tensors": p.compressed_tensors}  # fmt: skip
                for file_name, p in parts
            ],
        }

    def _commit(self, name: str, tmp: Path, manifest: dict[str, Any]) -> ModelInfo:
        """Publish a fully written model directory under ``name``, making room first.

        Lock order, everywhere: the model's write lock, then the index lock, then (non-blocking only) other
        models' locks. Writers of one name queue on its write lock, so two processes adding the same model
        leave one whole copy: the second sees an identical model and keeps it, or replaces it whole.
        """
        if manifest["index"]:
            index = manifest["index"]
            manifest["index_checksum"] = model_io.hash_file(tmp / index)
        stored = _manifest_bytes(manifest, tmp)
        if stored > self.max_bytes:
            raise ModelCacheError(
                f"Model {name!r} needs {stored:,} bytes but the whole model cache holds {self.max_bytes:,}; "
                f"raise model_cache.size."
            )
        _write_json(tmp / _MANIFEST, manifest)
        access = tmp / _ACCESS
        access.touch(mode=0o600)
        now = manifest["created"]
        os.utime(access, (now, now))
        target = self._dir(name)
        trash: list[Path] = []
        write_lock = FileLock(self._lock_path(name, "write"))
        write_lock.acquire()
        try:
            with FileLock(self._index_lock_path()):
                existing = self._read_manifest(name)
                if existing is not None and _same_content(existing, manifest):
                    self._stats.add("sets")
                    return self._info_from(name, existing)
                _, room = self._make_room(stored, exclude=name, trash=trash)
                if not room:
                    raise ModelCacheError(
                        f"Model {name!r} needs {stored:,} bytes but only {self.max_bytes - self._usage(name):,} "
                        f"can be freed: the other models are pinned or being loaded. Unpin them or raise "
                        f"model_cache.size."
                    )
                if existing is not None or target.exists():
                    dest = self.root / ".trash" / uuid.uuid4().hex
                    os.rename(target, dest)
                    trash.append(dest)
                os.rename(tmp, target)
                _fsync_dir(self.root)
            self._stats.add("sets")
            self._stats.add("raw_bytes", sum(p["raw_size"] for p in manifest["parts"]))
            self._stats.add("stored_bytes", sum(p["stored_size"] for p in manifest["parts"]))
            return self._info_from(name, manifest)
        finally:
            write_lock.release()
            for path in trash:
                shutil.rmtree(path, ignore_errors=True)

    # --- reading ---------------------------------------------------------------------------------------------

    def load(
        self, name: str, framework: str = "numpy", device: str = "cpu", mmap: bool = True
    ) -> dict[str, Any]:
        """The model's tensors by name, as numpy arrays (``framework="numpy"``) or torch tensors.

        ``mmap=True`` maps the files: tensors stored uncompressed are zero-copy, copy-on-write views (writing
        to them never changes the cache). ``mmap=False`` reads everything into fresh memory. With torch,
        ``device="cuda"`` (or ``"cuda:1"``) puts the tensors straight on the GPU. numpy has no bfloat16 or fp8:
        there those come as ml_dtypes types if it is installed, else as their raw bits (uint16 / uint8).
        Raises ModelNotFoundError if the model is not cached.
        """
        self._check_open()
        self._check_name(name)
        if framework not in ("numpy", "torch"):
            raise ModelCacheError(f"framework must be 'numpy' or 'torch', not {framework!r}.")
        if device != "cpu":
            if framework != "torch":
                raise ModelCacheError(f"device={device!r} needs framework='torch'; numpy arrays live on the CPU.")
            torch = model_io.require_torch()
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise ModelCacheError(f"device={device!r} was asked for but this PyTorch sees no CUDA device.")
        for _attempt in range(3):
            try:
                with self._reading(name) as manifest:
                    directory = self._dir(name)
                    out: dict[str, Any] = {}
                    for part in manifest["parts"]:
                        path, compressed = self._readable_part(directory, part)
                        out.update(model_io.load_part(path, compressed=compressed, framework=framework,
                                                      device=device, mmap_=mmap, threads=self.threads))  # fmt: skip
                    return out
            except _Replaced:
                continue  # a put() of the same name swapped the files under us: read the new model
        self._stats.add("misses")
        raise ModelNotFoundError(f"Model {name!r} kept being replaced while it was read; load it again later.")

    def get_path(self, name: str) -> Path:
        """A path other tools can open: the model's ``.safetensors`` file (decoded into the cache if stored
        compressed). For a sharded model, the path of its ``*.safetensors.index.json``, with every shard as a
        plain ``.safetensors`` file beside it. Decoded copies count towards the model's size on disk.
        """
        self._check_open()
        self._check_name(name)
        with self._reading(name) as manifest:
            directory = self._dir(name)
            decoded_any = False
            for part in manifest["parts"]:
                target = directory / part["file"]
                if part["compressed"] and not target.exists():
                    tmp = directory / f".decoding-{os.getpid()}-{uuid.uuid4().hex}"
                    try:
                        digest = model_io.decode_part_to_file(directory / part["stored"], tmp, self.threads)
                        if digest != part["raw_checksum"]:
                            raise CorruptEntryError(
                                f"Model {name!r} decoded to different bytes than were stored; its files are damaged. "
                                f"Delete it and add it again."
                            )
                        os.rename(tmp, target)
                        decoded_any = True
                    finally:
                        tmp.unlink(missing_ok=True)
            path: Path = directory / (manifest["index"] or manifest["parts"][0]["file"])
        if decoded_any:
            self._enforce_budget(keep=name)
        return path

    @contextmanager
    def pin(self, name: str) -> Iterator[ModelInfo]:
        """Keep ``name`` from being evicted or deleted (by any process) inside the ``with`` block."""
        self._check_open()
        self._check_name(name)
        lock = FileLock(self._lock_path(name, "use"))
        lock.acquire(shared=True)
        try:
            manifest = self._read_manifest(name)
            if manifest is None:
                raise ModelNotFoundError(f"Model {name!r} is not in the model cache; add it before pinning it.")
            yield self._info_from(name, manifest, pinned=True)
        finally:
            lock.release()

    @contextmanager
    def _reading(self, name: str) -> Iterator[dict[str, Any]]:
        """Hold the model's use lock (shared) for a read; count the hit or miss; record the access."""
        lock = FileLock(self._lock_path(name, "use"))
        lock.acquire(shared=True)
        try:
            manifest = self._read_manifest(name)
            if manifest is None:
                self._stats.add("misses")
                raise ModelNotFoundError(
                    f"Model {name!r} is not in the model cache (never added, deleted or evicted); add it with "
                    f"put(), add_file() or add_dir()."
                )
            try:
                yield manifest
            except FileNotFoundError as exc:
                # Eviction waits for our lock, so only a put() of the same name can swap files under a reader.
                raise _Replaced(f"Model {name!r} was replaced while it was being read; load it again.") from exc
            self._stats.add("hits")
            self._touch(name)
        finally:
            lock.release()

    def _readable_part(self, directory: Path, part: dict[str, Any]) -> tuple[Path, bool]:
        if part["compressed"]:
            decoded = directory / part["file"]
            if decoded.exists():  # get_path() left a plain copy: map it, zero-copy
                return decoded, False
            return directory / part["stored"], True
        return directory / part["stored"], False

    # --- inspection ------------------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _valid_name(name) and (self._dir(name) / _MANIFEST).is_file()

    def __len__(self) -> int:
        return len(self.list())

    def list(self) -> list[str]:
        """Names of the cached models, sorted."""
        self._check_open()
        return sorted(
            entry.name
            for entry in os.scandir(self.root)
            if not entry.name.startswith(".") and entry.is_dir() and os.path.isfile(os.path.join(entry.path, _MANIFEST))
        )

    def list_info(self) -> builtins.list[ModelInfo]:
        """``info()`` of every cached model, in eviction order (the next victim first)."""
        infos = []
        for model in self.list():
            manifest = self._read_manifest(model)
            if manifest is not None:
                infos.append(self._info_from(model, manifest))
        return sorted(infos, key=POLICIES[self.cleanup_policy])

    def info(self, name: str) -> ModelInfo:
        """Size on disk, original size, ratio, last use, hits and pin state of one model."""
        self._check_open()
        self._check_name(name)
        manifest = self._read_manifest(name)
        if manifest is None:
            raise ModelNotFoundError(f"Model {name!r} is not in the model cache.")
        return self._info_from(name, manifest)

    def verify(self, name: str) -> bool:
        """Re-hash the model's files against the checksums taken when it was stored (xxh3-128).

        A damaged decoded copy is removed (``get_path`` makes it again) but still reported as False.
        """
        self._check_open()
        self._check_name(name)
        lock = FileLock(self._lock_path(name, "use"))
        lock.acquire(shared=True)
        try:
            manifest = self._read_manifest(name)
            if manifest is None:
                raise ModelNotFoundError(f"Model {name!r} is not in the model cache.")
            directory = self._dir(name)
            ok = True
            try:
                for part in manifest["parts"]:
                    if model_io.hash_file(directory / part["stored"]) != part["checksum"]:
                        ok = False
                    decoded = directory / part["file"]
                    if part["compressed"] and decoded.exists() and model_io.hash_file(decoded) != part["raw_checksum"]:
                        decoded.unlink(missing_ok=True)
                        ok = False
                if manifest.get("index") and model_io.hash_file(directory / manifest["index"]) != manifest.get(
                    "index_checksum"
                ):
                    ok = False
            except FileNotFoundError:
                ok = False
            if not ok:
                self._stats.add("corrupt")
            return ok
        finally:
            lock.release()

    @property
    def stats(self) -> CacheStats:
        """Counters of this process (hits = loads and get_paths that found the model) plus current holdings."""
        infos = self.list_info() if not self._closed else []
        with self._stats._lock:
            self._stats.bytes = sum(i.size for i in infos)
            self._stats.entries = len(infos)
        return self._stats

    # --- removal ---------------------------------------------------------------------------------------------

    def delete(self, name: str) -> bool:
        """Remove a model; False if it was not cached. Raises ModelCacheError if it is pinned or being loaded."""
        self._check_open()
        self._check_name(name)
        trash: list[Path] = []
        write_lock = FileLock(self._lock_path(name, "write"))
        write_lock.acquire()
        try:
            with FileLock(self._index_lock_path()):
                if not self._dir(name).exists():
                    return False
                freed = self._remove(name, trash, write_lock=write_lock)
                if freed is None:
                    raise ModelCacheError(
                        f"Model {name!r} is pinned or being loaded; delete it after its users are done."
                    )
            self._stats.add("deletes")
            return True
        finally:
            write_lock.release(unlink=not self._dir(name).exists())
            for path in trash:
                shutil.rmtree(path, ignore_errors=True)

    def cleanup(self) -> CleanupReport:
        """Remove leftovers of crashed writers and damaged entries, then evict models until under ``size``."""
        self._check_open()
        report = CleanupReport(cache=self.name)
        trash: list[Path] = []
        with FileLock(self._index_lock_path()):
            for entry in os.scandir(self.root / ".tmp"):
                if not _owner_alive(entry.name):
                    trash.append(Path(entry.path))
                    report.orphans += 1
            for entry in os.scandir(self.root / ".trash"):
                trash.append(Path(entry.path))
                report.orphans += 1
            for entry in os.scandir(self.root):
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                for leftover in Path(entry.path).glob(".decoding-*"):  # a get_path() that died mid-decode
                    if not _owner_alive(leftover.name.removeprefix(".decoding-")):
                        leftover.unlink(missing_ok=True)
                        report.orphans += 1
                if self._read_manifest(entry.name) is None and _valid_name(entry.name):
                    size = _dir_bytes(Path(entry.path))
                    if self._remove(entry.name, trash) is not None:
                        report.corrupt += 1
                        report.bytes_freed += size
            before = self._usage(None)
            evicted, _ = self._make_room(0, exclude=None, trash=trash)
            report.evicted = len(evicted)
            report.bytes_freed += before - self._usage(None)
            report.details["evicted"] = evicted
        for path in trash:
            shutil.rmtree(path, ignore_errors=True)
        return report

    def _enforce_budget(self, keep: str | None) -> builtins.list[str]:
        trash: list[Path] = []
        with FileLock(self._index_lock_path()):
            evicted, _ = self._make_room(0, exclude=None, keep=keep, trash=trash)
        for path in trash:
            shutil.rmtree(path, ignore_errors=True)
        return evicted

    def _make_room(
        self, needed: int, *, exclude: str | None, trash: builtins.list[Path], keep: str | None = None
    ) -> tuple[builtins.list[str], bool]:
        """Evict unused models in policy order until ``needed`` more bytes fit. Caller holds the index lock.

        ``exclude`` is left out of the count (it is about to be replaced); ``keep`` counts but is not evicted.
        """
        everyone = [i for i in self.list_info() if i.name != exclude]
        infos = [i for i in everyone if i.name != keep and not i.pinned]  # already in eviction order
        usage = sum(i.size for i in everyone)
        if usage + needed > self.max_bytes and usage - sum(i.size for i in infos) + needed > self.max_bytes:
            return [], False  # even evicting every unpinned model would not do: evict nothing
        evicted = []
        for victim in infos:
            if usage + needed <= self.max_bytes:
                break
            freed = self._remove(victim.name, trash)
            if freed is not None:
                usage -= freed
                evicted.append(victim.name)
                self._stats.add("evictions")
        return evicted, usage + needed <= self.max_bytes

    def _remove(self, name: str, trash: builtins.list[Path], write_lock: Any = None) -> int | None:
        """Move a model to the trash if nobody uses it; returns the bytes freed, or None if it is in use."""
        own_write = write_lock is None
        if own_write:
            write_lock = FileLock(self._lock_path(name, "write"))
            if not write_lock.acquire(blocking=False):
                return None
        use_lock = FileLock(self._lock_path(name, "use"))
        if not use_lock.acquire(blocking=False):
            if own_write:
                write_lock.release()
            return None
        try:
            directory = self._dir(name)
            size = _dir_bytes(directory)
            dest = self.root / ".trash" / uuid.uuid4().hex
            os.rename(directory, dest)
            trash.append(dest)
            return size
        except FileNotFoundError:
            return 0
        finally:
            use_lock.release(unlink=True)
            if own_write:
                write_lock.release(unlink=True)

    # --- lifecycle -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Mark the cache closed (it holds no open files between calls)."""
        self._closed = True

    def __enter__(self) -> ModelCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelCache({str(self.root)!r}, size={self.max_bytes / MIB:g}, compression={self.compression})"

    # --- helpers ---------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError(f"The model cache at {self.root} was closed; create a new ModelCache.")

    def _check_name(self, name: object) -> None:
        if not isinstance(name, str) or not _valid_name(name):
            raise ModelCacheError(
                f"Model name {name!r} is not allowed: use 1-{_NAME_MAX} characters without '/', '\\', control "
                f"characters or a leading '.' (for example 'all-MiniLM-L6-v2' or 'llama-3-8b@q4')."
            )

    def _check_fits(self, name: str, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            raise ModelCacheError(
                f"Model {name!r} needs {nbytes:,} bytes but the whole model cache holds {self.max_bytes:,}; "
                f"raise model_cache.size or enable compression."
            )

    def _dir(self, name: str) -> Path:
        return self.root / name

    def _lock_path(self, name: str, kind: str) -> str:
        return str(self.root / ".locks" / f"{name}.{kind}")

    def _index_lock_path(self) -> str:
        return str(self.root / ".lock")

    def _new_tmp(self) -> Path:
        path = self.root / ".tmp" / f"{os.getpid()}-{uuid.uuid4().hex}"
        path.mkdir(mode=0o700, parents=True)
        return path

    def _read_manifest(self, name: str) -> dict[str, Any] | None:
        try:
            with open(self._dir(name) / _MANIFEST, encoding="utf-8") as f:
                doc = json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and doc.get("parts") else None

    def _usage(self, exclude: str | None) -> int:
        return sum(i.size for i in self.list_info() if i.name != exclude)

    def _touch(self, name: str) -> None:
        # One appended byte per use: O_APPEND writes need no lock across processes, the size counts the hits
        # and the mtime (set from our clock) is the last use.
        path = self._dir(name) / _ACCESS
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            return  # evicted or replaced meanwhile: nothing to record
        try:
            os.write(fd, b"\n")
            now = self._clock()
            os.utime(fd, (now, now))
        finally:
            os.close(fd)

    def _info_from(self, name: str, manifest: dict[str, Any], pinned: bool | None = None) -> ModelInfo:
        directory = self._dir(name)
        try:
            st = os.stat(directory / _ACCESS)
            last_used, hits = st.st_mtime, st.st_size
        except FileNotFoundError:
            last_used, hits = float(manifest["created"]), 0
        parts = manifest["parts"]
        raw = sum(int(p["raw_size"]) for p in parts)
        stored = sum(int(p["stored_size"]) for p in parts)
        if pinned is None:
            probe = FileLock(self._lock_path(name, "use"))
            pinned = not probe.acquire(blocking=False)
            probe.release()
        return ModelInfo(
            name=name,
            size=_dir_bytes(directory),
            raw_size=raw,
            stored_size=stored,
            ratio=stored / raw if raw else 1.0,
            compressed=any(p["compressed"] for p in parts),
            files=tuple(p["file"] for p in parts),
            tensors=sum(int(p["tensors"]) for p in parts),
            created=float(manifest["created"]),
            last_used=last_used,
            hits=hits,
            pinned=pinned,
            sharded=bool(manifest.get("index")),
            metadata=dict(manifest.get("metadata") or {}),
        )

    def _progress_bar(self, total: int, desc: str) -> Any:
        show = self.progress if self.progress is not None else (total >= PROGRESS_MIN_BYTES and sys.stderr.isatty())
        return _Progress(total, desc, enabled=bool(show))


class _Progress:
    """A tqdm bar over bytes, or a no-op; callable with a byte count."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)

    def __call__(self, n: int) -> None:
        self.update(n)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= _NAME_MAX and not name.startswith(".") and not _BAD_NAME.search(name)


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ModelCacheError(
            "metadata must map strings to strings (safetensors' __metadata__); convert values with str()."
        )
    return dict(metadata)


def _tensor_items(tensors: Mapping[str, Any]) -> list[TensorItem]:
    if not isinstance(tensors, Mapping) or not tensors:
        raise ModelCacheError("put() needs a non-empty mapping of tensor names to numpy arrays or torch tensors.")
    items = []
    for key, value in tensors.items():
        if not isinstance(key, str) or not key or key == "__metadata__":
            raise ModelCacheError(f"Tensor names must be non-empty strings other than '__metadata__', not {key!r}.")
        items.append(_tensor_item(key, value))
    return items


def _tensor_item(name: str, value: Any) -> TensorItem:
    code: str | None
    if isinstance(value, (np.ndarray, np.generic)):
        value = np.asarray(value)
        code = dtype_code_of_numpy(value.dtype, name)
        flat = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
        return TensorItem(name, code, tuple(int(d) for d in value.shape), 0, flat)
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        code = model_io.torch_code(value.dtype)
        if code is None:
            raise ModelCacheError(f"Tensor {name!r} has dtype {value.dtype}, which safetensors cannot store.")
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        flat = t.view(model_io.torch_dtype("U8")).numpy() if t.numel() else np.empty(0, dtype=np.uint8)
        return TensorItem(name, code, tuple(int(d) for d in value.shape), 0, flat)
    raise ModelCacheError(
        f"Tensor {name!r} is a {type(value).__name__}; put() takes numpy arrays or torch tensors."
    )


def _read_index(index_path: Path) -> list[str]:
    try:
        doc = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCacheError(f"{index_path} is not valid JSON ({exc}); re-export the model.") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelCacheError(f"{index_path} has no weight_map; it is not a safetensors index file.")
    shards = sorted({v for v in weight_map.values() if isinstance(v, str)})
    if len(shards) != len(set(weight_map.values())):
        raise ModelCacheError(f"{index_path} maps tensors to non-string file names; re-export the model.")
    for shard in shards:
        if not _valid_name(shard) or not shard.endswith(".safetensors"):
            raise ModelCacheError(
                f"{index_path} names shard {shard!r}; shards must be .safetensors files in the same directory."
            )
    return shards


def _same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def key(m: dict[str, Any]) -> Any:
        return (
            [(p["file"], p["raw_checksum"]) for p in m["parts"]],
            m.get("index_checksum"),
            m.get("metadata"),
        )

    return bool(key(a) == key(b))


def _manifest_bytes(manifest: dict[str, Any], directory: Path) -> int:
    total = sum(int(p["stored_size"]) for p in manifest["parts"])
    if manifest.get("index"):
        total += (directory / manifest["index"]).stat().st_size
    return total


def _dir_bytes(directory: Path) -> int:
    """Bytes of a model's data files (bookkeeping files excluded)."""
    total = 0
    try:
        for entry in os.scandir(directory):
            if entry.name in (_MANIFEST, _ACCESS) or entry.name.startswith(".decoding-"):
                continue
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return total


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _owner_alive(tmp_name: str) -> bool:
    """Is the process that created ``.tmp/<pid>-<id>`` still running?"""
    pid_text = tmp_name.split("-", 1)[0]
    return pid_text.isdigit() and pid_alive(int(pid_text))
