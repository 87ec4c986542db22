"""End-to-end curation throughput (records/s) and peak memory on a generated dataset.

Generates N records (default 200,000) with realistic lengths — alpaca, ShareGPT and OpenAI-chat
mixed, English and Chinese, multi-turn, some PII, ~2% exact and ~2% near duplicates, ~1% broken
lines — then runs the real pipeline with the real Qwen2.5 tokenizer (embedded `tiny-qwen2`) and
prints time by stage (parse+validate, clean+pii, tokenize+mask, dedup, split+write) and peak RSS.
The baseline printed beside it, measured in the same run on the same file, is the floor any
pipeline pays: reading every line and `json.loads` on it, plus one batched tokenizer call over the
raw text of every record.

    .venv/bin/python benchmarks/curation_throughput.py [--records 200000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from tuneforge.curation.distributed import process_pool_batches
from tuneforge.curation.pipeline import CurationOptions, InputFile, curate
from tuneforge.models import ModelResolver

WORDS_EN = (
    "the customer order invoice shipping refund account password delivery product warranty support team "
    "please thanks could would should schedule meeting report quarterly revenue growth market analysis "
    "summary translate explain example python function return value error message server database"
).split()
WORDS_ZH = list("我们的订单已经发货请问您什么时候可以收到退款账户密码客服团队产品质量报告会议安排季度收入增长市场分析")


def _sentence(rng: random.Random, words: int) -> str:
    if rng.random() < 0.3:
        return "".join(rng.choice(WORDS_ZH) for _ in range(words * 2)) + "。"
    return " ".join(rng.choice(WORDS_EN) for _ in range(words)).capitalize() + "."


def _text(rng: random.Random, low: int, high: int) -> str:
    parts = [_sentence(rng, rng.randint(6, 18)) for _ in range(rng.randint(low, high))]
    if rng.random() < 0.05:
        parts.append(
            f"Contact me at user{rng.randint(1, 9999)}@example.com or +86 138{rng.randint(10000000, 99999999)}."
        )
    return " ".join(parts)


def generate(directory: Path, records: int, seed: int = 0) -> list[Path]:
    """Three JSONL files, one per format (formats are detected per file), `records` lines in all."""
    rng = random.Random(seed)
    paths = [directory / f"bench_{kind}.jsonl" for kind in ("alpaca", "sharegpt", "openai")]
    handles = [path.open("w", encoding="utf-8") for path in paths]
    previous: list[list[str]] = [[], [], []]
    for index in range(records):
        kind = index % 3
        roll = rng.random()
        if previous[kind] and roll < 0.02:
            line = rng.choice(previous[kind])  # exact duplicate
        elif previous[kind] and roll < 0.04:
            line = rng.choice(previous[kind]).replace(".", " .", 1)  # near duplicate
        elif roll < 0.05:
            line = '{"instruction": "broken'  # invalid JSON
        else:
            if kind == 0:
                record = {"instruction": _text(rng, 1, 3), "input": _text(rng, 0, 2), "output": _text(rng, 2, 8)}
            elif kind == 1:
                turns = [{"from": "system", "value": "You are a helpful support agent."}]
                for _ in range(rng.randint(1, 3)):
                    turns += [{"from": "human", "value": _text(rng, 1, 3)}, {"from": "gpt", "value": _text(rng, 2, 6)}]
                record = {"conversations": turns}
            else:
                record = {
                    "messages": [
                        {"role": "user", "content": _text(rng, 1, 4)},
                        {"role": "assistant", "content": _text(rng, 2, 8)},
                    ]
                }
            line = json.dumps(record, ensure_ascii=False)
            if len(previous[kind]) < 2000:
                previous[kind].append(line)
        handles[kind].write(line + "\n")
    for handle in handles:
        handle.close()
    return paths


def baseline(paths: list[Path], tokenizer, batch: int = 2000) -> float:
    """Seconds to read + json.loads every line and tokenize each record's raw text once, batched."""
    start = time.perf_counter()
    texts: list[str] = []
    for path in paths:
        with path.open("rb") as handle:
            for line in handle:
                try:
                    texts.append(json.dumps(json.loads(line), ensure_ascii=False))
                except ValueError:
                    continue
                if len(texts) >= batch:
                    tokenizer(texts, add_special_tokens=False)
                    texts = []
    if texts:
        tokenizer(texts, add_special_tokens=False)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--model-cache", default="~/.cache/tuneforge/models")
    parser.add_argument("--processes", type=int, default=0, help="worker processes (0 = one per core, as builds run)")
    args = parser.parse_args()
    resolver = ModelResolver(Path(args.model_cache).expanduser())
    tokenizer = resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate(Path(tmp), args.records)
        size = sum(p.stat().st_size for p in paths)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        floor = baseline(paths, tokenizer)
        items = [InputFile(p.name, p, hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths]
        start = time.perf_counter()
        options = CurationOptions()
        processes = args.processes or os.cpu_count() or 1
        runner = (
            process_pool_batches(str(resolver.resolve("tiny-qwen2").source), options, processes)
            if processes > 1
            else None
        )
        result = curate(items, tokenizer, options, Path(tmp) / "out", Path(tmp) / "work", batches=runner)
        elapsed = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    counts = result.counts
    print(
        f"curation of {args.records:,} records ({size / 1e6:.0f} MB JSONL, Qwen2.5 tokenizer), "
        f"{processes} process(es) on {os.cpu_count()} cores"
    )
    print(f"  pipeline: {elapsed:7.1f} s  {args.records / elapsed:8,.0f} records/s  (target >= 5,000)")
    print(f"  baseline: {floor:7.1f} s  {args.records / floor:8,.0f} records/s  (read + json.loads + tokenize raw)")
    print(f"  pipeline / baseline time: {elapsed / floor:.2f}x")
    print("  time by stage (summed over processes; with several they overlap):")
    for stage, seconds in result.report["stage_seconds"].items():
        print(f"    {stage:16s} {seconds:7.2f} s  {100 * seconds / elapsed:5.1f}%")
    print(f"  peak RSS: {peak:,.0f} MB (before the pipeline: {rss_before:,.0f} MB)")
    print(
        f"  kept {counts['train_records'] + counts['validation_records']:,}; invalid {counts['invalid']:,}, "
        f"exact dup {counts['exact_duplicates']:,}, near dup {counts['near_duplicates']:,}, "
        f"too long {counts['too_long']:,}; train tokens {counts['train_tokens']:,}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
