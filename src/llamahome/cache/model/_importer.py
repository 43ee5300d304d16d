"""Bringing an existing file into a model being written: link (or copy) and hash it, or compress it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamahome.errors import ModelCacheError

from . import _io as model_io
from ._io import PartResult
from ._stamps import file_identity

__all__ = ["link_and_hash", "import_part"]


def link_and_hash(
    tmp: Path,
    file_name: str,
    src: Path,
    expected_size: int,
    bar: Any,
    link: bool,
    identities: dict[str, tuple[int, ...]],
) -> tuple[str, int]:
    """Link (or copy) ``src`` into the model being written and hash it; (xxh3-128, size)."""
    dst = tmp / file_name
    try:
        how = model_io.link_or_copy(src, dst, progress=bar, hard_link=link)
    except FileNotFoundError:
        raise ModelCacheError(f"{src} disappeared while it was being added; try again.") from None
    # The identity before the hash: a change while hashing (a shared hard link written by its owner) then
    # shows as a different identity below, and is refused instead of being recorded as checked.
    before = file_identity(dst)
    digest = model_io.hash_file(dst, None if how == "copy" else bar, follow=False)
    if file_identity(dst) != before or before[2] != expected_size:
        raise ModelCacheError(f"{src} changed while it was being added; try again.")
    identities[file_name] = before
    return digest, before[2]


def import_part(
    tmp: Path,
    file_name: str,
    src: Path,
    header: Any,
    compress: bool,
    bar: Any,
    link: bool,
    identities: dict[str, tuple[int, ...]],
    threads: int,
) -> PartResult:
    """Write one safetensors file of a model being imported: compressed where that pays, else linked."""
    if compress and header.data_len:
        data, _ = model_io.map_file(src)
        if data.nbytes != header.file_size:
            raise ModelCacheError(f"{src} changed while it was being added; try again.")
        prefix = bytes(data[: header.data_start])
        items = model_io.tensor_items_from_header(header, data[header.data_start :])
        part = model_io.write_part(tmp, file_name, prefix, items, compress=True, threads=threads,
                                   progress=bar, write_plain=False)  # fmt: skip
        if part is not None:
            part.raw_checksum = model_io.hash_file(src)
            return part
        bar.update(-header.data_len)
    digest, size = link_and_hash(tmp, file_name, src, header.file_size, bar, link, identities)
    return PartResult(file_name, False, size, size, digest, digest, len(header.tensors), 0)
