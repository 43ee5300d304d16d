"""LlamaHome Cache: memory, disk and Redis tiers for model weights, training batches, responses and scratch files."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
