"""The model cache: model weights as safetensors on disk, least recently used model evicted first.

    from llamahome.cache.model import ModelCache

    models = ModelCache("~/.cache/llamahome/models", size=4096)         # MB (1 MB = 1 MiB)
    models.add_file("minilm", "all-MiniLM-L6-v2/model.safetensors")    # validated, linked or compressed
    weights = models.load("minilm", framework="torch")                  # zero-copy when stored raw
    with models.pin("minilm"):                                          # never evicted while pinned
        path = models.get_path("minilm")                                # a real .safetensors for other tools

This module is the component's public face. Inside, one private module per job:

- ``_store``: :class:`ModelCache` itself: locking, publishing, reading, eviction, cleanup, pruning.
- ``_layout``: the cache directory: its marker, the names the cache gives files, what it may remove, bytes.
- ``_manifest``: the manifest beside each model: built, validated before use, compared.
- ``_stamps``: verification stamps (which files were hashed at which identity): mapped loads skip re-hashing.
- ``_share``: identical content across models stored once (hard links).
- ``_importer``: bringing existing files in (link or copy, hash; or compress).
- ``_dir``: what to keep of a model directory (weights, config, tokenizer) and what to refuse (pickles).
- ``_hub``: finding a model in the Hugging Face hub cache, offline.
- ``_gguf``: validating and describing GGUF files.
- ``_format``: the safetensors format and the compressed container's layout.
- ``_codec``: lossless per-tensor compression (byte streams + zstd).
- ``_io``: reading and writing one file: streaming writes, hashing, linking, maps, device loads.
- ``_tensors``: turning numpy arrays / torch tensors given to ``put`` into items to write.
- ``_locks``: ``flock`` file locks shared by threads and processes.
- ``_progress``: the byte progress bar and its summary line.
"""

from __future__ import annotations

from llamahome.errors import ModelCacheError, ModelNotFoundError

from ._layout import MARKER
from ._progress import PROGRESS_MIN_BYTES
from ._store import POLICIES, ModelCache, ModelInfo

__all__ = [
    "ModelCache",
    "ModelInfo",
    "ModelCacheError",
    "ModelNotFoundError",
    "POLICIES",
    "MARKER",
    "PROGRESS_MIN_BYTES",
]
