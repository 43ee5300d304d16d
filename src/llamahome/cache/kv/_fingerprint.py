"""Model fingerprints: a hit is only possible for the model (weights, config, dtype, attention) that made it.

The fingerprint of a transformers model hashes (xxh3-128):

- its class and its config (``config.to_dict()`` minus keys that cannot change K/V: the name or path it was
  loaded from, the transformers version, output switches), so rope scaling, head counts, norms etc. count;
- the attention implementation (``config._attn_implementation``: eager, sdpa and flash differ in the last
  bits, and later layers' K/V depend on earlier layers' attention outputs);
- every parameter and buffer: name, dtype, shape, device type and content. Tensors up to
  :data:`FULL_HASH_BYTES` are hashed whole; larger ones by an even sample of :data:`SAMPLE_ELEMENTS`
  elements plus their float64 sum and sum of squares, computed where the tensor lives (on a GPU too), so a
  changed checkpoint, fine-tuning step or quantization changes the fingerprint without reading every byte
  of a large model through the CPU.

A fingerprint is remembered per model object and recomputed when any tensor's storage, dtype, shape or
version counter changes (``torch`` bumps the counter on every in-place op, ``model.to()`` replaces storage).
Writes through ``tensor.data`` bypass the version counter: after such a write call ``KVCache.forget(model)``.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

import xxhash

__all__ = ["Fingerprinter", "FULL_HASH_BYTES", "SAMPLE_ELEMENTS"]

#: Tensors up to this size are hashed whole.
FULL_HASH_BYTES = 16 * 1024 * 1024
#: Larger tensors: this many evenly spaced elements, plus their sum and sum of squares.
SAMPLE_ELEMENTS = 1 << 16
_CHUNK = 1 << 22
# Config keys that say how a model was loaded or what it returns, never what it computes.
_IGNORED_CONFIG = {
    "_name_or_path",
    "transformers_version",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "_commit_hash",
}


def _tensors(model: Any) -> list[tuple[str, Any]]:
    named = list(model.named_parameters()) + [(f"buffer:{n}", b) for n, b in model.named_buffers()]
    return named


def _state(model: Any, named: list[tuple[str, Any]], config_text: str) -> tuple[Any, ...]:
    return (
        config_text,
        tuple((n, t.data_ptr(), str(t.dtype), tuple(t.shape), t._version) for n, t in named),
    )


def _config_text(model: Any) -> str:
    config = getattr(model, "config", None)
    data: dict[str, Any] = {}
    if config is not None:
        data = {k: v for k, v in config.to_dict().items() if k not in _IGNORED_CONFIG}
        data["__attn_implementation"] = getattr(config, "_attn_implementation", None)
    data["__class"] = f"{type(model).__module__}.{type(model).__qualname__}"
    return json.dumps(data, sort_keys=True, default=str)


def _tensor_bytes(t: Any) -> memoryview:
    import torch

    flat = t.detach().reshape(-1).contiguous().cpu()
    return memoryview(flat.view(torch.uint8).numpy())


def _hash_tensor(hasher: xxhash.xxh3_128, name: str, t: Any) -> None:
    import torch

    hasher.update(f"{name}|{t.dtype}|{tuple(t.shape)}|{t.device.type}".encode())
    if t.numel() == 0:
        return
    if t.numel() * t.element_size() <= FULL_HASH_BYTES:
        hasher.update(_tensor_bytes(t))
        return
    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // SAMPLE_ELEMENTS)
    hasher.update(_tensor_bytes(flat[::step]))
    total = torch.zeros((), dtype=torch.float64, device=flat.device)
    squares = torch.zeros((), dtype=torch.float64, device=flat.device)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK].to(torch.float64)
        total += chunk.sum()
        squares += (chunk * chunk).sum()
    hasher.update(torch.stack([total, squares]).cpu().numpy().tobytes())


class Fingerprinter:
    """Fingerprints of transformers (torch) models, remembered per model object while it is unchanged."""

    def __init__(self) -> None:
        self._memo: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], str]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, model: Any) -> str:
        named = _tensors(model)
        config_text = _config_text(model)
        state = _state(model, named, config_text)
        with self._lock:
            known = self._memo.get(model)
        if known is not None and known[0] == state:
            return known[1]
        hasher = xxhash.xxh3_128()
        hasher.update(config_text.encode())
        for name, tensor in named:
            _hash_tensor(hasher, name, tensor)
        fingerprint = f"hf1-{hasher.hexdigest()}"
        with self._lock:
            self._memo[model] = (state, fingerprint)
        return fingerprint

    def forget(self, model: Any) -> None:
        """Drop what is remembered about ``model`` (after writes the version counters cannot see)."""
        with self._lock:
            self._memo.pop(model, None)
