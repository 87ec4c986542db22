"""Near-duplicate detection calibrated: false-positive and false-negative rates on pairs of known Jaccard.

Generates pairs of texts (English words and Chinese characters, 40-160 words, as instruction data
is), edits the second of each pair by replacing random words, and computes each pair's true Jaccard
similarity of character 5-grams exactly (Python sets over the same dedup text the pipeline judges).
Each pair then goes through the pipeline's own decision — MinHash signatures (`minhash_batch`), LSH
banding (`lsh_params`, `band_keys`: the pair must share a band) and the signature estimate against
the threshold — for several signature sizes, and the benchmark prints, per size:

- false-positive rate: pairs flagged whose true Jaccard is below threshold - 0.10 (clearly different
  records, e.g. the 0.66 pair removed at 0.85 with 64 slots);
- false-negative rate: pairs missed whose true Jaccard is at least threshold + 0.05;
- flagged share per Jaccard bucket around the threshold (estimates there are a coin toss at any size);
- seconds to sign all 2 x pairs texts and to cluster their signatures (every pair a candidate: the
  heavy-duplicate case; the cost of a bigger signature).

    .venv/bin/python benchmarks/dedup_calibration.py [--pairs 60000] [--threshold 0.85]
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time

import numpy as np

from tuneforge.similarity import (
    NUM_PERM,
    SHINGLE_CHARS,
    band_keys,
    dedup_text,
    lsh_params,
    minhash_batch,
    near_duplicates,
)

WORDS = [
    "".join(random.Random(i).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(random.Random(-i).randint(2, 9)))
    for i in range(5000)
]
HANZI = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]


def _words(rng: random.Random, count: int, chinese: bool) -> list[str]:
    if chinese:
        return ["".join(rng.choices(HANZI, k=rng.randint(1, 3))) for _ in range(count)]
    return rng.choices(WORDS, k=count)


def _join(words: list[str], chinese: bool) -> str:
    return dedup_text([{"role": "user", "content": ("" if chinese else " ").join(words)}])


def _shingles(text: str) -> set[str]:
    return {text[i : i + SHINGLE_CHARS] for i in range(len(text) - SHINGLE_CHARS + 1)}


def generate_pairs(count: int, seed: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    """`count` (text, edited text) pairs whose true Jaccard spreads over [0.4, 1]; returns them and it."""
    rng = random.Random(seed)
    left, right, jaccard = [], [], np.zeros(count)
    for index in range(count):
        chinese = rng.random() < 0.3
        words = _words(rng, rng.randint(40, 160), chinese)
        edited = list(words)
        # the share of words replaced sets the similarity: up to ~12% reaches Jaccard ~0.4 on 5-grams
        for position in rng.sample(range(len(words)), k=int(len(words) * rng.uniform(0, 0.12))):
            edited[position] = _words(rng, 1, chinese)[0]
        a, b = _join(words, chinese), _join(edited, chinese)
        sa, sb = _shingles(a), _shingles(b)
        left.append(a)
        right.append(b)
        jaccard[index] = len(sa & sb) / len(sa | sb)
    return left, right, jaccard


def flagged(left: np.ndarray, right: np.ndarray, threshold: float) -> np.ndarray:
    """The pipeline's decision per pair: a shared LSH band, then the signature estimate >= threshold."""
    bands, rows = lsh_params(threshold, left.shape[1])
    candidate = (band_keys(left, bands, rows) == band_keys(right, bands, rows)).any(axis=1)
    return candidate & ((left == right).mean(axis=1) >= threshold)


def speed(num_perm: int, threshold: float, texts: list[str]) -> tuple[float, float]:
    started = time.perf_counter()
    signatures = np.concatenate(
        [minhash_batch(texts[i : i + 2000], num_perm=num_perm) for i in range(0, len(texts), 2000)]
    )
    signed = time.perf_counter() - started
    started = time.perf_counter()
    near_duplicates(signatures, threshold)
    return signed, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=60_000)
    parser.add_argument("--threshold", type=float, default=0.85)
    args = parser.parse_args()
    threshold = args.threshold
    started = time.perf_counter()
    left, right, jaccard = generate_pairs(args.pairs)
    below = jaccard < threshold - 0.10
    above = jaccard >= threshold + 0.05
    print(
        f"dedup calibration: {args.pairs:,} generated pairs (true 5-gram Jaccard from sets; "
        f"{below.sum():,} below {threshold - 0.10:.2f}, {above.sum():,} at or above {threshold + 0.05:.2f}), "
        f"threshold {threshold}, generated in {time.perf_counter() - started:.0f} s"
    )
    edges = [0.4, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.01]
    header = "  ".join(f"[{lo:.2f},{min(hi, 1):.2f}{')' if hi < 1 else ']'}" for lo, hi in itertools.pairwise(edges))
    print(
        f"  {'slots':>5} {'bands x rows':>12} {'FP rate':>9} {'FN rate':>9}   flagged share by true Jaccard: {header}"
    )
    texts = left + right
    for num_perm in (64, 128, 256):
        decision = flagged(minhash_batch(left, num_perm=num_perm), minhash_batch(right, num_perm=num_perm), threshold)
        shares = []
        for lo, hi in itertools.pairwise(edges):
            inside = (jaccard >= lo) & (jaccard < hi)
            shares.append(f"{decision[inside].mean():.4f}" if inside.any() else "-")
        bands, rows = lsh_params(threshold, num_perm)
        fp = decision[below].mean()
        fn = 1 - decision[above].mean()
        signed, clustered = speed(num_perm, threshold, texts)
        marker = "  <- NUM_PERM" if num_perm == NUM_PERM else ""
        print(
            f"  {num_perm:>5} {f'{bands} x {rows}':>12} {fp:9.5f} {fn:9.5f}   "
            + "  ".join(f"{s:>11}" for s in shares)
            + f"   sign {len(texts):,}: {signed:.2f} s, cluster: {clustered:.2f} s{marker}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
