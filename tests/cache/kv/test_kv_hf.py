"""KVCache with transformers: exact greedy generation, logits from a cached prefix, reuse, model changes."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llamahome.cache import KVCache  # noqa: E402
from llamahome.errors import CacheValueError  # noqa: E402

pytestmark = pytest.mark.torch

B = 16


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    return transformers.LlamaForCausalLM(config).to(dtype).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def ids(seed: int, n: int) -> torch.Tensor:
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def greedy(m, x, **kw):
    return m.generate(x, max_new_tokens=6, do_sample=False, **kw)


def test_generate_equals_plain_generate_cold_and_warm(tmp_path: Path, model) -> None:
    kv = KVCache(tmp_path / "kv", block_tokens=B)
    x = ids(0, 4 * B + 3)
    want = greedy(model, x)
    assert torch.equal(kv.generate(model, x, max_new_tokens=6, do_sample=False), want)  # cold: stores 4 blocks
    assert kv.match(model, x) == 4 * B
    assert torch.equal(kv.generate(model, x, max_new_tokens=6, do_sample=False), want)  # warm from memory
    assert kv.tokens_reused == 4 * B
    fresh = KVCache(tmp_path / "kv", block_tokens=B, memory_size=0)
    assert torch.equal(fresh.generate(model, x, max_new_tokens=6, do_sample=False), want)  # warm from disk
    assert fresh.tokens_reused == 4 * B
    longer = torch.cat([x, ids(1, 2 * B)], dim=1)  # a chat growing by one turn
    assert torch.equal(kv.generate(model, longer, max_new_tokens=6, do_sample=False), greedy(model, longer))


def test_a_prompt_of_whole_blocks_still_computes_its_last_token(tmp_path: Path, model) -> None:
    kv = KVCache(tmp_path / "kv", block_tokens=B)
    x = ids(2, 3 * B)
    want = greedy(model, x)
    kv.generate(model, x, max_new_tokens=6, do_sample=False)
    assert kv.match(model, x) == 3 * B
    assert torch.equal(kv.generate(model, x, max_new_tokens=6, do_sample=False), want)
    assert kv.tokens_reused == 2 * B  # the last block is recomputed: generate needs the last token's logits


def test_generate_output_dicts_match_too(tmp_path: Path, model) -> None:
    kv = KVCache(tmp_path / "kv", block_tokens=B)
    x = ids(3, 2 * B + 5)
    kw = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_scores=True)
    kv.generate(model, x, **kw)
    got, want = kv.generate(model, x, **kw), model.generate(x, **kw)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.scores, want.scores):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_logits_from_a_cached_prefix_equal_a_full_recompute(tmp_path: Path, model) -> None:
    kv = KVCache(tmp_path / "kv", block_tokens=B)
    x = ids(4, 4 * B + 7)
    kv.prefill(model, x)
    cache = kv.restore(model, x, max_tokens=x.shape[1] - 1)
    n = cache.get_seq_length()
    assert n == 4 * B
    with torch.no_grad():
        cached = model(x[:, n:], cache=cache, use_cache=True).logits[:, -1]
        full = model(x).logits[:, -1]
    # fp32 on CPU: equal to ~1e-6 (the suffix's matmuls run on fewer rows, so the last bits may differ).
    assert torch.allclose(cached, full, rtol=1e-5, atol=1e-5)


def test_prefill_covers_the_whole_prompt_and_continues_exactly(tmp_path: Path, model) -> None:
    kv = KVCache(tmp_path / "kv", block_tokens=B)
    x = ids(5, 3 * B + 2)
    first = kv.prefill(model, x)
    assert first.get_seq_length() == x.shape[1] and kv.match(model, x) == 3 * B
    again = kv.prefill(model, x)  # 3 blocks restored, 2 tokens computed
    assert again.get_seq_length() == x.shape[1]
    nxt = torch.tensor([[7]])
    with torch.no_grad():
        got = model(nxt, cache=again, use_cache=True).logits[:, -1]
        want = model(torch.cat([x, nxt], dim=1)).logits[:, -1]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_prompt_sharing_three_of_four_blocks_reuses_exactly_three(tmp_path: Path, model) -> None:
    kv = KVCache(tmp_path / "kv", block_tokens=B)
    x = ids(6, 4 * B + 1)
    kv.generate(model, x, max_new_tokens=2, do_sample=False)
    y = x.clone()
    y[0, 3 * B + 5] = (y[0, 3 * B + 5] + 1) % 256
    assert kv.match(model, y) == 3 * B
    before, sets = kv.tokens_reused, kv.stats.sets
    assert torch.equal(kv.generate(model, y, max_new_tokens=6, do_sample=False), greedy(model, y))
    assert kv.tokens_reused - before == 3 * B
    assert kv.stats.sets == sets + 1  # only y's own 4th block is new


def test_a_changed_weight_or_dtype_reuses_nothing(tmp_path: Path) -> None:
    kv = KVCache(tmp_path / "kv", block_tokens=B)
    model = tiny_llama()
    x = ids(7, 3 * B + 1)
    kv.generate(model, x, max_new_tokens=2, do_sample=False)
    assert kv.match(model, x) == 3 * B
    assert kv.match(tiny_llama(), x) == 3 * B  # the same weights rebuilt (another process): a hit
    changed = tiny_llama()
    with torch.no_grad():
        changed.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3  # one weight
    assert kv.match(changed, x) == 0
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight[0, 0] += 1e-3  # in place, on the same object
    assert kv.match(model, x) == 0
    half = tiny_llama().to(torch.bfloat16)
    assert kv.match(half, x) == 0
    eager = tiny_llama()
    eager.config._attn_implementation = "eager"
    assert kv.match(eager, x) == 0


def test_bfloat16_blocks_round_trip_bit_exact(tmp_path: Path) -> None:
    kv = KVCache(tmp_path / "kv", block_tokens=B, memory_size=0)
    model = tiny_llama(dtype=torch.bfloat16)
    x = ids(8, 2 * B + 1)
    full = kv.prefill(model, x)
    prefix = kv.lookup(model, x)
    assert prefix.dtype == "bfloat16" and prefix.tokens == 2 * B
    from llamahome.cache.kv._hf import layers_of

    for (k, v), (fk, fv) in zip(prefix.torch(), layers_of(full)):
        assert k.dtype == torch.bfloat16
        assert torch.equal(k, fk[..., : 2 * B, :]) and torch.equal(v, fv[..., : 2 * B, :])
    assert kv.stats.compression_ratio < 1.0  # byte-grouped zstd pays on bf16 K/V
    assert torch.equal(kv.generate(model, x, max_new_tokens=5, do_sample=False), greedy(model, x)[:, :-1])


def test_misuse_is_a_clear_error(tmp_path: Path, model) -> None:
    kv = KVCache(tmp_path / "kv", block_tokens=B)
    with pytest.raises(CacheValueError, match="one prompt"):
        kv.generate(model, ids(9, 2 * B).repeat(2, 1), max_new_tokens=2)
    with pytest.raises(CacheValueError, match="supplies the model's cache"):
        kv.generate(model, ids(9, 2 * B), cache=transformers.DynamicCache())
    with pytest.raises(CacheValueError, match="padding"):
        kv.generate(model, ids(9, 4), attention_mask=torch.tensor([[0, 1, 1, 1]]))
    with pytest.raises(CacheValueError, match="transformers model or a fingerprint"):
        kv.match(object(), ids(9, 4))
    training = tiny_llama()
    training.config.attention_dropout = 0.1
    training.train()
    with pytest.raises(CacheValueError, match="eval"):
        kv.generate(training, ids(9, 2 * B), max_new_tokens=2)


def test_a_disk_that_refuses_writes_costs_the_reuse_not_the_answer(tmp_path: Path, model, monkeypatch) -> None:
    from llamahome.cache import files
    from llamahome.errors import DiskFullError

    def full(*args, **kwargs):
        raise DiskFullError(28, "No space left on the device")

    kv = KVCache(tmp_path / "kv", block_tokens=B)
    monkeypatch.setattr(files, "write_value", full)  # the disk fills up
    x = ids(10, 2 * B + 1)
    want = model.generate(x, max_new_tokens=4, do_sample=False)
    assert torch.equal(kv.generate(model, x, max_new_tokens=4, do_sample=False), want)
    assert kv.stats.errors == 1 and kv.match(model, x) == 0
    with pytest.raises(DiskFullError):  # the core API says so directly
        kv.store("m", x[0], [(torch.zeros(1, 2, 2 * B + 1, 16),) * 2])
