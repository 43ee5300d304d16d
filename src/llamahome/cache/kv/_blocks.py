"""Block keys: a prompt prefix split into blocks of ``block_tokens`` tokens, each named by a hash chain.

A block's key is ``blake2b-128(parent key + model fingerprint + token ids)`` with the first block's parent
all zeros, as vLLM hashes its prefix blocks. A key therefore names the whole prefix up to and including its
block for one model, so a lookup walks the chain block by block and stops at the first block not cached: the
longest cached prefix, in block steps. blake2b (a cryptographic hash) rather than a fast checksum because a
collision would return another prompt's attention values; the block files also carry their token ids, which
every read compares, so even a collision is a miss.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from llamahome.errors import CacheValueError

__all__ = ["ROOT", "KEY_BYTES", "Block", "as_token_array", "chain", "fingerprint_bytes"]

KEY_BYTES = 16
#: The parent of a prompt's first block.
ROOT = bytes(KEY_BYTES)


@dataclass(frozen=True)
class Block:
    """One full block of a prompt: its key, its parent's key, its index and its token ids (int64)."""

    key: bytes
    parent: bytes
    index: int
    tokens: np.ndarray

    @property
    def name(self) -> str:
        """The block's file name stem: its key and its parent's, in hex (the parent lets a directory scan see
        the chain without opening files, so eviction can take leaves first)."""
        return f"{self.key.hex()}-{self.parent.hex()}"


def as_token_array(tokens: Any) -> np.ndarray:
    """Token ids (a list, numpy array or 1-row torch tensor) as a 1-D int64 numpy array."""
    if hasattr(tokens, "detach") and hasattr(tokens, "cpu"):  # a torch tensor, without importing torch
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise CacheValueError(
            f"Token ids must be one sequence (shape (n,) or (1, n)), not shape {arr.shape}; the KV cache keys one "
            "prompt at a time, so pass each row of a batch separately."
        )
    if arr.size and arr.dtype.kind not in "iu":
        raise CacheValueError(f"Token ids must be integers, not {arr.dtype}; pass the tokenizer's input_ids.")
    return np.ascontiguousarray(arr, dtype=np.int64)


def chain(fingerprint: bytes, tokens: np.ndarray, block_tokens: int, max_blocks: int | None = None) -> list[Block]:
    """The full blocks of ``tokens`` (a trailing partial block has no key), at most ``max_blocks`` of them."""
    count = len(tokens) // block_tokens
    if max_blocks is not None:
        count = min(count, max_blocks)
    blocks: list[Block] = []
    parent = ROOT
    for i in range(count):
        part = tokens[i * block_tokens : (i + 1) * block_tokens]
        digest = hashlib.blake2b(parent, digest_size=KEY_BYTES)
        digest.update(fingerprint)
        digest.update(part.tobytes())
        key = digest.digest()
        blocks.append(Block(key, parent, i, part))
        parent = key
    return blocks


def fingerprint_bytes(model_id: str | bytes | bytearray) -> bytes:
    """A model identity (a fingerprint string, or bytes) as the bytes that enter every block key."""
    if isinstance(model_id, str):
        if not model_id:
            raise CacheValueError("The model fingerprint is empty; pass KVCache.fingerprint(model) or a model id.")
        return model_id.encode("utf-8")
    if isinstance(model_id, bytes | bytearray):
        if not model_id:
            raise CacheValueError("The model fingerprint is empty; pass KVCache.fingerprint(model) or a model id.")
        return bytes(model_id)
    raise CacheValueError(
        f"A model fingerprint must be str or bytes, not {type(model_id).__name__}; use KVCache.fingerprint(model)."
    )
