"""One adapted Linear's LoRA step, grouped by adapter, against the per-row gather it replaced (CPU or GPU).

A decode step of `--rows` requests (one token each, one slot id per token as the engine passes them)
spread over N distinct adapters, N in `--adapters`, plus a mixed step: one prompt chunk of
`--chunk` tokens beside those decode tokens. Each is timed (median of `--repeats`, after warm-up)
through `BatchedLoraLinear` with the `padded` and `segment` kernels and through the former path, where
every row gathered its own copy of its adapter's A and B (`per_row`, given the engine's one id per
token: a copy per token). The grouping is worked out once per step and timed with it. Also printed:
adapter bytes gathered per step (per_row: one copy per token; padded: one per adapter; segment reads
the slots in place). Numbers are the LoRA layer alone, base matmul included.

    PYTHONPATH=services .venv/bin/python benchmarks/lora_grouped.py [--hidden 1024] [--rank 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tuneforge.inference.lora import inject


def per_row(layer, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    out = layer.base(x)
    a = layer.lora_a.index_select(0, rows)
    b = layer.lora_b.index_select(0, rows)
    delta = torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))
    return out + delta * layer.scaling.index_select(0, rows).view(-1, 1, 1)


def timed(run, repeats: int, device: torch.device) -> float:
    for _ in range(3):
        run()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--slots", type=int, default=33)
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 4, 32])
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    layers = {}
    for kernel in ("padded", "segment"):
        module = torch.nn.Module()
        module.q_proj = torch.nn.Linear(args.hidden, args.hidden, bias=False)
        injected = inject(module.to(device, dtype), args.slots, args.rank, ("q_proj",), kernel)
        layer = injected["layers"]["q_proj"]
        with torch.no_grad():
            layer.lora_a[1:].normal_()
            layer.lora_b[1:].normal_()
            layer.scaling[1:] = 2.0
        layers[kernel] = (layer, injected["selection"])
    reference = layers["padded"][0]
    adapter_bytes = 2 * args.rank * args.hidden * reference.lora_a.element_size()
    results = []
    for distinct in args.adapters:
        slots = [1 + i % distinct for i in range(args.rows)]
        for step, tokens in (("decode", slots), ("mixed", [1] * args.chunk + slots)):
            x = torch.randn(1, len(tokens), args.hidden, device=device, dtype=dtype)
            line = {"step": step, "adapters": distinct, "tokens": len(tokens)}
            with torch.inference_mode():
                for kernel, (layer, selection) in layers.items():

                    def run(layer=layer, selection=selection, tokens=tokens, x=x) -> None:
                        selection.set(tokens)  # the grouping: once per step, timed with the layer
                        layer(x)

                    line[f"{kernel}_ms"] = round(timed(run, args.repeats, device), 3)
                # the former path under the engine's per-token ids: every token gathers its own copy
                rows_t = torch.tensor(tokens, device=device)
                xs = x.view(len(tokens), 1, args.hidden)
                gathered_rows = len(tokens)

                def old(xs=xs, rows_t=rows_t) -> None:
                    per_row(reference, xs, rows_t)

                line["per_row_ms"] = round(timed(old, args.repeats, device), 3)
            line["per_row_gathered_mb"] = round(gathered_rows * adapter_bytes / 2**20, 2)
            line["grouped_gathered_mb"] = round(distinct * adapter_bytes / 2**20, 2)
            results.append(line)
            print(json.dumps(line))
    print("RESULT " + json.dumps({"hidden": args.hidden, "rank": args.rank, "device": str(device), "runs": results}))


if __name__ == "__main__":
    main()
