"""ModelCache: model weights as safetensors under a byte budget, compressed where it pays, loaded zero-copy.

    python examples/model_cache.py

Makes a tiny Llama checkpoint on the spot (Llama tensor names and shapes, seeded random bf16 weights; nothing
is downloaded), caches it in a temporary directory, and shows compression, loads, pinning and eviction.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from llamahome.cache import ModelCache
from llamahome.errors import ModelNotFoundError


def tiny_llama_weights(layers: int = 2, hidden: int = 64, mlp: int = 128, vocab: int = 512) -> dict[str, torch.Tensor]:
    """A tiny Llama's weights, named and shaped as in a Hugging Face checkpoint, seeded random, in bf16."""
    generator = torch.Generator().manual_seed(0)
    kv = hidden // 2  # grouped-query attention: 2 key/value heads for 4 query heads

    def tensor(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * 0.02).to(torch.bfloat16)

    weights = {"model.embed_tokens.weight": tensor(vocab, hidden), "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
    for i in range(layers):
        prefix = f"model.layers.{i}"
        weights |= {
            f"{prefix}.self_attn.q_proj.weight": tensor(hidden, hidden),
            f"{prefix}.self_attn.k_proj.weight": tensor(kv, hidden),
            f"{prefix}.self_attn.v_proj.weight": tensor(kv, hidden),
            f"{prefix}.self_attn.o_proj.weight": tensor(hidden, hidden),
            f"{prefix}.mlp.gate_proj.weight": tensor(mlp, hidden),
            f"{prefix}.mlp.up_proj.weight": tensor(mlp, hidden),
            f"{prefix}.mlp.down_proj.weight": tensor(hidden, mlp),
            f"{prefix}.input_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
            f"{prefix}.post_attention_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
        }
    weights["lm_head.weight"] = tensor(vocab, hidden)
    return weights


def main(root: Path) -> None:
    weights = tiny_llama_weights()
    checkpoint = root / "tiny-llama.safetensors"
    save_file(weights, str(checkpoint))

    # A 4 MB budget: this model (0.3 MB) fits many times over; three 1.5 MB models later do not all fit.
    models = ModelCache(root / "models", size=4)

    # add_file validates the file, then stores it per tensor: compressed (split by byte, then zstd) where that
    # saves at least 10%, as is otherwise (hard-linked, no copy).
    info = models.add_file("tiny-llama", checkpoint)
    print(f"stored {info.raw_size:,} bytes as {info.stored_size:,} (ratio {info.ratio:.2f})")

    # put() takes a dict of numpy arrays or torch tensors directly.
    models.put("tiny-llama-fp32", {name: t.float() for name, t in list(weights.items())[:4]})

    # load() gives torch tensors (or numpy arrays); everything round-trips bit for bit.
    loaded = models.load("tiny-llama", framework="torch")
    assert all(torch.equal(loaded[name], tensor) for name, tensor in weights.items())
    print(f"loaded {len(loaded)} tensors, bit-identical; verify(): {models.verify('tiny-llama')}")

    # get_path() is a plain .safetensors file other tools can open.
    with models.pin("tiny-llama"):  # pinned: never evicted, by any process, inside this block
        print("path for other tools:", models.get_path("tiny-llama").name)
        # Adding more models than the budget holds evicts the least recently used unpinned ones.
        for i in range(3):
            models.put(f"other-{i}", {"w": np.random.default_rng(i).standard_normal((512, 768)).astype(np.float32)})
    print("models kept within 4 MB:", sorted(models.list()))
    try:
        models.load("tiny-llama-fp32")
    except ModelNotFoundError as exc:
        print("evicted:", exc)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
