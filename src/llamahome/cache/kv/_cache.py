"""KVCache: attention keys/values of prompt prefixes, kept in memory, on disk and optionally on the network."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from llamahome.errors import CacheClosedError, CacheValueError, ConfigError, CorruptEntryError

from ..base import Store
from ..memory import MemoryCache
from ..stats import CacheStats, CleanupReport
from ..units import MIB, size_to_bytes
from ._arrays import KVPrefix, as_numpy, empty_prefix
from ._blocks import Block, as_token_array, chain, fingerprint_bytes
from ._codec import Decoded, decode, encode, nbytes, raw_frame, storage_dtype
from ._fingerprint import Fingerprinter
from ._store import BlockStore, Pending, file_size

__all__ = ["KVCache"]

_REMOTE_PREFIX = "kv:"
_REMOTE_TAG = b"LHK1"
_REMOTE_HEAD = struct.Struct("<4sQ16s16s")
_MAX_BLOCK_TOKENS = 1 << 20
#: ``stats`` re-reads the disk's holdings when its last scan is older than this (seconds).
STATS_MAX_AGE = 1.0
ModelRef = Any  # a fingerprint (str/bytes) or a transformers model


class KVCache:
    """Attention K/V of prompt prefixes, in blocks of ``block_tokens`` tokens, so prefill runs on new tokens only.

    ``size`` (MB, or a string with a unit) bounds the disk; blocks are evicted whole, least recently used
    first, leaves of a prefix chain before the blocks they extend. ``memory_size`` MB of recently used
    blocks stay decoded in memory (0 turns that tier off). ``remote`` is any :class:`Store` (normally a
    :class:`~llamahome.cache.RedisCache`) through which machines share blocks; it is written after the disk
    and read on a disk miss.

    With transformers (the ``kv`` extra)::

        kv = KVCache("./cache/kv", size="4GB")
        out = kv.generate(model, input_ids, max_new_tokens=32)   # == model.generate(...) for greedy decoding
        kv.match(model, input_ids)                               # leading tokens now cached

    Any engine, with plain arrays (token axis second to last)::

        kv.store("my-model-v1", tokens, [(k0, v0), (k1, v1), ...])
        prefix = kv.lookup("my-model-v1", tokens)                # prefix.tokens, prefix.layers
    """

    name = "kv_cache"

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: float | str = 4096,
        block_tokens: int = 256,
        compression: bool = True,
        cleanup_policy: str = "lru",
        *,
        memory_size: float | str = 256,
        remote: Store | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        whole = isinstance(block_tokens, int) and not isinstance(block_tokens, bool)
        if not whole or not 1 <= block_tokens <= _MAX_BLOCK_TOKENS:
            raise ConfigError(
                f"block_tokens must be a whole number of tokens from 1 to {_MAX_BLOCK_TOKENS}, not {block_tokens!r}; "
                "256 suits most prompts (smaller blocks reuse more of a prompt, larger ones cost fewer files)."
            )
        if cleanup_policy != "lru":
            raise ConfigError(
                f"kv_cache.cleanup_policy: {cleanup_policy!r} is not supported; the KV cache evicts 'lru' (least "
                "recently used blocks first, leaves of a prefix before the blocks they extend)."
            )
        self.path = Path(path)
        self.block_tokens = block_tokens
        self.compression = bool(compression)
        self.cleanup_policy = cleanup_policy
        self._stats = CacheStats(name=self.name, max_bytes=_size(size, "size"))
        kwargs = {} if clock is None else {"clock": clock}
        self._disk = BlockStore(self.path, self._stats.max_bytes, self._stats, **kwargs)
        self._disk.scan()
        mem_bytes = 0 if memory_size in (0, "0") else _size(memory_size, "memory_size")
        self._memory = MemoryCache(size=mem_bytes / MIB, policy="lru") if mem_bytes else None
        self._remote = remote
        self._fingerprints = Fingerprinter()
        self._closed = False
        self._lock = threading.Lock()
        #: Leading tokens served from the cache, and tokens whose K/V were stored, since construction.
        self.tokens_reused = 0
        self.tokens_stored = 0

    # --- identity -----------------------------------------------------------------------------------
    def fingerprint(self, model: Any) -> str:
        """The fingerprint of a transformers model (config, attention, dtype and weights; see ``_fingerprint``)."""
        return self._fingerprints(model)

    def forget(self, model: Any) -> None:
        """Recompute ``model``'s fingerprint on next use (after weight writes through ``tensor.data``)."""
        self._fingerprints.forget(model)

    def _model_id(self, model: ModelRef) -> bytes:
        if isinstance(model, str | bytes | bytearray):
            return fingerprint_bytes(model)
        if hasattr(model, "named_parameters"):
            return fingerprint_bytes(self.fingerprint(model))
        raise CacheValueError(
            f"model must be a transformers model or a fingerprint string, not {type(model).__name__}."
        )

    def _chain(self, model: ModelRef, tokens: Any, max_tokens: int | None = None) -> list[Block]:
        self._check_open()
        ids = as_token_array(tokens)
        limit = None if max_tokens is None else max(0, max_tokens) // self.block_tokens
        return chain(self._model_id(model), ids, self.block_tokens, limit)

    # --- lookups ------------------------------------------------------------------------------------
    def match(self, model: ModelRef, tokens: Any) -> int:
        """How many leading tokens of ``tokens`` are cached for ``model`` (whole blocks; a block found damaged
        when it is read is recomputed then)."""
        count = 0
        for block in self._chain(model, tokens):
            if not self._present(block):
                break
            count += 1
        return count * self.block_tokens

    def _present(self, block: Block) -> bool:
        if self._memory is not None and block.name in self._memory:
            return True
        if self._disk.contains(block):
            return True
        return self._remote is not None and (_REMOTE_PREFIX + block.name) in self._remote

    def lookup(self, model: ModelRef, tokens: Any, *, max_tokens: int | None = None) -> KVPrefix:
        """The K/V of the longest cached prefix of ``tokens`` (at most ``max_tokens``), as a :class:`KVPrefix`."""
        blocks = self._chain(model, tokens, max_tokens)
        found: list[tuple[Block, Decoded, bool]] = []
        for block in blocks:
            got = self._fetch(block)
            if got is None or (found and not _compatible(found[0][1], got[0])):
                break
            found.append((block, *got))
        prefix = self._assemble(found)
        self._disk.touch(blocks[: prefix.blocks])
        self._stats.add("hits", prefix.blocks)
        if prefix.blocks < len(blocks):
            self._stats.add("misses")
        with self._lock:
            self.tokens_reused += prefix.tokens
        return prefix

    def _assemble(self, found: list[tuple[Block, Decoded, bool]]) -> KVPrefix:
        """Decode the blocks straight into one array per K/V of every layer (one pass over the bytes)."""
        if not found:
            return empty_prefix()
        first, width = found[0][1], self.block_tokens
        outs = [np.empty(s[:-2] + (len(found) * width, s[-1]), dtype=storage_dtype(first.dtype)) for s in first.shapes]
        count = 0
        for block, decoded, hot in found:
            lo = count * width
            try:
                decoded.write_into([o[..., lo : lo + width, :] for o in outs])
            except CorruptEntryError as exc:
                self._disk.discard(block, str(exc))
                if self._memory is not None:
                    self._memory.delete(block.name)
                break
            if not hot and self._memory is not None:
                self._remember(block, raw_frame(block.tokens, [o[..., lo : lo + width, :] for o in outs], first.dtype))
            count += 1
        if not count:
            return empty_prefix()
        arrays = [o[..., : count * width, :] for o in outs] if count < len(found) else outs
        layers = [(arrays[i], arrays[i + 1]) for i in range(0, len(arrays), 2)]
        return KVPrefix(count * width, count, first.dtype, layers)

    def _fetch(self, block: Block) -> tuple[Decoded, bool] | None:
        """The block, checked, and whether it came from the memory tier."""
        if self._memory is not None:
            frame = self._memory.get(block.name)
            if frame is not None:
                hot = decode(memoryview(frame))
                if np.array_equal(hot.tokens, block.tokens):
                    return hot, True
        decoded = self._disk.read(block)
        if decoded is None and self._remote is not None:
            decoded = self._fetch_remote(block)
        return None if decoded is None else (decoded, False)

    def _remember(self, block: Block, frame: bytearray) -> None:
        """Keep a block's uncompressed frame in the memory tier (a hit then costs one copy, no decoding)."""
        assert self._memory is not None
        if len(frame) <= self._memory.stats.max_bytes // 4:  # one block never crowds out the rest
            self._memory.set(block.name, frame)

    # --- the network tier ---------------------------------------------------------------------------
    def _fetch_remote(self, block: Block) -> Decoded | None:
        assert self._remote is not None
        item = self._remote.get(_REMOTE_PREFIX + block.name)
        if not isinstance(item, bytes | bytearray) or len(item) < _REMOTE_HEAD.size:
            return None
        tag, checksum, key, parent = _REMOTE_HEAD.unpack_from(item, 0)
        frame = memoryview(item)[_REMOTE_HEAD.size :]
        intact = tag == _REMOTE_TAG and xxhash.xxh3_64_intdigest(frame) == checksum
        if not intact or key != block.key or parent != block.parent:
            self._stats.add("corrupt")
            return None
        try:
            decoded = decode(frame)
        except CorruptEntryError:
            self._stats.add("corrupt")
            return None
        if not np.array_equal(decoded.tokens, block.tokens):
            self._stats.add("corrupt")
            return None
        # Keep it on this machine's disk too, as it travelled (already compressed and checked).
        self._disk.write([Pending(block, [bytes(frame)], file_size(block, frame.nbytes))], {block.key, block.parent})
        return decoded

    def _publish(self, block: Block, frame: bytes) -> None:
        assert self._remote is not None
        head = _REMOTE_HEAD.pack(_REMOTE_TAG, xxhash.xxh3_64_intdigest(frame), block.key, block.parent)
        self._remote.set(_REMOTE_PREFIX + block.name, head + frame)

    # --- stores -------------------------------------------------------------------------------------
    def store(self, model: ModelRef, tokens: Any, layers: Sequence[tuple[Any, Any]], *, start: int = 0) -> int:
        """Store the K/V of the full blocks of ``tokens``; returns how many tokens were newly stored.

        ``layers[i]`` is ``(keys, values)`` of layer ``i`` (numpy arrays or torch tensors, any float dtype),
        token axis second to last, covering token positions ``start`` to at least the last full block
        (``start`` must be a multiple of ``block_tokens``: the blocks before it are taken as cached already).
        Blocks already cached are skipped; stores never raise for a full disk bound, they store fewer blocks.
        """
        if start % self.block_tokens:
            raise CacheValueError(f"start ({start}) must be a multiple of block_tokens ({self.block_tokens}).")
        blocks = self._chain(model, tokens)
        arrays, dtype = _flatten(layers)
        if blocks and arrays:
            end = len(blocks) * self.block_tokens
            if any(a.ndim < 2 or a.shape[-2] < end - start for a in arrays):
                raise CacheValueError(
                    f"The K/V arrays cover {min(a.shape[-2] if a.ndim >= 2 else 0 for a in arrays)} tokens from "
                    f"position {start}, fewer than the {end - start} the full blocks need (token axis second to last)."
                )
        keep = {b.key for b in blocks}
        todo = [b for b in blocks[start // self.block_tokens :] if not self._disk.contains(b)]
        pending: list[Pending] = []
        slices: dict[bytes, list[np.ndarray]] = {}
        for block in todo:
            lo = block.index * self.block_tokens - start
            part = slices[block.key] = [a[..., lo : lo + self.block_tokens, :] for a in arrays]
            parts, raw_len, stored_len = encode(block.tokens, part, dtype, self.compression)
            self._stats.add("raw_bytes", raw_len)
            self._stats.add("stored_bytes", stored_len)
            frame_len = sum(nbytes(p) for p in parts)
            pending.append(Pending(block, parts, file_size(block, frame_len)))
        written = self._disk.write(pending, keep) if pending else []
        self._stats.add("sets", len(written))
        by_key = {p.block.key: p for p in pending}
        for block in written:
            if self._memory is not None:
                self._remember(block, raw_frame(block.tokens, slices[block.key], dtype))
            if self._remote is not None:
                self._publish(block, _join(by_key[block.key].parts))
        stored = len(written) * self.block_tokens
        with self._lock:
            self.tokens_stored += stored
        return stored

    # --- transformers -------------------------------------------------------------------------------
    def generate(self, model: Any, input_ids: Any, **generate_kwargs: Any) -> Any:
        """``model.generate(input_ids, **generate_kwargs)``, prefilling only the tokens after the longest cached
        prefix, then storing the prompt's new full blocks. Greedy decoding returns exactly what plain
        ``generate`` returns. Batch size 1."""
        from . import _hf

        return _hf.generate(self, model, input_ids, **generate_kwargs)

    def prefill(self, model: Any, input_ids: Any) -> Any:
        """A transformers cache (``DynamicCache``) holding the K/V of all of ``input_ids``: the cached prefix
        restored, the rest computed (and its full blocks stored). Pass it as the model's cache argument."""
        from . import _hf

        return _hf.prefill(self, model, input_ids)

    def restore(self, model: Any, input_ids: Any, *, max_tokens: int | None = None) -> Any:
        """A transformers cache holding only the cached prefix of ``input_ids`` (``get_seq_length()`` tokens)."""
        from . import _hf

        return _hf.restore(self, model, input_ids, max_tokens=max_tokens)

    # --- upkeep -------------------------------------------------------------------------------------
    def cleanup(self) -> CleanupReport:
        """Sweep temp files of dead writers and evict down to the bound."""
        self._check_open()
        report = self._disk.cleanup()
        report.cache = self.name
        if self._memory is not None:
            self._memory.cleanup()
        return report

    def clear(self) -> None:
        """Remove every block from memory and disk (not from the network tier, which others share)."""
        self._check_open()
        if self._memory is not None:
            self._memory.clear()
        self._disk.clear()

    @property
    def stats(self) -> CacheStats:
        """Counters, and the disk's holdings (``bytes``/``entries``: re-read when over a second old, since
        other processes write the same directory)."""
        if not self._closed and self._disk.scan_age() > STATS_MAX_AGE:
            self._disk.scan()
        return self._stats

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._memory is not None:
            self._memory.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError("This KVCache is closed; create a new one to keep caching.")

    def __enter__(self) -> KVCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KVCache({str(self.path)!r}, size={self._stats.max_bytes}B, block_tokens={self.block_tokens})"


def _size(value: object, name: str) -> int:
    try:
        return size_to_bytes(value)
    except ValueError as exc:
        raise ConfigError(f"kv_cache.{name}: {exc}") from exc


def _join(parts: Sequence[Any]) -> bytes:
    return b"".join(np.ascontiguousarray(p).data.cast("B") if isinstance(p, np.ndarray) else p for p in parts)


def _compatible(first: Decoded, other: Decoded) -> bool:
    if first.dtype != other.dtype or len(first.shapes) != len(other.shapes):
        return False
    return all(a[:-2] + a[-1:] == b[:-2] + b[-1:] for a, b in zip(first.shapes, other.shapes))


def _flatten(layers: Sequence[tuple[Any, Any]]) -> tuple[list[np.ndarray], str]:
    arrays: list[np.ndarray] = []
    dtypes = set()
    for pair in layers:
        if len(pair) != 2:
            raise CacheValueError("Each layer must be a (keys, values) pair.")
        for x in pair:
            arr, name = as_numpy(x)
            arrays.append(arr)
            dtypes.add(name)
    if len(dtypes) > 1:
        raise CacheValueError(f"All K/V arrays must share one dtype, not {sorted(dtypes)}.")
    if not arrays:
        raise CacheValueError("No layers given; pass [(keys, values), ...] for every layer.")
    return arrays, dtypes.pop()
