"""Reading and writing the model cache's files: plain safetensors, compressed containers, device loads.

Every function here works on one file ("part") of a model; ``_store.ModelCache`` decides which files a model
has, where they live and who may touch them. Writers stream tensors to disk (never one joined buffer) and
hash what they write, so a put costs one pass over the data.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import struct
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, overload

import numpy as np
import xxhash
import zstandard

from llamahome.errors import CorruptEntryError, DiskFullError, ModelCacheError, StorageError

from . import _codec as codec
from ..compression import MIN_COMPRESS_BYTES
from ._format import (
    ALIGN,
    CONTAINER_MAGIC,
    DTYPE_SIZES,
    SafetensorsHeader,
    TensorSpec,
    numpy_dtype,
    open_regular,
    parse_safetensors_header,
)

__all__ = [
    "TensorItem",
    "PartResult",
    "write_part",
    "hash_file",
    "link_or_copy",
    "load_part",
    "decode_part_to_file",
    "read_to_device",
    "plain_to_device",
    "torch_dtype",
    "torch_code",
    "require_torch",
    "map_file",
    "tensor_items_from_header",
]

#: Bytes of raw tensors allowed in flight while encoding (bounds memory on huge models).
_INFLIGHT_BYTES = 256 * 1024 * 1024
_READ_CHUNK = 8 * 1024 * 1024
#: Staging buffer size for host-to-device copies (two of them, double-buffered).
STAGE_BYTES = 64 * 1024 * 1024
FOOTER_FORMAT = "llamahome-tensors"

Progress = Callable[[int], Any]


@dataclass
class TensorItem:
    """One tensor to write: its bytes as a flat uint8 array and its place in the safetensors layout."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offset in the safetensors data section
    data: np.ndarray  # flat uint8, C-contiguous

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


@dataclass
class PartResult:
    """What was written for one part."""

    stored: str  # file name in the entry directory
    compressed: bool
    raw_size: int
    stored_size: int
    checksum: str  # xxh3-128 of the stored file
    raw_checksum: str  # xxh3-128 of the plain safetensors form
    tensors: int
    compressed_tensors: int


def _os_error(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return DiskFullError(f"No space left on the device while {what}; free disk space or lower model_cache.size.")
    return StorageError(f"The disk refused {what} ({exc.strerror}); check the cache directory's permissions.")


class _HashingWriter:
    """A file opened for writing that hashes every byte written and can fsync before it is renamed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self.file: BinaryIO = open(fd, "wb")  # noqa: SIM115 - closed in close()
        self.hasher = xxhash.xxh3_128()
        self.size = 0

    def write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        self.file.write(view)
        self.hasher.update(view)
        self.size += view.nbytes

    def pad(self) -> None:
        extra = (-self.size) % ALIGN
        if extra:
            self.write(b"\0" * extra)

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())  # the rename that publishes this file must not outrun its data
        self.file.close()


@overload
def write_part(
    directory: Path,
    file_name: str,
    prefix: bytes,
    items: Sequence[TensorItem],
    *,
    compress: bool,
    threads: int,
    progress: Progress | None = None,
    write_plain: Literal[True] = True,
) -> PartResult: ...


@overload
def write_part(
    directory: Path,
    file_name: str,
    prefix: bytes,
    items: Sequence[TensorItem],
    *,
    compress: bool,
    threads: int,
    progress: Progress | None = None,
    write_plain: bool,
) -> PartResult | None: ...


def write_part(
    directory: Path,
    file_name: str,
    prefix: bytes,
    items: Sequence[TensorItem],
    *,
    compress: bool,
    threads: int,
    progress: Progress | None = None,
    write_plain: bool = True,
) -> PartResult | None:
    """Write one part: a container if ``compress`` and some tensor pays, else plain safetensors.

    ``prefix`` is the safetensors length + header for ``items`` (laid out at their ``begin`` offsets).
    With ``write_plain=False`` a part where nothing pays is not written and None is returned (the caller
    links the original file instead).
    """
    ordered = sorted(items, key=lambda it: it.begin)
    try:
        if compress:
            result = _write_container(directory, file_name, prefix, ordered, threads, progress)
            if result is not None:
                return result
        if not write_plain:
            return None
        return _write_plain(directory, file_name, prefix, ordered, progress)
    except OSError as exc:
        raise _os_error(exc, f"writing {file_name}") from exc


def _write_plain(
    directory: Path, file_name: str, prefix: bytes, ordered: Sequence[TensorItem], progress: Progress | None
) -> PartResult:
    out = _HashingWriter(directory / file_name)
    try:
        out.write(prefix)
        for item in ordered:
            # Slices, so that a progress bar moves by bytes even through one huge tensor.
            for start in range(0, item.nbytes, _READ_CHUNK):
                out.write(item.data[start : start + _READ_CHUNK])
                if progress:
                    progress(min(_READ_CHUNK, item.nbytes - start))
    finally:
        out.close()
    digest = out.hasher.hexdigest()
    raw = out.size
    return PartResult(file_name, False, raw, raw, digest, digest, len(ordered), 0)


def _write_container(
    directory: Path,
    file_name: str,
    prefix: bytes,
    ordered: Sequence[TensorItem],
    threads: int,
    progress: Progress | None,
) -> PartResult | None:
    stored_name = file_name + ".lhz"
    path = directory / stored_name
    out = _HashingWriter(path)
    raw_hasher = xxhash.xxh3_128(prefix)
    entries: dict[str, dict[str, Any]] = {}
    compressed = 0
    try:
        out.write(CONTAINER_MAGIC)
        out.pad()
        pending: deque[tuple[TensorItem, list[Future[codec.ChunkResult]]]] = deque()
        inflight = 0

        def flush_one() -> None:
            nonlocal inflight, compressed
            item, futures = pending.popleft()
            inflight -= item.nbytes
            raw_hasher.update(item.data.data)
            base = out.size
            built = None
            if futures:
                chunks = []
                for f in futures:
                    chunks.append(f.result())
                    if progress:
                        progress(chunks[-1].raw)  # by bytes, one chunk at a time
                built = codec.assemble_entry(item.dtype, item.shape, item.nbytes, chunks, base)
            if built is None:
                entries[item.name] = {"dtype": item.dtype, "shape": list(item.shape), "nbytes": item.nbytes,
                                      "codec": "raw", "offset": base}  # fmt: skip
                out.write(item.data)
            else:
                entry, payloads = built
                compressed += 1
                entries[item.name] = entry
                for payload in payloads:
                    out.write(payload)
            entries[item.name]["begin"] = item.begin
            out.pad()
            if progress and not futures:
                progress(item.nbytes)

        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="model-encode") as pool:
            try:
                for item in ordered:
                    futures: list[Future[codec.ChunkResult]] = []
                    if item.nbytes >= MIN_COMPRESS_BYTES:
                        word, rotate = codec.word_of(item.dtype)
                        futures = [
                            pool.submit(codec.encode_chunk, item.data[a:b], word, rotate)
                            for a, b in codec.chunk_ranges(item.nbytes, word)
                        ]
                    pending.append((item, futures))
                    inflight += item.nbytes
                    while pending and inflight > _INFLIGHT_BYTES:
                        flush_one()
                while pending:
                    flush_one()
            finally:
                for _, futures in pending:
                    for f in futures:
                        f.cancel()
        footer = {"format": FOOTER_FORMAT, "version": 1, "prefix": prefix[8:].decode("utf-8"), "tensors": entries}
        text = json.dumps(footer, separators=(",", ":")).encode("utf-8")
        out.write(text)
        out.write(struct.pack("<Q", len(text)) + CONTAINER_MAGIC)
    finally:
        out.close()
    if compressed == 0:
        path.unlink()
        return None
    raw_size = len(prefix) + sum(it.nbytes for it in ordered)
    return PartResult(stored_name, True, raw_size, out.size, out.hasher.hexdigest(), raw_hasher.hexdigest(),
                      len(ordered), compressed)  # fmt: skip


def hash_file(path: Path, progress: Progress | None = None, *, follow: bool = True) -> str:
    """xxh3-128 of a whole regular file, read in large chunks (``progress`` gets each chunk's size)."""
    hasher = xxhash.xxh3_128()
    buf = bytearray(_READ_CHUNK)
    view = memoryview(buf)
    with open(open_regular(path, follow=follow), "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            hasher.update(view[:n])
            if progress:
                progress(n)
    return hasher.hexdigest()


_FICLONE = 0x40049409  # linux/fs.h: share the source's blocks copy-on-write (btrfs, xfs, bcachefs)


def _reflink(src_fd: int, dst: Path) -> bool:
    try:
        import fcntl

        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            fcntl.ioctl(fd, _FICLONE, src_fd)
        finally:
            os.close(fd)
        return True
    except (OSError, ImportError):
        dst.unlink(missing_ok=True)
        return False


def link_or_copy(src: Path, dst: Path, progress: Progress | None = None, *, hard_link: bool = True) -> str:
    """Put ``src`` at ``dst`` without a full copy where possible; returns "reflink", "link" or "copy".

    A reflink shares blocks copy-on-write: free and fully independent. A hard link is free too, and evicting
    it never touches the user's file, but the two names share one inode: rewriting the original in place
    changes the cached model (``verify`` notices). Both fail across file systems; then we copy.
    ``progress`` moves by bytes as a copy proceeds (a link or reflink reports nothing: hash the result).
    Only regular files are taken: a FIFO, device or symlink loop is a ModelCacheError.
    """
    with open(open_regular(src), "rb", buffering=0) as source:
        how = "copy"
        if _reflink(source.fileno(), dst):
            how = "reflink"
        elif hard_link and _link_same(source.fileno(), src, dst):
            how = "link"
        if how == "copy":
            try:
                _copy_fd(source, dst, progress)
            except OSError as exc:
                dst.unlink(missing_ok=True)
                raise _os_error(exc, f"copying {src}") from exc
    return how


def _link_same(fd: int, src: Path, dst: Path) -> bool:
    """Hard-link the file ``fd`` has open (named ``src``, perhaps through symlinks, as in a hub snapshot) at
    ``dst``; False (and nothing at ``dst``) if the file systems differ or ``src`` now names another file.

    ``os.link`` does not follow a symlink (it would link the symlink itself), so the name is resolved first,
    and the result is checked to be the very inode that was opened and validated.
    """
    try:
        os.link(os.path.realpath(src), dst)
    except OSError:
        return False
    opened = os.fstat(fd)
    st = os.lstat(dst)
    if (st.st_dev, st.st_ino) != (opened.st_dev, opened.st_ino):
        dst.unlink(missing_ok=True)
        return False
    return True


def _copy_fd(source: Any, dst: Path, progress: Progress | None) -> None:
    """Copy an open file to a new private file at ``dst`` in large chunks (kernel copy), fsynced."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        size = os.fstat(source.fileno()).st_size
        done = 0
        while done < size:
            try:
                n = os.copy_file_range(source.fileno(), fd, min(_READ_CHUNK * 8, size - done), done, done)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                n = os.pwrite(fd, os.pread(source.fileno(), min(_READ_CHUNK, size - done), done), done)
            if n <= 0:
                break
            done += n
            if progress:
                progress(n)
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading -------------------------------------------------------------------------------------------------


def require_torch() -> Any:
    """Import torch, or raise ModelCacheError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise ModelCacheError("framework='torch' needs PyTorch; install it with `pip install torch`.") from None
    return torch


_TORCH_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64",
    "BOOL": "bool", "C64": "complex64", "F8_E4M3": "float8_e4m3fn", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2": "float8_e5m2", "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu",
}  # fmt: skip


def torch_dtype(code: str) -> Any:
    """The torch dtype of a safetensors code (ModelCacheError if this torch lacks it)."""
    torch = require_torch()
    dtype = getattr(torch, _TORCH_NAMES[code], None)
    if dtype is None:
        raise ModelCacheError(f"This PyTorch has no dtype for safetensors {code}; upgrade torch to load it.")
    return dtype


def torch_code(dtype: Any) -> str | None:
    """The safetensors code of a torch dtype, or None."""
    name = str(dtype).removeprefix("torch.")
    for code, torch_name in _TORCH_NAMES.items():
        if torch_name == name:
            return code
    return None


def _as_tensor(flat: np.ndarray, spec_dtype: str, shape: tuple[int, ...], framework: str) -> Any:
    """View a flat uint8 array as the tensor (no copy where alignment allows)."""
    if framework == "numpy":
        return flat.view(numpy_dtype(spec_dtype)).reshape(shape)
    torch = require_torch()
    if flat.nbytes == 0:
        return torch.empty(shape, dtype=torch_dtype(spec_dtype))
    base = torch.from_numpy(flat)
    itemsize = DTYPE_SIZES[spec_dtype]
    if itemsize > 1 and flat.ctypes.data % itemsize:
        base = base.clone()  # torch cannot view misaligned bytes as wider elements
    return base.view(torch_dtype(spec_dtype)).view(shape)


def map_file(path: Path) -> tuple[np.ndarray, int]:
    """A writable copy-on-write map of a file as uint8 (zero-copy until written; survives unlink)."""
    with open(open_regular(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return np.empty(0, dtype=np.uint8), 0
        # ACCESS_COPY: torch.from_numpy warns on read-only buffers, and a private mapping keeps the cache file
        # immune to writes into the returned tensors.
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    return np.frombuffer(mm, dtype=np.uint8), size


def _read_plain_header(buf: np.ndarray, size: int, where: str) -> SafetensorsHeader:
    def read_header(n: int) -> bytes:
        return bytes(buf[8 : 8 + n])

    return parse_safetensors_header(bytes(buf[:8]), read_header, size, where)


def read_container_footer(buf: np.ndarray, where: str) -> dict[str, Any]:
    """The JSON footer of a container mapped as ``buf``."""
    size = buf.nbytes
    if size < 32 or bytes(buf[:8]) != CONTAINER_MAGIC or bytes(buf[size - 8 :]) != CONTAINER_MAGIC:
        raise CorruptEntryError(f"{where} is not a complete model cache container; delete the model and add it again.")
    (length,) = struct.unpack("<Q", bytes(buf[size - 16 : size - 8]))
    if length > size - 32:
        raise CorruptEntryError(f"{where} has a damaged footer; delete the model and add it again.")
    try:
        doc = json.loads(bytes(buf[size - 16 - length : size - 16]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CorruptEntryError(f"{where} has a damaged footer; delete the model and add it again.") from None
    if doc.get("format") != FOOTER_FORMAT:
        raise CorruptEntryError(f"{where} is not a model cache container; delete the model and add it again.")
    return doc  # type: ignore[no-any-return]


def _decode_entries(
    entries: dict[str, dict[str, Any]],
    buf: np.ndarray,
    threads: int,
    copy_raw: bool,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """Flat uint8 arrays of every tensor of a container (compressed ones decoded on a thread pool).

    A malformed entry or a stream that does not decode raises CorruptEntryError (never a bare error).
    """
    try:
        return _decode_entries_unchecked(entries, buf, threads, copy_raw, progress)
    except CorruptEntryError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, zstandard.ZstdError) as exc:
        raise CorruptEntryError(
            f"a compressed tensor does not decode ({exc}); the model's files are damaged."
        ) from None


def _decode_entries_unchecked(
    entries: dict[str, dict[str, Any]], buf: np.ndarray, threads: int, copy_raw: bool, progress: Progress | None
) -> dict[str, np.ndarray]:
    flats: dict[str, np.ndarray] = {}
    jobs: list[tuple[dict[str, Any], int, np.ndarray]] = []
    for name, entry in entries.items():
        nbytes = int(entry["nbytes"])
        if entry["codec"] == "raw":
            offset = int(entry["offset"])
            if offset < 0 or offset + nbytes > buf.nbytes:
                raise ValueError(f"tensor {name!r} lies outside the file")
            view = buf[offset : offset + nbytes]
            flats[name] = view.copy() if copy_raw else view
            if progress:
                progress(nbytes)
        elif entry["codec"] == "bgz":
            out = np.empty(nbytes, dtype=np.uint8)
            if sum(int(c[0]) for c in entry["chunks"]) != nbytes:
                raise ValueError(f"tensor {name!r} has chunks that do not add up to its size")
            flats[name] = out
            jobs.extend((entry, i, out) for i in range(len(entry["chunks"])))
        else:
            raise CorruptEntryError(f"tensor {name!r} uses an unknown codec {entry['codec']!r}; update llamahome.")
    if len(jobs) == 1 or threads <= 1:
        for job in jobs:
            codec.decode_chunk(job[0], job[1], buf, job[2])
            if progress:
                progress(int(job[0]["chunks"][job[1]][0]))
    elif jobs:
        # Biggest first, so the long chunks do not start last and leave one thread alone at the end.
        jobs.sort(key=lambda j: -int(j[0]["chunks"][j[1]][0]))
        with ThreadPoolExecutor(max_workers=min(threads, len(jobs)), thread_name_prefix="model-decode") as pool:
            futures = {pool.submit(codec.decode_chunk, entry, i, buf, out): int(entry["chunks"][i][0])
                       for entry, i, out in jobs}  # fmt: skip
            for future in as_completed(futures):
                future.result()
                if progress:
                    progress(futures[future])
    return flats


def hash_buffer(data: np.ndarray) -> str:
    """xxh3-128 of a (mapped) buffer, fed in chunks so a huge map is not one giant call."""
    hasher = xxhash.xxh3_128()
    view = data.data.cast("B") if data.nbytes else memoryview(b"")
    for start in range(0, view.nbytes, _READ_CHUNK * 8):
        hasher.update(view[start : start + _READ_CHUNK * 8])
    return hasher.hexdigest()


def _damaged(where: str) -> CorruptEntryError:
    return CorruptEntryError(f"{where} does not match the checksum taken when it was stored; it is damaged.")


def load_part(
    path: Path,
    *,
    compressed: bool,
    framework: str,
    device: str,
    mmap_: bool,
    threads: int,
    checksum: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """All tensors of one stored file, as numpy arrays or torch tensors on ``device``.

    With ``checksum`` (the xxh3-128 of the stored file) the bytes read are hashed and a mismatch raises
    CorruptEntryError before any tensor is returned. Copies hash what they read (one pass); maps hash the
    mapping (one read through the page cache).
    """
    where = str(path)
    on_device = framework == "torch" and device != "cpu"
    if not compressed:
        if on_device:
            return plain_to_device(path, device, checksum)
        if mmap_:
            buf, size = map_file(path)
            if checksum is not None and hash_buffer(buf) != checksum:
                raise _damaged(where)
            header = _read_plain_header(buf, size, where)
            data = buf[header.data_start :]
        else:
            header, data = _read_plain(path, checksum)
        return {
            name: _as_tensor(data[spec.begin : spec.end], spec.dtype, spec.shape, framework)
            for name, spec in header.tensors.items()
        }
    buf, _ = map_file(path)
    if checksum is not None and hash_buffer(buf) != checksum:
        raise _damaged(where)
    doc = read_container_footer(buf, where)
    entries = doc.get("tensors")
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise CorruptEntryError(f"{where} has a damaged footer; delete the model and add it again.")
    flats = _decode_entries(entries, buf, threads, copy_raw=not mmap_, progress=progress)
    try:
        result = {
            name: _as_tensor(flats[name], entry["dtype"], tuple(entry["shape"]), framework)
            for name, entry in entries.items()
        }
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptEntryError(f"{where} describes a tensor that does not fit its bytes ({exc}).") from None
    if on_device:
        result = {name: t.to(device) for name, t in result.items()}
    return result


def _read_plain(path: Path, checksum: str | None = None) -> tuple[SafetensorsHeader, np.ndarray]:
    """Header plus the data section read into one fresh array (one read, no per-tensor copies).

    With ``checksum``, the whole file is hashed as it is read and a mismatch raises CorruptEntryError.
    """
    with open(open_regular(path), "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        header_text = bytearray()

        def read_header(n: int) -> bytes:
            text = f.read(n)
            header_text.extend(text)
            return text

        header = parse_safetensors_header(head, read_header, size, str(path))
        data = np.empty(header.data_len, dtype=np.uint8)
        hasher = None
        if checksum is not None:
            hasher = xxhash.xxh3_128(head)
            hasher.update(header_text)  # 8 + header length = data_start: prefix + data is the whole file
        _readinto_all(f, data, header.data_start, str(path), hasher)
    if hasher is not None and hasher.hexdigest() != checksum:
        raise _damaged(str(path))
    return header, data


#: With a hasher, read this much at a time and hash it while it is still in the CPU cache: measured on
#: all-MiniLM-L6-v2, a copy load that hashes costs what one that does not costs (59 vs 56 ms), where hashing
#: after one big read costs 50% more.
_HASH_READ_CHUNK = 1024 * 1024


def _readinto_all(f: Any, out: np.ndarray, offset: int, where: str, hasher: Any = None) -> None:
    view = out.data.cast("B") if out.nbytes else memoryview(b"")
    done = 0
    f.seek(offset)
    step = _HASH_READ_CHUNK if hasher is not None else view.nbytes
    while done < view.nbytes:
        n = f.readinto(view[done : done + step])
        if not n:
            raise CorruptEntryError(f"{where} is shorter than its header says; run verify() or delete the model.")
        if hasher is not None:
            hasher.update(view[done : done + n])
        done += n


def read_to_device(path: Path, offset: int, length: int, device: str, hasher: Any = None) -> Any:
    """Bytes ``[offset, offset+length)`` of a file as one uint8 tensor on ``device``.

    Reads go through two pinned staging buffers (when the device is CUDA) so that the disk read of one
    block overlaps the host-to-device copy of the previous one. ``hasher`` (if given) is fed every byte read,
    in order, on the host.
    """
    torch = require_torch()
    dst = torch.empty(length, dtype=torch.uint8, device=device)
    if length == 0:
        return dst
    is_cuda = torch.device(device).type == "cuda"
    stage = min(STAGE_BYTES, length)
    buffers = [torch.empty(stage, dtype=torch.uint8, pin_memory=is_cuda) for _ in range(2 if length > stage else 1)]
    events: list[Any] = [None] * len(buffers)
    with open(open_regular(path), "rb", buffering=0) as f:
        for i, start in enumerate(range(0, length, stage)):
            slot = i % len(buffers)
            if events[slot] is not None:
                events[slot].synchronize()  # the copy out of this staging buffer has finished
            n = min(stage, length - start)
            _readinto_all(f, buffers[slot].numpy()[:n], offset + start, str(path), hasher)
            dst[start : start + n].copy_(buffers[slot][:n], non_blocking=is_cuda)
            if is_cuda:
                events[slot] = torch.cuda.Event()
                events[slot].record()
    if is_cuda:
        torch.cuda.current_stream(dst.device).synchronize()
    return dst


def plain_to_device(path: Path, device: str, checksum: str | None = None) -> dict[str, Any]:
    """Every tensor of a plain safetensors file on ``device``: one staged copy, then views (copies if misaligned).

    With ``checksum`` the staged bytes are hashed on the host as they pass; a mismatch raises CorruptEntryError
    (the device copy is dropped, never returned).
    """
    header, prefix = _read_plain_header_file(path)
    hasher = xxhash.xxh3_128(prefix) if checksum is not None else None
    data = read_to_device(path, header.data_start, header.data_len, device, hasher)
    if hasher is not None and hasher.hexdigest() != checksum:
        raise _damaged(str(path))
    out = {}
    for name, spec in header.tensors.items():
        out[name] = _device_view(data, spec)
    return out


def _device_view(data: Any, spec: TensorSpec) -> Any:
    if spec.nbytes == 0:
        return data.new_empty(spec.shape, dtype=torch_dtype(spec.dtype))
    piece = data[spec.begin : spec.end]
    if spec.itemsize > 1 and spec.begin % spec.itemsize:
        piece = piece.clone()  # misaligned in the file: give this tensor its own aligned storage
    return piece.view(torch_dtype(spec.dtype)).view(spec.shape)


def _read_plain_header_file(path: Path) -> tuple[SafetensorsHeader, bytes]:
    """The parsed header and the file's raw bytes before the data section."""
    with open(open_regular(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        text = bytearray()

        def read_header(n: int) -> bytes:
            chunk = f.read(n)
            text.extend(chunk)
            return chunk

        return parse_safetensors_header(head, read_header, size, str(path)), head + bytes(text)


def decode_part_to_file(src: Path, dst: Path, threads: int, progress: Progress | None = None) -> str:
    """Write the plain safetensors form of container ``src`` to ``dst``; returns its xxh3-128.

    A damaged container raises CorruptEntryError (the caller compares the digest with the stored one).
    """
    buf, _ = map_file(src)
    doc = read_container_footer(buf, str(src))
    entries = doc.get("tensors")
    prefix_text = doc.get("prefix")
    if (
        not isinstance(entries, dict)
        or not isinstance(prefix_text, str)
        or not all(
            isinstance(e, dict) and isinstance(e.get("begin"), int) and isinstance(e.get("nbytes"), int)
            for e in entries.values()
        )
    ):
        raise CorruptEntryError(f"{src} has a damaged footer; delete the model and add it again.")
    header_text = prefix_text.encode("utf-8")
    out = _HashingWriter(dst)
    try:
        out.write(struct.pack("<Q", len(header_text)) + header_text)
        # Decode a bounded batch of tensors at a time, then write them in file order.
        ordered = sorted(entries.items(), key=lambda kv: int(kv[1]["begin"]))
        batch: dict[str, dict[str, Any]] = {}
        batch_bytes = 0

        def flush() -> None:
            nonlocal batch_bytes
            flats = _decode_entries(batch, buf, threads, copy_raw=False, progress=progress)
            for name in batch:
                out.write(flats[name])
            batch.clear()
            batch_bytes = 0

        for name, entry in ordered:
            batch[name] = entry
            batch_bytes += int(entry["nbytes"])
            if batch_bytes >= _INFLIGHT_BYTES:
                flush()
        flush()
    except OSError as exc:
        raise _os_error(exc, f"decoding {src.name}") from exc
    finally:
        out.close()
    return str(out.hasher.hexdigest())


def tensor_items_from_header(header: SafetensorsHeader, data: np.ndarray) -> list[TensorItem]:
    """TensorItems viewing a mapped safetensors file's data section."""
    return [
        TensorItem(spec.name, spec.dtype, spec.shape, spec.begin, data[spec.begin : spec.end])
        for spec in header.tensors.values()
    ]
