"""Multi-adapter serving throughput of the Tuneforge engine, and adapter cold-load latency.

For N distinct adapters (LoRA, random weights, all seven projections) under concurrent load —
`--concurrency` requests in flight, each for adapter `i % N` (N = 0: the base model alone) — it
prints total output tokens/s and the ratio to the same engine serving the base model alone in the
same run (the baseline), plus the p50/p99 latency of loading an adapter into a slot from disk.

    python benchmarks/serve_throughput.py                       # CPU, tiny-qwen2 (CI-sized)
    python benchmarks/serve_throughput.py --arch qwen7b --concurrency 32 --prompt 128 --new 64   # GPU

Prints RESULT lines (JSON), one per N, and one for the cold loads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build(arch: str, layers: int):
    from transformers import AutoModelForCausalLM

    from tuneforge.models import ModelResolver

    resolver = ModelResolver(Path("~/.cache/tuneforge/models").expanduser())
    if arch == "tiny":
        resolved = resolver.resolve("tiny-qwen2")
        return resolver.load_model(resolved, dtype="float32", device="cpu"), resolver.load_tokenizer(resolved)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import qwen25_7b_config

    config = qwen25_7b_config(layers)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval(), _IdTokenizer()


class _IdTokenizer:
    """Stands in for the tokenizer on machines without the embedded models: token ids as text."""

    pad_token_id = 0
    eos_token_id = 151645
    unk_token_id = None

    def convert_tokens_to_ids(self, token: str) -> int:
        return 151645

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def write_adapter(model, directory: Path, rank: int, seed: int) -> None:
    """A PEFT-format LoRA adapter with random weights on every target Linear of the decoder."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in TARGETS and isinstance(module, torch.nn.Linear):
            a = torch.randn(rank, module.in_features, generator=g) / module.in_features**0.5
            b = torch.randn(module.out_features, rank, generator=g) * 0.01
            tensors[f"base_model.model.{name}.lora_A.weight"] = a.to(torch.bfloat16).contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = b.to(torch.bfloat16).contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(TARGETS)}
    (directory / "adapter_config.json").write_text(json.dumps(config))


def run_load(engine, adapters: int, concurrency: int, requests: int, prompt: int, new: int, vocab: int) -> dict:
    from tuneforge.inference.engine import Request, Sampling

    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, vocab, (prompt,), generator=g).tolist() for _ in range(requests)]
    done = threading.Semaphore(0)
    tokens = [0]
    lock = threading.Lock()
    slots = threading.Semaphore(concurrency)
    first: list[float] = []

    def submit(i: int) -> None:
        key = f"a{i % adapters}" if adapters else None
        started = time.perf_counter()
        seen = [False]

        def emit(event) -> None:
            if not seen[0]:
                seen[0] = True
                first.append(time.perf_counter() - started)
            if event.finish_reason:
                with lock:
                    tokens[0] += event.completion_tokens
                slots.release()
                done.release()

        slot = engine.acquire(key) if key else 0
        engine.submit(Request(prompts[i], key, Sampling(max_tokens=new), emit, slot=slot))

    start = time.perf_counter()
    for i in range(requests):
        slots.acquire()
        submit(i)
    for _ in range(requests):
        done.acquire()
    elapsed = time.perf_counter() - start
    return {
        "output_tokens_per_s": round(tokens[0] / elapsed, 1),
        "output_tokens": tokens[0],
        "seconds": round(elapsed, 2),
        "ttft_p50_ms": round(statistics.median(first) * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", choices=["tiny", "qwen7b"], default="tiny")
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--adapters", default="0,1,8,32", help="distinct adapters per run; 0 = base alone")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=0, help="per run (0 = 3 x concurrency)")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--cold-loads", type=int, default=40)
    args = parser.parse_args()

    from tuneforge.inference.engine import Engine

    counts = [int(x) for x in args.adapters.split(",")]
    model, tokenizer = build(args.arch, args.layers)
    vocab = model.config.vocab_size
    root = Path(tempfile.mkdtemp(prefix="tuneforge-serve-bench-"))
    needed = max(max(counts), 1) + args.cold_loads
    for i in range(needed):  # before the engine wraps the Linears
        write_adapter(model, root / f"a{i}", args.rank, seed=i)
    engine = Engine(
        model,
        tokenizer,
        max_adapters=max(max(counts), 1),
        max_rank=args.rank,
        max_batch_size=args.concurrency,
        batch_wait_s=0.002,
    )
    engine.stop_ids = set()  # random weights: decode exactly --new tokens every time
    device = str(next(model.parameters()).device)
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"

    # cold loads: adapters not resident yet, through a full LRU (every load after the first fills evicts)
    loads = []
    for i in range(max(counts), needed):
        started = time.perf_counter()
        engine.load_adapter(f"cold{i}", root / f"a{i}")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        loads.append(time.perf_counter() - started)
    loads.sort()
    p99 = loads[min(len(loads) - 1, round(0.99 * (len(loads) - 1)))]
    print(
        "RESULT",
        json.dumps(
            {
                "what": "adapter cold load",
                "arch": args.arch,
                "rank": args.rank,
                "loads": len(loads),
                "p50_ms": round(statistics.median(loads) * 1000, 1),
                "p99_ms": round(p99 * 1000, 1),
                "gpu": gpu,
            }
        ),
        flush=True,
    )
    for i in range(max(counts)):
        engine.load_adapter(f"a{i}", root / f"a{i}")

    requests = args.requests or 3 * args.concurrency
    run_load(engine, 0, args.concurrency, min(requests, args.concurrency), args.prompt, 4, vocab)  # warm-up
    baseline = None
    for n in counts:
        result = run_load(engine, n, args.concurrency, requests, args.prompt, args.new, vocab)
        if n == 0:
            baseline = result["output_tokens_per_s"]
        result.update(
            {
                "what": "throughput",
                "distinct_adapters": n,
                "vs_base_alone": round(result["output_tokens_per_s"] / baseline, 3) if baseline else None,
                "arch": args.arch,
                "concurrency": args.concurrency,
                "prompt": args.prompt,
                "new": args.new,
                "rank": args.rank,
                "gpu": gpu,
                "torch": torch.__version__,
            }
        )
        print("RESULT", json.dumps(result), flush=True)
    engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
