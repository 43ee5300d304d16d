"""TrainingCache: tokenize and collate once, then serve later epochs from disk, read ahead.

    python examples/training_cache.py

A slow "data pipeline" (a tokenizer built on the spot, then a sleep standing in for collation) feeds three
epochs. The first epoch pays for the pipeline and stores each batch; the next two read them back, shuffled,
in a background thread. Everything lives in a temporary directory.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator

import numpy as np
from llamahome.cache import TrainingCache

TEXTS = [f"the cache keeps batch {i} of the corpus close to the model" for i in range(64)]


class Tokenizer:
    """A word-level tokenizer built from the corpus on the spot (a real pipeline would load its own)."""

    def __init__(self, texts: list[str]) -> None:
        words = sorted({word for text in texts for word in text.split()})
        self.ids = {word: i + 1 for i, word in enumerate(words)}  # 0 is padding

    def encode(self, text: str) -> list[int]:
        return [self.ids[word] for word in text.split()]


class Pipeline:
    """Re-iterable, like a DataLoader: each pass tokenizes and collates the texts into batches of 8."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(TEXTS), 8):
            rows = [self.tokenizer.encode(text) for text in TEXTS[start : start + 8]]
            time.sleep(0.02)  # the expensive part of a real pipeline (augmentation, packing, ...)
            width = max(len(row) for row in rows)
            ids = np.array([row + [0] * (width - len(row)) for row in rows], dtype=np.int32)
            yield {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int32)}


def main(directory: str) -> None:
    cache = TrainingCache(directory, size=64, prefetch=4, batch_buffer=32)
    # dataset_id and fingerprint name what the batches are: change either and the cache starts over.
    batches = cache.wrap(Pipeline(Tokenizer(TEXTS)), "demo/train", fingerprint={"tokenizer": "words-v1"}, shuffle_seed=0)
    for epoch in range(3):
        batches.set_epoch(epoch)  # later epochs are shuffled by (shuffle_seed, epoch)
        started, tokens = time.perf_counter(), 0
        for batch in batches:
            tokens += int(batch["attention_mask"].sum())  # a training step would go here
        source = "pipeline, stored" if epoch == 0 else "cache, read ahead"
        print(f"epoch {epoch}: {tokens} tokens in {time.perf_counter() - started:.3f} s ({source})")
    print(f"cache: {cache.stats.entries} entries, {cache.stats.bytes:,} bytes, {cache.stats.hits} hits")
    cache.close()  # stops the read-ahead and storing threads


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(tmp)
