"""ModelCache meets the ecosystem (issue 15): whole model directories that transformers loads, the Hugging Face
hub cache, and content shared between models stored once.

A tiny Llama is built offline (random weights from ``LlamaConfig``, a BPE tokenizer trained on the spot); nothing
is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from llamahome.cache.model import ModelCache, ModelNotFoundError
from llamahome.errors import ModelCacheError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

PROMPT = "the llama eats grass in the cache"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A save_pretrained directory of a tiny random Llama (sharded) and its tokenizer; and the logits of PROMPT."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["the llama eats grass", "a cache keeps models on disk", "hello world", "grass in the cache"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=96, special_tokens=["<unk>", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    root = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model.save_pretrained(root, max_shard_size="100KB")
    fast.save_pretrained(root)
    ids = fast(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    return root, (ids, logits)


def _from_pretrained(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def _same_logits(path: Path, expected: tuple[Any, Any]) -> None:
    model, tokenizer = _from_pretrained(path)
    ids, logits = expected
    assert torch.equal(tokenizer(PROMPT, return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)


def _disk_bytes(root: Path) -> int:
    """Bytes on disk under ``root`` as du counts them (apparent sizes, each inode once)."""
    seen: dict[tuple[int, int], int] = {}
    for path in root.rglob("*"):
        st = path.lstat()
        if path.is_file() and not path.is_symlink():
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


# --- whole model directories --------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [False, True])
def test_add_dir_keeps_what_from_pretrained_needs(tmp_path: Path, tiny_llama: Any, compression: bool) -> None:
    root, expected = tiny_llama
    (root.parent / "notes").mkdir(exist_ok=True)
    cache = ModelCache(tmp_path / "models", size=64, compression=compression)
    info = cache.add_dir("tiny", root)
    assert info.layout == "dir" and info.sharded and len(info.files) > 1
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(info.extra_files)
    path = cache.get_path("tiny")
    assert path.is_dir() and path == tmp_path / "models" / "tiny"
    _same_logits(path, expected)
    assert cache.verify("tiny")
    out = cache.load("tiny", framework="torch")  # the weights load as tensors too
    assert out["model.embed_tokens.weight"].shape == (96, 64)


def test_a_damaged_support_file_is_a_miss(tmp_path: Path, tiny_llama: Any) -> None:
    root, _ = tiny_llama
    cache = ModelCache(tmp_path / "models", size=64, compression=False)
    cache.add_dir("tiny", root)
    config = tmp_path / "models" / "tiny" / "config.json"
    config.write_text(config.read_text().replace("64", "65", 1))
    assert cache.verify("tiny") is False
    with pytest.raises(ModelNotFoundError, match="damaged"):
        cache.get_path("tiny")


def test_pickled_weights_are_refused_unless_allowed(tmp_path: Path) -> None:
    src = tmp_path / "pickled"
    src.mkdir()
    torch.save({"w": torch.ones(4)}, src / "pytorch_model.bin")
    (src / "config.json").write_text("{}")
    cache = ModelCache(tmp_path / "models", size=8)
    with pytest.raises(ModelCacheError, match="only pickled weights .* can run code .* safetensors"):
        cache.add_dir("p", src)
    info = cache.add_dir("p", src, allow_pickle=True)
    assert info.format == "pickle" and set(info.extra_files) == {"config.json", "pytorch_model.bin"}
    assert torch.equal(torch.load(cache.get_path("p") / "pytorch_model.bin", weights_only=True)["w"], torch.ones(4))
    with pytest.raises(ModelCacheError, match="never unpickles"):
        cache.load("p")
    # Beside safetensors weights, pickled copies are redundant: skipped, not refused.
    save_file({"w": np.ones(4, dtype=np.float32)}, str(src / "model.safetensors"))
    info = cache.add_dir("both", src)
    assert info.format == "safetensors" and "pytorch_model.bin" not in info.extra_files


def test_add_dir_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "models", size=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("hi")
    with pytest.raises(ModelCacheError, match="no model weights"):
        cache.add_dir("e", empty)
    with pytest.raises(ModelCacheError, match="not a directory"):
        cache.add_dir("e", empty / "README.md")


# --- the Hugging Face hub cache -----------------------------------------------------------------------------


def _hub_cache(tmp_path: Path, model_dir: Path, repo_id: str, commit: str = "a" * 40) -> Path:
    """A hub cache layout as huggingface_hub writes it: blobs by content hash, snapshot symlinks, refs/main."""
    hub = tmp_path / "hub"
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in model_dir.iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, repo / "blobs" / digest)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / digest)
    (repo / "refs" / "main").write_text(commit)
    return hub


def test_add_hf_imports_a_hub_snapshot_without_copying(
    tmp_path: Path, tiny_llama: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, expected = tiny_llama
    hub = _hub_cache(tmp_path, root, "tiny-org/tiny-llama")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    cache = ModelCache(tmp_path / "models", size=64)  # compression on, yet add_hf links by default
    name = cache.add_hf("tiny-org/tiny-llama")  # the default cache dir comes from HF_HUB_CACHE
    assert name == "tiny-org--tiny-llama"
    path = cache.get_path(name)
    _same_logits(path, expected)
    blobs = {p.stat().st_ino for p in (hub / "models--tiny-org--tiny-llama" / "blobs").iterdir()}
    shard = next(path.glob("model-*.safetensors"))
    assert shard.stat().st_ino in blobs  # hard-linked from the hub's blob: no bytes copied
    # By commit hash, under another name, from an explicit cache_dir.
    monkeypatch.delenv("HF_HUB_CACHE")
    assert cache.add_hf("tiny-org/tiny-llama", revision="a" * 40, cache_dir=hub) == f"tiny-org--tiny-llama@{'a' * 40}"


def test_add_hf_says_what_the_hub_cache_has(tmp_path: Path, tiny_llama: Any) -> None:
    root, _ = tiny_llama
    hub = _hub_cache(tmp_path, root, "tiny-org/tiny-llama")
    cache = ModelCache(tmp_path / "models", size=64)
    with pytest.raises(ModelCacheError, match=r"meta-llama/Llama-3.2-1B is not in .* \(it has: tiny-org/tiny-llama\)"):
        cache.add_hf("meta-llama/Llama-3.2-1B", cache_dir=hub)
    with pytest.raises(ModelCacheError, match=r"no snapshot for revision 'v2' .*refs: main; snapshots: a{40}"):
        cache.add_hf("tiny-org/tiny-llama", revision="v2", cache_dir=hub)
    with pytest.raises(ModelCacheError, match="not a Hugging Face repo id"):
        cache.add_hf("../etc", cache_dir=hub)


# --- content shared between models is stored once ---------------------------------------------------------


def _fine_tune(src: Path, dst: Path) -> tuple[str, int]:
    """A copy of ``src`` (a separate copy of every file) with one shard's first tensor changed."""
    shutil.copytree(src, dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    tensors = load_file(dst / shard)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + np.float32(0.5)
    save_file(tensors, str(dst / shard), metadata={"format": "pt"})
    return shard, (dst / shard).stat().st_size


def test_a_fine_tune_sharing_all_shards_but_one_grows_the_cache_by_about_that_shard(
    tmp_path: Path, tiny_llama: Any
) -> None:
    root, expected = tiny_llama
    tuned = tmp_path / "tuned"
    changed, changed_bytes = _fine_tune(root, tuned)
    cache = ModelCache(tmp_path / "models", size=64, compression=False)
    cache.add_dir("base", root)
    before = _disk_bytes(tmp_path / "models")
    info = cache.add_dir("tuned", tuned)
    grown = _disk_bytes(tmp_path / "models") - before
    model_bytes = cache.info("base").size
    # One shard plus the small files that differ (the index and the cache's own bookkeeping).
    assert changed_bytes <= grown <= changed_bytes + 32 * 1024 < model_bytes
    index_bytes = (tuned / "model.safetensors.index.json").stat().st_size  # each model keeps its own index
    assert info.shared_bytes == info.size - changed_bytes - index_bytes
    assert cache.info("base").shared_bytes == info.shared_bytes
    assert cache.stats.bytes == model_bytes + changed_bytes + index_bytes  # shared content counts once
    # Deleting one never removes what the other uses.
    cache.delete("base")
    assert cache.verify("tuned") and cache.info("tuned").shared_bytes == 0
    model, _ = _from_pretrained(cache.get_path("tuned"))
    assert not torch.equal(model(expected[0]).logits, expected[1])  # it is the fine-tune, whole


def test_eviction_counts_shared_content_once(tmp_path: Path, clock: Any) -> None:
    rng = np.random.default_rng(0)
    base = {"w": rng.integers(0, 256, 600 * 1024, dtype=np.uint8)}
    src_a, src_b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(base, str(src_a))
    save_file(base, str(src_b))  # the same content, another file
    cache = ModelCache(tmp_path / "models", size=1, compression=False, clock=clock)  # 1 MiB
    cache.add_file("a", src_a)
    clock.advance(1)
    cache.add_file("b", src_b)  # 2 x 600 KiB by name, 600 KiB on disk: both fit
    assert cache.list() == ["a", "b"] and cache.info("b").shared_bytes == cache.info("b").size
    clock.advance(1)
    cache.put("c", {"w": rng.integers(0, 256, 300 * 1024, dtype=np.uint8)})  # fits beside the shared copy
    assert cache.list() == ["a", "b", "c"]
    clock.advance(1)
    cache.put("d", {"w": rng.integers(0, 256, 300 * 1024, dtype=np.uint8)})
    # Evicting "a" alone frees nothing (b holds the same inode); the policy goes on until it fits.
    assert "d" in cache.list() and cache.stats.bytes <= 1024 * 1024
    assert all(cache.verify(n) for n in cache.list())


def test_identical_files_are_not_shared_when_the_holder_changed(tmp_path: Path) -> None:
    w = {"w": np.arange(4096, dtype=np.float32)}
    cache = ModelCache(tmp_path / "models", size=8, compression=False)
    cache.put("a", w)
    stored = tmp_path / "models" / "a" / "model.safetensors"
    os.utime(stored, ns=(0, 0))  # touched after it was hashed: not trusted as a source of shared content
    cache.put("b", w)
    assert cache.info("b").shared_bytes == 0
    assert stored.stat().st_ino != (tmp_path / "models" / "b" / "model.safetensors").stat().st_ino
