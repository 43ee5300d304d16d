"""Resource probes: available memory, free disk and GPU memory, each a plain function that tests can replace.

Every probe returns bytes; :class:`~llamahome.resources.ResourceManager` converts to megabytes (MiB).
GPU memory comes from NVML (``libnvidia-ml``, loaded with ctypes, so no extra package is needed) or, when NVML
is absent, from ``torch.cuda`` if torch is installed and sees a GPU; otherwise the probe returns None.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass

import psutil

__all__ = [
    "MemoryInfo",
    "DiskInfo",
    "GpuMemory",
    "memory_probe",
    "disk_probe",
    "gpu_probe",
    "nvml_gpu_memory",
    "torch_gpu_memory",
]


@dataclass(frozen=True)
class MemoryInfo:
    """System memory in bytes: ``available`` is what can be used without swapping."""

    total: int
    available: int


@dataclass(frozen=True)
class DiskInfo:
    """The filesystem holding a path, in bytes."""

    path: str
    total: int
    used: int
    free: int

    @property
    def used_fraction(self) -> float:
        return self.used / self.total if self.total else 0.0


@dataclass(frozen=True)
class GpuMemory:
    """One GPU's memory in bytes, as the driver reports it."""

    index: int
    name: str
    total: int
    free: int

    @property
    def used(self) -> int:
        return self.total - self.free


def memory_probe() -> MemoryInfo:
    """System memory from psutil (``/proc/meminfo`` on Linux: MemAvailable, not MemFree)."""
    vm = psutil.virtual_memory()
    return MemoryInfo(total=int(vm.total), available=int(vm.available))


def disk_probe(path: str | os.PathLike[str]) -> DiskInfo:
    """The filesystem under ``path``; a path that does not exist yet is measured at its nearest existing parent."""
    probe = os.path.abspath(os.fspath(path))
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    usage = psutil.disk_usage(probe)
    return DiskInfo(path=probe, total=int(usage.total), used=int(usage.used), free=int(usage.free))


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


_nvml_lock = threading.Lock()
_nvml: ctypes.CDLL | None = None
_nvml_failed = False


def _load_nvml() -> ctypes.CDLL | None:
    global _nvml, _nvml_failed
    with _nvml_lock:
        if _nvml is not None or _nvml_failed:
            return _nvml
        names = ["libnvidia-ml.so.1", "libnvidia-ml.so", ctypes.util.find_library("nvidia-ml") or ""]
        if sys.platform == "win32":
            names = ["nvml.dll"]
        for name in filter(None, names):
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            init = getattr(lib, "nvmlInit_v2", None) or getattr(lib, "nvmlInit", None)
            if init is not None and init() == 0:
                _nvml = lib
                return lib
        _nvml_failed = True
        return None


def nvml_gpu_memory() -> list[GpuMemory] | None:
    """Per-GPU memory from NVML, or None when the NVIDIA driver library is not there."""
    lib = _load_nvml()
    if lib is None:
        return None
    count = ctypes.c_uint(0)
    if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
        return None
    gpus: list[GpuMemory] = []
    for index in range(count.value):
        handle = ctypes.c_void_p()
        if lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
            continue
        memory = _NvmlMemory()
        if lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0:
            continue
        name = ctypes.create_string_buffer(96)
        lib.nvmlDeviceGetName(handle, name, ctypes.c_uint(96))
        gpus.append(GpuMemory(index, name.value.decode(errors="replace"), int(memory.total), int(memory.free)))
    return gpus or None


def torch_gpu_memory() -> list[GpuMemory] | None:
    """Per-GPU memory from ``torch.cuda.mem_get_info``, or None without torch or without a CUDA device."""
    if "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    gpus: list[GpuMemory] = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        gpus.append(GpuMemory(index, torch.cuda.get_device_name(index), int(total), int(free)))
    return gpus or None


def gpu_probe() -> list[GpuMemory] | None:
    """GPU memory from NVML, else torch, else None. NVML is tried first: it does not create a CUDA context."""
    try:
        gpus = nvml_gpu_memory()
    except (OSError, AttributeError):
        gpus = None
    if gpus is None:
        try:
            gpus = torch_gpu_memory()
        except Exception:  # a broken CUDA install must not break memory sizing
            gpus = None
    return gpus
