"""Content stored once: a new model's file identical to one another model holds becomes a hard link to it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._layout import regular
from ._manifest import stored_files
from ._stamps import ReadablePart, file_identity, read_verified, record_verified

__all__ = ["share_content", "restamp_holders"]


def share_content(
    tmp: Path,
    manifest: dict[str, Any],
    identities: dict[str, tuple[int, ...]],
    holders: Iterable[tuple[Path, dict[str, Any]]],
) -> None:
    """Store content once: replace each new file that another model already holds (same checksum and size,
    and that model's copy unchanged since it was hashed) by a hard link to that model's file.

    ``holders`` are the other models (directory, manifest). The caller holds the index lock, so none of them can
    be removed meanwhile (and if its file is gone, we
    simply keep our copy). Linking changes the shared inode's ctime, so the holders' stamps are updated.
    """
    wanted = {checksum: file for file, checksum in stored_files(manifest)}
    sizes = {file: os.lstat(tmp / file).st_size for file in wanted.values()}
    holders = list(holders)
    for directory, other in holders:
        if not wanted:
            break
        stamps = read_verified(directory)
        for their_file, checksum in stored_files(other):
            ours = wanted.get(checksum)
            path = directory / their_file
            if ours is None or not regular(path):
                continue
            try:
                before = file_identity(path)
            except OSError:
                continue
            if before[2] != sizes[ours] or stamps.get(their_file) != [*before, checksum]:
                continue  # changed since it was hashed (or never stamped): do not spread it
            link = tmp / f".share-{uuid.uuid4().hex}"
            try:
                os.link(path, link)
                os.replace(link, tmp / ours)
            except OSError:
                link.unlink(missing_ok=True)
                continue
            after = file_identity(tmp / ours)
            identities[ours] = after
            restamp_holders([d for d, _ in holders], before, after, checksum)
            del wanted[checksum]


def restamp_holders(
    directories: Iterable[Path], before: tuple[int, ...], after: tuple[int, ...], checksum: str
) -> None:
    """A shared inode changed identity (a new link): move every model's stamp of it along (index lock held)."""
    for directory in directories:
        stamps = read_verified(directory)
        for file, stamp in stamps.items():
            if stamp == [*before, checksum]:
                rp = ReadablePart(directory / file, False, checksum, after[2])
                record_verified(directory, [rp], after)
