"""What to keep of a model directory (a ``save_pretrained`` output or a hub snapshot), and what to refuse.

A loader (``transformers.AutoModelForCausalLM.from_pretrained``, ``AutoTokenizer.from_pretrained``) needs the
weights (``*.safetensors``, and their ``*.safetensors.index.json`` when sharded) plus small support files:
``config.json``, ``generation_config.json``, the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``, ``tokenizer.model``, ``vocab.*``, ``merges.txt``, ``*.tiktoken``) and a chat
template (``chat_template.jinja`` / ``.json``). Those are kept as they are, with a checksum. Pickled weights
(``.bin``, ``.pt``, ...) can run code when loaded, so a directory whose only weights are pickled is refused
unless the caller opts in; beside safetensors weights they are redundant and skipped. Only top-level files are
looked at (subdirectories such as ``original/`` or ``onnx/`` are other formats of the same model).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from llamahome.errors import ModelCacheError

from ._layout import MANIFEST, PICKLE_SUFFIXES, SUPPORT_SUFFIXES, valid_name

__all__ = ["DirPlan", "plan_model_dir", "SUPPORT_SUFFIXES", "PICKLE_SUFFIXES", "MAX_SUPPORT_BYTES"]

#: A support file larger than this is not a support file (tokenizer.json of a 256k vocabulary is ~35 MB).
MAX_SUPPORT_BYTES = 256 * 1024 * 1024


@dataclass
class DirPlan:
    """The files of a model directory to cache: weights, their index, support files, and what was skipped."""

    weights: list[Path] = field(default_factory=list)
    index: Path | None = None
    support: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)  # follows symlinks: hub snapshots link into blobs/
    except OSError:
        return False


def plan_model_dir(root: Path, *, allow_pickle: bool = False) -> DirPlan:
    """Sort the top-level files of ``root`` into what to cache; ModelCacheError for what is not a model."""
    if not root.is_dir():
        raise ModelCacheError(f"{root} is not a directory; use add_file() for a single .safetensors or .gguf file.")
    plan = DirPlan()
    pickled: list[Path] = []
    indexes: list[Path] = []
    for path in sorted(root.iterdir(), key=lambda p: p.name):
        name = path.name
        if not _is_regular(path):
            if not name.startswith("."):
                plan.skipped.append(name + ("/" if path.is_dir() else ""))
            continue
        if not valid_name(name) or name == MANIFEST:
            plan.skipped.append(name)  # hidden files (.gitattributes) and the one name the cache itself uses
        elif name.endswith(".safetensors.index.json"):
            indexes.append(path)
        elif name.endswith(".safetensors"):
            plan.weights.append(path)
        elif name.endswith(PICKLE_SUFFIXES):
            pickled.append(path)
        elif name.endswith(SUPPORT_SUFFIXES) and path.stat().st_size <= MAX_SUPPORT_BYTES:
            plan.support.append(path)
        else:
            plan.skipped.append(name)
    if len(indexes) > 1:
        raise ModelCacheError(
            f"{root} holds several index files ({', '.join(p.name for p in indexes)}); add one model at a time."
        )
    plan.index = indexes[0] if indexes else None
    if not plan.weights:
        if pickled and not allow_pickle:
            raise ModelCacheError(
                f"{root} holds only pickled weights ({', '.join(p.name for p in pickled)}), which can run code when "
                f"loaded, so the model cache refuses them. Convert them to safetensors (load with torch.load("
                f"weights_only=True) and save_pretrained(..., safe_serialization=True), or safetensors.torch."
                f"save_file), or pass allow_pickle=True if you trust their source."
            )
        if not pickled:
            raise ModelCacheError(
                f"{root} has no model weights (.safetensors); a model directory needs one .safetensors file, or "
                f"shards plus their model.safetensors.index.json."
            )
        plan.support.extend(pickled)  # opted in: kept as they are, checked like support files
    else:
        plan.skipped.extend(p.name for p in pickled)  # redundant beside safetensors weights
    if plan.index is None and len(plan.weights) > 1:
        raise ModelCacheError(
            f"{root} has {len(plan.weights)} .safetensors files and no *.safetensors.index.json; add the index (as "
            f"save_pretrained writes it) or one model at a time."
        )
    return plan
