"""Multi-adapter serving throughput of the Tuneforge engine, and adapter cold-load latency.

For N distinct adapters (LoRA, random weights, all seven projections) under concurrent load —
`--concurrency` requests in flight, each for adapter `i % N` (N = 0: the base model alone) — it
prints total output tokens/s and the ratio to the same engine serving the base model alone in the
same run (the baseline), plus the p50/p99 latency of loading an adapter into a slot from disk.

    python benchmarks/serve_throughput.py                       # CPU, tiny-qwen2 (CI-sized)
    python benchmarks/serve_throughput.py --arch qwen7b --concurrency 32 --prompt 128 --new 64   # GPU

Prints RESULT lines (JSON), one per N, and one for the cold loads. Also, in the same call:
transformers `generate` on the same model and batch (the baseline for the base model, `--generate-baseline`);
a short request arriving 50 ms after a long one (its time to first token beside its time alone);
a mixed workload (`--rates`: Poisson arrivals, log-normal prompt and output lengths) with throughput and
TTFT p50/p99 per rate; and the engine's step times while adapters are cold-loaded during decoding.
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one(engine, prompt: list[int], new: int, key: str | None = None) -> tuple[float, float]:
    """(time to first token, total) of one request, seconds."""
    from tuneforge.inference.engine import Request, Sampling

    done = threading.Event()
    first: list[float] = []
    started = time.perf_counter()

    def emit(event) -> None:
        if not first:
            first.append(time.perf_counter() - started)
        if event.finish_reason:
            done.set()

    slot = engine.acquire(key) if key else 0
    engine.submit(Request(list(prompt), key, Sampling(max_tokens=new), emit, slot=slot))
    done.wait()
    return first[0], time.perf_counter() - started


def short_behind_long(engine, vocab: int, long_new: int, short_new: int) -> dict:
    """A short request 50 ms after a long one: its TTFT beside the same request alone."""
    g = torch.Generator().manual_seed(11)
    long_prompt = torch.randint(0, vocab, (64,), generator=g).tolist()
    short_prompt = torch.randint(0, vocab, (16,), generator=g).tolist()
    alone = one(engine, short_prompt, short_new)[0]
    result: dict[str, float] = {}
    thread = threading.Thread(target=lambda: result.setdefault("long", one(engine, long_prompt, long_new)[1]))
    thread.start()
    time.sleep(0.05)
    behind, _ = one(engine, short_prompt, short_new)
    thread.join()
    return {
        "what": "short request 50 ms behind a long one",
        "long_new_tokens": long_new,
        "short_ttft_ms": round(behind * 1000, 1),
        "short_ttft_alone_ms": round(alone * 1000, 1),
        "long_total_s": round(result["long"], 2),
    }


def mixed_workload(engine, vocab: int, rate: float, requests: int, prompt: int, new: int, seed: int) -> dict:
    """Poisson arrivals at `rate` requests/s, log-normal prompt and output lengths (medians prompt, new)."""
    g = torch.Generator().manual_seed(seed)
    gaps = torch.distributions.Exponential(torch.tensor(rate)).sample((requests,)).tolist()
    normal = torch.randn((requests, 2), generator=g) * 0.6
    prompts = [max(4, min(4 * prompt, round(prompt * float(torch.exp(z))))) for z in normal[:, 0]]
    outputs = [max(2, min(4 * new, round(new * float(torch.exp(z))))) for z in normal[:, 1]]
    firsts: list[float] = []
    totals: list[float] = []
    lock = threading.Lock()
    threads = []
    start = time.perf_counter()
    for i in range(requests):
        time.sleep(gaps[i])
        ids = torch.randint(0, vocab, (prompts[i],), generator=g).tolist()

        def run(ids=ids, n=outputs[i]) -> None:
            ttft, total = one(engine, ids, n)
            with lock:
                firsts.append(ttft)
                totals.append(total)

        thread = threading.Thread(target=run)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return {
        "what": "mixed workload",
        "rate_per_s": rate,
        "requests": requests,
        "output_tokens_per_s": round(sum(outputs) / elapsed, 1),
        "ttft_p50_ms": round(statistics.median(firsts) * 1000, 1),
        "ttft_p99_ms": round(percentile(firsts, 0.99) * 1000, 1),
        "latency_p50_s": round(statistics.median(totals), 2),
        "prompt_median": prompt,
        "new_median": new,
    }


def generate_baseline(model, vocab: int, batch: int, prompt: int, new: int) -> dict:
    """transformers `generate` of one batch on the same model (adapter slots idle, SDPA outside engine steps)."""
    g = torch.Generator().manual_seed(5)
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (batch, prompt), generator=g).to(device)
    with torch.inference_mode():
        model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = model.generate(input_ids=ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    produced = (out.shape[1] - prompt) * batch
    return {
        "what": "transformers generate (same model, same call)",
        "batch": batch,
        "prompt": prompt,
        "new": new,
        "output_tokens_per_s": round(produced / elapsed, 1),
    }


def step_times_during_loads(engine, root: Path, keys: list[str], vocab: int, concurrency: int, new: int) -> dict:
    """Per-step time of the engine while adapters are cold-loaded beside decoding requests (and without)."""
    from tuneforge.inference.engine import Engine

    real = Engine._step
    steps: list[tuple[float, float]] = []
    spans: list[tuple[float, float]] = []

    def timed(self) -> None:
        started = time.perf_counter()
        real(self)
        steps.append((started, time.perf_counter()))

    Engine._step = timed  # type: ignore[method-assign]
    try:
        g = torch.Generator().manual_seed(3)
        threads = [
            threading.Thread(target=one, args=(engine, torch.randint(0, vocab, (32,), generator=g).tolist(), new))
            for _ in range(concurrency)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        for key in keys:
            started = time.perf_counter()
            engine.load_adapter(key, root / key.removeprefix("during-"))
            spans.append((started, time.perf_counter()))
            time.sleep(0.02)
        for thread in threads:
            thread.join()
    finally:
        Engine._step = real  # type: ignore[method-assign]
    loads = [end - start for start, end in spans]
    overlapping = [any(s < le and ls < e for ls, le in spans) for s, e in steps]
    during = [e - s for (s, e), flag in zip(steps, overlapping, strict=True) if flag]
    other = [e - s for (s, e), flag in zip(steps, overlapping, strict=True) if not flag]
    return {
        "what": "step time while adapters load",
        "loads": len(loads),
        "load_p50_ms": round(statistics.median(loads) * 1000, 1),
        "step_p50_ms_during_loads": round(statistics.median(during) * 1000, 2) if during else None,
        "step_max_ms_during_loads": round(max(during) * 1000, 2) if during else None,
        "step_p50_ms_otherwise": round(statistics.median(other) * 1000, 2) if other else None,
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
    parser.add_argument("--generate-baseline", action="store_true", help="transformers generate, same model/batch")
    parser.add_argument("--rates", default="", help="mixed workload request rates per second, e.g. 2,8,32")
    parser.add_argument("--mixed-requests", type=int, default=64)
    parser.add_argument("--long-new", type=int, default=400, help="the long request of the short-behind-long run")
    parser.add_argument("--step-tokens", type=int, default=512, help="the engine's max_step_tokens")
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
        max_step_tokens=args.step_tokens,
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
    if args.generate_baseline:
        result = generate_baseline(model, vocab, args.concurrency, args.prompt, args.new)
        result["vs_engine_base"] = round(baseline / result["output_tokens_per_s"], 2) if baseline else None
        print("RESULT", json.dumps(result), flush=True)
    print("RESULT", json.dumps(short_behind_long(engine, vocab, args.long_new, 8)), flush=True)
    for i, rate in enumerate(float(r) for r in args.rates.split(",") if r):
        result = mixed_workload(engine, vocab, rate, args.mixed_requests, args.prompt, args.new, seed=i)
        print("RESULT", json.dumps(result), flush=True)
    if args.cold_loads:
        keys = [f"during-a{i}" for i in range(max(counts), min(needed, max(counts) + 10))]
        result = step_times_during_loads(engine, root, keys, vocab, args.concurrency, args.new)
        print("RESULT", json.dumps(result), flush=True)
    engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
