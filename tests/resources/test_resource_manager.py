"""ResourceManager: megabytes from injectable probes, and sane numbers from the real ones."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil
import pytest

from llamahome.resources import MB, DiskInfo, GpuMemory, MemoryInfo, ResourceManager, disk_probe, memory_probe


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def fixed_memory() -> MemoryInfo:
    return MemoryInfo(total=16 * 1024 * MB, available=6 * 1024 * MB + MB // 2)


def fixed_disk(path: str) -> DiskInfo:
    return DiskInfo(path=path, total=100 * 1024 * MB, used=60 * 1024 * MB, free=40 * 1024 * MB)


def two_gpus() -> list[GpuMemory]:
    return [GpuMemory(0, "A", 80 * 1024 * MB, 70 * 1024 * MB), GpuMemory(1, "B", 80 * 1024 * MB, 10 * 1024 * MB)]


def test_injected_probes_give_exact_megabytes() -> None:
    async def main() -> None:
        async with ResourceManager(memory_probe=fixed_memory, disk_probe=fixed_disk, gpu_probe=two_gpus) as r:
            assert await r.get_available_memory() == 6 * 1024 + 0.5
            assert await r.get_total_memory() == 16 * 1024
            assert await r.get_free_disk("/anywhere") == 40 * 1024
            assert (await r.get_disk_usage("/x")).used_fraction == pytest.approx(0.6)
            assert await r.get_gpu_memory() == {"total": 160 * 1024, "free": 80 * 1024, "used": 80 * 1024}
            assert await r.get_gpu_memory(1) == {"total": 80 * 1024, "free": 10 * 1024, "used": 70 * 1024}
            assert await r.get_gpu_memory(7) is None
            snap = await r.snapshot("/data")
            assert snap["memory"] == {"total": 16 * 1024, "available": 6 * 1024 + 0.5}
            assert snap["disk"]["free"] == 40 * 1024 and snap["disk"]["path"] == "/data"

    run(main())


def test_no_gpu_is_none() -> None:
    async def main() -> None:
        async with ResourceManager(gpu_probe=lambda: None) as r:
            assert await r.get_gpu_memory() is None
            assert await r.get_gpu_devices() is None

    run(main())


def test_sync_twins_match() -> None:
    with ResourceManager(memory_probe=fixed_memory, disk_probe=fixed_disk) as r:
        assert r.available_memory() == 6 * 1024 + 0.5
        assert r.total_memory() == 16 * 1024
        assert r.free_disk(".") == 40 * 1024


def test_real_probes_agree_with_psutil(tmp_path: Path) -> None:
    vm = psutil.virtual_memory()
    mem = memory_probe()
    assert mem.total == vm.total
    assert 0 < mem.available <= mem.total
    # A path that does not exist yet is measured at its nearest existing parent (the cache dir's filesystem).
    info = disk_probe(tmp_path / "not" / "yet")
    assert info.path == str(tmp_path)
    assert info.total == psutil.disk_usage(str(tmp_path)).total

    async def main() -> float:
        async with ResourceManager() as r:
            return await r.get_available_memory()

    available = run(main())
    assert available == pytest.approx(psutil.virtual_memory().available / MB, rel=0.05)
    assert 0 < available <= vm.total / MB


def test_real_gpu_probe_is_none_or_sane() -> None:
    # On this CPU box there is neither an NVIDIA driver nor CUDA torch, so the probe says None; on a GPU
    # machine it reports every device with 0 < free <= total.
    from llamahome.resources.probes import gpu_probe as real_gpu_probe

    gpus = real_gpu_probe()
    summed = run(ResourceManager().get_gpu_memory())
    if gpus is None:
        assert summed is None
        return
    assert all(0 < gpu.free <= gpu.total for gpu in gpus)
    assert summed is not None and summed["total"] == sum(g.total for g in gpus) / MB
