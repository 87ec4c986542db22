"""Leakage guard: suite items whose prompt near-duplicates a training prompt of an adapter's dataset.

Prompts are compared as curation's decontamination compares them (`similarity.prompt_text`, the
same MinHash and LSH, `similarity.LEAKAGE_THRESHOLD`): an item at or above the threshold's
estimated Jaccard similarity to any training prompt is reported, since its score says more about
memory than skill.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tuneforge.similarity import LEAKAGE_THRESHOLD, leaked, minhash_batch, prompt_text


def leaked_items(
    items: Sequence, training: Iterable[list[dict[str, str]]], threshold: float = LEAKAGE_THRESHOLD
) -> list[str]:
    """Ids of suite items whose prompt near-duplicates the prompt of a `training` conversation."""
    train = [prompt_text(messages) for messages in training]
    if not train or not items:
        return []
    suite_signatures = minhash_batch([prompt_text(item.messages) for item in items])
    hits = leaked(suite_signatures, minhash_batch(train), threshold)
    return [items[int(i)].id for i in hits]
