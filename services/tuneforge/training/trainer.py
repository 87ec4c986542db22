"""The per-worker training function: LoRA (PEFT) or full fine-tuning over a dataset version.

`train_worker(config)` runs under Ray Train (`TorchTrainer`) and equally on its own — one process,
or one per GPU under `torchrun` — because Ray cannot be installed everywhere (the GPU benchmark
machines, for one). It reads the version's Parquet shards, shards rows across ranks, packs samples
into rows with per-document attention, computes the assistant-only loss in chunks, steps AdamW
with linear warm-up and cosine decay, and every `checkpoint_every_steps` saves the adapter
(safetensors) with the optimizer and scheduler state. Resuming from a checkpoint replays the same
data order and continues at the saved step, so an interrupted run ends where an uninterrupted one
does.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from tuneforge.training.packing import PackedBatch, Sample, collate, pack_rows
from tuneforge.training.step import packed_loss

CHECKPOINT_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"


@dataclass
class TrainConfig:
    """Everything one training run needs; plain values so it travels to Ray workers as JSON."""

    base_model_path: str
    dataset_dir: str
    output_dir: str
    method: str = "lora"
    lora_r: int = 64
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    #: `fp8`: the frozen base weights' matmuls in float8 (see `tuneforge.training.fp8`).
    base_precision: str = "bf16"
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = 0
    micro_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_seq_len: int = 4096
    seed: int = 0
    train_on_prompt: bool = False
    gradient_checkpointing: bool = False
    #: Pack samples into full rows (per-document attention); off: one sample per row, padded.
    packing: bool = True
    eval_every_steps: int = 0
    checkpoint_every_steps: int = 0
    resume_from: str = ""
    loss_chunk: int = 4096
    trust_remote_code: bool = False
    #: DeepSpeed ZeRO stage (2 or 3; 0 = plain data parallel), for full fine-tuning across workers.
    deepspeed_stage: int = 0
    offload_optimizer: bool = False
    offload_parameters: bool = False
    #: Failure drill: the worker process dies right after this step, once per output directory
    #: (a marker file remembers it), so operators and tests can watch a run resume. 0 = never.
    crash_after_step: int = 0


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(value: float, op: str = "sum") -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    return float(tensor.item())


def load_samples(dataset_dir: Path, split: str) -> list[Sample]:
    """Every sample of a split of a dataset version (token ids and loss masks from curation)."""
    samples = []
    for shard in sorted(dataset_dir.glob(f"{split}-*.parquet")):
        table = pq.read_table(shard, columns=["input_ids", "loss_mask"])
        for ids, mask in zip(table.column("input_ids").to_pylist(), table.column("loss_mask").to_pylist(), strict=True):
            samples.append(Sample(ids, mask))
    return samples


def epoch_batches(
    samples: list[Sample], config: TrainConfig, epoch: int, rank: int, world: int, pad_id: int
) -> list[list[list[Sample]]]:
    """This rank's micro-batches (lists of packed rows) for one epoch, in a seeded order."""
    order = list(range(len(samples)))
    random.Random(config.seed * 1_000_003 + epoch).shuffle(order)  # noqa: S311 - data order, not secrets
    if config.packing:
        rows = pack_rows((samples[i] for i in order), config.max_seq_len)
    else:
        rows = [row for i in order for row in pack_rows([samples[i]], config.max_seq_len)]  # one sample a row
    mine = rows[rank::world]
    size = config.micro_batch_size
    return [mine[i : i + size] for i in range(0, len(mine), size)]


def _build_model(config: TrainConfig, device: torch.device) -> tuple[Any, Any, bool]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.training.attention import register_varlen_attention, varlen_available

    tokenizer = AutoTokenizer.from_pretrained(config.base_model_path, trust_remote_code=config.trust_remote_code)
    varlen = device.type == "cuda" and varlen_available()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        config.base_model_path,
        dtype=dtype,
        trust_remote_code=config.trust_remote_code,
        attn_implementation=register_varlen_attention() if varlen else "sdpa",
    ).to(device)
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets: Any = config.target_modules
        if targets == ["all-linear"]:
            targets = "all-linear"
        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=targets,
                task_type="CAUSAL_LM",
            ),
        )
        if config.base_precision == "fp8":
            from tuneforge.training.fp8 import convert_lora_base_layers, fp8_supported

            if not fp8_supported(device):
                raise RuntimeError(
                    f"base_precision fp8 needs a GPU with float8 tensor cores (compute capability 8.9+, e.g. RTX 4090, "
                    f"H100); {torch.cuda.get_device_name(device)} has none: use bf16"
                )
            convert_lora_base_layers(model)
    return model, tokenizer, varlen


def deepspeed_config(config: TrainConfig, device: torch.device) -> dict[str, Any]:
    """The DeepSpeed config a job spec implies (ZeRO stage, offload, precision, accumulation)."""
    zero: dict[str, Any] = {"stage": config.deepspeed_stage, "overlap_comm": device.type == "cuda"}
    if config.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device.type == "cuda"}
    if config.offload_parameters and config.deepspeed_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": device.type == "cuda"}
    return {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "zero_optimization": zero,
        "bf16": {"enabled": device.type == "cuda"},
        "zero_allow_untested_optimizer": True,  # the client AdamW below
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _full_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """The whole model's weights, gathered from ZeRO-3 shards (every rank must call it; rank 0 gets them).

    DeepSpeed's own consolidation, the one `save_16bit_model` and accelerate use: a module's
    `state_dict()` under ZeRO-3 holds only empty placeholders.
    """
    if engine is None or engine.zero_optimization_stage() != 3:
        return None
    return engine._zero3_consolidated_16bit_state_dict()


def _trainable(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def save_checkpoint(
    model: Any,
    optimizer: Any,
    scheduler: Any,
    step: int,
    path: Path,
    metrics: dict[str, float],
    config: TrainConfig,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Adapter (or model) weights as safetensors, optimizer/scheduler state, and the step, in `path`.

    Under DeepSpeed the optimizer state is sharded across ranks and not saved here: a DeepSpeed run
    resumed from this checkpoint restarts AdamW's moments from the saved weights.
    """
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
    if not config.deepspeed_stage:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path / OPTIMIZER_STATE)
    (path / CHECKPOINT_STATE).write_text(json.dumps({"step": step, "metrics": metrics, "config": asdict(config)}))
    return path


def checkpoint_step(path: Path) -> int:
    """The step a complete checkpoint was saved at (its state file is written last), or -1."""
    try:
        return int(json.loads((path / CHECKPOINT_STATE).read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint under `output_dir`, or None."""
    complete = [(checkpoint_step(p), p) for p in output_dir.glob("checkpoint-*") if checkpoint_step(p) >= 0]
    return max(complete)[1] if complete else None


def _load_checkpoint(model: Any, optimizer: Any, scheduler: Any, path: Path) -> int:
    from safetensors.torch import load_file

    state = json.loads((path / CHECKPOINT_STATE).read_text())
    weights = path / "adapter_model.safetensors"
    if weights.exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(weights))
    else:
        model.load_state_dict(load_file(path / "model.safetensors"), strict=False)
    if (path / OPTIMIZER_STATE).exists():
        # our own file, written by save_checkpoint; weights_only keeps it to tensors and plain values
        saved = torch.load(path / OPTIMIZER_STATE, weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    return int(state["step"])


def _evaluate(
    model: Any,
    samples: list[Sample],
    config: TrainConfig,
    pad_id: int,
    varlen: bool,
    device: torch.device,
    rank: int,
    world: int,
) -> float | None:
    if not samples:
        return None
    rows = pack_rows(samples, config.max_seq_len)[rank::world]
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), config.micro_batch_size):
            batch = collate(
                rows[start : start + config.micro_batch_size], config.max_seq_len, pad_id, config.train_on_prompt
            ).to(device)
            loss_sum, n = packed_loss(model, batch, varlen=varlen, chunk_size=config.loss_chunk)
            total += float(loss_sum)
            count += n
    model.train()
    total, count = _all_reduce(total), _all_reduce(float(count))
    return total / count if count else None


Reporter = Callable[[dict[str, Any], Path | None], None]


def _print_reporter(metrics: dict[str, Any], checkpoint: Path | None) -> None:
    print(json.dumps({**metrics, **({"checkpoint": str(checkpoint)} if checkpoint else {})}), flush=True)


def train_worker(config_values: dict[str, Any], report: Reporter | None = None) -> dict[str, Any]:
    """Trains on this worker; returns the final metrics. `report(metrics, checkpoint_dir)` sees every step."""
    config = TrainConfig(**config_values)
    report = report or _print_reporter
    rank, world = _rank_world()
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    )
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    model, tokenizer, varlen = _build_model(config, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dataset = Path(config.dataset_dir)
    train = load_samples(dataset, "train")
    validation = load_samples(dataset, "validation")
    if not train:
        raise ValueError(f"dataset {dataset} has no training records")

    per_epoch = _all_reduce(len(epoch_batches(train, config, 0, rank, world, pad_id)), "min")
    steps_per_epoch = max(1, int(per_epoch) // config.gradient_accumulation_steps)
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    optimizer = torch.optim.AdamW(_trainable(model), lr=config.learning_rate, weight_decay=config.weight_decay)
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, int(total_steps * config.warmup_ratio), total_steps)
    step = 0
    if config.resume_from:
        step = _load_checkpoint(model, optimizer, scheduler, Path(config.resume_from))
    engine = None
    if config.deepspeed_stage:
        import deepspeed

        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(config, device)
        )
        model = engine.module

    def micro_batches() -> Iterator[PackedBatch]:
        epoch = 0
        while True:
            batches = epoch_batches(train, config, epoch, rank, world, pad_id)[: int(per_epoch)]
            for rows in batches:
                yield collate(rows, config.max_seq_len, pad_id, config.train_on_prompt)
            epoch += 1

    stream = micro_batches()
    for _ in range(step * config.gradient_accumulation_steps):  # replay the data order up to the checkpoint
        next(stream)
    model.train()
    metrics: dict[str, Any] = {}
    while step < total_steps:
        started = time.perf_counter()
        batches = [next(stream).to(device) for _ in range(config.gradient_accumulation_steps)]
        step_tokens = _all_reduce(float(sum(b.num_loss_tokens for b in batches)))
        loss_total = 0.0
        for batch in batches:
            loss_sum, _ = packed_loss(model, batch, varlen=varlen, chunk_size=config.loss_chunk)
            # gradients are averaged over ranks: scale so the result is the mean over every trained token
            scaled = loss_sum * world / max(step_tokens, 1.0)
            if engine is not None:
                engine.backward(scaled, scale_wrt_gas=False)
                engine.step()  # DeepSpeed reduces, and steps the optimizer at the accumulation boundary
            else:
                scaled.backward()
            loss_total += float(loss_sum.detach())
        if engine is None:
            if world > 1:
                for parameter in _trainable(model):
                    if parameter.grad is not None:
                        dist.all_reduce(parameter.grad)
                        parameter.grad /= world
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.perf_counter() - started
        tokens = _all_reduce(float(sum(b.num_tokens for b in batches)))
        metrics = {
            "step": step,
            "total_steps": total_steps,
            "loss": _all_reduce(loss_total) / max(step_tokens, 1.0),
            "learning_rate": scheduler.get_last_lr()[0],
            "tokens_per_second": tokens / elapsed if elapsed > 0 else 0.0,
        }
        if (config.eval_every_steps and step % config.eval_every_steps == 0) or step == total_steps:
            value = _evaluate(model, validation, config, pad_id, varlen, device, rank, world)
            if value is not None:
                metrics["validation_loss"] = value
        checkpoint = None
        if (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0) or step == total_steps:
            gathered = _full_state_dict(engine)  # every rank takes part in gathering ZeRO-3 shards
            if rank == 0:
                path = Path(config.output_dir) / f"checkpoint-{step:06d}"
                checkpoint = save_checkpoint(model, optimizer, scheduler, step, path, metrics, config, gathered)
        report(metrics, checkpoint)
        if config.crash_after_step and step == config.crash_after_step:
            marker = Path(config.output_dir) / f".crashed-after-{step}"
            if rank == 0 and not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                os._exit(17)  # like a killed worker: no cleanup, no exception handling
    return metrics
