"""Text similarity both services use: content hashes, MinHash signatures, LSH banding, and one
definition of a conversation's prompt with one leakage threshold.

Curation removes exact and near duplicates with it and keeps evaluation suites' prompts out of
training data; evaluation flags suite items that copy an adapter's training prompts. Both guards
compare `prompt_text` at `LEAKAGE_THRESHOLD`, so a dataset built against a suite never trips the
evaluation's warning for that suite.

MinHash is computed in NumPy for whole batches at once (character k-gram rolling hashes, then
one-permutation hashing): per-record Python hashing with one hash function per signature slot, as
general-purpose MinHash libraries do it, costs more than the rest of the curation pipeline together.
Candidate pairs come from sorting band keys (no per-record Python objects), so a million records
need a few hundred MB of arrays at most, which the pipeline keeps in memory-mapped files.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass

import numpy as np

#: Signature slots. At the default threshold 0.85, of 60,000 generated pairs of known 5-gram Jaccard
#: (benchmarks/dedup_calibration.py, RESULTS.md), 64 slots removed 0.33% of the pairs below 0.75 and
#: missed 0.9% of those at 0.90 or more; 128 removed 0.02%; 256 removed none (of 13,498) and missed 0.12%.
#: Signing costs 1.3-1.9x the 64-slot time, not 4x: hashing the k-grams dominates.
NUM_PERM = 256
SHINGLE_CHARS = 5
_WS = re.compile(r"\s+")


def dedup_text(messages: list[dict[str, str]]) -> str:
    """The text duplicates are judged on: roles and contents, case-folded, whitespace collapsed."""
    return "\n".join(f"{m['role']}: {_WS.sub(' ', m['content']).strip().casefold()}" for m in messages)


#: Estimated Jaccard similarity of prompts at or above which a suite item counts as seen in training.
LEAKAGE_THRESHOLD = 0.85


def prompt_text(messages: list[dict[str, str]]) -> str:
    """What leakage is judged on: the user's turns (a system prompt shared by many records is no leak)."""
    return dedup_text([m for m in messages if m["role"] == "user"])


def exact_key(text: str) -> bytes:
    """16-byte content hash of a dedup text."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


_EMPTY = np.uint32(0xFFFFFFFF)


def _mix32(values: np.ndarray) -> np.ndarray:
    """murmur3's 32-bit finalizer: spreads k-gram hashes uniformly over bins and values."""
    with np.errstate(over="ignore"):
        values = values ^ (values >> np.uint32(16))
        values = values * np.uint32(0x85EBCA6B)
        values = values ^ (values >> np.uint32(13))
        values = values * np.uint32(0xC2B2AE35)
        return values ^ (values >> np.uint32(16))


def minhash_batch(texts: list[str], k: int = SHINGLE_CHARS, num_perm: int = NUM_PERM) -> np.ndarray:
    """MinHash signatures, shape (len(texts), num_perm) uint32, estimating Jaccard of character k-grams.

    One-permutation hashing with rotation densification (Shrivastava & Li): every k-gram is hashed
    once (32 bits: the top bits pick one of `num_perm` bins, a power of two, the rest is the value)
    and each bin keeps its minimum; empty bins borrow from the next non-empty one. The fraction of
    equal bins estimates Jaccard similarity like classic MinHash at 1/num_perm of its cost. The k-gram
    hashes of a whole batch come from a few vectorized passes over the concatenated code points.
    """
    bin_bits = num_perm.bit_length() - 1
    if num_perm != 1 << bin_bits:
        raise ValueError(f"num_perm must be a power of two, not {num_perm}")
    value_mask = np.uint32((1 << (32 - bin_bits)) - 1)
    count = len(texts)
    signatures = np.full((count, num_perm), _EMPTY, dtype=np.uint32)
    if count == 0:
        return signatures
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=count)
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    windows = codes.size - k + 1
    if windows > 0:
        hashes = codes[:windows].copy()
        with np.errstate(over="ignore"):
            for j in range(1, k):
                hashes *= np.uint32(0x01000193)
                hashes += codes[j : j + windows]
        ends = np.cumsum(lengths)
        whole = np.ones(windows, dtype=bool)  # drop windows that run into the next text
        crossing = (ends[:, None] - np.arange(1, k)[None, :]).ravel()
        whole[crossing[(crossing >= 0) & (crossing < windows)]] = False
        owner = np.repeat(np.arange(count, dtype=np.int64), lengths)[:windows][whole]
        hashes = _mix32(hashes[whole])
        slots = owner * num_perm + (hashes >> np.uint32(32 - bin_bits)).astype(np.int64)
        np.minimum.at(signatures.reshape(-1), slots, hashes & value_mask)
    for row in np.flatnonzero(lengths < k):  # texts shorter than one k-gram: hash them whole
        value = _mix32(np.array([hash_text_stable(texts[row]) & 0xFFFFFFFF], dtype=np.uint32))[0]
        signatures[row, int(value >> np.uint32(32 - bin_bits))] = value & value_mask
    _densify(signatures, value_mask)
    return signatures


def hash_text_stable(text: str) -> int:
    """A 64-bit hash of a text that is the same in every process (unlike `hash()`)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _densify(signatures: np.ndarray, value_mask: np.uint32) -> None:
    """Fills empty bins from the next non-empty bin to the right (circularly), offset by the distance."""
    num_perm = signatures.shape[1]
    for row in np.flatnonzero((signatures == _EMPTY).any(axis=1)):  # only short texts have empty bins
        values = signatures[row]
        filled = np.flatnonzero(values != _EMPTY)
        if filled.size == 0:
            continue
        empty = np.flatnonzero(values == _EMPTY)
        position = np.searchsorted(filled, empty) % filled.size
        source = filled[position]
        distance = (source - empty) % num_perm
        with np.errstate(over="ignore"):
            borrowed = values[source] + distance.astype(np.uint32) * np.uint32(0x9E3779B1)
        values[empty] = borrowed & value_mask


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) minimising weighted false-positive and false-negative probability mass at `threshold`.

    Missing a duplicate costs far more than checking a candidate (every candidate is verified against
    its signature), so false negatives weigh 0.95 and false positives 0.05.
    """
    grid = np.linspace(0, 1, 201)
    best, best_cost = (1, num_perm), float("inf")
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        p = 1 - (1 - grid**rows) ** bands
        false_positive = np.trapezoid(np.where(grid < threshold, p, 0), grid)
        false_negative = np.trapezoid(np.where(grid >= threshold, 1 - p, 0), grid)
        cost = 0.05 * false_positive + 0.95 * false_negative
        if cost < best_cost:
            best, best_cost = (bands, rows), cost
    return best


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (record, band), shape (n, bands).

    All bands at once over the signature read as 64-bit words (two slots each) when `rows` is even:
    a quarter of the passes of a slot-by-slot fold, which matters at 256 slots.
    """
    count = signatures.shape[0]
    used = np.ascontiguousarray(signatures[:, : bands * rows])
    if rows % 2 == 0:
        words = used.view(np.uint64).reshape(count, bands, rows // 2)
    else:
        words = used.astype(np.uint64).reshape(count, bands, rows)
    keys = np.broadcast_to(np.arange(1, bands + 1, dtype=np.uint64), (count, bands)).copy()
    with np.errstate(over="ignore"):
        for column in range(words.shape[2]):
            keys *= np.uint64(0x100000001B3)
            keys ^= words[:, :, column]
    return keys


@dataclass
class Clusters:
    """Indices to drop and, per kept representative, the indices dropped as its duplicates."""

    removed: np.ndarray
    groups: dict[int, list[int]]


def _find(parent: dict[int, int], item: int) -> int:
    root = item
    while parent.get(root, root) != root:
        root = parent[root]
    while parent.get(item, item) != root:
        parent[item], item = root, parent[item]
    return root


def _groups_from_union(parent: dict[int, int], members: list[int]) -> Clusters:
    groups: dict[int, list[int]] = {}
    for member in members:
        root = _find(parent, member)
        groups.setdefault(root, []).append(member)
    clusters: dict[int, list[int]] = {}
    removed = []
    for items in groups.values():
        keep = min(items)  # the earliest record wins: deterministic and stable across re-runs
        dropped = sorted(i for i in items if i != keep)
        if dropped:
            clusters[keep] = dropped
            removed += dropped
    return Clusters(np.array(sorted(removed), dtype=np.int64), clusters)


def exact_duplicates(keys: np.ndarray) -> Clusters:
    """Records whose 16-byte keys repeat an earlier record's; `keys` has dtype `S16`."""
    if keys.size == 0:
        return Clusters(np.zeros(0, dtype=np.int64), {})
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    groups: dict[int, list[int]] = {}
    removed: list[int] = []
    bounds = np.append(starts, keys.size)
    for first, last in itertools.pairwise(bounds):
        if last - first > 1:
            members = sorted(order[first:last].tolist())
            groups[members[0]] = members[1:]
            removed += members[1:]
    return Clusters(np.array(sorted(removed), dtype=np.int64), groups)


def near_duplicates(signatures: np.ndarray, threshold: float, candidates: np.ndarray | None = None) -> Clusters:
    """Clusters of records whose estimated Jaccard similarity reaches `threshold` (≤ 1 disables: 1.0).

    `candidates` restricts the search to these row indices (e.g. those left after exact dedup).
    """
    rows_all = np.arange(signatures.shape[0]) if candidates is None else np.asarray(candidates)
    if threshold >= 1.0 or rows_all.size < 2:
        return Clusters(np.zeros(0, dtype=np.int64), {})
    bands, rows = lsh_params(threshold, signatures.shape[1])
    keys = band_keys(signatures[rows_all], bands, rows)
    # every band's candidate pairs (each group's earliest record with each other member), vectorized:
    # heavily duplicated data has a group per pair in every band, too many for a Python loop over groups
    pairs = []
    for band in range(bands):
        order = np.argsort(keys[:, band], kind="stable")
        column = keys[order, band]
        starts = np.flatnonzero(np.concatenate(([True], column[1:] != column[:-1])))
        sizes = np.diff(np.append(starts, column.size))
        if not (sizes > 1).any():
            continue
        members = rows_all[order]
        anchors = np.repeat(np.minimum.reduceat(members, starts), sizes)
        shared = np.repeat(sizes > 1, sizes) & (members != anchors)
        pairs.append(np.stack((anchors[shared], members[shared]), axis=1))
    if not pairs:
        return Clusters(np.zeros(0, dtype=np.int64), {})
    candidates_found = np.unique(np.concatenate(pairs).astype(np.int64), axis=0)
    similar = np.zeros(len(candidates_found), dtype=bool)
    for first in range(0, len(candidates_found), 16384):  # bounded memory: two (chunk, slots) gathers at a time
        chunk = candidates_found[first : first + 16384]
        similar[first : first + len(chunk)] = (signatures[chunk[:, 0]] == signatures[chunk[:, 1]]).mean(
            axis=1
        ) >= threshold
    parent: dict[int, int] = {}
    touched: set[int] = set()
    for anchor, other in candidates_found[similar].tolist():
        root_a, root_b = _find(parent, anchor), _find(parent, other)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
        touched.update((anchor, other))
    return _groups_from_union(parent, sorted(touched))


def leaked(train_signatures: np.ndarray, eval_signatures: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of training prompts that near-duplicate any evaluation prompt."""
    if eval_signatures.size == 0 or train_signatures.size == 0:
        return np.zeros(0, dtype=np.int64)
    bands, rows = lsh_params(threshold, train_signatures.shape[1])
    train_keys = band_keys(train_signatures, bands, rows)
    eval_keys = band_keys(eval_signatures, bands, rows)
    hits: set[int] = set()
    for band in range(bands):
        for index in np.flatnonzero(np.isin(train_keys[:, band], eval_keys[:, band])).tolist():
            if index in hits:
                continue
            if ((eval_signatures == train_signatures[index]).mean(axis=1) >= threshold).any():
                hits.add(index)
    return np.array(sorted(hits), dtype=np.int64)
