"""A small manager under tmp_path for the monitoring tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamahome.cache import CacheConfig, CacheManager
from llamahome.monitoring import CacheMonitor


def small_config(root: Path, memory: Any = 1, disk: Any = 8, compression: bool = False) -> CacheConfig:
    return CacheConfig.from_dict(
        {
            "cache": {
                "memory": {"size": memory, "compression": compression},
                "disk": {"size": disk, "path": str(root / "cache")},
            },
            "model_cache": {"size": 8},
            "training_cache": {"size": 8},
            "system_cache": {"size": 1, "temp_dir": str(root / "temp")},
        }
    )


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[CacheManager]:
    """A manager with a CacheMonitor, as ``llamahome cache serve`` builds one."""
    with CacheManager(small_config(tmp_path), monitor=CacheMonitor()) as cache:
        yield cache
