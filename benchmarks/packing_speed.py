"""Speed and fill of `pack_rows` (best-fit-decreasing) on the reference's length law, on the CPU.

Draws `--samples` lengths (default 200,000) from the law the training benchmarks use — log-normal, median
~270 tokens, clamped to 16..4096 — and packs them into rows of `--row` tokens. Only `pack_rows` is timed
(best of `--repeats`), not building the samples; their ids are `range` objects, since packing only looks
at lengths. Fill is real tokens / (rows * row length). Measured in the same run as baselines: the old
first-fit-in-input-order loop (`first_fit_reference`, quadratic, so on the first `--reference-samples`,
default 20,000, beside `pack_rows` on the same ones), and the floor any sorting packer pays,
`sorted(lengths)` over all of them. Prints one line: RESULT {json}.

    PYTHONPATH=services .venv/bin/python benchmarks/packing_speed.py [--samples 200000] [--reference-samples 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable

import torch

from tuneforge.training.packing import Sample, pack_rows


def lengths_law(count: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.exp(torch.randn(count, generator=generator) * 0.8 + 5.6).clamp(16, 4096).long().tolist()


def first_fit_reference(samples: Iterable[Sample], max_seq_len: int) -> list[list[Sample]]:
    """The previous `pack_rows`: first fit in input order, a linear scan over the open rows (O(N * R))."""
    rows: list[list[Sample]] = []
    room: list[int] = []
    for sample in samples:
        if len(sample.input_ids) > max_seq_len:
            sample = Sample(sample.input_ids[:max_seq_len], sample.loss_mask[:max_seq_len])
        size = len(sample.input_ids)
        if size == 0:
            continue
        for index, free in enumerate(room):
            if free >= size:
                rows[index].append(sample)
                room[index] -= size
                break
        else:
            rows.append([sample])
            room.append(max_seq_len - size)
    return rows


def timed(pack: Callable[[list[Sample], int], list[list[Sample]]], samples: list[Sample], row: int, repeats: int):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        rows = pack(samples, row)
        best = min(best, time.perf_counter() - start)
    loads = [sum(len(s.input_ids) for s in r) for r in rows]
    assert max(loads) <= row and sum(len(r) for r in rows) == len(samples), "every sample once, no row overfull"
    return best, len(rows), sum(loads) / (len(rows) * row)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--row", type=int, default=4096, help="tokens per packed row")
    parser.add_argument(
        "--reference-samples", type=int, default=20_000, help="samples for the quadratic first-fit baseline"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each packer; the best is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    lengths = lengths_law(args.samples, args.seed)
    samples = [Sample(range(n), range(n)) for n in lengths]
    floor_rows = -(-sum(lengths) // args.row)
    seconds, rows, fill = timed(pack_rows, samples, args.row, args.repeats)
    start = time.perf_counter()
    sorted(lengths)
    sort_seconds = time.perf_counter() - start

    few = samples[: args.reference_samples]
    ref_seconds, ref_rows, ref_fill = timed(first_fit_reference, few, args.row, 1)
    few_seconds, few_rows, few_fill = timed(pack_rows, few, args.row, args.repeats)

    print(
        f"packing {len(samples):,} samples ({sum(lengths):,} tokens, median {sorted(lengths)[len(lengths) // 2]}) "
        f"into {args.row}-token rows, {os.cpu_count()} cores"
    )
    print(f"  pack_rows (best-fit-decreasing): {seconds:7.3f} s  {rows:,} rows  fill {fill:.4%}")
    print(f"  fewest rows the tokens allow:              {floor_rows:,} rows")
    print(f"  floor sorted(lengths):           {sort_seconds:7.3f} s")
    print(f"  on the first {len(few):,} samples:")
    print(f"    first_fit_reference (old):     {ref_seconds:7.3f} s  {ref_rows:,} rows  fill {ref_fill:.4%}")
    print(f"    pack_rows:                     {few_seconds:7.3f} s  {few_rows:,} rows  fill {few_fill:.4%}")
    result = {
        "samples": len(samples),
        "row": args.row,
        "tokens": sum(lengths),
        "pack_rows_s": round(seconds, 4),
        "rows": rows,
        "fill": round(fill, 5),
        "floor_rows": floor_rows,
        "sorted_lengths_s": round(sort_seconds, 4),
        "reference_samples": len(few),
        "first_fit_reference_s": round(ref_seconds, 4),
        "first_fit_reference_rows": ref_rows,
        "first_fit_reference_fill": round(ref_fill, 5),
        "pack_rows_on_reference_samples_s": round(few_seconds, 4),
        "pack_rows_on_reference_samples_rows": few_rows,
        "pack_rows_on_reference_samples_fill": round(few_fill, 5),
    }
    print("RESULT", json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
