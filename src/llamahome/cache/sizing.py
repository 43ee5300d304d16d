"""How many bytes a cached key or value holds, for byte-bounded in-memory stores.

The figure is the payload a value pins in memory, not CPython's exact allocation:

- ``bytes``/``bytearray``: their length; ``memoryview``: ``nbytes``; ``str``: UTF-8 length.
- numpy arrays: ``nbytes`` of the array that owns the memory (a small view of a large array keeps the whole
  array alive, so it is charged for the whole array); torch tensors: their storage's ``nbytes``.
- ``dict``/``list``/``tuple``/``set``/``frozenset``: the container's own ``sys.getsizeof`` plus the sizes
  of their items (and dict keys), recursively; an object seen twice in one value is counted once.
- Other objects (numbers, ``None``, custom classes): ``sys.getsizeof``, which is shallow for custom classes.

Stores add their own fixed per-entry overhead on top (see ``MemoryCache.ENTRY_OVERHEAD``).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["sizeof", "key_size"]

_getsizeof = sys.getsizeof
_CONTAINERS = (dict, list, tuple, set, frozenset)


def key_size(key: str | bytes) -> int:
    """Bytes of a key: UTF-8 length for ``str`` (the length itself when ASCII), length for ``bytes``."""
    if type(key) is bytes or key.isascii():
        return len(key)
    return len(key.encode("utf-8", "surrogatepass"))  # type: ignore[union-attr]


def sizeof(value: Any) -> int:
    """Bytes ``value`` holds (see the module docstring for what is counted)."""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return len(value)
    if kind is str:
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, _CONTAINERS):
        return _container_size(value, set())
    return _leaf_size(value)


def _leaf_size(value: Any) -> int:
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, memoryview):
        return value.nbytes
    if isinstance(value, np.ndarray):
        return _array_size(value)
    if _is_tensor(value):
        return _tensor_size(value)
    return _getsizeof(value)


def _array_size(arr: np.ndarray) -> int:
    owner: Any = arr
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    if isinstance(owner, np.ndarray):
        return max(arr.nbytes, owner.nbytes)
    # The root is a foreign buffer (bytes, mmap, ...): charge what that buffer holds if it says so.
    try:
        return max(arr.nbytes, memoryview(owner).nbytes)
    except TypeError:
        return int(arr.nbytes)


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to size a value
    return torch is not None and isinstance(value, torch.Tensor)


def _tensor_size(tensor: Any) -> int:
    try:
        nbytes: int = max(int(tensor.untyped_storage().nbytes()), tensor.element_size() * tensor.nelement())
        return nbytes
    except (RuntimeError, NotImplementedError):  # meta/sparse tensors have no plain storage
        return int(tensor.element_size() * tensor.nelement())


def _container_size(value: Any, seen: set[int]) -> int:
    # An explicit stack instead of recursion: deeply nested JSON must not hit the recursion limit.
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _CONTAINERS):
            ident = id(item)
            if ident in seen:
                continue
            seen.add(ident)
            total += _getsizeof(item)
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            else:
                stack.extend(item)
        elif isinstance(item, (np.ndarray, memoryview)) or _is_tensor(item):
            # The same buffer listed twice in one value is held once.
            ident = id(item)
            if ident not in seen:
                seen.add(ident)
                total += _leaf_size(item)
        else:
            total += _leaf_size(item)
    return total
