"""``llamahome cache models ls|add|rm|verify|path|prune``: see and manage the cached models.

The model cache directory comes from ``--dir``, else from ``--config`` (``<cache.disk.path>/models``, as the
CacheManager places it), else from the default configuration. Only an existing model cache is opened, except
by ``add``, which creates one (a directory that is not a model cache is refused by ModelCache itself).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from llamahome.cache.config import CacheConfig
from llamahome.cache.units import format_bytes
from llamahome.errors import CacheError, ModelNotFoundError

from .params import SIZE

__all__ = ["models", "open_model_cache"]

_MARKER = ".llamahome-cache.json"


def open_model_cache(directory: str | None, config_file: str | None, *, create: bool = False) -> Any:
    """The ModelCache at ``--dir`` (or the configuration's), refusing a directory that holds none."""
    from llamahome.cache.model import ModelCache

    cfg = CacheConfig.from_yaml(config_file) if config_file else CacheConfig()
    path = Path(directory) if directory else Path(cfg.cache.disk.path) / "models"
    if not create:
        if not path.is_dir():
            raise CacheError(f"{path}: no such model cache directory; pass --dir with the directory of a ModelCache.")
        if not (path / _MARKER).is_file() and not (path / ".locks").is_dir():
            raise CacheError(
                f"{path}: not a LlamaHome model cache (no {_MARKER}); pass --dir with a ModelCache's directory."
            )
    block = cfg.model_cache
    return ModelCache(path, size=block.size, compression=block.compression, cleanup_policy=block.cleanup_policy)


_dir_option = click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=str), help="The model cache directory."
)
_config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=str),
    help="Read the directory (<cache.disk.path>/models) and model_cache settings from this YAML file.",
)


def _ago(ts: float, now: float) -> str:
    delta = max(0.0, now - ts)
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= seconds:
            return f"{delta / seconds:.0f}{unit} ago"
    return "just now"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


@click.group()
def models() -> None:
    """List, add, remove, check and prune cached models."""


@models.command("ls")
@_dir_option
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per model) for scripts.")
def ls(directory: str | None, config_file: str | None, as_json: bool) -> None:
    """List cached models with sizes, sharing and use.

    Columns: name, format, size on disk, original size, ratio, bytes shared with other models, last use, pinned.
    """
    cache = open_model_cache(directory, config_file)
    infos = sorted(cache.list_info(), key=lambda i: i.name)
    if as_json:
        docs = [dict(asdict(i), own_bytes=i.own_bytes) for i in infos]
        for doc in docs:
            doc["files"], doc["extra_files"] = list(doc["files"]), list(doc["extra_files"])
        click.echo(json.dumps({"directory": str(cache.root), "models": docs}, indent=1))
        return
    if not infos:
        click.echo(f"No models cached in {cache.root}.")
        return
    now = time.time()
    rows = [["NAME", "FORMAT", "ON DISK", "ORIGINAL", "RATIO", "SHARED", "LAST USED", "PINNED"]]
    for i in infos:
        fmt = i.format + (" dir" if i.layout == "dir" else "") + (" zstd" if i.compressed else "")
        rows.append([i.name, fmt, format_bytes(i.size), format_bytes(i.raw_size), f"{i.ratio:.2f}",
                     format_bytes(i.shared_bytes), _ago(i.last_used, now), "yes" if i.pinned else ""])  # fmt: skip
    click.echo(_table(rows))
    total = cache.stats.bytes
    click.echo(
        f"\n{len(infos)} model(s), {format_bytes(total)} on disk of {format_bytes(cache.max_bytes)} in {cache.root}"
    )


@models.command("add")
@click.argument("path", required=False, type=click.Path(exists=True, path_type=str))
@click.option("--hf", "repo_id", help="Import this repo (org/name) from the Hugging Face hub cache instead of PATH.")
@click.option("--revision", default="main", show_default=True, help="With --hf: a branch, tag or commit hash.")
@click.option("--hf-cache", type=click.Path(file_okay=False, path_type=str), help="With --hf: the hub cache directory.")
@click.option("--name", help="The name to cache it under (default: the file or directory name, or org--name).")
@click.option(
    "--compress/--no-compress",
    default=None,
    help="Store compressed (default: model_cache.compression; with --hf: linked, not compressed).",
)
@click.option("--copy", is_flag=True, help="Copy instead of hard-linking the files.")
@click.option("--allow-pickle", is_flag=True, help="Accept a directory whose only weights are pickled (.bin/.pt).")
@_dir_option
@_config_option
def add(
    path: str | None,
    repo_id: str | None,
    revision: str,
    hf_cache: str | None,
    name: str | None,
    compress: bool | None,
    copy: bool,
    allow_pickle: bool,
    directory: str | None,
    config_file: str | None,
) -> None:
    """Add a model file, directory, or hub model (--hf).

    PATH is a .safetensors or .gguf file, or a model directory (save_pretrained output); --hf REPO_ID imports
    from the Hugging Face hub cache, offline. A progress bar shows on a terminal for large models.
    """
    if (path is None) == (repo_id is None):
        raise click.UsageError("give either PATH or --hf REPO_ID.")
    cache = open_model_cache(directory, config_file, create=True)
    start = time.perf_counter()
    if repo_id is not None:
        name = cache.add_hf(repo_id, revision, hf_cache, name=name, compression=bool(compress), link=not copy,
                            allow_pickle=allow_pickle)  # fmt: skip
    else:
        source = Path(path)  # type: ignore[arg-type]  # checked above
        name = name or (source.name if source.is_dir() else source.stem)
        if source.is_dir():
            cache.add_dir(name, source, compression=compress, link=not copy, allow_pickle=allow_pickle)
        else:
            cache.add_file(name, source, compression=compress, link=not copy)
    info = cache.info(name)
    click.echo(
        f"added {name}: {info.format}, {format_bytes(info.raw_size)} -> {format_bytes(info.size)} on disk "
        f"({format_bytes(info.shared_bytes)} shared) in {time.perf_counter() - start:.1f} s"
    )


@models.command("rm")
@click.argument("names", nargs=-1, required=True)
@_dir_option
@_config_option
def rm(names: tuple[str, ...], directory: str | None, config_file: str | None) -> None:
    """Remove models (never pinned or loading ones)."""
    cache = open_model_cache(directory, config_file)
    for name in names:
        if not cache.delete(name):
            raise CacheError(f"Model {name!r} is not cached in {cache.root}; `llamahome cache models ls` lists them.")
        click.echo(f"removed {name}")


@models.command("verify")
@click.argument("names", nargs=-1)
@_dir_option
@_config_option
def verify(names: tuple[str, ...], directory: str | None, config_file: str | None) -> None:
    """Re-hash models against their checksums.

    Checks every model when no NAME is given; the exit status is 1 if any is damaged.
    """
    cache = open_model_cache(directory, config_file)
    damaged = []
    for name in names or cache.list():
        try:
            ok = cache.verify(name)
        except ModelNotFoundError as exc:
            raise CacheError(str(exc)) from None
        click.echo(f"{'ok' if ok else 'DAMAGED'}  {name}")
        if not ok:
            damaged.append(name)
    if damaged:
        raise CacheError(
            f"{len(damaged)} damaged model(s): {', '.join(damaged)}. Remove them (`llamahome cache models rm`) "
            f"and add them again."
        )


@models.command("path")
@click.argument("name")
@_dir_option
@_config_option
def path_(name: str, directory: str | None, config_file: str | None) -> None:
    """Print the path other tools open.

    A directory for whole models (add_dir, --hf), else the .safetensors / .gguf file.
    """
    cache = open_model_cache(directory, config_file)
    click.echo(str(cache.get_path(name)))


@models.command("prune")
@click.option("--to", "to", required=True, type=SIZE, help='Evict models until the cache holds at most this ("20GB").')
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@_dir_option
@_config_option
def prune(to: float, dry_run: bool, directory: str | None, config_file: str | None) -> None:
    """Evict unpinned models until the cache fits --to.

    In the cache's eviction order (least recently used first by default); shared content counts once.
    """
    cache = open_model_cache(directory, config_file)
    report = cache.prune(to, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for name in report.details["evicted"]:
        click.echo(f"{verb} {name}")
    click.echo(
        f"{'would free' if dry_run else 'freed'} {format_bytes(report.bytes_freed)} ({report.bytes_freed} bytes): "
        f"{format_bytes(report.details['bytes_before'])} -> {format_bytes(report.details['bytes_after'])}"
    )
