"""``llamahome cache scan``: the ML caches on this machine that users lose disk to, and the files they repeat.

Sizes the Hugging Face hub cache, the Hugging Face datasets cache, the torch hub cache and LlamaHome's own
caches (each inode counted once), then finds files identical across them (grouped by size, then by xxh3-128
hash). Read-only by default. ``--dedupe`` hard-links identical files only where that is safe: both on the same
file system, and both files that their owners never modify in place: blobs of the hub cache (content-addressed,
written once) and the data files of LlamaHome model caches (replaced, never rewritten). ``--dry-run`` shows what
``--dedupe`` would do.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import xxhash

from llamahome.cache.units import format_bytes

from .params import SIZE

__all__ = ["scan", "Location", "default_locations", "scan_locations", "find_duplicates", "dedupe"]

_MODEL_MARKER = ".llamahome-cache.json"


@dataclass
class Location:
    """One cache directory: what it is, where, and (after scanning) its files."""

    kind: str
    path: Path
    files: dict[tuple[int, int], tuple[Path, int]] = field(default_factory=dict)  # inode -> (a path, size)

    @property
    def size(self) -> int:
        return sum(size for _, size in self.files.values())


def _env_path(*candidates: tuple[str, str]) -> Path | None:
    for var, suffix in candidates:
        if os.environ.get(var):
            return Path(os.path.expanduser(os.environ[var])) / suffix
    return None


def default_locations(llamahome: tuple[str, ...] = ()) -> list[Location]:
    """Where huggingface_hub, datasets and torch keep their caches (same environment variables), plus
    LlamaHome's caches (``llamahome`` directories, else ``~/.cache/llamahome`` and ``./cache``)."""
    home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    hub = _env_path(("HF_HUB_CACHE", ""), ("HUGGINGFACE_HUB_CACHE", ""), ("HF_HOME", "hub"))
    datasets = _env_path(("HF_DATASETS_CACHE", ""), ("HF_HOME", "datasets"))
    torch_hub = _env_path(("TORCH_HOME", "hub"))
    found = [
        Location("huggingface hub", hub or home_cache / "huggingface" / "hub"),
        Location("huggingface datasets", datasets or home_cache / "huggingface" / "datasets"),
        Location("torch hub", torch_hub or home_cache / "torch" / "hub"),
    ]
    for directory in llamahome or (str(home_cache / "llamahome"), "./cache"):
        found.append(Location("llamahome", Path(directory)))
    return found


def scan_locations(locations: list[Location]) -> None:
    """Fill each location's files (regular files only; symlinks are not followed, so hub snapshots, which
    link into blobs, are not counted twice)."""
    for loc in locations:
        if not loc.path.is_dir():
            continue
        for root, dirs, names in os.walk(loc.path):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
            for name in names:
                path = Path(root) / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    loc.files.setdefault((st.st_dev, st.st_ino), (path, st.st_size))


def _hash(path: Path) -> str | None:
    hasher = xxhash.xxh3_128()
    try:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(8 << 20):
                hasher.update(chunk)
    except OSError:
        return None
    return hasher.hexdigest()


def find_duplicates(locations: list[Location], min_size: int) -> list[list[tuple[Location, Path, int]]]:
    """Groups of distinct files (inodes) with identical content, each at least ``min_size`` bytes."""
    by_size: dict[int, list[tuple[Location, Path, int]]] = {}
    seen: set[tuple[int, int]] = set()
    for loc in locations:
        for inode, (path, size) in loc.files.items():
            if size >= min_size and inode not in seen:
                seen.add(inode)
                by_size.setdefault(size, []).append((loc, path, size))
    groups: list[list[tuple[Location, Path, int]]] = []
    for candidates in by_size.values():
        if len(candidates) < 2:
            continue
        by_hash: dict[str, list[tuple[Location, Path, int]]] = {}
        for item in candidates:
            digest = _hash(item[1])
            if digest is not None:
                by_hash.setdefault(digest, []).append(item)
        groups.extend(group for group in by_hash.values() if len(group) > 1)
    return sorted(groups, key=lambda g: -g[0][2] * (len(g) - 1))


def _immutable(loc: Location, path: Path) -> bool:
    """A file its owner never rewrites in place: a hub blob, or a LlamaHome model cache's data file."""
    rel = path.relative_to(loc.path).parts
    if loc.kind == "huggingface hub":
        return len(rel) == 3 and rel[0].startswith("models--") and rel[1] == "blobs"
    if loc.kind == "llamahome":  # <model cache>/<model>/<data file>, at any depth under the location
        return (
            not path.parent.name.startswith(".")
            and (path.parent.parent / _MODEL_MARKER).is_file()
            and path.name.endswith((".safetensors", ".lhz", ".gguf"))
        )
    return False


def dedupe(groups: list[list[tuple[Location, Path, int]]], *, dry_run: bool) -> list[tuple[Path, Path, int]]:
    """Hard-link the immutable files of each group to one copy on the same file system: [(replaced, kept, bytes)].

    The kept copy is a hub blob where there is one (its mode is what other hub users expect). Each replacement
    is atomic (a new link renamed over the old name), and is made only if the file still has the size, inode
    and content it was scanned with.
    """
    done = []
    for group in groups:
        safe = [(loc, path, size) for loc, path, size in group if _immutable(loc, path)]
        safe.sort(key=lambda item: item[0].kind != "huggingface hub")
        if len(safe) < 2:
            continue
        keep = safe[0][1]
        keep_st = keep.stat()
        digest = None
        for _, path, size in safe[1:]:
            st = path.lstat()
            if st.st_dev != keep_st.st_dev or st.st_ino == keep_st.st_ino or st.st_size != size:
                continue
            if dry_run:
                done.append((path, keep, size))
                continue
            digest = digest or _hash(keep)
            if digest is None or _hash(path) != digest:
                continue  # changed since the scan: leave it
            tmp = path.with_name(f".{path.name}.dedupe-{uuid.uuid4().hex}")
            try:
                os.link(keep, tmp)
                os.replace(tmp, path)
            except OSError:
                tmp.unlink(missing_ok=True)
                continue
            done.append((path, keep, size))
    return done


@click.command("scan")
@click.option("--llamahome", "llamahome_dirs", multiple=True, type=click.Path(file_okay=False, path_type=str),
              help="A LlamaHome cache directory to include (repeatable; default ~/.cache/llamahome and ./cache).")  # fmt: skip
@click.option("--min-size", type=SIZE, default=1.0, show_default=True, help="Ignore files smaller than this (MB).")
@click.option("--dedupe", "do_dedupe", is_flag=True, help="Hard-link identical read-only files where safe.")
@click.option("--dry-run", is_flag=True, help="With --dedupe: say what would be linked, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def scan(llamahome_dirs: tuple[str, ...], min_size: float, do_dedupe: bool, dry_run: bool, as_json: bool) -> None:
    """Size ML caches on this machine; find repeats.

    The Hugging Face hub and datasets caches, torch hub and LlamaHome caches: size of each and files identical
    across them (by size, then hash). Read-only unless --dedupe.
    """
    locations = default_locations(llamahome_dirs)
    scan_locations(locations)
    groups = find_duplicates(locations, int(min_size * 1024 * 1024))
    linked = dedupe(groups, dry_run=dry_run) if do_dedupe else []
    reclaimable = sum(group[0][2] * (len(group) - 1) for group in groups)
    if as_json:
        doc: dict[str, Any] = {
            "locations": [
                {
                    "kind": loc.kind,
                    "path": str(loc.path),
                    "exists": loc.path.is_dir(),
                    "bytes": loc.size,
                    "files": len(loc.files),
                }  # fmt: skip
                for loc in locations
            ],
            "duplicates": [
                [{"kind": loc.kind, "path": str(path), "bytes": size} for loc, path, size in group] for group in groups
            ],  # fmt: skip
            "reclaimable_bytes": reclaimable,
            "linked": [{"path": str(a), "to": str(b), "bytes": n} for a, b, n in linked],
            "dry_run": dry_run,
        }
        click.echo(json.dumps(doc, indent=1))
        return
    width = max(len(loc.kind) for loc in locations)
    for loc in locations:
        where = str(loc.path) if loc.path.is_dir() else f"{loc.path} (none)"
        click.echo(f"{loc.kind.ljust(width)}  {format_bytes(loc.size).rjust(10)}  {len(loc.files):6d} files  {where}")
    click.echo(f"\n{len(groups)} set(s) of identical files, {format_bytes(reclaimable)} held more than once")
    for group in groups[:20]:
        click.echo(f"  {format_bytes(group[0][2])} x {len(group)}:")
        for loc, path, _ in group:
            click.echo(f"    [{loc.kind}] {path}")
    if do_dedupe:
        verb = "would link" if dry_run else "linked"
        for path, keep, _ in linked:
            click.echo(f"{verb} {path} -> {keep}")
        click.echo(f"{verb} {len(linked)} file(s), {'freeing' if not dry_run else 'would free'} "
                   f"{format_bytes(sum(n for _, _, n in linked))}")  # fmt: skip
