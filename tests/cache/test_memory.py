"""MemoryCache: the store contract, plus what only the memory tier does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamahome.cache.memory import MemoryCache

from .store_contract import StoreContract


class TestMemoryContract(StoreContract):
    def make_store(self, tmp_path: Path, clock: Any, size_mb: float = 1.0, policy: str = "lru") -> MemoryCache:
        return MemoryCache(size=size_mb, policy=policy, clock=clock)


class TestCompressedMemoryContract(StoreContract):
    def make_store(self, tmp_path: Path, clock: Any, size_mb: float = 1.0, policy: str = "lru") -> MemoryCache:
        return MemoryCache(size=size_mb, policy=policy, compression=True, clock=clock)
