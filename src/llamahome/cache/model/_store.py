"""ModelCache: publishing, reading, eviction and cleanup of whole models, safe across threads and processes.

Layout under ``path``: ``.llamahome-cache.json`` (the marker, see ``_layout``), one directory per model
(``manifest.json``, its data files, ``.access``, ``.verified``) plus ``.lock`` (the index lock), ``.locks/``
(per-model locks), ``.tmp/`` (models being written) and ``.trash/`` (models being removed).

A model is written completely in ``.tmp/`` and published by one ``rename``, so readers see a whole model or
none. Readers hold a shared ``flock`` on the model's use lock while loading (and for the whole of a ``pin``);
eviction and ``delete`` need it exclusively, so a model is never removed from under a reader. A process that
mapped a model keeps a valid mapping even after it is evicted: the files are unlinked, never truncated or
rewritten in place. Missing models raise :class:`ModelNotFoundError` (a ``ModelCacheError`` and a
``KeyError``); damaged ones are a counted miss.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from llamahome.errors import (
    CacheClosedError,
    ConfigError,
    CorruptEntryError,
    ModelCacheError,
    ModelNotFoundError,
)

from .. import files as cf
from ..policies import POLICY_NAMES, Usage, check_policy_name, eviction_order
from ..stats import CacheStats, CleanupReport
from ..units import MIB, size_to_bytes
from . import _io as model_io
from ._dir import plan_model_dir
from ._hub import cache_name, find_snapshot, hub_cache_dir
from ._format import build_safetensors_header, open_regular, read_safetensors_header, write_order
from ._gguf import GGUF_MAGIC, read_gguf
from ._io import PartResult
from ._layout import (
    ACCESS,
    MANIFEST,
    NAME_MAX,
    PICKLE_SUFFIXES,
    TRASH_NAME,
    VERIFIED,
    is_model_temp,
    data_inodes,
    dir_bytes,
    entry_is_ours,
    fsync_dir,
    open_root,
    owner_alive,
    purge,
    real_dir,
    regular,
    union_bytes,
    valid_name,
    write_json,
)
from ._locks import FileLock
from ._importer import import_part, link_and_hash
from ._manifest import (
    build_manifest,
    check_loadable,
    check_manifest,
    extra_files,
    manifest_bytes,
    read_index,
    same_content,
    stored_files,
)
from ._share import share_content
from ._stamps import ReadablePart, file_identity, needs_check, record_verified
from ._progress import PROGRESS_MIN_BYTES, Progress
from ._tensors import check_metadata, tensor_items

__all__ = ["ModelCache", "ModelInfo", "ModelNotFoundError", "POLICIES"]

#: Eviction policy names (the order itself is ``policies.ORDER_KEYS``, shared by every cache).
POLICIES: tuple[str, ...] = POLICY_NAMES


def _usages(models: Iterable[ModelInfo]) -> dict[str, Usage]:
    """Usage records for the shared eviction order. A model is written once (a re-put replaces it: a new
    ``created``), so ``created`` is both its insertion and its last write; ``seq`` is the rank by
    ``(created, name)``, which makes every tie total and the same on every run."""
    ranked = sorted(models, key=lambda m: (m.created, m.name))
    return {m.name: Usage(seq=i, written=m.created, last_used=m.last_used, uses=m.hits) for i, m in enumerate(ranked)}


class _Replaced(ModelNotFoundError):
    """The model's files were swapped by a concurrent put() of the same name while we read them."""


class _Damaged(Exception):
    """A model's file failed its checksum or is not what the cache wrote (turned into a counted miss)."""


@dataclass(frozen=True)
class ModelInfo:
    """One cached model as ``info()`` and ``list_info()`` describe it.

    ``size`` is what the model holds on disk now (its data files plus any decoded copy made by
    ``get_path``); ``stored_size`` the data files alone; ``raw_size`` the plain safetensors size;
    ``ratio`` = stored_size / raw_size. ``pinned`` is True while any process pins or loads it.
    ``shared_bytes`` is the part of ``size`` held by files identical to another model's (stored once, counted
    once in the budget); ``own_bytes`` the rest. ``format`` is ``safetensors``, ``gguf`` or ``pickle``;
    ``layout`` is ``dir`` for whole model directories (``add_dir``, ``add_hf``), whose support files (config,
    tokenizer, ...) are listed in ``extra_files``. GGUF models carry ``gguf.architecture`` and
    ``gguf.quantization`` in ``metadata``.
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
    format: str = "safetensors"
    layout: str = "file"
    extra_files: tuple[str, ...] = ()
    shared_bytes: int = 0

    @property
    def own_bytes(self) -> int:
        """Bytes on disk only this model holds (what deleting it frees); ``size - shared_bytes``."""
        return self.size - self.shared_bytes


class ModelCache:
    """Model weights kept as safetensors (or a compressed container of the same tensors) under a byte budget.

    ``size`` is megabytes (1 MB = 1 MiB; a string such as ``"4GB"`` works too). ``compression`` stores each
    tensor compressed only where that saves >= 10% (bit-exact). ``cleanup_policy`` picks the model evicted
    first: ``lru`` (default), ``lfu``, ``fifo`` or ``time`` (oldest added). ``clock`` supplies timestamps
    (inject one in tests); ``threads`` bounds the encode/decode thread pools; ``progress`` forces the import
    progress bar on or off (default: on for imports >= 256 MiB when stderr is a terminal).

    ``path`` must be new, empty, or a model cache already (it carries ``.llamahome-cache.json``; caches made
    before the marker existed are recognised by their ``.locks``/``.tmp``/``.trash``): any other non-empty
    directory is refused with ModelCacheError, because the cache must never share a directory with your files.
    Besides safetensors it keeps whole model directories (``add_dir``, ``add_hf``) and GGUF files, and stores
    content identical across models once.
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
        cleanup_policy = check_policy_name(cleanup_policy, "model_cache.cleanup_policy")
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
        open_root(self.root)

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
        meta = check_metadata(metadata)
        items = tensor_items(tensors)
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
                manifest = build_manifest(
                    name, [("model.safetensors", part)], meta, source="put", created=self._clock()
                )
                info = self._commit(name, tmp, manifest)
                bar.summary(info.raw_size, info.stored_size)
            return info
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def add_file(
        self, name: str, path: str | os.PathLike[str], *, compression: bool | None = None, link: bool = True
    ) -> ModelInfo:
        """Add an existing ``.safetensors`` or ``.gguf`` file as model ``name`` (validated first; not moved).

        Without compression (or where it does not pay) the cache reflinks or hard-links the file, and copies
        it when neither is possible (another file system) or ``link=False``. A hard link shares the file with
        you: do not rewrite the original in place while it is cached (``verify`` would report it). Replaces
        any model of the same name. Only regular files are taken (a FIFO or device is refused, never read).

        A GGUF file (llama.cpp, Ollama) is validated (header, metadata, every tensor inside the file: a
        truncated download is refused) and stored as it is (it is quantized already; ``compression`` does
        not apply). ``get_path`` hands it to llama.cpp; ``info().metadata`` holds ``gguf.architecture`` and
        ``gguf.quantization``.
        """
        self._check_open()
        self._check_name(name)
        src = Path(path)
        fd = open_regular_source(src)
        try:
            if os.pread(fd, 4, 0) == GGUF_MAGIC or src.suffix.lower() == ".gguf":
                gguf = read_gguf(fd, str(src))
            else:
                gguf = None
        finally:
            os.close(fd)
        if gguf is not None:
            file_name = src.name if valid_name(src.name) and src.name.endswith(".gguf") else "model.gguf"
            meta = {"gguf.architecture": gguf.architecture, "gguf.quantization": gguf.quantization,
                    "gguf.version": str(gguf.version)}  # fmt: skip
            general = gguf.metadata.get("general.name")
            if isinstance(general, str):
                meta["gguf.name"] = general
            return self._import(name, [(file_name, src, gguf)], None, False, "file", link, fmt="gguf", metadata=meta)
        header = read_safetensors_header(src)
        compress = self.compression if compression is None else compression
        return self._import(name, [("model.safetensors", src, header)], None, compress, "file", link)

    def add_dir(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        compression: bool | None = None,
        link: bool = True,
        allow_pickle: bool = False,
    ) -> ModelInfo:
        """Add a whole model directory (a ``save_pretrained`` output or a hub snapshot), ready for loaders.

        Keeps the safetensors weights (one file, or the shards a ``*.safetensors.index.json`` lists) and the
        small files a loader needs beside them (``config.json``, ``generation_config.json``, tokenizer files,
        chat template), each checked by ``verify``. ``get_path(name)`` then returns a directory that
        ``transformers`` ``from_pretrained`` loads offline. Pickled weights (``.bin``, ``.pt``, ...) can run
        code when loaded: a directory holding only those is refused unless ``allow_pickle=True`` (they are then
        kept as they are, never unpickled by the cache); beside safetensors weights they are skipped.
        Subdirectories and other files are skipped. See ``add_file`` for ``compression`` and ``link``.
        """
        self._check_open()
        self._check_name(name)
        root = Path(path)
        plan = plan_model_dir(root, allow_pickle=allow_pickle)
        compress = self.compression if compression is None else compression
        parts: list[tuple[str, Path, Any]] = []
        if plan.index is not None:
            index_path = plan.index
            shards = read_index(index_path)
            for shard in shards:
                shard_path = root / shard
                if not shard_path.is_file():
                    raise ModelCacheError(f"{index_path.name} lists {shard}, which is missing from {root}.")
                parts.append((shard, shard_path, read_safetensors_header(shard_path)))
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            headers = {shard: header for shard, _, header in parts}
            for tensor, shard in weight_map.items():
                if tensor not in headers[shard].tensors:
                    raise ModelCacheError(
                        f"{index_path.name} maps tensor {tensor!r} to {shard}, which does not hold it."
                    )
        else:
            parts = [(w.name, w, read_safetensors_header(w)) for w in plan.weights]
        return self._import(name, parts, plan.index, compress, "dir", link, support=plan.support, layout="dir")

    def add_hf(
        self,
        repo_id: str,
        revision: str = "main",
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        name: str | None = None,
        compression: bool = False,
        link: bool = True,
        allow_pickle: bool = False,
    ) -> str:
        """Import a model already in the Hugging Face hub cache (offline); returns its name in this cache.

        Finds ``models--<org>--<name>/snapshots/<commit>`` for ``revision`` (a branch, tag or commit hash) in
        ``cache_dir`` (default: where huggingface_hub looks: ``$HF_HUB_CACHE``, ``$HF_HOME/hub``,
        ``~/.cache/huggingface/hub``) and adds it as :meth:`add_dir` does. Files are hard-linked (or reflinked)
        from the hub's blobs where the file system allows, so no bytes are copied: that is why ``compression``
        defaults to False here (compressing writes a new copy; pass ``compression=True`` to trade the hub's
        copy for a smaller one, e.g. before deleting it from the hub cache).
        The name is ``org--name`` (``/`` is not allowed in names; the hub cache spells it the same way), with
        ``@<revision>`` added for a revision other than ``main``, unless ``name`` is given. A missing repository
        or revision is a ModelCacheError listing what the hub cache has.
        """
        self._check_open()
        snapshot = find_snapshot(repo_id, revision, hub_cache_dir(cache_dir))
        target = name if name is not None else cache_name(repo_id, revision)
        self.add_dir(target, snapshot, compression=compression, link=link, allow_pickle=allow_pickle)
        return target

    def _import(
        self,
        name: str,
        parts: list[tuple[str, Path, Any]],
        index_path: Path | None,
        compress: bool,
        source: str,
        link: bool,
        *,
        support: Sequence[Path] = (),
        layout: str | None = None,
        fmt: str = "safetensors",
        metadata: Mapping[str, str] | None = None,
    ) -> ModelInfo:
        support_sizes = {p.name: p.stat().st_size for p in support}
        raw_total = sum(header.file_size for _, _, header in parts) + sum(support_sizes.values())
        if not compress:
            self._check_fits(name, raw_total)
        tmp = self._new_tmp()
        try:
            written: list[tuple[str, PartResult]] = []
            files: list[dict[str, Any]] = []
            identities: dict[str, tuple[int, ...]] = {}
            with self._progress_bar(raw_total, f"caching {name}") as bar:
                for file_name, src, header in parts:
                    if fmt == "gguf":  # stored as it is: link (or copy) and hash
                        digest, size = link_and_hash(tmp, file_name, src, header.file_size, bar, link,
                                                           identities)  # fmt: skip
                        written.append((file_name, PartResult(file_name, False, size, size, digest, digest,
                                                              header.tensors, 0)))  # fmt: skip
                        continue
                    try:
                        part = import_part(tmp, file_name, src, header, compress, bar, link, identities, self.threads)
                    except FileNotFoundError:
                        raise ModelCacheError(f"{src} disappeared while it was being added; try again.") from None
                    written.append((file_name, part))
                for src in support:
                    # Small support files are copied (editing your config.json must not edit the cached one);
                    # opted-in pickled weights are large and linked like safetensors files.
                    small = not src.name.endswith(PICKLE_SUFFIXES)
                    digest, size = link_and_hash(tmp, src.name, src, support_sizes[src.name], bar,
                                                       link and not small, identities)  # fmt: skip
                    files.append({"file": src.name, "size": size, "checksum": digest})
                index_name = None
                if index_path is not None:
                    index_name = index_path.name
                    model_io.link_or_copy(index_path, tmp / index_name, hard_link=False)
                if metadata is None:
                    metadata = parts[0][2].metadata if len(parts) == 1 else {}
                manifest = build_manifest(
                    name, written, metadata, source=source, index=index_name, created=self._clock()
                )
                if fmt != "safetensors":
                    for part in manifest["parts"]:
                        part["format"] = fmt
                if layout is not None:
                    manifest["layout"] = layout
                    manifest["files"] = files
                info = self._commit(name, tmp, manifest, identities)
                bar.summary(info.raw_size, info.stored_size)
            return info
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

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
        stored = manifest_bytes(manifest, tmp)
        if stored > self.max_bytes:
            raise ModelCacheError(
                f"Model {name!r} needs {stored:,} bytes but the whole model cache holds {self.max_bytes:,}; "
                f"raise model_cache.size."
            )
        write_json(tmp / MANIFEST, manifest)
        identities = dict(identities or {})
        access = tmp / ACCESS
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
                if existing is not None and same_content(existing, manifest):
                    self._stats.add("sets")
                    return self._info_from(name, existing)
                if existing is None and os.path.lexists(target) and not entry_is_ours(target):
                    raise ModelCacheError(
                        f"{target} exists and was not made by the model cache; it is left alone. Choose another "
                        f"model name or move it out of {self.root}."
                    )
                share_content(tmp, manifest, identities, self._holders(exclude=name))
                # Stamps: the files are as hashed now, so the first mapped load need not hash them again.
                stamps = {f: [*(identities.get(f) or file_identity(tmp / f)), c] for f, c in stored_files(manifest)}
                write_json(tmp / VERIFIED, stamps)
                _, room = self._make_room(0, exclude=name, trash=trash, extra=data_inodes(tmp))
                if not room:
                    raise ModelCacheError(
                        f"Model {name!r} needs {stored:,} bytes but only {self.max_bytes - self._usage(name):,} "
                        f"can be freed: the other models are pinned or being loaded. Unpin them or raise "
                        f"model_cache.size."
                    )
                if existing is not None or os.path.lexists(target):
                    dest = self.root / ".trash" / uuid.uuid4().hex
                    os.rename(target, dest)
                    trash.append(dest)
                os.rename(tmp, target)
                fsync_dir(self.root)
            self._stats.add("sets")
            self._stats.add("raw_bytes", sum(p["raw_size"] for p in manifest["parts"]))
            self._stats.add("stored_bytes", sum(p["stored_size"] for p in manifest["parts"]))
            return self._shared_info(name)
        finally:
            write_lock.release()
            for path in trash:
                purge(path)

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
                    check_loadable(name, manifest)
                    parts = [self._readable_part(directory, part) for part in manifest["parts"]]
                    to_decode = sum(p.raw_size for p in parts if p.compressed)
                    out: dict[str, Any] = {}
                    with self._progress_bar(to_decode, f"loading {name}") as bar:
                        for rp in parts:
                            check = needs_check(directory, rp, mapped and not rp.compressed, verify)
                            try:
                                out.update(model_io.load_part(
                                    rp.path, compressed=rp.compressed, framework=framework, device=device,
                                    mmap_=mmap, threads=self.threads, checksum=rp.checksum if check else None,
                                    progress=bar if rp.compressed else None))  # fmt: skip
                            except CorruptEntryError as exc:
                                raise _Damaged(str(exc)) from None
                            if check and not rp.compressed:
                                record_verified(directory, [rp])
                    return out
            except _Replaced:
                continue  # a put() of the same name swapped the files under us: read the new model
            except _Damaged as exc:
                raise self._damaged_miss(name, str(exc)) from None
        self._stats.add("misses")
        raise ModelNotFoundError(f"Model {name!r} kept being replaced while it was read; load it again later.")

    def get_path(self, name: str, *, verify: bool | None = None) -> Path:
        """A path other tools can open. For a whole model directory (``add_dir``, ``add_hf``): the directory,
        which ``transformers`` ``from_pretrained`` loads. Otherwise the model's ``.safetensors`` or ``.gguf``
        file, or for a sharded model its ``*.safetensors.index.json``. Parts stored compressed are decoded
        into plain ``.safetensors`` files beside them first; decoded copies count towards the model's size.

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
                    self._check_file(directory, self._readable_part(directory, part), verify)
                checked = [(f["file"], f["checksum"], int(f["size"])) for f in extra_files(manifest)]
                if manifest["index"]:
                    checked.append((manifest["index"], manifest["index_checksum"], 0))
                for file, checksum, size in checked:  # the small files loaders read: config, tokenizer, index
                    rp = ReadablePart(directory / file, False, checksum, size)
                    if not regular(rp.path):
                        raise _Damaged(f"{rp.path} is missing or not a regular file the cache wrote")
                    self._check_file(directory, rp, verify)
                if manifest.get("layout") == "dir":
                    path: Path = directory  # what from_pretrained() takes
                else:
                    path = directory / (manifest["index"] or manifest["parts"][0]["file"])
        except _Damaged as exc:
            raise self._damaged_miss(name, str(exc)) from None
        if decoded_any:
            self._enforce_budget(keep=name)
        return path

    def _check_file(self, directory: Path, rp: ReadablePart, verify: bool | None) -> None:
        """Hash a file handed out by path, once per identity (see ``load``); _Damaged if it does not match."""
        if needs_check(directory, rp, True, verify):
            identity = file_identity(rp.path)
            if model_io.hash_file(rp.path, follow=False) != rp.checksum:
                raise _Damaged(f"{rp.path} does not match the checksum taken when it was stored")
            record_verified(directory, [rp], identity)

    def _decode_copy(self, name: str, directory: Path, part: dict[str, Any]) -> None:
        """Decode a compressed part into its plain file beside it (checked against the raw checksum)."""
        tmp = directory / cf.temp_name("decoding")
        source = directory / part["stored"]
        if not regular(source):
            raise _Damaged(f"{source} is missing or not a regular file")
        try:
            with self._progress_bar(int(part["raw_size"]), f"decoding {name}") as bar:
                try:
                    digest = model_io.decode_part_to_file(source, tmp, self.threads, progress=bar)
                except CorruptEntryError as exc:
                    raise _Damaged(str(exc)) from None
            if digest != part["raw_checksum"]:
                raise _Damaged(f"{source} decoded to different bytes than were stored")
            identity = file_identity(tmp)
            os.rename(tmp, directory / part["file"])
            rp = ReadablePart(directory / part["file"], False, part["raw_checksum"], int(part["raw_size"]))
            record_verified(directory, [rp], identity)
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
                if not entry_is_ours(self._dir(name)):
                    return False
                return self._remove(name, trash, write_lock=write_lock) is not None
        finally:
            write_lock.release(unlink=not os.path.lexists(self._dir(name)))
            for path in trash:
                purge(path)

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

    def _readable_part(self, directory: Path, part: dict[str, Any]) -> ReadablePart:
        """The file a read should open for ``part``: a decoded plain copy if ``get_path`` left one, else the
        stored file. Files that are not regular (a symlink put there, a FIFO) are damage, never followed."""
        if part["compressed"]:
            decoded = directory / part["file"]
            if os.path.lexists(decoded):
                if not regular(decoded):
                    raise _Damaged(f"{decoded} is not a regular file the cache wrote")
                return ReadablePart(decoded, False, part["raw_checksum"], int(part["raw_size"]))
            rp = ReadablePart(directory / part["stored"], True, part["checksum"], int(part["raw_size"]))
        else:
            rp = ReadablePart(directory / part["stored"], False, part["checksum"], int(part["raw_size"]))
        if not os.path.lexists(rp.path):
            raise FileNotFoundError(rp.path)  # replaced under us (or deleted): the caller retries
        if not regular(rp.path):
            raise _Damaged(f"{rp.path} is not a regular file the cache wrote")
        return rp

    # --- inspection ------------------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and valid_name(name) and (self._dir(name) / MANIFEST).is_file()

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
            and regular(Path(entry.path) / MANIFEST)
        )

    def list_info(self) -> builtins.list[ModelInfo]:
        """``info()`` of every cached model, in eviction order (the next victim first)."""
        self._check_open()
        return [info for info, _ in self._inventory()]

    def info(self, name: str) -> ModelInfo:
        """Size on disk, original size, ratio, last use, hits and pin state of one model."""
        self._check_open()
        self._check_name(name)
        if self._read_manifest(name) is None:
            raise ModelNotFoundError(f"Model {name!r} is not in the model cache.")
        return self._shared_info(name)

    def _shared_info(self, name: str) -> ModelInfo:
        """``info(name)`` with its shared bytes (which needs every model's files)."""
        for info in self.list_info():
            if info.name == name:
                return info
        raise ModelNotFoundError(f"Model {name!r} is not in the model cache.")

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
            good: list[ReadablePart] = []
            try:
                for part in manifest["parts"]:
                    stored = ReadablePart(directory / part["stored"], part["compressed"], part["checksum"],
                                           int(part["raw_size"]))  # fmt: skip
                    identity = file_identity(stored.path) if regular(stored.path) else None
                    if identity is None or model_io.hash_file(stored.path, follow=False) != part["checksum"]:
                        ok = False
                    elif not part["compressed"]:
                        good.append(stored)
                    decoded = directory / part["file"]
                    if part["compressed"] and os.path.lexists(decoded):
                        if not regular(decoded):
                            ok = False  # not ours to remove: report it
                        elif model_io.hash_file(decoded, follow=False) != part["raw_checksum"]:
                            decoded.unlink(missing_ok=True)
                            ok = False
                for extra in extra_files(manifest):
                    path = directory / extra["file"]
                    if not regular(path) or model_io.hash_file(path, follow=False) != extra["checksum"]:
                        ok = False
                if manifest.get("index"):
                    index = directory / manifest["index"]
                    if not regular(index) or model_io.hash_file(index, follow=False) != manifest.get("index_checksum"):
                        ok = False
            except (FileNotFoundError, ModelCacheError):
                ok = False
            if ok and good:
                record_verified(directory, good)
            if not ok:
                self._stats.add("corrupt")
            return ok
        finally:
            lock.release()

    @property
    def stats(self) -> CacheStats:
        """Counters of this process (hits = loads and get_paths that found the model) plus current holdings."""
        inventory = self._inventory() if not self._closed else []
        with self._stats._lock:
            self._stats.bytes = union_bytes([inodes for _, inodes in inventory])
            self._stats.entries = len(inventory)
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
                if not entry_is_ours(self._dir(name)):
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
                purge(path)

    def clear(self) -> None:
        """Remove every model that is not pinned or being loaded (those stay), and crashed writers' leftovers."""
        self._check_open()
        trash: list[Path] = []
        with FileLock(self._index_lock_path()):
            for model in self.list():
                if entry_is_ours(self._dir(model)) and self._remove(model, trash) is not None:
                    self._stats.add("deletes")
            self._sweep(CleanupReport(cache=self.name), trash)
        for path in trash:
            purge(path)

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
                if not valid_name(entry.name) or not entry.is_dir(follow_symlinks=False):
                    foreign.append(entry.name)
                    continue
                try:
                    leftovers = list(os.scandir(entry.path))
                except OSError:
                    foreign.append(entry.name)  # unreadable: not something the cache made
                    continue
                for leftover in leftovers:  # a get_path() that died mid-decode
                    if is_model_temp(leftover.name) and leftover.is_file(follow_symlinks=False):
                        old = cf.temp_owner(leftover.name) is None  # a name from before cache.files
                        owner = leftover.name.split(".")[-1].removeprefix("decoding-") if old else leftover.name
                        if not owner_alive(owner):
                            os.unlink(leftover.path)
                            report.orphans += 1
                manifest, damaged = self._manifest_state(entry.name)
                if manifest is not None:
                    continue
                if not damaged or not entry_is_ours(Path(entry.path)):
                    foreign.append(entry.name)  # no manifest, or files the cache never writes: not ours
                    continue
                size = dir_bytes(Path(entry.path))
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
            purge(path)
        return report

    def prune(self, to: float | str, *, dry_run: bool = False) -> CleanupReport:
        """Evict models in policy order until the cache holds at most ``to`` (MB, or ``"2GB"``).

        Pinned models and models being loaded are never evicted. Shared content counts once, so evicting a
        model frees only what it alone holds. With ``dry_run=True`` nothing is removed and the report says
        what would be (``details["evicted"]``, ``bytes_freed``): the same models and bytes a real run frees,
        unless other processes change the cache in between.
        """
        self._check_open()
        target = size_to_bytes(to)
        report = CleanupReport(cache=self.name)
        trash: list[Path] = []
        with FileLock(self._index_lock_path()):
            remaining = self._inventory()
            usage = union_bytes([inodes for _, inodes in remaining])
            report.details["bytes_before"] = usage
            evicted: list[str] = []
            for info, _ in list(remaining):
                if usage <= target:
                    break
                if info.pinned:
                    continue
                rest = [row for row in remaining if row[0].name != info.name]
                after = union_bytes([inodes for _, inodes in rest])
                if not dry_run and self._remove(info.name, trash) is None:
                    continue  # taken for a load meanwhile
                evicted.append(info.name)
                report.bytes_freed += usage - after
                usage, remaining = after, rest
                if not dry_run:
                    self._stats.add("evictions")
            report.evicted = len(evicted)
            report.details.update(evicted=evicted, bytes_after=usage, dry_run=dry_run, target=target)
        for path in trash:
            purge(path)
        return report

    def _sweep(self, report: CleanupReport, trash: builtins.list[Path]) -> None:
        """Queue dead writers' temporary directories and the trash for removal (index lock held).

        Only entries named as the cache names them; ``.tmp`` and ``.trash`` are checked to be real
        directories first (a symlink put in their place is never scanned)."""
        # Writers' directories are named by the shared temp scheme (files.temp_name: the pid is in the name).
        is_temp: Callable[[str], object] = cf.temp_owner
        for sub, ours, check_owner in ((".tmp", is_temp, True), (".trash", TRASH_NAME.fullmatch, False)):
            directory = self.root / sub
            if not real_dir(directory):
                continue
            for entry in os.scandir(directory):
                if ours(entry.name) is None:
                    continue
                if check_owner and owner_alive(entry.name):
                    continue
                trash.append(Path(entry.path))
                report.orphans += 1

    def _enforce_budget(self, keep: str | None) -> builtins.list[str]:
        trash: list[Path] = []
        with FileLock(self._index_lock_path()):
            evicted, _ = self._make_room(0, exclude=None, keep=keep, trash=trash)
        for path in trash:
            purge(path)
        return evicted

    def _make_room(
        self,
        needed: int,
        *,
        exclude: str | None,
        trash: builtins.list[Path],
        keep: str | None = None,
        extra: Mapping[tuple[int, int], int] | None = None,
    ) -> tuple[builtins.list[str], bool]:
        """Evict unused models in policy order until ``needed`` more bytes fit. Caller holds the index lock.

        ``exclude`` is left out of the count (it is about to be replaced); ``keep`` counts but is not evicted;
        ``extra`` are the files of a model being published (counted, never evicted). Usage counts each inode
        once, so content shared by several models counts once, and evicting a model frees only what it alone
        holds; the usage is recounted after each eviction.
        """
        extra = dict(extra or {})
        evicted: builtins.list[str] = []
        busy: set[str] = set()
        while True:
            inventory = self._inventory(exclude)
            usage = union_bytes([inodes for _, inodes in inventory] + [extra])
            if usage + needed <= self.max_bytes:
                return evicted, True
            candidates = [i for i, _ in inventory if i.name != keep and not i.pinned and i.name not in busy]
            if not evicted:
                floor = union_bytes(
                    [inodes for i, inodes in inventory if i.name == keep or i.pinned or i.name in busy] + [extra]
                )
                if floor + needed > self.max_bytes:
                    return [], False  # even evicting every unpinned model would not do: evict nothing
            if not candidates:
                return evicted, False
            victim = candidates[0]
            if self._remove(victim.name, trash) is None:
                busy.add(victim.name)  # taken for a load meanwhile: the next one goes instead
                continue
            evicted.append(victim.name)
            self._stats.add("evictions")

    def _inventory(self, exclude: str | None = None) -> builtins.list[tuple[ModelInfo, dict[tuple[int, int], int]]]:
        """Every cached model's info and data inodes, in eviction order, with shared bytes counted."""
        rows = []
        for model in self.list():
            if model == exclude:
                continue
            manifest = self._read_manifest(model)
            if manifest is not None:
                rows.append((model, manifest, data_inodes(self._dir(model))))
        holders: dict[tuple[int, int], int] = {}
        for _, _, inodes in rows:
            for ino in inodes:
                holders[ino] = holders.get(ino, 0) + 1
        out = []
        for model, manifest, inodes in rows:
            shared = sum(size for ino, size in inodes.items() if holders[ino] > 1)
            out.append((self._info_from(model, manifest, inodes=inodes, shared=shared), inodes))
        usages = _usages(info for info, _ in out)
        return eviction_order(out, self.cleanup_policy, lambda row: usages[row[0].name])

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
            size = dir_bytes(directory)
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
        if not isinstance(name, str) or not valid_name(name):
            raise ModelCacheError(
                f"Model name {name!r} is not allowed: use 1-{NAME_MAX} characters without '/', '\\', control "
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
        path = self.root / ".tmp" / cf.temp_name("model")
        path.mkdir(mode=0o700, parents=True)
        return path

    def _read_manifest(self, name: str) -> dict[str, Any] | None:
        """The model's validated manifest, or None if it is missing or damaged (see ``_manifest_state``)."""
        return self._manifest_state(name)[0]

    def _manifest_state(self, name: str) -> tuple[dict[str, Any] | None, bool]:
        """(manifest, damaged): (doc, False) for a good one, (None, False) if there is none, (None, True) if
        the entry is a real directory with a manifest file that does not parse or has the wrong shape."""
        directory = self._dir(name)
        if not real_dir(directory):
            return None, False  # missing, or a symlink / file the cache did not make: not a model
        try:
            fd = os.open(directory / MANIFEST, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
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
        checked = check_manifest(doc)
        return checked, checked is None

    def _holders(self, exclude: str) -> builtins.list[tuple[Path, dict[str, Any]]]:
        """(directory, manifest) of every cached model but ``exclude``: where shared content may come from."""
        found = []
        for model in self.list():
            manifest = self._read_manifest(model) if model != exclude else None
            if manifest is not None:
                found.append((self._dir(model), manifest))
        return found

    def _usage(self, exclude: str | None) -> int:
        """Bytes on disk of every model but ``exclude``, each shared file counted once."""
        return union_bytes([inodes for _, inodes in self._inventory(exclude)])

    def _touch(self, name: str) -> None:
        # One appended byte per use: O_APPEND writes need no lock across processes, the size counts the hits
        # and the mtime (set from our clock) is the last use.
        path = self._dir(name) / ACCESS
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

    def _info_from(
        self,
        name: str,
        manifest: dict[str, Any],
        pinned: bool | None = None,
        *,
        inodes: Mapping[tuple[int, int], int] | None = None,
        shared: int = 0,
    ) -> ModelInfo:
        directory = self._dir(name)
        try:
            st = os.stat(directory / ACCESS)
            last_used, hits = st.st_mtime, st.st_size
        except FileNotFoundError:
            last_used, hits = float(manifest["created"]), 0
        parts = manifest["parts"]
        extras = extra_files(manifest)
        raw = sum(int(p["raw_size"]) for p in parts) + sum(int(f["size"]) for f in extras)
        stored = sum(int(p["stored_size"]) for p in parts) + sum(int(f["size"]) for f in extras)
        if inodes is None:
            inodes = data_inodes(directory)
        fmt = parts[0].get("format", "safetensors") if parts else "pickle"
        if pinned is None:
            probe = FileLock(self._lock_path(name, "use"))
            pinned = not probe.acquire(blocking=False)
            probe.release()
        return ModelInfo(
            name=name,
            size=sum(inodes.values()),
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
            format=fmt,
            layout=manifest.get("layout", "file"),
            extra_files=tuple(f["file"] for f in extras),
            shared_bytes=shared,
        )

    def _progress_bar(self, total: int, desc: str) -> Any:
        show = self.progress if self.progress is not None else (total >= PROGRESS_MIN_BYTES and sys.stderr.isatty())
        return Progress(total, desc, enabled=bool(show))


# --- the cache directory: recognised by its marker ---------------------------------------------------------


# --- manifests: validated before any field is used -----------------------------------------------------------


# --- verification stamps -------------------------------------------------------------------------------------


def open_regular_source(src: Path) -> int:
    """Open a file given to ``add_file``: a regular file (symlinks followed), or a ModelCacheError."""
    try:
        return open_regular(src)
    except FileNotFoundError:
        raise ModelCacheError(f"{src} does not exist; pass the path of a .safetensors or .gguf file.") from None
