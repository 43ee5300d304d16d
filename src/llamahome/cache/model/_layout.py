"""The model cache's directory: its marker, the names it gives files, and what it may remove.

A model cache is a directory holding :data:`MARKER` (kind and format version). Everything the cache creates
has a name of a known shape (writers ``.tmp/.model.<pid>-<hex>.tmp`` and decodes ``.decoding.<pid>-<hex>.tmp``:
``cache.files`` temp names; trash ``.trash/<hex>``), so cleanup can tell its own leftovers from anything a user
put there, and only ever removes the former, without following symlinks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llamahome.errors import ModelCacheError, StorageError

from .._procs import pid_alive
from ..files import temp_owner, write_atomic

__all__ = [
    "MANIFEST", "ACCESS", "VERIFIED", "MARKER", "SUBDIRS", "TMP_NAME", "TRASH_NAME", "DECODING_NAME",
    "VERIFIED_TMP", "NAME_MAX", "SUPPORT_SUFFIXES", "PICKLE_SUFFIXES", "valid_name", "open_root", "real_dir", "regular", "purge", "entry_is_ours",
    "is_cache_file_name", "is_model_temp", "dir_bytes", "data_inodes", "union_bytes", "write_json", "fsync_dir", "owner_alive",
]  # fmt: skip

MANIFEST = "manifest.json"

ACCESS = ".access"

VERIFIED = ".verified"
#: The marker that makes a directory a model cache: {"kind": "llamahome-model-cache", "format": 1}.

MARKER = ".llamahome-cache.json"

KIND = "llamahome-model-cache"

FORMAT = 1

SUBDIRS = (".locks", ".tmp", ".trash")

TMP_NAME = re.compile(r"[0-9]+-[0-9a-f]{32}")

TRASH_NAME = re.compile(r"[0-9a-f]{32}")

DECODING_NAME = re.compile(r"\.decoding-[0-9]+-[0-9a-f]{32}")  # before cache.files: now temp_name("decoding")

VERIFIED_TMP = re.compile(r"\.verified\.[0-9]+-[0-9a-f]{32}")  # before cache.files: now temp_name(VERIFIED)
#: The bases of the temp files a model directory may hold (``files.temp_name(base)``).
_TEMP_BASES = ("decoding", VERIFIED)


def is_model_temp(name: str) -> bool:
    """A temp file the cache writes inside a model directory (a decode or a stamp file being written)."""
    if DECODING_NAME.fullmatch(name) or VERIFIED_TMP.fullmatch(name):
        return True
    return temp_owner(name) is not None and name.startswith(tuple(f".{base}." for base in _TEMP_BASES))

NAME_MAX = 200

BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
#: Imports at least this large show a progress bar (when stderr is a terminal).


#: Support files a directory model keeps beside its weights (by suffix): config, tokenizer, chat template.
SUPPORT_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja")
#: Weights in pickle-based formats (loading them can execute code): kept only when the caller opts in.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def valid_name(name: str) -> bool:
    return 0 < len(name) <= NAME_MAX and not name.startswith(".") and not BAD_NAME.search(name)


def data_inodes(directory: Path) -> dict[tuple[int, int], int]:
    """The data files of a model directory as ``{(device, inode): size}`` (bookkeeping files excluded).

    Models that share content hold hard links to one inode: counting inodes, not names, counts it once.
    """
    found: dict[tuple[int, int], int] = {}
    try:
        for entry in os.scandir(directory):
            if entry.name in (MANIFEST, ACCESS, VERIFIED) or is_model_temp(entry.name):
                continue
            if entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                found[(st.st_dev, st.st_ino)] = st.st_size
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return found


def dir_bytes(directory: Path) -> int:
    """Bytes of a model's data files (bookkeeping files excluded)."""
    return sum(data_inodes(directory).values())


def write_json(path: Path, doc: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def owner_alive(tmp_name: str) -> bool:
    """Is the process that created the temp entry ``tmp_name`` (a :func:`~llamahome.cache.files.temp_name`, or
    ``<pid>-<hex>`` as earlier versions named them) still running?"""
    pid = temp_owner(tmp_name)
    return pid is not None and (pid == os.getpid() or pid_alive(pid))


def open_root(root: Path) -> None:
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
        marker = read_marker(root)
        if marker is None:
            with os.scandir(root) as it:
                names = {entry.name for entry in it}
            legacy = all(name in names and real_dir(root / name) for name in SUBDIRS)
            # Another process creating the same cache right now leaves only these behind for a moment.
            starting = {n for n in names if n in SUBDIRS or _marker_temp(n)}
            if names - starting and not legacy and read_marker(root) is None:
                raise ModelCacheError(
                    f"{root} is not empty and is not a LlamaHome model cache (it has no {MARKER}); the cache "
                    f"will not share a directory with other files. Give ModelCache an empty or new directory, "
                    f"for example {root / 'llamahome-models'}."
                )
            write_marker(root)
        for sub in ("", *SUBDIRS):
            path = root / sub
            path.mkdir(mode=0o700, exist_ok=True)
            if not real_dir(path):
                raise ModelCacheError(
                    f"{path} is not a directory the model cache made (a symlink or a file); remove it and retry."
                )
            os.chmod(path, 0o700)  # private to the user
    except OSError as exc:
        raise StorageError(
            f"Cannot create the model cache directory {root} ({exc.strerror}); choose a writable path."
        ) from exc


def read_marker(root: Path) -> dict[str, Any] | None:
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
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        kind = doc.get("kind") if isinstance(doc, dict) else None
        what = f"a {kind!r} cache" if isinstance(kind, str) else "something else"
        raise ModelCacheError(
            f"{root} is marked as {what}, not a LlamaHome model cache ({root / MARKER}); give ModelCache its own "
            f"directory."
        )
    fmt = doc.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > FORMAT:
        raise ModelCacheError(
            f"The model cache at {root} was written in format {fmt!r} by a newer LlamaHome (this one reads "
            f"format {FORMAT}); upgrade llamahome or use another directory."
        )
    return doc


def _marker_temp(name: str) -> bool:
    """The marker being written by another process: ``files.temp_name(MARKER)`` (``<MARKER>.<pid>-<hex>`` before)."""
    return name.startswith(MARKER + ".") or (name.startswith(f".{MARKER}.") and temp_owner(name) is not None)


def write_marker(root: Path) -> None:
    write_atomic(root / MARKER, [json.dumps({"kind": KIND, "format": FORMAT}, indent=1).encode()], fsync=True)


def real_dir(path: Path) -> bool:
    """A directory, not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def purge(path: Path) -> None:
    """Remove a trashed model directory; a symlink is unlinked, never followed."""
    try:
        if os.path.islink(path) or not real_dir(path):
            os.unlink(path)
        else:
            shutil.rmtree(path, ignore_errors=True)  # rmtree never follows symlinks inside
    except OSError:
        pass


def is_cache_file_name(name: str) -> bool:
    """A name the cache gives files in a model directory; an entry holding anything else is not the cache's."""
    return (
        name in (MANIFEST, ACCESS, VERIFIED)
        or name.endswith((".safetensors", ".safetensors.lhz", ".gguf", *SUPPORT_SUFFIXES, *PICKLE_SUFFIXES))
        and valid_name(name)
        or is_model_temp(name)
    )


def entry_is_ours(directory: Path) -> bool:
    """Does this directory look like a model entry the cache wrote: a real directory with a manifest file and
    nothing but regular files of names the cache writes? Only such entries are removed when damaged."""
    if not real_dir(directory):
        return False
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError:
        return False
    if not any(e.name == MANIFEST for e in entries):
        return False
    return all(e.is_file(follow_symlinks=False) and is_cache_file_name(e.name) for e in entries)


def regular(path: Path) -> bool:
    """A regular file, not a symlink to one."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def union_bytes(groups: Sequence[Mapping[tuple[int, int], int]]) -> int:
    """Bytes of the union of several ``{inode: size}`` maps: a file shared by several counts once."""
    seen: dict[tuple[int, int], int] = {}
    for group in groups:
        seen.update(group)
    return sum(seen.values())
