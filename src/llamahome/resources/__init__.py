"""System resources (memory, disk, GPU memory) in megabytes, for sizing caches.

    from llamahome.resources import ResourceManager

    async with ResourceManager() as resources:
        cache_size = await resources.get_available_memory() * 0.3  # MB
"""

from __future__ import annotations

from .manager import MB, ResourceManager
from .probes import DiskInfo, GpuMemory, MemoryInfo, disk_probe, gpu_probe, memory_probe

__all__ = [
    "MB",
    "DiskInfo",
    "GpuMemory",
    "MemoryInfo",
    "ResourceManager",
    "disk_probe",
    "gpu_probe",
    "memory_probe",
]
