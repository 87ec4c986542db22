"""Tuneforge's LoRA training step on the Qwen2.5-7B architecture (random weights, bf16, one GPU).

Samples with the reference's length law (log-normal, median ~270 tokens, 16..4096) are packed
first-fit into rows of `--row` tokens with per-document attention (varlen flash attention through
`cu_seqlens`: no sample attends to another), the loss is computed in chunks over the vocabulary on
trained positions only, and LoRA (PEFT) trains with AdamW — the same code path as
`tuneforge.training`. Run it in the same job as `../shared/bench/lora_reference.py` and compare
tokens/s (real, non-padding tokens) and peak memory. Prints one line: RESULT {json}.

    python benchmarks/train_throughput.py --rows 1 --row 4096 --r 16 --targets all7 --gc 0
    python benchmarks/train_throughput.py --rows 1 --gc 1 --memory-cap-gib 22   # one 24 GiB card
    python benchmarks/train_throughput.py --rows 1 --gc 0 --compile 1 --fp8 1   # base matmuls in float8
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

ALL7 = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def qwen25_7b_config(layers: int):
    from transformers import Qwen2Config

    return Qwen2Config(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=layers,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        max_position_embeddings=32768,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )


def sample_lengths(n: int, seed: int = 0, mean_log: float = 5.6, sigma: float = 0.8, max_len: int = 4096) -> list[int]:
    """The reference benchmark's length law, with its seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.exp(torch.randn(n, generator=g) * sigma + mean_log).clamp(16, max_len).long().tolist()


def _step(model, batch, optimizer, varlen: bool, chunk: int) -> None:
    from tuneforge.training.step import packed_loss

    loss_sum, count = packed_loss(model, batch, varlen=varlen, chunk_size=chunk)
    (loss_sum / max(count, 1)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _profile(step) -> None:
    """One step under the profiler: GPU time by kernel family and the top kernels (one line each)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    families = {"gemm": 0.0, "flash/attention": 0.0, "triton (compiled)": 0.0, "other": 0.0}
    for e in events:
        name = e.key.lower()
        if any(k in name for k in ("gemm", "nvjet", "xmma", "cutlass", "cublas", "matmul")):
            family = "gemm"
        elif "flash" in name or "fmha" in name or "attention" in name:
            family = "flash/attention"
        elif name.startswith("triton"):
            family = "triton (compiled)"
        else:
            family = "other"
        families[family] += e.self_device_time_total
    total = sum(families.values()) or 1.0
    print("PROFILE total_ms", round(total / 1e3, 1), {k: f"{v / total:.1%}" for k, v in families.items()}, flush=True)
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:18]:
        print(f"PROFILE {e.self_device_time_total / 1e3:8.1f} ms {e.count:5d}x {e.key[:90]}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1, help="packed rows per step")
    parser.add_argument("--row", type=int, default=4096, help="tokens per packed row")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--targets", default="all7", help="'all7' or comma-separated module names")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--gc", type=int, default=0, help="gradient checkpointing")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--chunk", type=int, default=4096, help="loss chunk in tokens")
    parser.add_argument(
        "--trained-fraction",
        type=float,
        default=1.0,
        help="share of each sample's tokens with a loss (1.0 = all, like the reference)",
    )
    parser.add_argument("--memory-cap-gib", type=float, default=0.0, help="cap this process's GPU memory")
    parser.add_argument("--attn", default="auto", help="auto (varlen when available) | sdpa")
    parser.add_argument("--compile", type=int, default=0, help="torch.compile each decoder layer")
    parser.add_argument("--pool", type=int, default=64, help="samples to pack from per step (more fills rows better)")
    parser.add_argument("--profile", type=int, default=0, help="print where one step's GPU time goes")
    parser.add_argument("--fused-adamw", type=int, default=1, help="AdamW(fused=True)")
    parser.add_argument("--fp8", type=int, default=0, help="frozen base matmuls in float8 (base_precision: fp8)")
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.training.attention import register_varlen_attention, varlen_available
    from tuneforge.training.packing import Sample, collate, pack_rows
    from tuneforge.training.step import packed_loss

    if args.memory_cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * 2**30 / total))
    varlen = args.attn == "auto" and varlen_available()
    attn = register_varlen_attention() if varlen else "sdpa"
    torch.manual_seed(0)
    config = qwen25_7b_config(args.layers)
    config._attn_implementation = attn
    start = time.time()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.config.use_cache = False
    if args.gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = ALL7 if args.targets == "all7" else args.targets
    model = get_peft_model(
        model,
        LoraConfig(
            r=args.r, lora_alpha=16, lora_dropout=args.dropout, target_modules=targets.split(","), task_type="CAUSAL_LM"
        ),
    )
    model.train()
    if args.fp8:
        from tuneforge.training.fp8 import convert_lora_base_layers

        convert_lora_base_layers(model)
        torch.cuda.empty_cache()
    if args.compile:
        for layer in model.get_base_model().get_decoder().layers:
            layer.compile()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=bool(args.fused_adamw)
    )
    build_s = time.time() - start

    g = torch.Generator().manual_seed(1)
    lengths = iter(sample_lengths(200_000))

    def batches():
        while True:
            # a data loader packs from a window of samples; rows that are not full yet wait for the next step
            pending: list = []
            while True:
                while len(pending) < args.pool:
                    n = next(lengths)
                    ids = torch.randint(0, config.vocab_size, (n,), generator=g).tolist()
                    prompt = int(n * (1 - args.trained_fraction))
                    pending.append(Sample(ids, [False] * prompt + [True] * (n - prompt)))
                rows = pack_rows(pending, args.row)
                rows.sort(key=lambda row: -sum(len(s.input_ids) for s in row))
                taken = rows[: args.rows]
                used = {id(s) for row in taken for s in row}
                pending = [s for s in pending if id(s) not in used]
                batch = collate(taken, args.row, pad_id=0)
                if args.compile:
                    batch.max_seqlen = args.row  # a constant upper bound: no recompilation per batch
                yield batch.to("cuda")

    stream = batches()
    times, tokens, trained, losses = [], [], [], []
    torch.cuda.reset_peak_memory_stats()
    for step in range(args.steps + 2):
        batch = next(stream)
        torch.cuda.synchronize()
        t = time.time()
        loss_sum, count = packed_loss(model, batch, varlen=varlen, chunk_size=args.chunk)
        (loss_sum / max(count, 1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= 2:
            times.append(time.time() - t)
            tokens.append(batch.num_tokens)
            trained.append(count)
        losses.append(round(float(loss_sum) / max(int(count), 1), 4))  # same seeds: comparable across runs
    if args.profile:
        _profile(lambda: _step(model, next(stream), optimizer, varlen, args.chunk))
    tps = sum(tokens) / sum(times)
    h, inter, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    matmul_params = (h * h * 2 + h * kv * 2 + 3 * h * inter) * layers + h * vocab
    flops_per_token = (6 if args.gc else 4) * matmul_params
    result = {
        "trainer": "tuneforge",
        "attn": attn,
        "rows": args.rows,
        "row": args.row,
        "r": args.r,
        "targets": targets,
        "dropout": args.dropout,
        "gc": args.gc,
        "layers": layers,
        "chunk": args.chunk,
        "memory_cap_gib": args.memory_cap_gib,
        "compile": args.compile,
        "fp8": args.fp8,
        "pool": args.pool,
        "tokens_per_s": round(tps),
        "step_s": round(sum(times) / len(times), 3),
        "tokens_per_step": round(sum(tokens) / len(tokens)),
        "row_fill": round(sum(tokens) / len(tokens) / (args.rows * args.row), 3),
        "trained_tokens_per_step": round(sum(trained) / len(trained)),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "model_tflops_per_s": round(tps * flops_per_token / 1e12, 1),
        "build_s": round(build_s, 1),
        "losses": losses,
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }
    print("RESULT", json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
