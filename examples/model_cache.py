"""ModelCache: model weights as safetensors under a byte budget, compressed where it pays, loaded zero-copy.

    python examples/model_cache.py

Builds a tiny Llama offline (transformers.LlamaConfig, seeded random weights; nothing is downloaded), caches
its weights in a temporary directory, and shows compression, zero-copy loads, pinning and eviction.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from llamahome.cache import ModelCache
from llamahome.errors import ModelNotFoundError


def tiny_llama_weights() -> dict[str, torch.Tensor]:
    """The state dict of a 2-layer Llama with random (seeded) weights, in bf16 as checkpoints usually are."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    # Tied or shared tensors would be saved once by save_pretrained; clone so every entry owns its memory.
    return {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}


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
