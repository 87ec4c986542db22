"""What structured output costs per token: llguidance's mask on a real vocabulary, beside a decode step.

For each schema of the test suite (tests/test_structured_output.py) and `json_object`, a reply is
generated from random logits (greedy and sampled, as a random-weight model would) through the same
`JsonConstraint` the engine uses, timing `mask` (compute the allowed ids, set the others to -inf) and
`accept` per token. Also prints the one-off costs: preparing the tokenizer for llguidance and
compiling each schema. With `--device cuda` the logits live on the GPU, as in the engine there.

    .venv/bin/python benchmarks/structured_output.py [--tokenizer tiny-qwen2|smollm2-135m-instruct] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tuneforge.inference.structured import GrammarCache, response_format, stop_token_ids
from tuneforge.models import ModelResolver

#: The test suite's schemas (tests/test_structured_output.py).
SUITE = json.loads((Path(__file__).resolve().parents[1] / "tests" / "assets" / "json_schemas.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="tiny-qwen2", help="an embedded model name (its tokenizer)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--cache", default="~/.cache/tuneforge/models", help="the embedded models' cache")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    resolver = ModelResolver(Path(args.cache).expanduser())
    tokenizer = resolver.load_tokenizer(resolver.resolve(args.tokenizer))
    stops = stop_token_ids(tokenizer)
    vocab = len(tokenizer)
    device = torch.device(args.device)
    cache = GrammarCache()
    formats = {name: response_format("json_schema", schema, field="s") for name, schema in SUITE.items()}
    formats["json_object"] = response_format("json_object", field="s")

    started = time.perf_counter()
    cache.constraint(formats["json_object"], tokenizer, stops)
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"tokenizer {args.tokenizer}: {vocab} ids; prepared for llguidance in {time.perf_counter() - started:.2f} s")

    masks: list[float] = []
    computes: list[float] = []
    accepts: list[float] = []
    compiles: list[float] = []
    generator = torch.Generator(device=device).manual_seed(0)
    for name, fmt in formats.items():
        for temperature in (0.0, 1.0):
            started = time.perf_counter()
            constraint = cache.constraint(fmt, tokenizer, stops)
            compiles.append(time.perf_counter() - started)  # cached after the first of the pair
            tokens = 0
            for _ in range(args.max_tokens):
                logits = torch.randn(vocab, generator=generator, device=device)
                started = time.perf_counter()
                constraint._matcher.unsafe_compute_mask_ptr(constraint._bits.data_ptr(), constraint._bits.numel() * 4)
                computes.append(time.perf_counter() - started)  # llguidance's part alone (mask repeats it)
                started = time.perf_counter()
                constraint.mask(logits)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                masks.append(time.perf_counter() - started)
                if temperature:
                    token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
                else:
                    token = int(logits.argmax())
                if token in stops:
                    break
                started = time.perf_counter()
                constraint.accept(token)
                accepts.append(time.perf_counter() - started)
                tokens += 1
                if constraint.done():
                    break
            print(f"  {name:22} T={temperature}: {tokens:4} tokens")

    def ms(values: list[float], q: float) -> float:
        return 1000 * statistics.quantiles(values, n=100)[q - 1] if q < 100 else 1000 * max(values)

    print(f"schema compile (first, uncached): median {1000 * statistics.median(compiles[::2]):.2f} ms")
    print(
        f"mask per token over {len(masks)} tokens ({args.device}): mean {1000 * statistics.fmean(masks):.3f} ms, "
        f"p50 {ms(masks, 50):.3f} ms, p99 {ms(masks, 99):.3f} ms, max {ms(masks, 100):.3f} ms"
    )
    print(
        f"  of which llguidance computing the allowed ids: mean {1000 * statistics.fmean(computes):.3f} ms, "
        f"p99 {ms(computes, 99):.3f} ms"
    )
    print(f"accept per token: mean {1000 * statistics.fmean(accepts):.3f} ms, p99 {ms(accepts, 99):.3f} ms")


if __name__ == "__main__":
    main()
