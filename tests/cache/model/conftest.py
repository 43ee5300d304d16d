"""Shared fixtures of the model cache tests."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator

import pytest

_M_MMAP_THRESHOLD = -3  # glibc malloc.h
_DEFAULT_MMAP_THRESHOLD = 128 * 1024


@pytest.fixture(autouse=True, scope="module")
def _give_freed_memory_back() -> Iterator[None]:
    """After each module, hand freed heap back to the OS and glibc's mmap threshold back to its default.

    These tests allocate and free arrays of tens of megabytes. Freeing a large mmapped block makes glibc raise
    its mmap threshold (up to 32 MiB), so later allocations land in the heap and freed heap stays in the
    process: a later test that measures a native table's cost from RSS growth (tests/cache/memory/test_cache.py)
    then reads 0. This puts the allocator back as a fresh process has it.
    """
    yield
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_MMAP_THRESHOLD)
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to put back this way
        pass
