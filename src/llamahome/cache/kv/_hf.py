"""The transformers adapter: restore a cached prefix into a ``DynamicCache``, prefill the rest, store blocks.

Imported only when a transformers method of :class:`KVCache` is called, so torch and transformers stay
optional. Works with the cache API of transformers 4.40 to 5.x: the model's cache argument is ``cache``
where ``forward`` takes it (5.x) and ``past_key_values`` before; a cache's layers are ``cache.layers[i]``
(``.keys``/``.values``) or, on older releases, ``cache.key_cache[i]``/``cache.value_cache[i]``.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

from llamahome.errors import CacheValueError, StorageError

from ._arrays import KVPrefix

if TYPE_CHECKING:
    from ._cache import KVCache

__all__ = ["generate", "prefill", "restore"]

_CACHE_ARGS = ("cache", "past_key_values", "past_key_value")
log = logging.getLogger("llamahome.cache.kv")


def cache_arg(model: Any) -> str:
    """The name under which ``model`` takes a K/V cache."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _ids(input_ids: Any) -> Any:
    import torch

    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.as_tensor(input_ids)
    if input_ids.ndim == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise CacheValueError(
            f"The KV cache's transformers adapter takes one prompt (input_ids of shape (1, n)), not shape "
            f"{tuple(input_ids.shape)}; call it once per prompt (prompts of a batch rarely share whole blocks)."
        )
    if input_ids.shape[1] == 0:
        raise CacheValueError("input_ids is empty; give at least one token.")
    return input_ids


def _check_model(model: Any) -> None:
    config = getattr(model, "config", None)
    if getattr(model, "training", False) and any(
        float(getattr(config, name, 0.0) or 0.0) > 0 for name in ("attention_dropout", "hidden_dropout", "dropout")
    ):
        raise CacheValueError(
            "The model is in training mode with dropout, so its keys/values are random; call model.eval() first."
        )


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    for name in _CACHE_ARGS:
        if kwargs.get(name) is not None:
            raise CacheValueError(f"Do not pass {name}= to KVCache.generate: the KV cache supplies the model's cache.")
    mask = kwargs.get("attention_mask")
    if mask is not None and not bool((mask != 0).all()):
        raise CacheValueError("attention_mask has padding; the KV cache takes one unpadded prompt (batch size 1).")
    if kwargs.get("cache_implementation") not in (None, "dynamic"):
        raise CacheValueError("KVCache.generate works with the dynamic cache; drop cache_implementation=.")


def new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56 takes no config
        cache = DynamicCache()
    if any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", ())):
        raise CacheValueError(
            f"{type(model).__name__} has sliding-window attention layers; the KV cache keeps whole prefixes "
            "and supports models whose layers all attend to every earlier token (Llama, Mistral without window)."
        )
    return cache


def layers_of(cache: Any) -> list[tuple[Any, Any]]:
    """``(keys, values)`` per layer of a transformers cache."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def _fill(model: Any, prefix: KVPrefix) -> Any:
    cache = new_cache(model)
    device = next(model.parameters()).device
    for i, (k, v) in enumerate(prefix.torch(device)):
        _put(cache, i, k, v)
    return cache


def _put(cache: Any, index: int, keys: Any, values: Any) -> None:
    """Hand a layer's restored K/V to ``cache``. A plain ``DynamicLayer`` (transformers 5.x) takes the tensors
    as they are; ``update`` would concatenate them to an empty tensor, one more copy of the whole prefix."""
    from transformers import cache_utils

    layer_type = getattr(cache_utils, "DynamicLayer", None)
    layers = getattr(cache, "layers", None)
    if layer_type is not None and layers is not None and index < len(layers) and type(layers[index]) is layer_type:
        layer = layers[index]
        if not layer.is_initialized:
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
            return
    cache.update(keys, values, index)


def restore(kv: KVCache, model: Any, input_ids: Any, *, max_tokens: int | None = None) -> Any:
    ids = _ids(input_ids)
    _check_model(model)
    return _fill(model, kv.lookup(model, ids[0], max_tokens=max_tokens))


def _store_from(kv: KVCache, model: Any, ids: Any, cache: Any, start: int) -> None:
    """Store the full blocks of ``ids`` after ``start`` from ``cache`` (which covers them)."""
    end = (ids.shape[1] // kv.block_tokens) * kv.block_tokens
    if end <= start or cache.get_seq_length() < end:
        return
    layers = [(k[..., start:end, :], v[..., start:end, :]) for k, v in layers_of(cache)]
    try:
        kv.store(model, ids[0, :end], layers, start=start)
    except StorageError as exc:
        # The answer is computed already; a full or read-only disk costs the reuse, not the answer.
        log.warning("Could not store KV blocks (%s); the prompt's prefix will be computed again next time.", exc)
        kv.stats.add("errors")


def generate(kv: KVCache, model: Any, input_ids: Any, **kwargs: Any) -> Any:
    _check_kwargs(kwargs)
    ids = _ids(input_ids)
    _check_model(model)
    # At least one prompt token must be computed: generate needs its logits for the first new token.
    cache = restore(kv, model, ids, max_tokens=ids.shape[1] - 1)
    start = cache.get_seq_length()
    out = model.generate(ids, **{cache_arg(model): cache}, **kwargs)
    # generate extended `cache` in place: it now holds the whole prompt (and the generated tokens after it).
    _store_from(kv, model, ids, cache, start)
    return out


def prefill(kv: KVCache, model: Any, input_ids: Any) -> Any:
    import torch

    ids = _ids(input_ids)
    cache = restore(kv, model, ids)
    start = cache.get_seq_length()
    if start < ids.shape[1]:
        with torch.no_grad():
            model(ids[:, start:], **{cache_arg(model): cache}, use_cache=True)
        _store_from(kv, model, ids, cache, start)
    return cache
