"""A small, deterministic LLM-serving workload for the demo: responses, embeddings and tokenizations.

Requests follow a Zipf law over the items (a few prompts are asked again and again, most rarely), which is
what inference caches see in practice. Each item has one kind, fixed by its id:

- ``response:<id>``  a chat completion as a JSON-like dict (model, usage, text of 200..2,000 characters)
- ``embedding:<id>`` a 384-dim float32 vector (the size all-MiniLM-L6-v2 produces)
- ``tokens:<id>``    an int32 array of 32..512 token ids

Values are generated from the id alone, so a hit can be checked against a fresh computation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["KINDS", "Request", "Workload", "values_equal"]

#: Share of items of each kind.
KINDS: tuple[tuple[str, float], ...] = (("response", 0.45), ("embedding", 0.35), ("tokens", 0.20))

_WORDS = [
    "the",
    "cache",
    "keeps",
    "hot",
    "prompts",
    "close",
    "so",
    "the",
    "model",
    "answers",
    "fast",
    "while",
    "cold",
    "entries",
    "move",
    "to",
    "disk",
    "and",
    "expire",
    "when",
    "nobody",
    "asks",
    "for",
    "them",
    "again",
    "tokens",
    "embeddings",
    "weights",
    "batches",
    "llama",
    "memory",
    "tier",
    "hit",
    "miss",
]


@dataclass(frozen=True)
class Request:
    key: str
    kind: str
    item: int


class Workload:
    """``requests`` requests over ``items`` items with Zipf exponent ``skew``, reproducible from ``seed``."""

    def __init__(self, requests: int = 6000, items: int = 3000, skew: float = 1.0, seed: int = 0) -> None:
        if requests < 1 or items < 1:
            raise ValueError("requests and items must be at least 1.")
        self.requests = requests
        self.items = items
        self.skew = skew
        self.seed = seed
        rng = np.random.default_rng(seed)
        weights = 1.0 / np.arange(1, items + 1, dtype=np.float64) ** skew
        # Ranks map to shuffled ids so the hottest items are spread over every kind.
        ids = rng.permutation(items)
        self._order = ids[rng.choice(items, size=requests, p=weights / weights.sum())]
        cuts = np.cumsum([share for _, share in KINDS])
        self._kind_of = np.searchsorted(cuts, rng.random(items) * cuts[-1], side="right")

    def kind(self, item: int) -> str:
        return KINDS[int(self._kind_of[item])][0]

    def __iter__(self) -> Iterator[Request]:
        for item in self._order.tolist():
            kind = self.kind(item)
            yield Request(f"{kind}:{item}", kind, item)

    def first_requests(self) -> Iterator[Request]:
        """One request per distinct item, in order of first appearance."""
        seen: set[int] = set()
        for request in self:
            if request.item not in seen:
                seen.add(request.item)
                yield request

    def __len__(self) -> int:
        return self.requests

    def distinct(self) -> int:
        """How many different items the requests touch (each costs one unavoidable first miss)."""
        return int(np.unique(self._order).size)

    def compute(self, request: Request) -> Any:
        """The value an uncached model call would produce for ``request`` (deterministic)."""
        rng = np.random.default_rng((self.seed, request.item))
        if request.kind == "embedding":
            vector = rng.standard_normal(384).astype(np.float32)
            return vector / np.linalg.norm(vector)
        if request.kind == "tokens":
            return rng.integers(0, 32_000, size=int(rng.integers(32, 513)), dtype=np.int32)
        words = [_WORDS[i] for i in rng.integers(0, len(_WORDS), size=int(rng.integers(40, 400)))]
        text = " ".join(words)
        return {
            "model": "llama-3.1-8b-instruct",
            "prompt": f"question #{request.item}",
            "text": text,
            "usage": {"prompt_tokens": int(rng.integers(8, 200)), "completion_tokens": len(words)},
            "finish_reason": "stop",
        }


def values_equal(a: Any, b: Any) -> bool:
    """Exact equality for the workload's values (arrays compared by dtype, shape and content)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b))
        )
    return bool(a == b)
