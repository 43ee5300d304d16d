"""Turning what ``put`` is given (numpy arrays, torch tensors, metadata) into tensor items to write."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from llamahome.errors import ModelCacheError

from . import _io
from ._format import dtype_code_of_numpy
from ._io import TensorItem

__all__ = ["check_metadata", "tensor_items", "tensor_item"]


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ModelCacheError(
            "metadata must map strings to strings (safetensors' __metadata__); convert values with str()."
        )
    return dict(metadata)


def tensor_items(tensors: Mapping[str, Any]) -> list[TensorItem]:
    if not isinstance(tensors, Mapping) or not tensors:
        raise ModelCacheError("put() needs a non-empty mapping of tensor names to numpy arrays or torch tensors.")
    items = []
    for key, value in tensors.items():
        if not isinstance(key, str) or not key or key == "__metadata__":
            raise ModelCacheError(f"Tensor names must be non-empty strings other than '__metadata__', not {key!r}.")
        items.append(tensor_item(key, value))
    return items


def tensor_item(name: str, value: Any) -> TensorItem:
    code: str | None
    if isinstance(value, (np.ndarray, np.generic)):
        value = np.asarray(value)
        code = dtype_code_of_numpy(value.dtype, name)
        flat = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
        return TensorItem(name, code, tuple(int(d) for d in value.shape), 0, flat)
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        code = _io.torch_code(value.dtype)
        if code is None:
            raise ModelCacheError(f"Tensor {name!r} has dtype {value.dtype}, which safetensors cannot store.")
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        flat = t.view(_io.torch_dtype("U8")).numpy() if t.numel() else np.empty(0, dtype=np.uint8)
        return TensorItem(name, code, tuple(int(d) for d in value.shape), 0, flat)
    raise ModelCacheError(f"Tensor {name!r} is a {type(value).__name__}; put() takes numpy arrays or torch tensors.")
