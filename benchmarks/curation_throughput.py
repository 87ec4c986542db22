"""End-to-end curation throughput (records/s) and peak memory on a generated dataset.

Generates N records (default 200,000) with realistic lengths — alpaca, ShareGPT and OpenAI-chat
interleaved in ONE file as concatenated exports are (`--split-files`: one file per format), English
and Chinese, multi-turn, some PII, ~2% exact and ~2% near duplicates, ~1% broken lines (cut JSON,
NaN, lone surrogates, 5,000-digit integers, a list as alpaca output) — then runs the real pipeline
with the real Qwen2.5 tokenizer (embedded `tiny-qwen2`), checks that the version is READY with
every valid record kept (invalid = the broken lines generated; kept + duplicates = the rest), and
prints time by stage (parse+validate, clean+pii, tokenize+mask, dedup, split+write) and peak RSS.
The baseline printed beside it, measured in the same run on the same file, is the floor any
pipeline pays: reading every line and `json.loads` on it, plus one batched tokenizer call over the
raw text of every record.

    .venv/bin/python benchmarks/curation_throughput.py [--records 200000] [--split-files] [--processes N]
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


BROKEN = (
    '{"instruction": "broken',
    '{"instruction": "Score it.", "output": "ok", "score": NaN}',
    '{"instruction": "\\ud83d alone", "output": "ok"}',
    '{"instruction": "Count.", "output": "ok", "n": ' + "9" * 5000 + "}",
    '{"instruction": "List them.", "output": ["a", "b"]}',
)


def generate(directory: Path, records: int, seed: int = 0, split_files: bool = False) -> tuple[list[Path], int]:
    """`records` lines, the three formats interleaved in one file (or one file each); returns the broken count."""
    rng = random.Random(seed)
    names = ("alpaca", "sharegpt", "openai") if split_files else ("mixed",)
    paths = [directory / f"bench_{name}.jsonl" for name in names]
    handles = [path.open("w", encoding="utf-8") for path in paths]
    previous: list[list[str]] = [[], [], []]
    broken = 0
    for index in range(records):
        kind = index % 3
        roll = rng.random()
        if previous[kind] and roll < 0.02:
            line = rng.choice(previous[kind])  # exact duplicate
        elif previous[kind] and roll < 0.04:
            line = rng.choice(previous[kind]).replace(".", " .", 1)  # near duplicate
        elif roll < 0.05:
            line = BROKEN[index % len(BROKEN)]
            broken += 1
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
        handles[kind if split_files else 0].write(line + "\n")
    for handle in handles:
        handle.close()
    return paths, broken


def baseline(paths: list[Path], tokenizer, batch: int = 2000) -> float:
    """Seconds to read + json.loads every line and tokenize each record's raw text once, batched."""
    start = time.perf_counter()
    texts: list[str] = []
    for path in paths:
        with path.open("rb") as handle:
            for line in handle:
                try:
                    json.loads(line)
                except ValueError:
                    continue
                texts.append(line.decode("utf-8", "replace"))  # the raw line: escapes stay text
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
    parser.add_argument("--split-files", action="store_true", help="one file per format instead of one mixed file")
    args = parser.parse_args()
    resolver = ModelResolver(Path(args.model_cache).expanduser())
    tokenizer = resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))
    with tempfile.TemporaryDirectory() as tmp:
        paths, broken = generate(Path(tmp), args.records, split_files=args.split_files)
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
    layout = "one file per format" if args.split_files else "one file mixing the three formats"
    print(
        f"curation of {args.records:,} records ({size / 1e6:.0f} MB JSONL, {layout}, Qwen2.5 tokenizer), "
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
    kept = counts["train_records"] + counts["validation_records"]
    removed = counts["exact_duplicates"] + counts["near_duplicates"] + counts["too_long"]
    every_valid_kept = result.ok and counts["invalid"] == broken and kept + removed == args.records - broken
    print(f"  records by format: {counts['records_by_format']}")
    state = "READY" if result.ok else f"FAILED: {result.failure_reason}"
    print(
        f"  {state}; invalid {counts['invalid']:,} = broken lines generated {broken:,}; "
        f"kept + removed as duplicates/too long = {kept + removed:,} of "
        f"{args.records - broken:,} valid: {'every valid record kept' if every_valid_kept else 'RECORDS LOST'}"
    )
    return 0 if every_valid_kept else 1


if __name__ == "__main__":
    sys.exit(main())
