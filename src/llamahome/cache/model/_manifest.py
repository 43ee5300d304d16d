"""What the cache records beside each model: its manifest (validated before any field is used) and the
verification stamps that let a mapped load skip re-hashing a file that has not changed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llamahome.errors import ModelCacheError

from ._io import PartResult

from ._layout import ACCESS, MANIFEST, PICKLE_SUFFIXES, SUPPORT_SUFFIXES, valid_name

__all__ = [
    "check_manifest",
    "extra_files",
    "same_content",
    "manifest_bytes",
    "read_index",
    "build_manifest",
    "stored_files",
    "check_loadable",
]


def plain_name(value: object, *suffixes: str) -> bool:
    """A file name inside the model directory: no separators, no leading dot, one of ``suffixes``."""
    return isinstance(value, str) and valid_name(value) and value not in (MANIFEST, ACCESS) and value.endswith(suffixes)


def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_manifest(doc: object) -> dict[str, Any] | None:
    """The manifest if every field has the shape this module writes, else None (a damaged entry).

    Every path in it is a plain file name (``plain_name``), so ``directory / name`` stays inside the model's
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
    if index is not None and not (plain_name(index, ".json") and isinstance(doc.get("index_checksum"), str)):
        return None
    layout = doc.get("layout", "file")
    extra = doc.get("files", [])
    if layout not in ("file", "dir") or not isinstance(extra, list):
        return None
    parts = doc.get("parts")
    if not isinstance(parts, list) or not (parts or (layout == "dir" and extra)):
        return None
    files = {index}
    for part in parts:
        if not isinstance(part, dict):
            return None
        file, stored, compressed = part.get("file"), part.get("stored"), part.get("compressed")
        suffix = ".gguf" if part.get("format") == "gguf" else ".safetensors"
        if part.get("format", "safetensors") not in ("safetensors", "gguf") or not isinstance(compressed, bool):
            return None
        if not plain_name(file, suffix) or (suffix == ".gguf" and compressed):
            return None
        if stored != (f"{file}.lhz" if compressed else file):
            return None
        if not all(is_count(part.get(k)) for k in ("raw_size", "stored_size", "tensors", "compressed_tensors")):
            return None
        if not all(isinstance(part.get(k), str) for k in ("checksum", "raw_checksum")):
            return None
        if file in files or stored in files:
            return None
        files.update((file, stored))
    for entry in extra:
        if not isinstance(entry, dict) or not plain_name(entry.get("file"), *SUPPORT_SUFFIXES, *PICKLE_SUFFIXES):
            return None
        if not is_count(entry.get("size")) or not isinstance(entry.get("checksum"), str) or entry["file"] in files:
            return None
        files.add(entry["file"])
    return doc


def extra_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The support files kept beside a directory model's weights (config, tokenizer, ...): file, size, checksum."""
    return list(manifest.get("files", []))


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def key(m: dict[str, Any]) -> Any:
        return (
            [(p["file"], p["raw_checksum"]) for p in m["parts"]],
            m.get("index_checksum"),
            m.get("metadata"),
            m.get("layout", "file"),
            [(f["file"], f["checksum"]) for f in extra_files(m)],
        )

    return bool(key(a) == key(b))


def manifest_bytes(manifest: dict[str, Any], directory: Path) -> int:
    total = sum(int(p["stored_size"]) for p in manifest["parts"])
    total += sum(int(f["size"]) for f in extra_files(manifest))
    if manifest.get("index"):
        total += (directory / manifest["index"]).stat().st_size
    return total


def read_index(index_path: Path) -> list[str]:
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
        if not valid_name(shard) or not shard.endswith(".safetensors"):
            raise ModelCacheError(
                f"{index_path} names shard {shard!r}; shards must be .safetensors files in the same directory."
            )
    return shards


def build_manifest(
    name: str,
    parts: list[tuple[str, PartResult]],
    metadata: Mapping[str, str],
    *,
    source: str,
    index: str | None = None,
    created: float,
) -> dict[str, Any]:
    """The manifest of a model written from ``parts`` (file name, what was written for it)."""
    return {
        "version": 1,
        "name": name,
        "created": created,
        "source": source,
        "metadata": dict(metadata),
        "index": index,
        "parts": [
            {
                "file": file_name,
                "stored": p.stored,
                "compressed": p.compressed,
                "raw_size": p.raw_size,
                "stored_size": p.stored_size,
                "checksum": p.checksum,
                "raw_checksum": p.raw_checksum,
                "tensors": p.tensors,
                "compressed_tensors": p.compressed_tensors,
            }  # fmt: skip
            for file_name, p in parts
        ],
    }


def stored_files(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(file name, xxh3-128) of every file a manifest stores: weights as stored, and support files."""
    files = [(p["stored"], p["checksum"]) for p in manifest["parts"]]
    return files + [(f["file"], f["checksum"]) for f in extra_files(manifest)]


def check_loadable(name: str, manifest: dict[str, Any]) -> None:
    """load() reads safetensors weights; GGUF and pickled models are handed out by path instead."""
    formats = {p.get("format", "safetensors") for p in manifest["parts"]}
    if "gguf" in formats:
        raise ModelCacheError(
            f"Model {name!r} is a GGUF file, which llama.cpp-style runtimes read themselves: pass get_path({name!r}) "
            f"to them (for example llama_cpp.Llama(model_path=...))."
        )
    if not manifest["parts"]:
        raise ModelCacheError(
            f"Model {name!r} holds pickled weights, which the cache never unpickles: load get_path({name!r}) with "
            f"transformers or torch.load(..., weights_only=True) yourself."
        )
