"""K/V arrays in and out: numpy or torch, any float dtype, bfloat16 carried bit-exact as its 16 bits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from llamahome.errors import CacheValueError

from ._codec import DTYPES

__all__ = ["KVPrefix", "as_numpy", "is_torch"]


def is_torch(x: object) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def as_numpy(x: Any) -> tuple[np.ndarray, str]:
    """``x`` (numpy array or torch tensor, on any device) as a CPU numpy array and its dtype name."""
    if is_torch(x):
        import torch

        t = x.detach()
        name = str(t.dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise CacheValueError(f"K/V tensors must be float16, bfloat16, float32 or float64, not {t.dtype}.")
        if name == "bfloat16":
            return t.cpu().contiguous().view(torch.int16).numpy().view(np.uint16), name
        return t.cpu().numpy(), name
    arr = np.asarray(x)
    name = arr.dtype.name
    if name == "bfloat16":  # ml_dtypes' bfloat16
        return arr.view(np.uint16), name
    if name not in DTYPES:
        raise CacheValueError(f"K/V arrays must be float16, float32 or float64 (or bfloat16), not {arr.dtype}.")
    return arr, name


def _to_torch(arr: np.ndarray, dtype: str, device: Any) -> Any:
    import torch

    if not arr.flags.writeable:
        arr = arr.copy()  # torch.from_numpy warns on read-only arrays
    t = torch.from_numpy(arr)
    if dtype == "bfloat16":
        t = t.view(torch.int16).view(torch.bfloat16)
    return t.to(device) if device is not None else t


@dataclass
class KVPrefix:
    """The cached K/V of a prompt's leading ``tokens`` tokens (whole blocks), as numpy arrays.

    ``layers[i]`` is ``(keys, values)`` of layer ``i``, token axis second to last, as they were stored
    (for transformers ``(batch, kv_heads, tokens, head_dim)``). ``dtype`` is the numpy dtype name, or
    ``"bfloat16"``, whose arrays hold the raw bits as uint16 (use :meth:`torch` to get bfloat16 tensors).
    """

    tokens: int
    blocks: int
    dtype: str
    layers: list[tuple[np.ndarray, np.ndarray]]

    def __bool__(self) -> bool:
        return self.tokens > 0

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)

    def torch(self, device: Any = None) -> list[tuple[Any, Any]]:
        """The layers as torch tensors of the stored dtype (bfloat16 included), moved to ``device``."""
        return [(_to_torch(k, self.dtype, device), _to_torch(v, self.dtype, device)) for k, v in self.layers]


def empty_prefix() -> KVPrefix:
    return KVPrefix(0, 0, "", [])
