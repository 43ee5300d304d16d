"""Reading and writing one model file (``_io``): staged device reads, hashed copy loads, hostile sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from llamahome.cache.model import _io as model_io
from llamahome.errors import CorruptEntryError, ModelCacheError

torch = pytest.importorskip("torch")


def test_read_to_device_stages_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "blob"
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8)
    path.write_bytes(b"hdr" + data.tobytes())
    monkeypatch.setattr(model_io, "STAGE_BYTES", 4096)  # several blocks through both staging buffers
    out = model_io.read_to_device(path, 3, data.nbytes, "cpu")
    assert out.dtype == torch.uint8 and bytes(out.numpy()) == data.tobytes()


def test_copy_and_device_reads_hash_what_they_read(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"w": np.arange(300_000, dtype=np.float32)}, str(path))
    digest = model_io.hash_file(path)
    assert set(model_io.load_part(path, compressed=False, framework="numpy", device="cpu", mmap_=False, threads=1,
                                  checksum=digest)) == {"w"}  # fmt: skip
    wrong = "0" * 32
    for mmap_ in (False, True):
        with pytest.raises(CorruptEntryError, match="does not match the checksum"):
            model_io.load_part(path, compressed=False, framework="numpy", device="cpu", mmap_=mmap_, threads=1,
                               checksum=wrong)  # fmt: skip
    with pytest.raises(CorruptEntryError):
        model_io.plain_to_device(path, "cpu", wrong)
    assert torch.equal(model_io.plain_to_device(path, "cpu", digest)["w"], torch.arange(300_000, dtype=torch.float32))


def test_a_damaged_container_footer_is_a_corrupt_entry(tmp_path: Path) -> None:
    w = (np.random.default_rng(0).standard_normal(50_000) * 0.02).astype(np.float32)
    item = model_io.TensorItem("w", "F32", (w.size,), 0, w.view(np.uint8))
    part = model_io.write_part(tmp_path, "m.safetensors", b"\0" * 64, [item], compress=True, threads=1)
    assert part.compressed
    path = tmp_path / part.stored
    data = bytearray(path.read_bytes())
    footer_at = data.rindex(b'"tensors"')
    data[footer_at : footer_at + 9] = json.dumps("tensorz").encode()[:9]  # valid JSON, wrong shape
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptEntryError):
        model_io.load_part(path, compressed=True, framework="numpy", device="cpu", mmap_=False, threads=1)


def test_link_or_copy_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ModelCacheError, match="FIFO"):
        model_io.link_or_copy(fifo, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()
