"""Reading and writing the model cache's files: plain safetensors, compressed containers, device loads.

Every function here works on one file ("part") of a model; ``model.ModelCache`` decides which files a model
has, where they live and who may touch them. Writers stream tensors to disk (never one joined buffer) and
hash what they write, so a put costs one pass over the data.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import struct
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, overload

import numpy as np
import xxhash

from llamahome.errors import CorruptEntryError, DiskFullError, ModelCacheError, StorageError

from . import model_codec as codec
from .compression import MIN_COMPRESS_BYTES
from .model_format import (
    ALIGN,
    CONTAINER_MAGIC,
    DTYPE_SIZES,
    SafetensorsHeader,
    TensorSpec,
    numpy_dtype,
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
            out.write(item.data)
            if progress:
                progress(item.nbytes)
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
                chunks = [f.result() for f in futures]
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
            if progress:
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


def hash_file(path: Path) -> str:
    """xxh3-128 of a whole file, read in large chunks."""
    hasher = xxhash.xxh3_128()
    buf = bytearray(_READ_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            hasher.update(view[:n])
    return hasher.hexdigest()


_FICLONE = 0x40049409  # linux/fs.h: share the source's blocks copy-on-write (btrfs, xfs, bcachefs)


def _reflink(src: Path, dst: Path) -> bool:
    try:
        import fcntl

        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(src, "rb") as s, open(fd, "wb") as d:
            fcntl.ioctl(d.fileno(), _FICLONE, s.fileno())
        return True
    except (OSError, ImportError):
        dst.unlink(missing_ok=True)
        return False


def link_or_copy(src: Path, dst: Path, progress: Progress | None = None, *, hard_link: bool = True) -> str:
    """Put ``src`` at ``dst`` without a full copy where possible; returns "reflink", "link" or "copy".

    A reflink shares blocks copy-on-write: free and fully independent. A hard link is free too, and evicting
    it never touches the user's file, but the two names share one inode: rewriting the original in place
    changes the cached model (``verify`` notices). Both fail across file systems; then we copy.
    """
    how = "copy"
    if _reflink(src, dst):
        how = "reflink"
    elif hard_link:
        try:
            os.link(src, dst)
            how = "link"
        except OSError:
            pass
    if how == "copy":
        try:
            # copyfile uses the kernel's copy_file_range/sendfile: no round trip through Python buffers.
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o600)
            with open(dst, "rb+") as f:
                os.fsync(f.fileno())
        except OSError as exc:
            raise _os_error(exc, f"copying {src}") from exc
    if progress:
        progress(dst.stat().st_size)
    return how


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
    with open(path, "rb") as f:
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
    entries: dict[str, dict[str, Any]], buf: np.ndarray, threads: int, copy_raw: bool
) -> dict[str, np.ndarray]:
    """Flat uint8 arrays of every tensor of a container (compressed ones decoded on a thread pool)."""
    flats: dict[str, np.ndarray] = {}
    jobs: list[tuple[dict[str, Any], int, np.ndarray]] = []
    for name, entry in entries.items():
        nbytes = int(entry["nbytes"])
        if entry["codec"] == "raw":
            offset = int(entry["offset"])
            view = buf[offset : offset + nbytes]
            flats[name] = view.copy() if copy_raw else view
        elif entry["codec"] == "bgz":
            out = np.empty(nbytes, dtype=np.uint8)
            flats[name] = out
            jobs.extend((entry, i, out) for i in range(len(entry["chunks"])))
        else:
            raise CorruptEntryError(f"tensor {name!r} uses an unknown codec {entry['codec']!r}; update llamahome.")
    if len(jobs) == 1 or threads <= 1:
        for job in jobs:
            codec.decode_chunk(job[0], job[1], buf, job[2])
    elif jobs:
        # Biggest first, so the long chunks do not start last and leave one thread alone at the end.
        jobs.sort(key=lambda j: -int(j[0]["chunks"][j[1]][0]))
        with ThreadPoolExecutor(max_workers=min(threads, len(jobs)), thread_name_prefix="model-decode") as pool:
            for future in [pool.submit(codec.decode_chunk, entry, i, buf, out) for entry, i, out in jobs]:
                future.result()
    return flats


def load_part(
    path: Path, *, compressed: bool, framework: str, device: str, mmap_: bool, threads: int
) -> dict[str, Any]:
    """All tensors of one stored file, as numpy arrays or torch tensors on ``device``."""
    where = str(path)
    on_device = framework == "torch" and device != "cpu"
    if not compressed:
        if on_device:
            return plain_to_device(path, device)
        if mmap_:
            buf, size = map_file(path)
            header = _read_plain_header(buf, size, where)
            data = buf[header.data_start :]
        else:
            header, data = _read_plain(path)
        return {
            name: _as_tensor(data[spec.begin : spec.end], spec.dtype, spec.shape, framework)
            for name, spec in header.tensors.items()
        }
    buf, _ = map_file(path)
    doc = read_container_footer(buf, where)
    entries: dict[str, dict[str, Any]] = doc["tensors"]
    flats = _decode_entries(entries, buf, threads, copy_raw=not mmap_)
    result = {
        name: _as_tensor(flats[name], entry["dtype"], tuple(entry["shape"]), framework)
        for name, entry in entries.items()
    }
    if on_device:
        result = {name: t.to(device) for name, t in result.items()}
    return result


def _read_plain(path: Path) -> tuple[SafetensorsHeader, np.ndarray]:
    """Header plus the data section read into one fresh array (one read, no per-tensor copies)."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        header = parse_safetensors_header(f.read(8), f.read, size, str(path))
        data = np.empty(header.data_len, dtype=np.uint8)
        _readinto_all(f, data, header.data_start, str(path))
    return header, data


def _readinto_all(f: Any, out: np.ndarray, offset: int, where: str) -> None:
    view = out.data.cast("B")
    done = 0
    f.seek(offset)
    while done < view.nbytes:
        n = f.readinto(view[done:])
        if not n:
            raise CorruptEntryError(f"{where} is shorter than its header says; run verify() or delete the model.")
        done += n


def read_to_device(path: Path, offset: int, length: int, device: str) -> Any:
    """Bytes ``[offset, offset+length)`` of a file as one uint8 tensor on ``device``.

    Reads go through two pinned staging buffers (when the device is CUDA) so that the disk read of one
    block overlaps the host-to-device copy of the previous one.
    """
    torch = require_torch()
    dst = torch.empty(length, dtype=torch.uint8, device=device)
    if length == 0:
        return dst
    is_cuda = torch.device(device).type == "cuda"
    stage = min(STAGE_BYTES, length)
    buffers = [torch.empty(stage, dtype=torch.uint8, pin_memory=is_cuda) for _ in range(2 if length > stage else 1)]
    events: list[Any] = [None] * len(buffers)
    with open(path, "rb", buffering=0) as f:
        for i, start in enumerate(range(0, length, stage)):
            slot = i % len(buffers)
            if events[slot] is not None:
                events[slot].synchronize()  # the copy out of this staging buffer has finished
            n = min(stage, length - start)
            _readinto_all(f, buffers[slot].numpy()[:n], offset + start, str(path))
            dst[start : start + n].copy_(buffers[slot][:n], non_blocking=is_cuda)
            if is_cuda:
                events[slot] = torch.cuda.Event()
                events[slot].record()
    if is_cuda:
        torch.cuda.current_stream(dst.device).synchronize()
    return dst


def plain_to_device(path: Path, device: str) -> dict[str, Any]:
    """Every tensor of a plain safetensors file on ``device``: one staged copy, then views (copies if misaligned)."""
    header = _read_plain_header_file(path)
    data = read_to_device(path, header.data_start, header.data_len, device)
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


def _read_plain_header_file(path: Path) -> SafetensorsHeader:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return parse_safetensors_header(f.read(8), f.read, size, str(path))


def decode_part_to_file(src: Path, dst: Path, threads: int) -> str:
    """Write the plain safetensors form of container ``src`` to ``dst``; returns its xxh3-128."""
    buf, _ = map_file(src)
    doc = read_container_footer(buf, str(src))
    entries: dict[str, dict[str, Any]] = doc["tensors"]
    header_text = doc["prefix"].encode("utf-8")
    out = _HashingWriter(dst)
    try:
        out.write(struct.pack("<Q", len(header_text)) + header_text)
        # Decode a bounded batch of tensors at a time, then write them in file order.
        ordered = sorted(entries.items(), key=lambda kv: int(kv[1]["begin"]))
        batch: dict[str, dict[str, Any]] = {}
        batch_bytes = 0

        def flush() -> None:
            nonlocal batch_bytes
            flats = _decode_entries(batch, buf, threads, copy_raw=False)
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
