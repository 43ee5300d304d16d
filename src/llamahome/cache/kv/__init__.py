"""The KV cache: attention keys/values of prompt prefixes, computed once and reused across restarts and machines.

    from llamahome.cache import KVCache

    kv = KVCache("./cache/kv", size="4GB", block_tokens=256)
    out = kv.generate(model, input_ids, max_new_tokens=32)   # prefills only what is not cached

See :class:`KVCache`. Internals: ``_blocks`` (hash-chain block keys), ``_fingerprint`` (model identity),
``_codec`` (block frames, byte planes with zstd), ``_store`` (the disk tier), ``_hf`` (transformers adapter).
"""

from __future__ import annotations

from ._arrays import KVPrefix
from ._cache import KVCache

__all__ = ["KVCache", "KVPrefix"]
