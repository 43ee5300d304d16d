"""``memoize``: cache a function's results by its arguments, for sync and async functions, over any cache.

    @memoize(manager, ttl=3600)                 # a CacheManager: once-per-key under concurrency, all tiers
    async def embed(text: str, model: str = "minilm") -> np.ndarray: ...

    @memoize(MemoryCache(size=64))              # or any store
    def tokenize(text: str) -> list[int]: ...

Keys are ``<prefix>:<digest>``: the prefix defaults to ``memoize:<module>.<qualname>`` (pass ``prefix=`` to
share or version it: change it when the function's output changes), the digest is BLAKE2b-128 over a
canonical, type-tagged encoding of the bound arguments with defaults applied, so ``f(1)`` and ``f(x=1)``
share an entry, ``f(1)`` and ``f("1")`` do not, and keys are the same in every process (a disk or Redis tier
can serve another process's results). Arguments may be None, bool, int, float, str, bytes, tuples, lists,
dicts, sets, enums, dataclasses, numpy arrays and scalars, torch tensors, or any object with a
``__cache_key__()`` method returning one of those; anything else raises :class:`CacheKeyError` naming the
argument (pass ``key=`` to build keys yourself, or ``ignore=("self",)`` to leave an argument out).

Over a :class:`~llamahome.cache.manager.CacheManager` the function runs once per key however many callers ask
at once (it uses ``get_or_set``). Over a bare store, first calls racing on one key may each compute. Results
equal to None are cached like any other value.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import hashlib
import inspect
import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from llamahome.errors import CacheError, CacheKeyError

from .base import MISSING, Key, Store, validate_key

if TYPE_CHECKING:
    from .manager import CacheManager

__all__ = ["memoize", "make_key"]

F = TypeVar("F", bound=Callable[..., Any])


def memoize(
    cache: CacheManager | Store,
    *,
    ttl: float | None = None,
    key: Callable[..., Key] | None = None,
    prefix: str | None = None,
    ignore: Iterable[str] = (),
) -> Callable[[F], F]:
    """Decorator caching ``fn(*args, **kwargs)`` in ``cache`` for ``ttl`` seconds (None: until evicted).

    ``key(*args, **kwargs)`` replaces the built-in key (it must return str or bytes). The wrapper gains
    ``key_for(*args, **kwargs)``, ``invalidate(*args, **kwargs)`` (sync) and, for async functions,
    ``ainvalidate``.
    """
    from .manager import CacheManager

    if not isinstance(cache, (CacheManager, Store)):
        what = "a function" if callable(cache) else type(cache).__name__
        raise CacheError(
            f"memoize needs a cache to store results in, got {what}; write @memoize(cache, ttl=...) with a "
            "CacheManager or a store such as MemoryCache(size=64)."
        )
    ignored = frozenset(ignore)

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        unknown = ignored - set(signature.parameters)
        if unknown:
            raise CacheError(f"memoize(ignore=...) names {sorted(unknown)}, which {fn.__qualname__} does not take.")
        head = prefix if prefix is not None else f"memoize:{fn.__module__}.{fn.__qualname__}"

        def key_for(*args: Any, **kwargs: Any) -> Key:
            if key is not None:
                return validate_key(key(*args, **kwargs))
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            digest = hashlib.blake2b(digest_size=16)
            for name, value in bound.arguments.items():
                if name in ignored:
                    continue
                digest.update(_tag(b"n", name.encode()))
                try:
                    _encode(value, digest.update, 0)
                except CacheKeyError as exc:
                    raise CacheKeyError(f"memoize({fn.__qualname__}): argument {name!r}: {exc}") from None
            return f"{head}:{digest.hexdigest()}"

        is_async = inspect.iscoroutinefunction(fn)
        if isinstance(cache, CacheManager):
            manager = cache
            if is_async:

                @functools.wraps(fn)
                async def async_manager_wrapper(*args: Any, **kwargs: Any) -> Any:
                    k = key_for(*args, **kwargs)
                    return await manager.get_or_set(k, functools.partial(fn, *args, **kwargs), ttl)

                wrapper: Any = async_manager_wrapper
            else:

                @functools.wraps(fn)
                def sync_manager_wrapper(*args: Any, **kwargs: Any) -> Any:
                    k = key_for(*args, **kwargs)
                    return manager.get_or_set_sync(k, functools.partial(fn, *args, **kwargs), ttl)

                wrapper = sync_manager_wrapper
            delete: Callable[[Key], Any] = manager.delete_sync
            adelete: Callable[[Key], Any] = manager.delete
        else:
            store = cache
            offload = not _never_blocks(store)
            if is_async:

                async def call(f: Callable[..., Any], *a: Any) -> Any:
                    return await asyncio.to_thread(f, *a) if offload else f(*a)

                @functools.wraps(fn)
                async def async_store_wrapper(*args: Any, **kwargs: Any) -> Any:
                    k = key_for(*args, **kwargs)
                    value = await call(store.get, k, MISSING)
                    if value is MISSING:
                        value = await fn(*args, **kwargs)
                        await call(store.set, k, value, ttl)
                    return value

                wrapper = async_store_wrapper
            else:

                @functools.wraps(fn)
                def sync_store_wrapper(*args: Any, **kwargs: Any) -> Any:
                    k = key_for(*args, **kwargs)
                    value = store.get(k, MISSING)
                    if value is MISSING:
                        value = fn(*args, **kwargs)
                        store.set(k, value, ttl)
                    return value

                wrapper = sync_store_wrapper
            delete = store.delete

            async def adelete(k: Key) -> bool:
                return bool(await asyncio.to_thread(store.delete, k))

        def invalidate(*args: Any, **kwargs: Any) -> bool:
            """Drop the cached result for these arguments; True if there was one."""
            return bool(delete(key_for(*args, **kwargs)))

        async def ainvalidate(*args: Any, **kwargs: Any) -> bool:
            return bool(await adelete(key_for(*args, **kwargs)))

        wrapper.key_for = key_for
        wrapper.invalidate = invalidate
        if is_async:
            wrapper.ainvalidate = ainvalidate
        wrapper.cache = cache
        return wrapper  # type: ignore[no-any-return]

    return decorate


def make_key(*args: Any, **kwargs: Any) -> str:
    """The digest memoize would build for these arguments (positional and keyword kept apart)."""
    digest = hashlib.blake2b(digest_size=16)
    _encode(args, digest.update, 0)
    _encode(dict(kwargs), digest.update, 0)
    return digest.hexdigest()


def _never_blocks(store: Store) -> bool:
    from .memory import MemoryCache

    return isinstance(store, MemoryCache)


def _tag(tag: bytes, payload: bytes) -> bytes:
    # Length-prefixed, so ("ab", "c") and ("a", "bc") can never encode alike.
    return tag + struct.pack("<Q", len(payload)) + payload


_MAX_DEPTH = 64


def _encode(value: Any, out: Callable[[bytes], Any], depth: int) -> None:
    """Feed a canonical, type-tagged encoding of ``value`` to ``out``."""
    if depth > _MAX_DEPTH:
        raise CacheKeyError("arguments nest too deeply (or refer to themselves) to build a key.")
    if value is None:
        out(b"N")
    elif value is True or value is False:
        out(b"T" if value else b"F")
    elif isinstance(value, enum.Enum):
        out(_tag(b"e", f"{type(value).__module__}.{type(value).__qualname__}".encode()))
        _encode(value.value, out, depth + 1)
    elif isinstance(value, int):
        out(_tag(b"i", str(int(value)).encode()))
    elif isinstance(value, float):
        out(_tag(b"f", float(value).hex().encode()))
    elif isinstance(value, str):
        out(_tag(b"s", value.encode("utf-8", "surrogatepass")))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out(_tag(b"b", bytes(value)))
    elif isinstance(value, (tuple, list)):
        out(_tag(b"t" if isinstance(value, tuple) else b"l", str(len(value)).encode()))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, dict):
        out(_tag(b"d", str(len(value)).encode()))
        for k, v in sorted(((_digest(k, depth), _digest(v, depth)) for k, v in value.items())):
            out(k)
            out(v)
    elif isinstance(value, (set, frozenset)):
        out(_tag(b"S", str(len(value)).encode()))
        for item in sorted(_digest(v, depth) for v in value):
            out(item)
    elif hasattr(value, "__cache_key__"):
        out(_tag(b"k", type(value).__qualname__.encode()))
        _encode(value.__cache_key__(), out, depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        out(_tag(b"D", f"{type(value).__module__}.{type(value).__qualname__}".encode()))
        for f in dataclasses.fields(value):
            out(_tag(b"n", f.name.encode()))
            _encode(getattr(value, f.name), out, depth + 1)
    elif _is_numpy(value):
        import numpy as np

        arr = np.ascontiguousarray(value)
        if arr.dtype.hasobject:
            raise CacheKeyError("numpy arrays of Python objects have no stable bytes to build a key from.")
        out(_tag(b"a", f"{arr.dtype.str}{arr.shape}".encode()))
        out(_tag(b"A", hashlib.blake2b(arr.view(np.uint8).reshape(-1).data if arr.size else b"", digest_size=16).digest()))
    elif _is_tensor(value):
        import torch

        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        raw = tensor.view(torch.uint8).numpy() if tensor.numel() else b""
        out(_tag(b"x", f"{value.dtype}{tuple(value.shape)}".encode()))
        out(_tag(b"A", hashlib.blake2b(raw, digest_size=16).digest()))
    else:
        raise CacheKeyError(
            f"cannot build a stable key from a {type(value).__module__}.{type(value).__qualname__}; give the "
            "type a __cache_key__() method, pass memoize(key=...), or leave the argument out with ignore=(...)."
        )


def _digest(value: Any, depth: int) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    _encode(value, digest.update, depth + 1)
    return digest.digest()


def _is_numpy(value: Any) -> bool:
    module = type(value).__module__
    if not module.startswith("numpy"):
        return False
    import numpy as np

    return isinstance(value, (np.ndarray, np.generic))


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "dtype") and hasattr(value, "shape")
