"""Training throughput of the production loop (`train_worker`) beside the plain transformers + PEFT recipe.

Three steps, so the GPU machine needs only the training stack:

    # here (CPU, the project's venv): a dataset version made by the curation pipeline from generated
    # records whose token lengths follow the reference's law (log-normal, median ~270, 16..4096),
    # rendered with the real Qwen2.5 tokenizer, and the tokenizer itself
    python benchmarks/train_throughput.py prepare --out .gpu/bench

    # on the GPU: a random-weight Qwen2.5-7B model directory is written once (bf16, ~15 GB), then every
    # configuration runs `train_worker` under torchrun (NCCL, as Ray Train sets up a GPU worker) in a
    # process of its own, beside ../shared/bench/lora_reference.py (padded and packed) in the same call
    python benchmarks/train_throughput.py run --data .gpu/bench --reference .gpu/lora_reference.py \\
        --configs bf16,fp8,bf16-cap22

Figures come from the worker's own per-step metrics (`tokens`, `step_seconds`; the first
`--warmup` steps, which compile, are left out). Each configuration prints a `RESULT {json}` line;
the table at the end puts tokens/s and peak memory next to both reference modes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

#: Named configurations of the production loop: TrainConfig overrides and a GPU memory cap (GiB, 0 = none).
CONFIGS: dict[str, tuple[dict, float]] = {
    "bf16": ({}, 0.0),
    "fp8": ({"base_precision": "fp8"}, 0.0),
    "bf16-cap22": ({"gradient_checkpointing": True, "loss_chunk": 1024}, 22.0),
    "fp8-cap22": ({"base_precision": "fp8", "gradient_checkpointing": True, "loss_chunk": 1024}, 22.0),
    "bf16-eager": ({"torch_compile": False}, 0.0),
    "bf16-2rows": ({"micro_batch_size": 2}, 0.0),
    "full-zero3-offload-cap24": (
        {
            "method": "full",
            "deepspeed_stage": 3,
            "offload_optimizer": True,
            "offload_parameters": True,
            "gradient_checkpointing": True,
            "optimizer_precision": "bf16",  # 10 host bytes per parameter: the 7B run fits a 128 GB host
            "loss_chunk": 1024,
            "learning_rate": 1e-5,
            "max_steps": 4,
        },
        24.0,
    ),
}
#: Configurations that are resumed from their last checkpoint for `--resume-steps` more steps.
RESUMED = {"full-zero3-offload-cap24"}


def sample_lengths(n: int, seed: int = 0, mean_log: float = 5.6, sigma: float = 0.8, max_len: int = 4096) -> list[int]:
    """The reference benchmark's length law, with its seed."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.exp(torch.randn(n, generator=g) * sigma + mean_log).clamp(16, max_len).long().tolist()


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


# -- prepare (CPU, the project's environment) ------------------------------------------------------------------


def _records(count: int, seed: int) -> list[dict]:
    """OpenAI-chat records of ~n tokens each (n from the length law): a question and a long answer."""
    words = [
        w
        for w in (
            "the model data train token answer question system value result number order table river city "
            "light music winter market garden letter paper window report engine signal bridge forest ocean "
            "planet camera travel coffee memory school doctor energy health metal stone field spring"
        ).split()
    ]
    rng = random.Random(seed)
    records = []
    for index, n in enumerate(sample_lengths(count, seed=seed)):
        body = max(4, n - 24)  # the chat template adds ~24 tokens around two turns
        prompt = max(2, body // 4)
        question = " ".join(rng.choice(words) for _ in range(prompt))
        answer = " ".join(rng.choice(words) for _ in range(body - prompt))
        records.append(
            {
                "messages": [
                    {"role": "user", "content": f"{index}: {question}"},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return records


def prepare(out: Path, count: int, seed: int) -> None:
    import hashlib
    import shutil

    sys.path.insert(0, str(ROOT / "services"))
    from tuneforge.curation.pipeline import CurationOptions, InputFile, curate
    from tuneforge.models.embedded import build_qwen2_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_qwen2_tokenizer()
    tokenizer.save_pretrained(out / "tokenizer")
    raw = out / "records.jsonl"
    raw.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _records(count, seed)))
    item = InputFile(raw.name, raw, hashlib.sha256(raw.read_bytes()).hexdigest())
    started = time.perf_counter()
    result = curate(
        [item],
        tokenizer,
        CurationOptions(max_seq_len=4096, length_policy="truncate", validation_fraction=0.02, scrub_pii=False),
        out / "dataset",
        out / "work",
    )
    if not result.ok:
        raise SystemExit(f"curation failed: {result}")
    raw.unlink()
    shutil.rmtree(out / "work", ignore_errors=True)
    import pyarrow.parquet as pq

    lengths = [
        len(x)
        for f in sorted((out / "dataset").glob("train-*.parquet"))
        for x in pq.read_table(f)["input_ids"].to_pylist()
    ]
    lengths.sort()
    print(
        "PREPARED",
        json.dumps(
            {
                "samples": len(lengths),
                "tokens": sum(lengths),
                "median_tokens": lengths[len(lengths) // 2],
                "max_tokens": lengths[-1],
                "curation_s": round(time.perf_counter() - started, 1),
                "dir": str(out),
            }
        ),
        flush=True,
    )


# -- run (GPU) ---------------------------------------------------------------------------------------------------


def build_model_dir(path: Path, tokenizer_dir: Path, layers: int) -> float:
    """A random-weight Qwen2.5-7B-architecture model directory (bf16 safetensors + the real tokenizer), once."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    if (path / "config.json").exists():
        return 0.0
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(qwen25_7b_config(layers), dtype=torch.bfloat16)
    partial = path.with_name(path.name + ".partial")
    model.save_pretrained(partial, safe_serialization=True)
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, partial / file.name)
    partial.rename(path)
    del model
    torch.cuda.empty_cache()
    return time.perf_counter() - started


def worker(config_path: Path) -> None:
    """One configuration inside torchrun: `train_worker` itself, its metrics summarised as RESULT."""
    import torch

    sys.path.insert(0, str(ROOT / "services"))
    from tuneforge.training.trainer import init_process_group_from_env, train_worker

    job = json.loads(config_path.read_text())
    if job["memory_cap_gib"]:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, job["memory_cap_gib"] * 2**30 / total))
    init_process_group_from_env()
    steps: list[dict] = []
    profiler = None
    if job.get("profile"):
        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])

    def report(metrics: dict, checkpoint: object) -> None:
        steps.append(dict(metrics))
        # steps are reported one behind the device: profile from the end of the warm-up for `profile` steps
        if profiler is not None and len(steps) == job["warmup"]:
            profiler.start()
        elif profiler is not None and len(steps) == job["warmup"] + job["profile"]:
            profiler.stop()
            seconds = sum(s["step_seconds"] for s in steps[job["warmup"] :])
            busy = sum(e.self_device_time_total for e in profiler.key_averages()) / 1e6
            print(f"PROFILE {job['name']}: {job['profile']} steps, {seconds:.3f} s wall, {busy:.3f} s of kernels")
            table = profiler.key_averages().table(
                sort_by="self_device_time_total", row_limit=int(job["profile_rows"]), max_name_column_width=110
            )
            print(table, flush=True)

    started = time.perf_counter()
    train_worker(job["train"], report=report)
    timed = steps[job["warmup"] :]
    tokens = sum(s["tokens"] for s in timed)
    seconds = sum(s["step_seconds"] for s in timed)
    result = {
        "trainer": "tuneforge train_worker",
        "config": job["name"],
        "overrides": job["overrides"],
        "memory_cap_gib": job["memory_cap_gib"],
        "tokens_per_s": round(tokens / seconds) if seconds else 0,
        "step_s": round(seconds / max(len(timed), 1), 3),
        "tokens_per_step": round(tokens / max(len(timed), 1)),
        "row_fill": round(
            tokens / max(len(timed), 1) / (job["train"]["max_seq_len"] * job["train"]["micro_batch_size"]), 3
        ),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "host_peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1),
        "resumed_from_step": steps[0]["step"] - 1,
        "steps": len(steps),
        "first_step_s": round(steps[0]["step_seconds"], 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "losses": [round(s["loss"], 4) for s in steps],
        "step_seconds": [round(s["step_seconds"], 3) for s in steps],
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }
    print("RESULT", json.dumps(result), flush=True)


def _result_line(output: str) -> dict | None:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT ") :]) if lines else None


def _run(command: list[str], timeout: float, env: dict | None = None) -> tuple[dict | None, str]:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        return None, f"timed out after {timeout:.0f} s: {str(exc.stderr)[-1500:]}"
    result = _result_line(done.stdout)
    if result:
        profile = done.stdout.find("PROFILE ")  # the worker's kernel table, when asked for
        return result, done.stdout[profile : done.stdout.find("RESULT ", profile)] if profile >= 0 else ""
    return None, done.stdout[-1500:] + done.stderr[-3000:]


def _worker_run(job: dict, timeout: float) -> dict | None:
    path = Path(f"/tmp/tuneforge-bench-{job['name']}.json")
    path.write_text(json.dumps(job))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    command += [str(Path(__file__).resolve()), "worker", "--job", str(path)]
    result, tail = _run(command, timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if job.get("profile") and result:
        print(tail)
    label = job["name"] + (" resumed" if job["train"].get("resume_from") else "")
    print("RESULT" if result else "FAILED", f"tuneforge {label}", json.dumps(result) if result else tail, flush=True)
    return result


def run(args: argparse.Namespace) -> None:
    data = Path(args.data)
    model_dir = Path(args.model_dir) if args.model_dir else Path("/tmp") / f"qwen25-7b-arch-{args.layers}l"
    build_s = build_model_dir(model_dir, data / "tokenizer", args.layers)
    print("MODEL", json.dumps({"dir": str(model_dir), "layers": args.layers, "build_s": round(build_s, 1)}), flush=True)
    rows: list[tuple[str, dict | None]] = []
    if args.reference:
        targets = ",".join(ALL7)
        for mode, extra in (("padded", ["--batch", "4", "--gc", "1"]), ("packed", ["--batch", "1", "--gc", "0"])):
            command = [sys.executable, args.reference, "--mode", mode, "--targets", targets, "--r", "16"]
            command += ["--dropout", "0", "--steps", str(args.reference_steps), "--layers", str(args.layers), *extra]
            result, tail = _run(command, args.timeout)
            print(
                "RESULT" if result else "FAILED",
                f"reference {mode}",
                json.dumps(result) if result else tail,
                flush=True,
            )
            rows.append((f"reference {mode}", result))
    for name in args.configs.split(","):
        overrides, cap = CONFIGS[name]
        train = {
            "base_model_path": str(model_dir),
            "dataset_dir": str(data / "dataset"),
            "output_dir": f"/tmp/tuneforge-bench-{name}",
            "lora_r": 16,
            "lora_alpha": 16,
            "lora_dropout": 0.0,
            "target_modules": ALL7,
            "max_steps": args.steps,
            "max_seq_len": 4096,
            "micro_batch_size": 1,
            "warmup_ratio": 0.0,
            "checkpoint_every_steps": 10**9,  # the final step's checkpoint only
            **overrides,
        }
        warmup = min(args.warmup, train["max_steps"] - 1)
        job = {"name": name, "overrides": overrides, "memory_cap_gib": cap, "warmup": warmup, "train": train}
        job |= {"profile": args.profile, "profile_rows": args.profile_rows}
        result = _worker_run(job, args.timeout)
        rows.append((f"tuneforge {name}", result))
        if name in RESUMED and result is not None:
            last = Path(train["output_dir"]) / f"checkpoint-{train['max_steps']:06d}"
            resumed = {**train, "resume_from": str(last), "max_steps": train["max_steps"] + args.resume_steps}
            rows.append(
                (f"tuneforge {name} resumed", _worker_run({**job, "warmup": 0, "train": resumed}, args.timeout))
            )
    padded = next((r for n, r in rows if n == "reference padded"), None)
    packed = next((r for n, r in rows if n == "reference packed"), None)
    print(f"\n{'run':<40} {'tokens/s':>9} {'peak GiB':>9} {'vs padded':>10} {'vs packed':>10} {'host GiB':>9}")
    for name, result in rows:
        if result is None:
            print(f"{name:<40} {'failed':>9}")
            continue
        tps = result["tokens_per_s"]
        ratio = [f"{tps / ref['tokens_per_s']:.2f}x" if ref else "-" for ref in (padded, packed)]
        host = result.get("host_peak_gib", "-")
        print(f"{name:<40} {tps:>9,} {result['peak_gib']:>9} {ratio[0]:>10} {ratio[1]:>10} {host:>9}")


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="CPU: tokenizer + curated dataset version")
    p.add_argument("--out", default=".gpu/bench")
    p.add_argument("--records", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="GPU: the production loop per configuration, beside the reference")
    r.add_argument("--data", default=".gpu/bench")
    r.add_argument("--model-dir", default="")
    r.add_argument("--layers", type=int, default=28)
    r.add_argument("--configs", default="bf16,fp8,bf16-cap22", help=f"comma-separated: {', '.join(CONFIGS)}")
    r.add_argument("--steps", type=int, default=10)
    r.add_argument("--warmup", type=int, default=2, help="first steps left out (compilation)")
    r.add_argument("--reference", default="", help="path of lora_reference.py (left out when empty)")
    r.add_argument("--reference-steps", type=int, default=8)
    r.add_argument("--resume-steps", type=int, default=1, help="steps a resumed configuration runs on")
    r.add_argument("--timeout", type=float, default=400)
    r.add_argument("--profile", type=int, default=0, help="profile this many steps after the warm-up (CUDA kernels)")
    r.add_argument("--profile-rows", type=int, default=25, help="rows of the profile's kernel table")
    w = sub.add_parser("worker", help="(internal) one configuration under torchrun")
    w.add_argument("--job", required=True)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(Path(args.out), args.records, args.seed)
    elif args.command == "run":
        run(args)
    else:
        worker(Path(args.job))
    return 0


if __name__ == "__main__":
    sys.exit(main())
