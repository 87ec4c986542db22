"""Leakage guard: suite items whose prompt near-duplicates a training prompt of an adapter's dataset.

Prompts (every message but the assistant's) are compared with the same one-permutation MinHash and
LSH as curation's near-duplicate removal; an item at or above `threshold` estimated Jaccard
similarity to any training prompt is reported, since its score says more about memory than skill.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from tuneforge.curation.dedup import dedup_text, leaked, minhash_batch

DEFAULT_THRESHOLD = 0.9


def prompt_text(messages: Sequence[dict[str, str]]) -> str:
    return dedup_text([m for m in messages if m["role"] != "assistant"])


def training_prompts(dataset_dir: Path) -> list[str]:
    prompts = []
    for shard in sorted(dataset_dir.glob("train-*.parquet")):
        for value in pq.read_table(shard, columns=["messages"]).column("messages").to_pylist():
            prompts.append(prompt_text(json.loads(value)))
    return prompts


def leaked_items(items: Sequence, dataset_dir: Path, threshold: float = DEFAULT_THRESHOLD) -> list[str]:
    """Ids of suite items whose prompt near-duplicates a training prompt in `dataset_dir`."""
    train = training_prompts(dataset_dir)
    if not train or not items:
        return []
    suite_signatures = minhash_batch([prompt_text(item.messages) for item in items])
    hits = leaked(suite_signatures, minhash_batch(train), threshold)
    return [items[int(i)].id for i in hits]
