"""Values <-> bytes, with safe formats only (pickle strictly by opt-in) and compression where it pays.

An encoded value is a *frame*::

    0   magic  b"LHC1"
    4   kind   u8   (bytes, str, int, float, bool, none, json, tree, pickle)
    5   flags  u8   (bit 0: payload is zstd-compressed)
    6   reserved u16
    8   meta_len u32    JSON metadata length
    12  raw_len  u64    payload length before compression
    20  meta (JSON), zero padding to a multiple of 64
        payload

Arrays and tensors live in a ``tree`` frame: the JSON metadata describes the structure (dicts, lists, tuples,
JSON scalars) and each array's dtype, shape and offset; the payload holds the array bytes, each aligned to 64
bytes, so an uncompressed frame decodes to zero-copy views (of an mmap, say). Nothing in a frame is ever
executed: decoding a frame from an untrusted source yields data or a :class:`CacheValueError`.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy loads on first use (an array to encode or decode): importing the cache stays fast
    import numpy as np

from llamahome.errors import CacheValueError

from . import compression as zc

__all__ = [
    "EncodedValue", "encode", "encode_parts", "decode", "is_frame", "plain_bytes_header", "HEADER_SIZE", "ALIGN",
]

MAGIC = b"LHC1"
_HEADER = struct.Struct("<4sBBHIQ")
HEADER_SIZE = _HEADER.size  # 20
ALIGN = 64

K_BYTES, K_STR, K_INT, K_FLOAT, K_BOOL, K_NONE, K_JSON, K_TREE, K_PICKLE = range(9)
F_COMPRESSED = 1

_KIND_NAMES = ["bytes", "str", "int", "float", "bool", "none", "json", "tree", "pickle"]
_JSON_SCALARS = (str, int, float, bool, type(None))


def _pad(n: int) -> int:
    return -n % ALIGN


@dataclass
class EncodedValue:
    """An encoded frame kept as a list of buffers, so large arrays are written without a joining copy."""

    parts: list[Any]
    kind: str
    raw_size: int
    compressed: bool
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = sum(memoryview(p).nbytes for p in self.parts)

    def to_bytes(self) -> bytes:
        return b"".join(self.parts)


# ---------------------------------------------------------------------------------------------- encode


def _torch() -> Any:
    return sys.modules.get("torch")


def _numpy() -> Any:
    """numpy if it is imported (a value cannot be a numpy array or scalar otherwise), else None."""
    return sys.modules.get("numpy")


def _is_tensor(value: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(value, torch.Tensor)


def _is_json_like(value: Any, depth: int = 0) -> bool:
    if depth > 200:
        return False
    if isinstance(value, _JSON_SCALARS):
        return not isinstance(value, float) or math.isfinite(value)
    if type(value) is list:
        return all(_is_json_like(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _is_json_like(v, depth + 1) for k, v in value.items())
    return False


def _array_leaf(value: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """A C-contiguous numpy array for an array or tensor leaf, and its metadata."""
    import numpy as np

    if isinstance(value, np.ndarray):
        if value.dtype.hasobject or value.dtype.fields is not None:
            raise CacheValueError(
                f"numpy arrays of dtype {value.dtype} cannot be cached safely (object or structured dtype); "
                "convert to a plain numeric dtype, or opt in to pickle with allow_pickle=True."
            )
        # ascontiguousarray would turn a 0-d array into 1-d; copy only what is not C-contiguous.
        arr = value if value.flags.c_contiguous else value.copy(order="C")
        return arr, {"dtype": arr.dtype.str, "shape": list(arr.shape)}
    tensor = value.detach()
    if tensor.layout != _torch().strided:
        raise CacheValueError("Only dense (strided) torch tensors can be cached; call .to_dense() first.")
    dtype_name = str(tensor.dtype).removeprefix("torch.")
    device = str(tensor.device)
    tensor = tensor.cpu().contiguous()
    if tensor.dtype in (_torch().bfloat16,):
        arr = tensor.view(_torch().int16).numpy()
    elif dtype_name.startswith("float8"):
        arr = tensor.view(_torch().uint8).numpy()
    else:
        arr = tensor.numpy()
    return arr, {"dtype": arr.dtype.str, "shape": list(tensor.shape), "torch": dtype_name, "device": device}


class _TreeBuilder:
    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self.leaves: list[dict[str, Any]] = []

    def node(self, value: Any, depth: int = 0) -> Any:
        if depth > 200:
            raise CacheValueError("Values nested deeper than 200 levels cannot be cached.")
        np = _numpy()
        if (np is not None and isinstance(value, np.ndarray)) or _is_tensor(value):
            arr, meta = _array_leaf(value)
            self.arrays.append(arr)
            self.leaves.append(meta)
            return ["a", len(self.arrays) - 1]
        if np is not None and isinstance(value, np.generic):
            # A numpy scalar (np.float32(1.5)) comes back as the same scalar type, not a 0-d array, so a value
            # reads the same from the memory tier (kept as is) and from disk.
            arr, meta = _array_leaf(np.asarray(value))
            self.arrays.append(arr)
            self.leaves.append(meta)
            return ["s", len(self.arrays) - 1]
        if isinstance(value, dict):
            if not all(type(k) is str for k in value):
                raise CacheValueError("Dict keys must be str to be cached without pickle.")
            return ["d", [[k, self.node(v, depth + 1)] for k, v in value.items()]]
        if isinstance(value, list):
            return ["l", [self.node(v, depth + 1) for v in value]]
        if isinstance(value, tuple):
            return ["t", [self.node(v, depth + 1) for v in value]]
        if isinstance(value, bytes):
            return ["b", value.hex()]
        if isinstance(value, float) and not math.isfinite(value):
            return ["f", repr(value)]
        if isinstance(value, _JSON_SCALARS):
            return ["v", value]
        raise _unsupported(value)


def _unsupported(value: Any) -> CacheValueError:
    return CacheValueError(
        f"Values of type {type(value).__module__}.{type(value).__qualname__} cannot be cached with the safe "
        "codecs (bytes, str, numbers, JSON-like dicts/lists, numpy arrays, torch tensors). Convert the value, "
        "or opt in to pickle with allow_pickle=True if every reader of this cache is trusted."
    )


def _frame(kind: int, flags: int, meta: dict[str, Any] | None, payload_parts: Sequence[Any], raw_len: int) -> list[Any]:
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode() if meta is not None else b""
    head_len = HEADER_SIZE + len(meta_bytes)
    header = _HEADER.pack(MAGIC, kind, flags, 0, len(meta_bytes), raw_len) + meta_bytes + b"\0" * _pad(head_len)
    return [header, *payload_parts]


def _maybe_compress(
    kind: int, meta: dict[str, Any] | None, raw_parts: list[Any], raw_len: int, compress: bool, level: int,
    grouped_parts: list[Any] | None = None,
) -> EncodedValue:
    if compress and raw_len >= zc.MIN_COMPRESS_BYTES:
        source = grouped_parts if grouped_parts is not None else raw_parts
        joined = source[0] if len(source) == 1 else b"".join(memoryview(p).cast("B") for p in source)
        packed = zc.compress(joined, level)
        if zc.pays(raw_len, len(packed)):
            if meta is not None and grouped_parts is not None:
                meta = dict(meta, grouped=True)
            return EncodedValue(_frame(kind, F_COMPRESSED, meta, [packed], raw_len), _KIND_NAMES[kind], raw_len, True)
    return EncodedValue(_frame(kind, 0, meta, raw_parts, raw_len), _KIND_NAMES[kind], raw_len, False)


def encode_parts(value: Any, *, compress: bool = False, allow_pickle: bool = False, level: int = 3) -> EncodedValue:
    """Encode ``value`` as a frame (a list of buffers). See :func:`encode`."""
    if type(value) is bytes:  # the common case first (exact type: numpy's bytes_ scalar is a subclass)
        return _maybe_compress(K_BYTES, None, [value], len(value), compress, level)
    np = _numpy()
    if np is not None and isinstance(value, np.generic):  # before the float/int checks: np.float64 stays
        return _encode_tree(value, compress, level)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = memoryview(value).cast("B") if not isinstance(value, bytes) else value
        return _maybe_compress(K_BYTES, None, [raw], len(raw), compress, level)
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        return _maybe_compress(K_STR, None, [data], len(data), compress, level)
    if isinstance(value, bool):
        return EncodedValue(_frame(K_BOOL, 0, None, [b"\1" if value else b"\0"], 1), "bool", 1, False)
    if isinstance(value, int):
        data = str(value).encode()
        return EncodedValue(_frame(K_INT, 0, None, [data], len(data)), "int", len(data), False)
    if isinstance(value, float):
        return EncodedValue(_frame(K_FLOAT, 0, None, [struct.pack("<d", value)], 8), "float", 8, False)
    if value is None:
        return EncodedValue(_frame(K_NONE, 0, None, [], 0), "none", 0, False)
    if type(value) in (dict, list) and _is_json_like(value):
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        return _maybe_compress(K_JSON, None, [data], len(data), compress, level)
    try:
        return _encode_tree(value, compress, level)
    except CacheValueError:
        if not allow_pickle:
            raise
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _maybe_compress(K_PICKLE, None, [data], len(data), compress, level)


def _encode_tree(value: Any, compress: bool, level: int) -> EncodedValue:
    np = _numpy()
    if not isinstance(value, (dict, list, tuple)) and not (
        np is not None and isinstance(value, (np.ndarray, np.generic))
    ) and not _is_tensor(value):
        raise _unsupported(value)
    builder = _TreeBuilder()
    root = builder.node(value)
    np = _numpy()  # imported by now if the value held arrays
    parts: list[Any] = []
    offset = 0
    for arr, leaf in zip(builder.arrays, builder.leaves):
        leaf["offset"] = offset
        leaf["nbytes"] = arr.nbytes
        if arr.nbytes:
            parts.append(arr.reshape(-1).view(np.uint8).data)
        pad = _pad(arr.nbytes)
        if pad:
            parts.append(b"\0" * pad)
        offset += arr.nbytes + pad
    meta = {"root": root, "leaves": builder.leaves}
    grouped: list[Any] | None = None
    if compress and offset >= zc.MIN_COMPRESS_BYTES and any(zc.should_group(a.dtype) for a in builder.arrays):
        grouped = []
        for arr in builder.arrays:
            if zc.should_group(arr.dtype):
                grouped.append(zc.group_bytes(arr.reshape(-1), arr.dtype.itemsize))
            elif arr.nbytes:
                grouped.append(arr.reshape(-1).view(np.uint8).data)
            pad = _pad(arr.nbytes)
            if pad:
                grouped.append(b"\0" * pad)
    return _maybe_compress(K_TREE, meta, parts, offset, compress, level, grouped)


def encode(value: Any, *, compress: bool = False, allow_pickle: bool = False, level: int = 3) -> bytes:
    """Encode ``value`` as one bytes frame.

    ``compress`` tries zstd (with byte grouping for float arrays) above a small size and keeps the result
    only if it saves at least 10%. ``allow_pickle`` lets values the safe codecs cannot express fall back to
    pickle; such a frame can later be decoded only with ``allow_pickle=True`` too.
    """
    return encode_parts(value, compress=compress, allow_pickle=allow_pickle, level=level).to_bytes()


# ---------------------------------------------------------------------------------------------- decode


def is_frame(data: bytes | bytearray | memoryview) -> bool:
    return bytes(memoryview(data)[:4]) == MAGIC


#: Where the payload of a frame without metadata starts.
_PLAIN_START = HEADER_SIZE + _pad(HEADER_SIZE)


def plain_bytes_header(size: int) -> bytes:
    """The exact bytes before the payload in :func:`encode`'s frame of a ``size``-byte bytes value.

    Such a frame is this header followed by the value itself (the header's length does not depend on
    ``size``). A reader holding many frames can recognise plain bytes values by this prefix and slice the
    value out without a :func:`decode` call per frame; anything else it must :func:`decode`.
    """
    return _HEADER.pack(MAGIC, K_BYTES, 0, 0, 0, size) + b"\0" * _pad(HEADER_SIZE)


def _corrupt(reason: str) -> CacheValueError:
    return CacheValueError(f"The cached entry cannot be decoded ({reason}); it is treated as damaged.")


def decode(data: bytes | bytearray | memoryview, *, allow_pickle: bool = False) -> Any:
    """Decode a frame made by :func:`encode`.

    Uncompressed arrays are zero-copy views of ``data`` (writable only if ``data`` is); keep ``data`` alive,
    or pass an mmap for read-only mapped arrays. Raises :class:`CacheValueError` on a malformed frame, and on
    a pickle frame unless ``allow_pickle`` is true.
    """
    if type(data) is bytes and len(data) >= _PLAIN_START:
        # Fast path for the commonest entries (uncompressed bytes and text): no memoryview, one copy.
        magic, kind, flags, _, meta_len, raw_len = _HEADER.unpack_from(data, 0)
        if magic == MAGIC and not flags and not meta_len and len(data) - _PLAIN_START == raw_len:
            if kind == K_BYTES:
                return data[_PLAIN_START:]
            if kind == K_STR:
                try:
                    return data[_PLAIN_START:].decode("utf-8", "surrogatepass")
                except UnicodeDecodeError as exc:
                    raise _corrupt(str(exc)) from exc
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
    if view.nbytes < HEADER_SIZE:
        raise _corrupt("too short")
    magic, kind, flags, _, meta_len, raw_len = _HEADER.unpack_from(view, 0)
    if magic != MAGIC or kind >= len(_KIND_NAMES):
        raise _corrupt("not a LlamaHome frame")
    head_end = HEADER_SIZE + meta_len
    start = head_end + _pad(head_end)
    if start > view.nbytes:
        raise _corrupt("truncated header")
    meta: Any = None
    if meta_len:
        try:
            meta = json.loads(bytes(view[HEADER_SIZE:head_end]))
        except ValueError as exc:
            raise _corrupt("bad metadata") from exc
    payload: memoryview | bytes = view[start:]
    if flags & F_COMPRESSED:
        try:
            payload = zc.decompress(payload, raw_len)
        except Exception as exc:  # zstd raises its own error type
            raise _corrupt("bad compressed payload") from exc
    if len(payload) != raw_len:
        raise _corrupt("payload length mismatch")
    try:
        return _decode_payload(kind, meta, payload, allow_pickle)
    except CacheValueError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, struct.error, UnicodeDecodeError) as exc:
        raise _corrupt(str(exc)) from exc


def _decode_payload(kind: int, meta: Any, payload: memoryview | bytes, allow_pickle: bool) -> Any:
    if kind == K_BYTES:
        return bytes(payload)
    if kind == K_STR:
        return bytes(payload).decode("utf-8", "surrogatepass")
    if kind == K_INT:
        return int(bytes(payload))
    if kind == K_FLOAT:
        return struct.unpack("<d", payload)[0]
    if kind == K_BOOL:
        return bytes(payload) == b"\1"
    if kind == K_NONE:
        return None
    if kind == K_JSON:
        return json.loads(bytes(payload))
    if kind == K_TREE:
        return _decode_tree(meta, payload)
    if not allow_pickle:
        raise CacheValueError(
            "This entry was stored with pickle, which can execute code when loaded; pass allow_pickle=True "
            "to the cache only if every writer of this cache is trusted."
        )
    return pickle.loads(payload)


def _decode_tree(meta: dict[str, Any], payload: memoryview | bytes) -> Any:
    import numpy as np

    grouped = bool(meta.get("grouped"))
    leaves = meta["leaves"]
    arrays: list[Any] = []
    for leaf in leaves:
        dtype = np.dtype(leaf["dtype"])
        if dtype.hasobject or dtype.fields is not None:
            raise _corrupt("unsafe dtype")
        offset, nbytes, shape = int(leaf["offset"]), int(leaf["nbytes"]), tuple(int(s) for s in leaf["shape"])
        if offset < 0 or offset + nbytes > len(payload):
            raise _corrupt("array outside payload")
        if grouped and zc.should_group(dtype):
            raw = zc.ungroup_bytes(memoryview(payload)[offset : offset + nbytes], dtype.itemsize)
            arr = raw.view(dtype)
        else:
            arr = np.frombuffer(payload, dtype=dtype, count=nbytes // dtype.itemsize if dtype.itemsize else 0, offset=offset)
        if "torch" in leaf:
            arrays.append(_to_tensor(arr, leaf, shape))
        else:
            arrays.append(arr.reshape(shape))
    return _build(meta["root"], arrays, 0)


def _to_tensor(arr: np.ndarray, leaf: dict[str, Any], shape: tuple[int, ...]) -> Any:
    torch = _torch()
    if torch is None:
        try:
            import torch  # noqa: F811
        except ImportError as exc:
            raise CacheValueError("This entry holds a torch tensor; install torch to read it (pip install torch).") from exc
    if not arr.flags.writeable:
        arr = arr.copy()  # torch.from_numpy warns on read-only buffers
    tensor = torch.from_numpy(arr)
    dtype = getattr(torch, leaf["torch"], None)
    if not isinstance(dtype, torch.dtype):
        raise _corrupt("unknown torch dtype")
    if tensor.dtype != dtype:
        tensor = tensor.view(dtype)
    return tensor.reshape(shape)


def _build(node: Any, arrays: list[Any], depth: int) -> Any:
    if depth > 200:
        raise _corrupt("nesting too deep")
    tag, body = node
    if tag == "a":
        return arrays[body]
    if tag == "s":
        return arrays[body][()]
    if tag == "v":
        return body
    if tag == "d":
        return {k: _build(v, arrays, depth + 1) for k, v in body}
    if tag == "l":
        return [_build(v, arrays, depth + 1) for v in body]
    if tag == "t":
        return tuple(_build(v, arrays, depth + 1) for v in body)
    if tag == "b":
        return bytes.fromhex(body)
    if tag == "f":
        return float(body)
    raise _corrupt(f"unknown node {tag!r}")
