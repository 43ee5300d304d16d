"""GGUF files (llama.cpp, Ollama) in the model cache: validated, stored raw, described, truncated ones refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llamahome.cache.model import ModelCache, ModelNotFoundError
from llamahome.errors import ModelCacheError

gguf = pytest.importorskip("gguf")


def _write_gguf(path: Path, *, quantized: bool = False) -> dict[str, np.ndarray]:
    """A small real GGUF file written with the gguf package: a llama with two tensors (F16, or Q8_0 + F32)."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(64)
    tensors = {"token_embd.weight": rng.standard_normal((16, 64)).astype(np.float32)}
    if quantized:
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
        q = gguf.quants.quantize(tensors["token_embd.weight"], gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor("token_embd.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        tensors["token_embd.weight"] = tensors["token_embd.weight"].astype(np.float16)
        writer.add_tensor("token_embd.weight", tensors["token_embd.weight"])
    tensors["output_norm.weight"] = np.ones(64, dtype=np.float32)
    writer.add_tensor("output_norm.weight", tensors["output_norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


@pytest.mark.parametrize(("quantized", "quant"), [(False, "F16"), (True, "Q8_0")])
def test_a_gguf_file_round_trips_and_is_described(tmp_path: Path, quantized: bool, quant: str) -> None:
    src = tmp_path / "tiny.gguf"
    tensors = _write_gguf(src, quantized=quantized)
    cache = ModelCache(tmp_path / "models", size=8)
    info = cache.add_file("tiny", src)
    assert info.format == "gguf" and not info.compressed and info.tensors == 2
    assert info.metadata["gguf.architecture"] == "llama"
    assert info.metadata["gguf.quantization"] == quant
    assert info.metadata["gguf.name"] == "tiny-llama"
    path = cache.get_path("tiny")
    assert path.name == "tiny.gguf" and path.read_bytes() == src.read_bytes()
    reader = gguf.GGUFReader(str(path))  # what llama.cpp's own Python reader sees
    assert {t.name for t in reader.tensors} == set(tensors)
    norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
    assert np.array_equal(np.asarray(norm.data), tensors["output_norm.weight"])
    assert cache.verify("tiny")
    with pytest.raises(ModelCacheError, match="GGUF .* get_path"):
        cache.load("tiny")


def test_a_truncated_or_fake_gguf_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "full.gguf"
    _write_gguf(src)
    data = src.read_bytes()
    cache = ModelCache(tmp_path / "models", size=8)
    for cut in (3, 20, 200, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelCacheError, match="not a valid GGUF file"):
            cache.add_file("bad", bad)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not gguf at all" * 10)
    with pytest.raises(ModelCacheError, match="GGUF magic"):
        cache.add_file("bad", fake)
    newer = tmp_path / "newer.gguf"
    newer.write_bytes(b"GGUF" + (99).to_bytes(4, "little") + bytes(16))
    with pytest.raises(ModelCacheError, match="version 99"):
        cache.add_file("bad", newer)
    assert cache.list() == []


def test_a_damaged_cached_gguf_is_a_miss(tmp_path: Path) -> None:
    src = tmp_path / "tiny.gguf"
    _write_gguf(src)
    cache = ModelCache(tmp_path / "models", size=8)
    cache.add_file("tiny", src, link=False)
    stored = tmp_path / "models" / "tiny" / "tiny.gguf"
    with open(stored, "r+b") as f:
        f.seek(-10, 2)
        f.write(b"\xff" * 3)
    assert not cache.verify("tiny")
    with pytest.raises(ModelNotFoundError, match="damaged"):
        cache.get_path("tiny")
