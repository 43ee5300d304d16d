"""ModelCache: model weights as safetensors on disk, least recently used model evicted first.

    from llamahome.cache import ModelCache

    models = ModelCache("~/.cache/llamahome/models", size=4096)         # MB (1 MB = 1 MiB)
    models.add_file("minilm", "all-MiniLM-L6-v2/model.safetensors")    # validated, linked or compressed
    weights = models.load("minilm", framework="torch")                  # zero-copy when stored raw
    with models.pin("minilm"):                                          # never evicted while pinned
        path = models.get_path("minilm")                                # a real .safetensors for other tools

Layout under ``path``: ``.llamahome-cache.json`` (the marker: kind and format version), one directory per
model (``manifest.json``, its data files, ``.access``, ``.verified``) plus ``.lock`` (the index lock),
``.locks/`` (per-model locks), ``.tmp/`` (models being written) and ``.trash/`` (models being removed). The
cache opens only a new or empty directory, one with its marker, or one written before the marker existed, and
removes only entries it made (see ``cleanup``); paths from a manifest are plain names checked before use. A model is written completely in ``.tmp/`` and published by one ``rename``, so
readers see a whole model or none. Readers hold a shared ``flock`` on the model's use lock while loading
(and for the whole of a ``pin``); eviction and ``delete`` need it exclusively, so a model is never removed
from under a reader. A process that mapped a model keeps a valid mapping even after it is evicted: the files
are unlinked, never truncated or rewritten in place.

Missing models raise :class:`ModelNotFoundError` (a ``ModelCacheError`` and a ``KeyError``).
"""

from __future__ import annotations

import builtins
import json
import math
import os
import re
import shutil
import stat
import sys
import threading
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
_VERIFIED = ".verified"
#: The marker that makes a directory a model cache: {"kind": "llamahome-model-cache", "format": 1}.
MARKER = ".llamahome-cache.json"
_KIND = "llamahome-model-cache"
_FORMAT = 1
_SUBDIRS = (".locks", ".tmp", ".trash")
_TMP_NAME = re.compile(r"[0-9]+-[0-9a-f]{32}")
_TRASH_NAME = re.compile(r"[0-9a-f]{32}")
_DECODING_NAME = re.compile(r"\.decoding-[0-9]+-[0-9a-f]{32}")
_VERIFIED_TMP = re.compile(r"\.verified\.[0-9]+-[0-9a-f]{32}")
_NAME_MAX = 200
_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
#: Imports at least this large show a progress bar (when stderr is a terminal).
PROGRESS_MIN_BYTES = 256 * MIB


class _Replaced(ModelNotFoundError):
    """The model's files were swapped by a concurrent put() of the same name while we read them."""


class _Damaged(Exception):
    """A model's file failed its checksum or is not what the cache wrote (turned into a counted miss)."""


@dataclass(frozen=True)
class _ReadablePart:
    """One file a read opens: where, whether it is a container, its expected xxh3-128 and raw size."""

    path: Path
    compressed: bool
    checksum: str
    raw_size: int


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
        _open_root(self.root)

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
                info = self._commit(name, tmp, manifest)
                bar.summary(info)
            return info
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
            identities: dict[str, tuple[int, ...]] = {}
            with self._progress_bar(raw_total, f"caching {name}") as bar:
                for file_name, src, header in parts:
                    try:
                        part = self._import_part(tmp, file_name, src, header, compress, bar, link, identities)
                    except FileNotFoundError:
                        raise ModelCacheError(f"{src} disappeared while it was being added; try again.") from None
                    written.append((file_name, part))
                index_name = None
                if index_path is not None:
                    index_name = index_path.name
                    model_io.link_or_copy(index_path, tmp / index_name, hard_link=False)
                metadata = parts[0][2].metadata if len(parts) == 1 else {}
                manifest = self._manifest(name, written, metadata, source=source, index=index_name)
                info = self._commit(name, tmp, manifest, identities)
                bar.summary(info)
            return info
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _import_part(
        self,
        tmp: Path,
        file_name: str,
        src: Path,
        header: Any,
        compress: bool,
        bar: Any,
        link: bool,
        identities: dict[str, tuple[int, ...]],
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
        dst = tmp / file_name
        how = model_io.link_or_copy(src, dst, progress=bar, hard_link=link)
        # The identity before the hash: a change while hashing (a shared hard link written by its owner) then
        # shows as a different identity below, and is refused instead of being recorded as checked.
        before = _identity(dst)
        digest = model_io.hash_file(dst, None if how == "copy" else bar, follow=False)
        if _identity(dst) != before or before[2] != header.file_size:
            raise ModelCacheError(f"{src} changed while it was being added; try again.")
        identities[file_name] = before
        size = before[2]
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

    def _commit(
        self, name: str, tmp: Path, manifest: dict[str, Any], identities: Mapping[str, tuple[int, ...]] | None = None
    ) -> ModelInfo:
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
        identities = identities or {}
        stamps = {p["stored"]: [*identities.get(p["stored"], _identity(tmp / p["stored"])), p["checksum"]]
                  for p in manifest["parts"] if not p["compressed"]}  # fmt: skip
        if stamps:
            _write_json(tmp / _VERIFIED, stamps)  # the files are as hashed now: the first mapped load need not hash
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
                if existing is None and os.path.lexists(target) and not _entry_is_ours(target):
                    raise ModelCacheError(
                        f"{target} exists and was not made by the model cache; it is left alone. Choose another "
                        f"model name or move it out of {self.root}."
                    )
                if existing is not None or os.path.lexists(target):
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
                _purge(path)

    # --- reading ---------------------------------------------------------------------------------------------

    def load(
        self,
        name: str,
        framework: str = "numpy",
        device: str = "cpu",
        mmap: bool = True,
        *,
        verify: bool | None = None,
    ) -> dict[str, Any]:
        """The model's tensors by name, as numpy arrays (``framework="numpy"``) or torch tensors.

        ``mmap=True`` maps the files: tensors stored uncompressed are zero-copy, copy-on-write views (writing
        to them never changes the cache). ``mmap=False`` reads everything into fresh memory. With torch,
        ``device="cuda"`` (or ``"cuda:1"``) puts the tensors straight on the GPU. numpy has no bfloat16 or fp8:
        there those come as ml_dtypes types if it is installed, else as their raw bits (uint16 / uint8).

        Damage is a miss: a model whose files fail their checksum is removed (when nobody else is using it)
        and ModelNotFoundError is raised, as for a model that is not cached. What is checked (``verify``):

        - ``None`` (default): copies (``mmap=False``, a GPU ``device``) and compressed models are hashed as
          they are read, every time. A memory-mapped raw file is hashed once per file identity (device,
          inode, size, mtime, ctime), recorded beside the model; writing the cache also records it, so the
          first load after ``put``/``add_file`` is free too. Any change made through the file system
          (a write, truncation, replacement, even one that restores the mtime: the ctime still moves)
          makes the next load hash the file again. Not caught: damage below the file system (a failing
          disk or bad RAM flipping bits without a write) after the file was last hashed, and changes made
          to a hard-linked original after this load mapped it (the mapping shows them).
        - ``True``: hash every file on this load (catches everything above, at the cost of one read).
        - ``False``: no hashing at all (trust the files: the fastest load).

        Raises ModelNotFoundError if the model is not cached or is damaged.
        """
        self._check_open()
        self._check_name(name)
        if framework not in ("numpy", "torch"):
            raise ModelCacheError(f"framework must be 'numpy' or 'torch', not {framework!r}.")
        if verify not in (None, True, False):
            raise ModelCacheError(f"verify must be None, True or False, not {verify!r}.")
        if device != "cpu":
            if framework != "torch":
                raise ModelCacheError(f"device={device!r} needs framework='torch'; numpy arrays live on the CPU.")
            torch = model_io.require_torch()
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise ModelCacheError(f"device={device!r} was asked for but this PyTorch sees no CUDA device.")
        mapped = mmap and device == "cpu"
        for _attempt in range(3):
            try:
                with self._reading(name) as manifest:
                    directory = self._dir(name)
                    parts = [self._readable_part(directory, part) for part in manifest["parts"]]
                    to_decode = sum(p.raw_size for p in parts if p.compressed)
                    out: dict[str, Any] = {}
                    with self._progress_bar(to_decode, f"loading {name}") as bar:
                        for rp in parts:
                            check = self._needs_check(directory, rp, mapped and not rp.compressed, verify)
                            try:
                                out.update(model_io.load_part(
                                    rp.path, compressed=rp.compressed, framework=framework, device=device,
                                    mmap_=mmap, threads=self.threads, checksum=rp.checksum if check else None,
                                    progress=bar if rp.compressed else None))  # fmt: skip
                            except CorruptEntryError as exc:
                                raise _Damaged(str(exc)) from None
                            if check and not rp.compressed:
                                self._record_verified(directory, [rp])
                    return out
            except _Replaced:
                continue  # a put() of the same name swapped the files under us: read the new model
            except _Damaged as exc:
                raise self._damaged_miss(name, str(exc)) from None
        self._stats.add("misses")
        raise ModelNotFoundError(f"Model {name!r} kept being replaced while it was read; load it again later.")

    def get_path(self, name: str, *, verify: bool | None = None) -> Path:
        """A path other tools can open: the model's ``.safetensors`` file (decoded into the cache if stored
        compressed). For a sharded model, the path of its ``*.safetensors.index.json``, with every shard as a
        plain ``.safetensors`` file beside it. Decoded copies count towards the model's size on disk.

        The files are checked as ``load(mmap=True)`` checks them (``verify`` has the same meaning): a damaged
        model is a miss (ModelNotFoundError), never a path to bad bytes.
        """
        self._check_open()
        self._check_name(name)
        if verify not in (None, True, False):
            raise ModelCacheError(f"verify must be None, True or False, not {verify!r}.")
        try:
            with self._reading(name) as manifest:
                directory = self._dir(name)
                decoded_any = False
                for part in manifest["parts"]:
                    target = directory / part["file"]
                    if part["compressed"] and not os.path.lexists(target):
                        self._decode_copy(name, directory, part)
                        decoded_any = True
                        continue
                    rp = self._readable_part(directory, part)
                    if self._needs_check(directory, rp, True, verify):
                        identity = _identity(rp.path)
                        if model_io.hash_file(rp.path, follow=False) != rp.checksum:
                            raise _Damaged(f"{rp.path} does not match the checksum taken when it was stored")
                        self._record_verified(directory, [rp], identity)
                path: Path = directory / (manifest["index"] or manifest["parts"][0]["file"])
        except _Damaged as exc:
            raise self._damaged_miss(name, str(exc)) from None
        if decoded_any:
            self._enforce_budget(keep=name)
        return path

    def _decode_copy(self, name: str, directory: Path, part: dict[str, Any]) -> None:
        """Decode a compressed part into its plain file beside it (checked against the raw checksum)."""
        tmp = directory / f".decoding-{os.getpid()}-{uuid.uuid4().hex}"
        source = directory / part["stored"]
        if not _regular(source):
            raise _Damaged(f"{source} is missing or not a regular file")
        try:
            with self._progress_bar(int(part["raw_size"]), f"decoding {name}") as bar:
                try:
                    digest = model_io.decode_part_to_file(source, tmp, self.threads, progress=bar)
                except CorruptEntryError as exc:
                    raise _Damaged(str(exc)) from None
            if digest != part["raw_checksum"]:
                raise _Damaged(f"{source} decoded to different bytes than were stored")
            identity = _identity(tmp)
            os.rename(tmp, directory / part["file"])
            rp = _ReadablePart(directory / part["file"], False, part["raw_checksum"], int(part["raw_size"]))
            self._record_verified(directory, [rp], identity)
        finally:
            tmp.unlink(missing_ok=True)

    def _damaged_miss(self, name: str, why: str) -> ModelNotFoundError:
        """Count a damaged model as corrupt and missed, remove it if nobody uses it, and say so."""
        self._stats.add("corrupt")
        self._stats.add("misses")
        removed = self._drop_damaged(name)
        then = "it was removed from the cache" if removed else "cleanup() removes it once nobody is using it"
        return ModelNotFoundError(f"Model {name!r} is damaged ({why}), so it counts as not cached: {then}. "
                                  f"Add it again.")  # fmt: skip

    def _drop_damaged(self, name: str) -> bool:
        trash: list[Path] = []
        write_lock = FileLock(self._lock_path(name, "write"))
        if not write_lock.acquire(blocking=False):
            return False
        try:
            with FileLock(self._index_lock_path()):
                if not _entry_is_ours(self._dir(name)):
                    return False
                return self._remove(name, trash, write_lock=write_lock) is not None
        finally:
            write_lock.release(unlink=not os.path.lexists(self._dir(name)))
            for path in trash:
                _purge(path)

    def _needs_check(self, directory: Path, rp: _ReadablePart, mapped: bool, verify: bool | None) -> bool:
        """Whether this read must hash the file: always for copies and decodes, once per identity for maps."""
        if verify is not None:
            return verify
        if not mapped or rp.compressed:
            return True
        stamp = _read_verified(directory).get(rp.path.name)
        return stamp is None or stamp != [*_identity(rp.path), rp.checksum]

    def _record_verified(
        self, directory: Path, parts: builtins.list[_ReadablePart], identity: tuple[int, ...] | None = None
    ) -> None:
        """Remember that these files matched their checksums at their current identity (see ``load``).

        ``identity`` is the one taken before the hash, when given: a change during the hash then leaves a
        stale stamp, which only costs a re-hash next time.
        """
        stamps = _read_verified(directory)
        changed = False
        for rp in parts:
            try:
                ident = identity if identity is not None else _identity(rp.path)
            except OSError:
                continue
            stamp = [*ident, rp.checksum]
            changed |= stamps.get(rp.path.name) != stamp
            stamps[rp.path.name] = stamp
        if not changed:
            return  # already recorded: a copy load that checked the file writes nothing
        tmp = directory / f"{_VERIFIED}.{os.getpid()}-{uuid.uuid4().hex}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            with open(fd, "w", encoding="utf-8") as f:
                json.dump(stamps, f)
            os.replace(tmp, directory / _VERIFIED)
        except OSError:
            tmp.unlink(missing_ok=True)  # a stamp is an optimisation: without it the next map hashes again

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
            manifest, damaged = self._manifest_state(name)
            if manifest is None:
                self._stats.add("misses")
                if damaged:
                    self._stats.add("corrupt")
                    raise ModelNotFoundError(
                        f"Model {name!r} has a damaged manifest, so it counts as not cached; add it again (that "
                        f"replaces it) or run cleanup() to remove it."
                    )
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

    def _readable_part(self, directory: Path, part: dict[str, Any]) -> _ReadablePart:
        """The file a read should open for ``part``: a decoded plain copy if ``get_path`` left one, else the
        stored file. Files that are not regular (a symlink put there, a FIFO) are damage, never followed."""
        if part["compressed"]:
            decoded = directory / part["file"]
            if os.path.lexists(decoded):
                if not _regular(decoded):
                    raise _Damaged(f"{decoded} is not a regular file the cache wrote")
                return _ReadablePart(decoded, False, part["raw_checksum"], int(part["raw_size"]))
            rp = _ReadablePart(directory / part["stored"], True, part["checksum"], int(part["raw_size"]))
        else:
            rp = _ReadablePart(directory / part["stored"], False, part["checksum"], int(part["raw_size"]))
        if not os.path.lexists(rp.path):
            raise FileNotFoundError(rp.path)  # replaced under us (or deleted): the caller retries
        if not _regular(rp.path):
            raise _Damaged(f"{rp.path} is not a regular file the cache wrote")
        return rp

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
            if not entry.name.startswith(".")
            and entry.is_dir(follow_symlinks=False)
            and _regular(Path(entry.path) / _MANIFEST)
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

        False if any file differs, is missing or is not a regular file, or the manifest is damaged (counted in
        ``stats.corrupt``). A damaged decoded copy is removed (``get_path`` makes it again) but still reported
        as False. Nothing outside the model's directory is ever read or removed: every name in a manifest is
        checked to be a plain file name first.
        """
        self._check_open()
        self._check_name(name)
        lock = FileLock(self._lock_path(name, "use"))
        lock.acquire(shared=True)
        try:
            manifest, damaged = self._manifest_state(name)
            if manifest is None:
                if damaged:
                    self._stats.add("corrupt")
                    return False
                raise ModelNotFoundError(f"Model {name!r} is not in the model cache.")
            directory = self._dir(name)
            ok = True
            good: list[_ReadablePart] = []
            try:
                for part in manifest["parts"]:
                    stored = _ReadablePart(directory / part["stored"], part["compressed"], part["checksum"],
                                           int(part["raw_size"]))  # fmt: skip
                    identity = _identity(stored.path) if _regular(stored.path) else None
                    if identity is None or model_io.hash_file(stored.path, follow=False) != part["checksum"]:
                        ok = False
                    elif not part["compressed"]:
                        good.append(stored)
                    decoded = directory / part["file"]
                    if part["compressed"] and os.path.lexists(decoded):
                        if not _regular(decoded):
                            ok = False  # not ours to remove: report it
                        elif model_io.hash_file(decoded, follow=False) != part["raw_checksum"]:
                            decoded.unlink(missing_ok=True)
                            ok = False
                if manifest.get("index"):
                    index = directory / manifest["index"]
                    if not _regular(index) or model_io.hash_file(index, follow=False) != manifest.get("index_checksum"):
                        ok = False
            except (FileNotFoundError, ModelCacheError):
                ok = False
            if ok and good:
                self._record_verified(directory, good)
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
        """Remove a model; False if it was not cached. Raises ModelCacheError if it is pinned or being loaded,
        or if ``name`` is something in the cache directory that the cache did not make (left alone)."""
        self._check_open()
        self._check_name(name)
        trash: list[Path] = []
        write_lock = FileLock(self._lock_path(name, "write"))
        write_lock.acquire()
        try:
            with FileLock(self._index_lock_path()):
                if not os.path.lexists(self._dir(name)):
                    return False
                if not _entry_is_ours(self._dir(name)):
                    raise ModelCacheError(
                        f"{self._dir(name)} was not made by the model cache; it is left alone. Move it out of "
                        f"{self.root} yourself if it is yours."
                    )
                freed = self._remove(name, trash, write_lock=write_lock)
                if freed is None:
                    raise ModelCacheError(
                        f"Model {name!r} is pinned or being loaded; delete it after its users are done."
                    )
            self._stats.add("deletes")
            return True
        finally:
            write_lock.release(unlink=not os.path.lexists(self._dir(name)))
            for path in trash:
                _purge(path)

    def clear(self) -> None:
        """Remove every model that is not pinned or being loaded (those stay), and crashed writers' leftovers."""
        self._check_open()
        trash: list[Path] = []
        with FileLock(self._index_lock_path()):
            for model in self.list():
                if _entry_is_ours(self._dir(model)) and self._remove(model, trash) is not None:
                    self._stats.add("deletes")
            self._sweep(CleanupReport(cache=self.name), trash)
        for path in trash:
            _purge(path)

    def cleanup(self) -> CleanupReport:
        """Remove leftovers of crashed writers and damaged entries, then evict models until under ``size``.

        Only what the cache made is removed: temporary and trash entries with the names the cache gives
        them, and damaged models whose directory holds nothing but files of the names a model has. Anything
        else in the cache directory is left alone and listed in ``report.details["foreign"]``. Symlinks are
        never followed. Damaged manifests count in ``report.corrupt``.
        """
        self._check_open()
        report = CleanupReport(cache=self.name)
        trash: list[Path] = []
        with FileLock(self._index_lock_path()):
            self._sweep(report, trash)
            foreign: list[str] = []
            for entry in os.scandir(self.root):
                if entry.name.startswith("."):
                    continue
                if not _valid_name(entry.name) or not entry.is_dir(follow_symlinks=False):
                    foreign.append(entry.name)
                    continue
                for leftover in os.scandir(entry.path):  # a get_path() that died mid-decode
                    if (
                        _DECODING_NAME.fullmatch(leftover.name) or _VERIFIED_TMP.fullmatch(leftover.name)
                    ) and leftover.is_file(follow_symlinks=False):
                        if not _owner_alive(leftover.name.split(".")[-1].removeprefix("decoding-")):
                            os.unlink(leftover.path)
                            report.orphans += 1
                manifest, damaged = self._manifest_state(entry.name)
                if manifest is not None:
                    continue
                if not damaged or not _entry_is_ours(Path(entry.path)):
                    foreign.append(entry.name)  # no manifest, or files the cache never writes: not ours
                    continue
                size = _dir_bytes(Path(entry.path))
                if self._remove(entry.name, trash) is not None:
                    report.corrupt += 1
                    report.bytes_freed += size
                    self._stats.add("corrupt")
            if foreign:
                report.details["foreign"] = sorted(foreign)
            before = self._usage(None)
            evicted, _ = self._make_room(0, exclude=None, trash=trash)
            report.evicted = len(evicted)
            report.bytes_freed += before - self._usage(None)
            report.details["evicted"] = evicted
        for path in trash:
            _purge(path)
        return report

    def _sweep(self, report: CleanupReport, trash: builtins.list[Path]) -> None:
        """Queue dead writers' temporary directories and the trash for removal (index lock held).

        Only entries named as the cache names them; ``.tmp`` and ``.trash`` are checked to be real
        directories first (a symlink put in their place is never scanned)."""
        for sub, pattern, check_owner in ((".tmp", _TMP_NAME, True), (".trash", _TRASH_NAME, False)):
            directory = self.root / sub
            if not _real_dir(directory):
                continue
            for entry in os.scandir(directory):
                if not pattern.fullmatch(entry.name):
                    continue
                if check_owner and _owner_alive(entry.name):
                    continue
                trash.append(Path(entry.path))
                report.orphans += 1

    def _enforce_budget(self, keep: str | None) -> builtins.list[str]:
        trash: list[Path] = []
        with FileLock(self._index_lock_path()):
            evicted, _ = self._make_room(0, exclude=None, keep=keep, trash=trash)
        for path in trash:
            _purge(path)
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
        """The model's validated manifest, or None if it is missing or damaged (see ``_manifest_state``)."""
        return self._manifest_state(name)[0]

    def _manifest_state(self, name: str) -> tuple[dict[str, Any] | None, bool]:
        """(manifest, damaged): (doc, False) for a good one, (None, False) if there is none, (None, True) if
        the entry is a real directory with a manifest file that does not parse or has the wrong shape."""
        directory = self._dir(name)
        if not _real_dir(directory):
            return None, False  # missing, or a symlink / file the cache did not make: not a model
        try:
            fd = os.open(directory / _MANIFEST, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None, False
        except OSError:
            return None, True
        try:
            with open(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    return None, True
                doc = json.loads(f.read())
        except (OSError, ValueError, RecursionError):
            return None, True
        checked = _check_manifest(doc)
        return checked, checked is None

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
    """A tqdm bar over bytes, or a no-op; callable with a byte count. Thread-safe (decoders report from a pool).

    The bar itself vanishes when done (``leave=False``); ``summary`` leaves one line in its place.
    """

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self._bar: Any = None
        self._desc = desc
        self._start = time.perf_counter()
        self._lock = threading.Lock()
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)

    def __call__(self, n: int) -> None:
        self.update(n)

    def update(self, n: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(n)

    def summary(self, info: ModelInfo) -> None:
        """Print ``cached NAME: 87.3 MiB -> 71.6 MiB (0.82x) in 1.2 s`` where the bar was (if it was shown)."""
        if self._bar is None:
            return
        self._bar.close()
        elapsed = time.perf_counter() - self._start
        sys.stderr.write(
            f"{self._desc}: {_mib(info.raw_size)} -> {_mib(info.stored_size)} ({info.ratio:.2f}x) in {elapsed:.1f} s\n"
        )
        sys.stderr.flush()
        self._bar = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"


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
            if entry.name in (_MANIFEST, _ACCESS, _VERIFIED) or entry.name.startswith((".decoding-", ".verified.")):
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


# --- the cache directory: recognised by its marker ---------------------------------------------------------


def _open_root(root: Path) -> None:
    """Create or recognise a model cache directory; refuse a non-empty directory that is not one.

    A model cache is a directory holding :data:`MARKER`. A new or empty directory becomes one; a directory
    written by llamahome before the marker existed (it has the cache's own ``.locks``, ``.tmp`` and ``.trash``
    directories) is adopted; any other non-empty directory is refused rather than used, because the cache
    removes entries it does not recognise as models in ``cleanup``: pointing it at ``~/models`` must not put
    the user's files at risk. We refuse rather than silently using a subdirectory, so that the path the user
    gave is the path the models live at (``get_path`` results, ``du``, the CLI's ``--dir``).
    """
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        marker = _read_marker(root)
        if marker is None:
            with os.scandir(root) as it:
                names = {entry.name for entry in it}
            legacy = all(name in names and _real_dir(root / name) for name in _SUBDIRS)
            # Another process creating the same cache right now leaves only these behind for a moment.
            starting = {n for n in names if n in _SUBDIRS or n.startswith(MARKER + ".")}
            if names - starting and not legacy and _read_marker(root) is None:
                raise ModelCacheError(
                    f"{root} is not empty and is not a LlamaHome model cache (it has no {MARKER}); the cache "
                    f"will not share a directory with other files. Give ModelCache an empty or new directory, "
                    f"for example {root / 'llamahome-models'}."
                )
            _write_marker(root)
        for sub in ("", *_SUBDIRS):
            path = root / sub
            path.mkdir(mode=0o700, exist_ok=True)
            if not _real_dir(path):
                raise ModelCacheError(
                    f"{path} is not a directory the model cache made (a symlink or a file); remove it and retry."
                )
            os.chmod(path, 0o700)  # private to the user
    except OSError as exc:
        raise StorageError(
            f"Cannot create the model cache directory {root} ({exc.strerror}); choose a writable path."
        ) from exc


def _read_marker(root: Path) -> dict[str, Any] | None:
    """The marker's content; None if there is none. A foreign or newer marker is a ModelCacheError."""
    try:
        fd = os.open(root / MARKER, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:
        doc: Any = None
    else:
        try:
            with open(fd, "rb") as f:
                doc = json.loads(f.read(4096))
        except (OSError, ValueError):
            doc = None
    if not isinstance(doc, dict) or doc.get("kind") != _KIND:
        kind = doc.get("kind") if isinstance(doc, dict) else None
        what = f"a {kind!r} cache" if isinstance(kind, str) else "something else"
        raise ModelCacheError(
            f"{root} is marked as {what}, not a LlamaHome model cache ({root / MARKER}); give ModelCache its own "
            f"directory."
        )
    fmt = doc.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > _FORMAT:
        raise ModelCacheError(
            f"The model cache at {root} was written in format {fmt!r} by a newer LlamaHome (this one reads "
            f"format {_FORMAT}); upgrade llamahome or use another directory."
        )
    return doc


def _write_marker(root: Path) -> None:
    tmp = root / f"{MARKER}.{os.getpid()}-{uuid.uuid4().hex}"
    _write_json(tmp, {"kind": _KIND, "format": _FORMAT})
    os.replace(tmp, root / MARKER)


def _real_dir(path: Path) -> bool:
    """A directory, not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _purge(path: Path) -> None:
    """Remove a trashed model directory; a symlink is unlinked, never followed."""
    try:
        if os.path.islink(path) or not _real_dir(path):
            os.unlink(path)
        else:
            shutil.rmtree(path, ignore_errors=True)  # rmtree never follows symlinks inside
    except OSError:
        pass


# --- manifests: validated before any field is used -----------------------------------------------------------


def _plain_name(value: object, *suffixes: str) -> bool:
    """A file name inside the model directory: no separators, no leading dot, one of ``suffixes``."""
    return isinstance(value, str) and _valid_name(value) and value not in (_MANIFEST, _ACCESS) and value.endswith(
        suffixes
    )


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_manifest(doc: object) -> dict[str, Any] | None:
    """The manifest if every field has the shape this module writes, else None (a damaged entry).

    Every path in it is a plain file name (``_plain_name``), so ``directory / name`` stays inside the model's
    directory whatever the file says.
    """
    if not isinstance(doc, dict) or doc.get("version") != 1:
        return None
    created = doc.get("created")
    if not isinstance(created, (int, float)) or isinstance(created, bool) or not math.isfinite(created):
        return None
    metadata = doc.get("metadata", {})
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        return None
    index = doc.get("index")
    if index is not None and not (_plain_name(index, ".json") and isinstance(doc.get("index_checksum"), str)):
        return None
    parts = doc.get("parts")
    if not isinstance(parts, list) or not parts:
        return None
    files = set()
    for part in parts:
        if not isinstance(part, dict):
            return None
        file, stored, compressed = part.get("file"), part.get("stored"), part.get("compressed")
        if not _plain_name(file, ".safetensors") or not isinstance(compressed, bool):
            return None
        if stored != (f"{file}.lhz" if compressed else file):
            return None
        if not all(_count(part.get(k)) for k in ("raw_size", "stored_size", "tensors", "compressed_tensors")):
            return None
        if not all(isinstance(part.get(k), str) for k in ("checksum", "raw_checksum")):
            return None
        if file in files:
            return None
        files.add(file)
    return doc


#: Names of the files a model directory may hold; an entry holding anything else was not made by the cache.
def _ours(name: str) -> bool:
    return (
        name in (_MANIFEST, _ACCESS, _VERIFIED)
        or name.endswith((".safetensors", ".safetensors.lhz", ".json"))
        and _valid_name(name)
        or bool(_DECODING_NAME.fullmatch(name) or _VERIFIED_TMP.fullmatch(name))
    )


def _entry_is_ours(directory: Path) -> bool:
    """Does this directory look like a model entry the cache wrote: a real directory with a manifest file and
    nothing but regular files of names the cache writes? Only such entries are removed when damaged."""
    if not _real_dir(directory):
        return False
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError:
        return False
    if not any(e.name == _MANIFEST for e in entries):
        return False
    return all(e.is_file(follow_symlinks=False) and _ours(e.name) for e in entries)


# --- verification stamps -------------------------------------------------------------------------------------


def _identity(path: Path) -> tuple[int, ...]:
    """What changes whenever a file is changed through the file system (ctime cannot be set back by utime)."""
    st = os.lstat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_verified(directory: Path) -> dict[str, Any]:
    try:
        fd = os.open(directory / _VERIFIED, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        with open(fd, "rb") as f:
            doc = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _regular(path: Path) -> bool:
    """A regular file, not a symlink to one."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
