"""The cache package: configuration, stores (memory, disk, Redis), typed caches and the manager.

Names are imported lazily on first use, so ``import llamahome.cache`` stays cheap and optional backends
(torch, redis) are touched only when their classes are used.

    from llamahome.cache import CacheConfig, CacheManager

    async with CacheManager(CacheConfig(memory_size=512)) as cache:
        await cache.set("prompt:1", {"text": "hello"})
        await cache.get("prompt:1")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "CacheConfig": "config",
    "CacheStats": "stats",
    "CleanupReport": "stats",
    "Store": "base",
    "MISSING": "base",
    "encode": "codecs",
    "decode": "codecs",
    "MemoryCache": "memory",
    "DiskCache": "disk",
    "TieredCache": "tiered",
    "RedisCache": "redis",
    "AsyncRedisCache": "redis",
    "ModelCache": "model",
    "TrainingCache": "training",
    "SystemCache": "system",
    "KVCache": "kv",
    "AsyncScheduler": "scheduler",
    "CacheManager": "manager",
    "memoize": "memoizing",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only; `X as X` marks a re-export
    from .base import MISSING as MISSING, Store as Store
    from .codecs import decode as decode, encode as encode
    from .config import CacheConfig as CacheConfig
    from .disk import DiskCache as DiskCache
    from .kv import KVCache as KVCache
    from .manager import CacheManager as CacheManager
    from .memoizing import memoize as memoize
    from .memory import MemoryCache as MemoryCache
    from .model import ModelCache as ModelCache
    from .redis import AsyncRedisCache as AsyncRedisCache, RedisCache as RedisCache
    from .scheduler import AsyncScheduler as AsyncScheduler
    from .stats import CacheStats as CacheStats, CleanupReport as CleanupReport
    from .system import SystemCache as SystemCache
    from .tiered import TieredCache as TieredCache
    from .training import TrainingCache as TrainingCache


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llamahome.cache' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
