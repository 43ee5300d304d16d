"""Finding a model in the Hugging Face hub cache on disk, offline, without importing ``huggingface_hub``.

The hub cache (https://huggingface.co/docs/huggingface_hub/guides/manage-cache) keeps each repository as
``models--<org>--<name>/`` with ``refs/<revision>`` (a file holding a commit hash), ``snapshots/<commit>/``
(the repository's files, as symlinks) and ``blobs/<hash>`` (the content the symlinks point to).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from llamahome.errors import ModelCacheError

__all__ = ["hub_cache_dir", "find_snapshot", "cache_name"]

_REPO_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The hub cache directory as huggingface_hub resolves it: ``cache_dir``, else ``$HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    if cache_dir is not None:
        return Path(os.path.expanduser(os.fspath(cache_dir)))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expanduser(os.environ[var]))
    if os.environ.get("HF_HOME"):
        return Path(os.path.expanduser(os.environ["HF_HOME"])) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def cache_name(repo_id: str, revision: str) -> str:
    """The model cache name of a hub model: ``org--name`` (as the hub cache names its folders, since model
    names cannot hold ``/``), plus ``@<revision>`` for a revision other than ``main``."""
    base = repo_id.replace("/", "--")
    return base if revision == "main" else f"{base}@{revision.replace('/', '--')}"


def _listing(names: list[str]) -> str:
    return ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") if names else "nothing"


def find_snapshot(repo_id: str, revision: str, cache_dir: Path) -> Path:
    """The snapshot directory of ``repo_id`` at ``revision`` (a branch, tag or commit hash) in the hub cache."""
    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise ModelCacheError(f"{repo_id!r} is not a Hugging Face repo id (like 'meta-llama/Llama-3.2-1B').")
    if not isinstance(revision, str) or not revision or ".." in revision or revision.startswith("/"):
        raise ModelCacheError(f"{revision!r} is not a revision (a branch, tag or commit hash).")
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    if not repo.is_dir():
        have = sorted(
            p.name.removeprefix("models--").replace("--", "/")
            for p in (cache_dir.iterdir() if cache_dir.is_dir() else [])
            if p.name.startswith("models--")
        )
        raise ModelCacheError(
            f"{repo_id} is not in the Hugging Face hub cache at {cache_dir} (it has: {_listing(have)}); download it "
            f"first (huggingface-cli download {repo_id}) or pass cache_dir=."
        )
    ref = repo / "refs" / revision
    commit = None
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
    elif _COMMIT.fullmatch(revision):
        commit = revision
    snapshot = repo / "snapshots" / commit if commit and _COMMIT.fullmatch(commit) else None
    if snapshot is None or not snapshot.is_dir():
        refs_dir = repo / "refs"
        refs = (
            sorted(str(p.relative_to(refs_dir)) for p in refs_dir.rglob("*") if p.is_file())
            if refs_dir.is_dir()
            else []
        )
        snaps_dir = repo / "snapshots"
        snaps = sorted(p.name for p in snaps_dir.iterdir()) if snaps_dir.is_dir() else []
        raise ModelCacheError(
            f"{repo_id} has no snapshot for revision {revision!r} in {cache_dir} (refs: {_listing(refs)}; snapshots: "
            f"{_listing(snaps)}); pass one of those as revision=, or download it first."
        )
    return snapshot
