"""ResourceManager: how much memory, disk and GPU memory there is, in megabytes, for sizing caches."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from .probes import DiskInfo, GpuMemory, MemoryInfo, disk_probe, gpu_probe, memory_probe

__all__ = ["ResourceManager", "MB"]

#: One megabyte as the whole library counts it (MiB), the unit of every ``size`` in the configuration.
MB = 1024 * 1024


class ResourceManager:
    """Reports system resources in megabytes (MiB), the unit of every cache ``size``.

    The seed's sizing line works as written::

        async with ResourceManager() as resources:
            cache_size = await resources.get_available_memory() * 0.3  # 30% of available memory, in MB
            cache_config = CacheConfig(memory_size=cache_size)

    Probes are constructor arguments so tests (and unusual platforms) can supply their own:
    ``memory_probe() -> MemoryInfo``, ``disk_probe(path) -> DiskInfo``, ``gpu_probe() -> list[GpuMemory] | None``.
    Memory is read on the loop (psutil reads ``/proc/meminfo`` in microseconds); disk and GPU probes, which can
    block (a network filesystem, a first CUDA initialisation), run in a worker thread.
    """

    def __init__(
        self,
        *,
        memory_probe: Callable[[], MemoryInfo] = memory_probe,
        disk_probe: Callable[[str], DiskInfo] = disk_probe,
        gpu_probe: Callable[[], list[GpuMemory] | None] = gpu_probe,
    ) -> None:
        self._memory_probe = memory_probe
        self._disk_probe = disk_probe
        self._gpu_probe = gpu_probe

    async def __aenter__(self) -> ResourceManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def __enter__(self) -> ResourceManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    # --- memory -------------------------------------------------------------------------------------
    async def get_available_memory(self) -> float:
        """Memory available to new allocations without swapping, in MB (MiB)."""
        return self.available_memory()

    async def get_total_memory(self) -> float:
        """Physical memory, in MB (MiB)."""
        return self.total_memory()

    def available_memory(self) -> float:
        """Synchronous :meth:`get_available_memory`."""
        return self._memory_probe().available / MB

    def total_memory(self) -> float:
        """Synchronous :meth:`get_total_memory`."""
        return self._memory_probe().total / MB

    # --- disk ---------------------------------------------------------------------------------------
    async def get_free_disk(self, path: str | os.PathLike[str] = ".") -> float:
        """Free space on the filesystem holding ``path`` (or its nearest existing parent), in MB (MiB)."""
        info = await self.get_disk_usage(path)
        return info.free / MB

    async def get_disk_usage(self, path: str | os.PathLike[str] = ".") -> DiskInfo:
        """Total, used and free bytes of the filesystem holding ``path``."""
        return await asyncio.to_thread(self._disk_probe, os.fspath(path))

    def free_disk(self, path: str | os.PathLike[str] = ".") -> float:
        """Synchronous :meth:`get_free_disk`."""
        return self._disk_probe(os.fspath(path)).free / MB

    # --- GPU ----------------------------------------------------------------------------------------
    async def get_gpu_devices(self) -> list[GpuMemory] | None:
        """Each GPU's total and free memory in bytes, or None when neither NVML nor torch can tell."""
        return await asyncio.to_thread(self._gpu_probe)

    async def get_gpu_memory(self, device: int | None = None) -> dict[str, float] | None:
        """GPU memory in MB: ``{"total", "free", "used"}`` for ``device``, or summed over all GPUs when None.

        None when no GPU is visible (no NVIDIA driver, CPU-only torch) or the device index does not exist.
        """
        gpus = await self.get_gpu_devices()
        if not gpus:
            return None
        if device is not None:
            gpus = [gpu for gpu in gpus if gpu.index == device]
            if not gpus:
                return None
        total = sum(gpu.total for gpu in gpus)
        free = sum(gpu.free for gpu in gpus)
        return {"total": total / MB, "free": free / MB, "used": (total - free) / MB}

    async def snapshot(self, path: str | os.PathLike[str] = ".") -> dict[str, Any]:
        """Everything at once, in MB: memory, the disk under ``path`` and GPU memory (None without a GPU)."""
        memory = self._memory_probe()
        disk = await self.get_disk_usage(path)
        return {
            "memory": {"total": memory.total / MB, "available": memory.available / MB},
            "disk": {"path": disk.path, "total": disk.total / MB, "used": disk.used / MB, "free": disk.free / MB},
            "gpu": await self.get_gpu_memory(),
        }

    def __repr__(self) -> str:
        return "<ResourceManager>"
