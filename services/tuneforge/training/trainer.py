"""The per-worker training function: LoRA (PEFT) or full fine-tuning over a dataset version.

`train_worker(config)` runs under Ray Train (`TorchTrainer`) and equally on its own — one process,
or one per GPU under `torchrun` (`python -m tuneforge.training.trainer --config job.json`) —
because Ray cannot be installed everywhere (the GPU benchmark machines, for one). It reads the
version's Parquet shards, packs samples into rows with per-document attention (once per epoch),
shards rows across ranks, computes the assistant-only loss in chunks, steps AdamW with linear
warm-up and cosine decay, and every `checkpoint_every_steps` saves the adapter (safetensors) with
the optimizer and scheduler state. Resuming from a checkpoint replays the same data order and
continues at the saved step, so an interrupted run ends where an uninterrupted one does.

Inside a process group (Ray Train sets up gloo on CPU and NCCL on GPU, even for one worker;
torchrun likewise) gradients of two or more ranks are synchronised by DDP — bucketed and overlapped
with the backward pass — and every collective runs on the training device, since NCCL refuses CPU
tensors. Each step's loss and token counts are read back one step late, so the host never drains
the device's queue between steps. DeepSpeed
(ZeRO-2/3) takes DDP's place for full fine-tuning when the spec asks for it. On GPU the decoder
layers are compiled (`torch_compile`, on by default there), the forward pass runs under bf16
autocast, and AdamW is the fused CUDA kernel.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from tuneforge.training.packing import PackedBatch, Sample, collate, pack_rows, to_device
from tuneforge.training.spec import DEFAULT_LEARNING_RATE, DEFAULT_LORA_TARGETS, spec_defaults
from tuneforge.training.step import decoder_and_head, packed_loss

_SPEC = spec_defaults()
CHECKPOINT_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"


@dataclass
class TrainConfig:
    """Everything one training run needs; plain values so it travels to Ray workers as JSON."""

    base_model_path: str
    dataset_dir: str
    output_dir: str
    # The fields a job spec sets take their defaults from the spec (training.spec), never their own.
    method: str = _SPEC["method"]
    lora_r: int = _SPEC["lora_r"]
    lora_alpha: float = _SPEC["lora_alpha"]
    lora_dropout: float = _SPEC["lora_dropout"]
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    #: `fp8`: the frozen base weights' matmuls in float8 (see `tuneforge.training.fp8`).
    base_precision: str = _SPEC["base_precision"]
    learning_rate: float = DEFAULT_LEARNING_RATE["lora"]
    epochs: float = _SPEC["epochs"]
    max_steps: int = _SPEC["max_steps"]
    micro_batch_size: int = _SPEC["micro_batch_size"]
    gradient_accumulation_steps: int = _SPEC["gradient_accumulation_steps"]
    warmup_ratio: float = _SPEC["warmup_ratio"]
    weight_decay: float = _SPEC["weight_decay"]
    #: Tokens per row, resolved (a spec's 0 means the dataset version's, which the service fills in).
    max_seq_len: int = 4096
    seed: int = _SPEC["seed"]
    train_on_prompt: bool = _SPEC["train_on_prompt"]
    gradient_checkpointing: bool = _SPEC["gradient_checkpointing"]
    #: Pack samples into full rows (per-document attention); off: one sample per row, padded.
    packing: bool = _SPEC["packing"]
    eval_every_steps: int = _SPEC["eval_every_steps"]
    checkpoint_every_steps: int = _SPEC["checkpoint_every_steps"]
    resume_from: str = ""
    loss_chunk: int = 4096
    #: `torch.compile` each decoder layer (fuses norms, RoPE, SwiGLU and the LoRA adds). None = on when
    #: training on GPU without DeepSpeed, where it is stable; off on CPU, where compiling costs more than it saves.
    torch_compile: bool | None = _SPEC["torch_compile"]
    trust_remote_code: bool = False
    #: DeepSpeed ZeRO stage (2 or 3; 0 = plain data parallel), for full fine-tuning across workers.
    deepspeed_stage: int = _SPEC["deepspeed_stage"]
    offload_optimizer: bool = _SPEC["offload_optimizer"]
    offload_parameters: bool = _SPEC["offload_parameters"]
    #: `bf16`: ZeRO keeps master weights, gradients and AdamW moments in bf16 (GPU only): with ZeRO-3
    #: offload, 12 instead of 20 host bytes per parameter in DeepSpeed's buffers (93 instead of 154 GB
    #: for a 7.6B model), at the cost of
    #: updates smaller than bf16's resolution (at lr 1e-5 only ~12% of a steady update survives, ~50% at
    #: 5e-5: measured with DeepSpeed's CPU Adam). `fp32`: the usual mixed-precision master copy.
    optimizer_precision: str = _SPEC["optimizer_precision"]
    #: Failure drill: the worker process dies right after this step, once per output directory
    #: (a marker file remembers it), so operators and tests can watch a run resume. 0 = never.
    crash_after_step: int = 0


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_on_device(values: list[float | torch.Tensor], device: torch.device) -> torch.Tensor:
    """Sums of `values` over all ranks, computed and left on the training device (NCCL refuses CPU tensors)."""
    # host numbers reach the device without blocking (packing.to_device): no wait for the queued work
    tensor = torch.stack([to_device(torch.as_tensor(v, dtype=torch.float64), device).double() for v in values])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _all_reduce(values: list[float | torch.Tensor], device: torch.device) -> list[float]:
    """Sums of `values` over all ranks, on the host (one device sync)."""
    return _all_reduce_on_device(values, device).tolist()


@dataclass(frozen=True)
class _QueuedStep:
    """A step whose work is queued on the device: its (loss, tokens, trained tokens) sums are read later."""

    step: int
    sums: torch.Tensor
    learning_rate: float


class TrainingOutOfMemory(RuntimeError):
    """The device ran out of memory at a step; the message says where and what to change."""


def _out_of_memory(config: TrainConfig, step: int, rows: int, rank: int, device: torch.device) -> TrainingOutOfMemory:
    hints = []
    if not config.gradient_checkpointing:
        hints.append("turn on gradient_checkpointing")
    hints.append(f"use a smaller max_seq_len (rows are {config.max_seq_len} tokens)")
    if config.micro_batch_size > 1:
        hints.append("lower micro_batch_size (raise gradient_accumulation_steps to keep the batch)")
    if config.method == "lora" and config.base_precision != "fp8":
        hints.append("use base_precision fp8 (LoRA on Ada/Hopper GPUs)")
    if config.deepspeed_stage != 3 or not (config.offload_optimizer and config.offload_parameters):
        hints.append("use DeepSpeed ZeRO-3 with offload_optimizer and offload_parameters")
    where = ""
    if device.type == "cuda":
        allowed = torch.cuda.get_device_properties(device).total_memory
        where = f", {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB peak of {allowed / 2**30:.1f} GiB"
    return TrainingOutOfMemory(
        f"out of GPU memory at step {step} on rank {rank} (micro-batch of {rows} row(s) x {config.max_seq_len} "
        f"tokens{where}); " + "; or ".join(hints)
    )


def load_samples(dataset_dir: Path, split: str) -> list[Sample]:
    """Every sample of a split of a dataset version (token ids and loss masks from curation)."""
    samples = []
    for shard in sorted(dataset_dir.glob(f"{split}-*.parquet")):
        table = pq.read_table(shard, columns=["input_ids", "loss_mask"])
        for ids, mask in zip(table.column("input_ids").to_pylist(), table.column("loss_mask").to_pylist(), strict=True):
            samples.append(Sample(ids, mask))
    return samples


class EpochPlan:
    """This rank's micro-batches (lists of packed rows), epoch after epoch, in a seeded order.

    Each epoch shuffles the samples with its own seed, packs them (best-fit-decreasing; the shuffle
    decides among equal lengths) and shuffles the rows, once: counting steps, training and replaying
    the data order on resume all read the same plan. Every rank packs the same rows and takes an
    equal share (a remainder smaller than the world size waits for the next epoch's packing), so all
    ranks run the same number of steps without asking each other.
    """

    def __init__(self, samples: list[Sample], config: TrainConfig, rank: int, world: int) -> None:
        self.samples, self.config, self.rank, self.world = samples, config, rank, world
        self._epoch, self._batches = -1, []  # one epoch's plan at a time

    def batches(self, epoch: int) -> list[list[list[Sample]]]:
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._plan(epoch)
        return self._batches

    def _plan(self, epoch: int) -> list[list[list[Sample]]]:
        config = self.config
        rng = random.Random(config.seed * 1_000_003 + epoch)  # noqa: S311 - data order, not secrets
        order = list(range(len(self.samples)))
        rng.shuffle(order)
        if config.packing:
            rows = pack_rows([self.samples[i] for i in order], config.max_seq_len)
            rng.shuffle(rows)
        else:  # one sample a row, padded
            rows = [row for i in order for row in pack_rows([self.samples[i]], config.max_seq_len)]
        mine = rows[: len(rows) - len(rows) % self.world][self.rank :: self.world]
        size = config.micro_batch_size
        return [mine[i : i + size] for i in range(0, len(mine), size)]

    def stream(self, skip: int) -> Iterator[list[list[Sample]]]:
        """Micro-batches from the start of epoch 0 on, endlessly, after skipping the first `skip`."""
        epoch = 0
        while True:
            batches = self.batches(epoch)
            if not batches:
                raise ValueError(
                    f"dataset {self.config.dataset_dir} packs into fewer rows than there are workers ({self.world})"
                )
            yield from batches[skip:]
            skip = max(0, skip - len(batches))
            epoch += 1


def _build_model(config: TrainConfig, device: torch.device) -> tuple[Any, Any, bool]:
    """The (PEFT-wrapped) model on `device`, its tokenizer, and whether attention is varlen.

    A full fine-tune resumed from a checkpoint reads its weights from there (the checkpoint is a
    complete model directory), so the base weights are never loaded twice. Under ZeRO-3 the model
    stays on the CPU: DeepSpeed partitions it (and offloads it, if asked) without it ever being whole
    on the GPU.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.training.attention import register_varlen_attention, varlen_available

    tokenizer = AutoTokenizer.from_pretrained(config.base_model_path, trust_remote_code=config.trust_remote_code)
    weights = config.base_model_path
    if config.method == "full" and config.resume_from and (Path(config.resume_from) / "model.safetensors").exists():
        weights = config.resume_from
    varlen = device.type == "cuda" and varlen_available()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    zero3 = None
    if config.deepspeed_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        # while this object lives, from_pretrained builds the model under deepspeed.zero.Init: each weight
        # goes straight into its partition (on the CPU with offload), never whole onto the GPU
        zero3 = HfDeepSpeedConfig(deepspeed_config(config, device))
    model = AutoModelForCausalLM.from_pretrained(
        weights,
        dtype=dtype,
        trust_remote_code=config.trust_remote_code,
        attn_implementation=register_varlen_attention() if varlen else "sdpa",
    )
    del zero3  # the partitioned model keeps what it needs; deepspeed.initialize gets the config again
    if config.deepspeed_stage != 3:
        model = model.to(device)
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
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the bf16 base weights just freed
    if compiles(config, device):
        for layer in decoder_and_head(model)[0].layers:
            layer.compile()
    return model, tokenizer, varlen


def compiles(config: TrainConfig, device: torch.device) -> bool:
    """Whether this run compiles its decoder layers (`torch_compile`, or by default: on GPU without DeepSpeed)."""
    if config.torch_compile is not None:
        return config.torch_compile
    return device.type == "cuda" and not config.deepspeed_stage


class PackedLossModule(torch.nn.Module):
    """The model and its chunked loss as one module, so DDP sees (and hooks) the whole forward pass."""

    def __init__(self, model: Any, *, varlen: bool, chunk_size: int) -> None:
        super().__init__()
        self.model, self.varlen, self.chunk_size = model, varlen, chunk_size

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return packed_loss(self.model, batch, varlen=self.varlen, chunk_size=self.chunk_size)[0]


def _data_parallel(module: PackedLossModule) -> torch.nn.Module:
    """`module` under DDP when it trains on more than one rank (bucketed all-reduce overlapped with backward).

    A process group of one rank (Ray Train's single GPU worker, `torchrun --nproc_per_node 1`) has no
    gradients to exchange, so the module is not wrapped — as `ray.train.torch.prepare_model` does. Frozen
    weights are left out of DDP's start-up broadcast: every rank loaded the same base.
    """
    if _rank_world()[1] == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    frozen = [name for name, parameter in module.named_parameters() if not parameter.requires_grad]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
    with warnings.catch_warnings():
        # torch 2.13 renames it, 2.11 (GPU images) has only this name; False: buffers are never synced
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(module, device_ids=None, broadcast_buffers=False, gradient_as_bucket_view=True)


def deepspeed_config(config: TrainConfig, device: torch.device) -> dict[str, Any]:
    """The DeepSpeed config a job spec implies (ZeRO stage, offload, precision, accumulation).

    With the optimizer offloaded, DeepSpeed builds its own AdamW (its CPU Adam kernel, the one that
    makes offload fast); otherwise it wraps the client AdamW the trainer passes.
    """
    zero: dict[str, Any] = {"stage": config.deepspeed_stage, "overlap_comm": device.type == "cuda"}
    # Pinned host buffers copy faster, but with the parameters offloaded as well (the recipe for cards of
    # 24 GiB, where host memory is what runs out) DeepSpeed pins every parameter shard separately and torch
    # rounds each pinned block up to a power of two and caches it: ~27 GiB more for a 7B model's 14 GiB of
    # weights. There the buffers stay pageable.
    offload_params = config.offload_parameters and config.deepspeed_stage == 3
    pin = device.type == "cuda" and not offload_params
    if config.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    half_states = {}
    if config.optimizer_precision == "bf16" and device.type == "cuda":
        half_states = {"bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}
    values: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "zero_optimization": zero,
        "bf16": {"enabled": device.type == "cuda", **half_states},
        "zero_allow_untested_optimizer": True,  # the client AdamW below
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if config.offload_optimizer:
        values["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": config.learning_rate, "weight_decay": config.weight_decay, "betas": [0.9, 0.999]},
        }
    return values


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

    The random generators' state is saved too, so a resumed run's dropout draws what the uninterrupted
    run's did: without DeepSpeed a resumed run ends bit for bit where an uninterrupted one does (same
    device and kernels). Under DeepSpeed the optimizer state is sharded across ranks and not saved here
    (the scheduler's is): a DeepSpeed run resumed from this checkpoint restarts AdamW's moments from
    the saved weights and continues the learning-rate schedule where it was.
    """
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
    state: dict[str, Any] = {"scheduler": scheduler.state_dict(), "rng": _rng_state()}
    if not config.deepspeed_stage:
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, path / OPTIMIZER_STATE)
    record = {"step": step, "metrics": metrics, "config": asdict(config), "weights": weights_digest(path)}
    (path / CHECKPOINT_STATE).write_text(json.dumps(record))  # last: its presence marks the checkpoint complete
    return path


def weights_digest(path: Path) -> dict[str, Any]:
    """SHA-256 and size of a checkpoint's weights (its safetensors files in name order, one or sharded).

    Computed once, when the checkpoint is saved (the files are still in the page cache), and kept in
    its state file, so listing checkpoints never re-reads gigabytes of weights.
    """
    hasher, size = hashlib.sha256(), 0
    for weights in sorted(path.glob("*.safetensors")):
        with weights.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(chunk)
        size += weights.stat().st_size
    return {"sha256": hasher.hexdigest() if size else "", "size_bytes": size}


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
    """Adapter weights, optimizer and scheduler state from `path`; returns its step.

    A full fine-tune's weights were already read from the checkpoint when the model was built.
    """
    from safetensors.torch import load_file

    state = json.loads((path / CHECKPOINT_STATE).read_text())
    weights = path / "adapter_model.safetensors"
    if weights.exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(weights))
    if (path / OPTIMIZER_STATE).exists():
        # our own file, written by save_checkpoint; weights_only keeps it to tensors and plain values
        saved = torch.load(path / OPTIMIZER_STATE, weights_only=True)
        if "optimizer" in saved:
            optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if "rng" in saved:
            _set_rng_state(saved["rng"])
    return int(state["step"])


def _rng_state() -> dict[str, Any]:
    """The random generators the training step draws from (dropout), so a resumed run draws what the
    uninterrupted one did. Rank 0's: every rank seeds alike and draws the same amounts (fixed-size rows)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _evaluate(
    model: Any, rows: list[list[Sample]], config: TrainConfig, pad_id: int, varlen: bool, device: torch.device
) -> float | None:
    """Mean loss per trained token over this rank's validation rows, summed over all ranks."""
    total = torch.zeros((), dtype=torch.float32, device=device)
    count = 0
    fixed_length = compiles(config, device)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), config.micro_batch_size):
            batch = collate(
                rows[start : start + config.micro_batch_size], config.max_seq_len, pad_id, config.train_on_prompt
            )
            if fixed_length:
                batch.max_seqlen = config.max_seq_len
            loss_sum, n = packed_loss(model, batch.to(device), varlen=varlen, chunk_size=config.loss_chunk)
            total += loss_sum
            count += n
    model.train()
    total_all, count_all = _all_reduce([total, count], device)
    return total_all / count_all if count_all else None


Reporter = Callable[[dict[str, Any], Path | None], None]


def _print_reporter(metrics: dict[str, Any], checkpoint: Path | None) -> None:
    print(json.dumps({**metrics, **({"checkpoint": str(checkpoint)} if checkpoint else {})}), flush=True)


def training_device() -> torch.device:
    """This worker's device: its GPU (`LOCAL_RANK`, as Ray Train and torchrun set it) or the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    torch.cuda.set_device(device)  # NCCL runs its collectives on the current device
    return device


def train_worker(config_values: dict[str, Any], report: Reporter | None = None) -> dict[str, Any]:
    """Trains on this worker; returns the final metrics. `report(metrics, checkpoint_dir)` sees every step."""
    config = TrainConfig(**config_values)
    report = report or _print_reporter
    rank, world = _rank_world()
    device = training_device()
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    model, tokenizer, varlen = _build_model(config, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dataset = Path(config.dataset_dir)
    train = load_samples(dataset, "train")
    if not train:
        raise ValueError(f"dataset {dataset} has no training records")
    validation_rows = pack_rows(load_samples(dataset, "validation"), config.max_seq_len)[rank::world]

    plan = EpochPlan(train, config, rank, world)
    steps_per_epoch = max(1, len(plan.batches(0)) // config.gradient_accumulation_steps)
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    warmup = int(total_steps * config.warmup_ratio)
    from transformers import get_cosine_schedule_with_warmup

    engine = None
    if config.deepspeed_stage:
        import deepspeed

        client = None
        if not config.offload_optimizer:
            client = torch.optim.AdamW(_trainable(model), lr=config.learning_rate, weight_decay=config.weight_decay)
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model,
            model_parameters=_trainable(model),
            optimizer=client,
            lr_scheduler=lambda built: get_cosine_schedule_with_warmup(built, warmup, total_steps),
            config=deepspeed_config(config, device),
        )
        model = engine.module
    else:
        optimizer = torch.optim.AdamW(
            _trainable(model),
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
            fused=device.type == "cuda",  # one kernel for all parameters instead of a dozen per tensor
        )
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    step = _load_checkpoint(model, optimizer, scheduler, Path(config.resume_from)) if config.resume_from else 0
    loss_module = PackedLossModule(model, varlen=varlen, chunk_size=config.loss_chunk)
    parallel = loss_module if engine is not None else _data_parallel(loss_module)
    fixed_length = compiles(config, device)  # one attention bound for every batch: no recompilation per batch

    gas = config.gradient_accumulation_steps
    stream = plan.stream(skip=step * gas)  # the data order up to the checkpoint, replayed without collating
    model.train()
    metrics: dict[str, Any] = {}
    observed = time.perf_counter()  # when the last reported step was seen to end

    def finish(done: _QueuedStep) -> None:
        """Reads a queued step's sums (waits for that step only), reports it, evaluates and checkpoints."""
        nonlocal metrics, observed
        loss_all, tokens_all, trained_all = done.sums.tolist()
        now = time.perf_counter()
        elapsed, observed = now - observed, now
        metrics = {
            "step": done.step,
            "total_steps": total_steps,
            "loss": loss_all / trained_all,
            "learning_rate": done.learning_rate,
            "tokens_per_second": tokens_all / elapsed if elapsed > 0 else 0.0,
            "tokens": tokens_all,
            "step_seconds": elapsed,
        }
        if device.type == "cuda":
            metrics["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if evaluates(done.step):
            value = _evaluate(model, validation_rows, config, pad_id, varlen, device)
            if value is not None:
                metrics["validation_loss"] = value
        checkpoint = None
        if checkpoints(done.step):
            gathered = _full_state_dict(engine)  # every rank takes part in gathering ZeRO-3 shards
            if rank == 0:
                path = Path(config.output_dir) / f"checkpoint-{done.step:06d}"
                checkpoint = save_checkpoint(model, optimizer, scheduler, done.step, path, metrics, config, gathered)
        report(metrics, checkpoint)
        if config.crash_after_step and done.step == config.crash_after_step:
            marker = Path(config.output_dir) / f".crashed-after-{done.step}"
            if rank == 0 and not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                os._exit(17)  # like a killed worker: no cleanup, no exception handling
        observed = time.perf_counter()  # evaluation and checkpointing are not the next step's time

    def evaluates(at: int) -> bool:
        return bool(config.eval_every_steps and at % config.eval_every_steps == 0) or at == total_steps

    def checkpoints(at: int) -> bool:
        return bool(config.checkpoint_every_steps and at % config.checkpoint_every_steps == 0) or at == total_steps

    queued: _QueuedStep | None = None
    while step < total_steps:
        batches = [collate(next(stream), config.max_seq_len, pad_id, config.train_on_prompt) for _ in range(gas)]
        # the step's trained tokens on all ranks, kept on the device: no host sync before the backward pass
        trained_tokens = _all_reduce_on_device([sum(b.num_loss_tokens for b in batches)], device)[0].clamp(min=1.0)
        loss_total = torch.zeros((), dtype=torch.float32, device=device)
        rows = max(b.input_ids.shape[0] for b in batches)
        try:
            for index, batch in enumerate(batches):
                if fixed_length:
                    batch.max_seqlen = config.max_seq_len
                batch = batch.to(device)
                accumulating = engine is None and parallel is not loss_module and index < gas - 1
                with parallel.no_sync() if accumulating else contextlib.nullcontext():
                    loss_sum = parallel(batch)
                    # DDP and DeepSpeed average gradients over ranks: scale so the result is the mean over
                    # every token trained in this step, on all ranks
                    scaled = loss_sum * (world / trained_tokens).float()
                    if engine is not None:
                        engine.backward(scaled, scale_wrt_gas=False)
                        engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary
                    else:
                        scaled.backward()
                loss_total += loss_sum.detach()
            if engine is None:
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError as exc:
            raise _out_of_memory(config, step + 1, rows, rank, device) from exc
        step += 1
        sums = _all_reduce_on_device([loss_total, sum(b.num_tokens for b in batches)], device)
        current = _QueuedStep(step, torch.cat([sums, trained_tokens.reshape(1)]), scheduler.get_last_lr()[0])
        # The previous step is read only now, with this one already queued on the device: the GPU never
        # waits for the host between steps. Steps that evaluate, checkpoint or end the run are read at once.
        if queued is not None:
            finish(queued)
        queued = current
        if evaluates(step) or checkpoints(step) or step == config.crash_after_step:
            finish(queued)
            queued = None
    if queued is not None:
        finish(queued)
    return metrics


def init_process_group_from_env() -> None:
    """Joins the process group torchrun describes (WORLD_SIZE etc.): NCCL on GPU, gloo on CPU, as Ray Train does."""
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return
    device = training_device()
    if device.type == "cuda":
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def main(argv: list[str] | None = None) -> int:
    """`torchrun --nproc_per_node N -m tuneforge.training.trainer --config train.json`: training without Ray.

    `train.json` holds TrainConfig's fields; rank 0 prints one JSON line a step.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tuneforge.training.trainer")
    parser.add_argument("--config", required=True, help="JSON file of TrainConfig fields")
    args = parser.parse_args(argv)
    values = json.loads(Path(args.config).read_text())
    init_process_group_from_env()
    rank = _rank_world()[0]
    try:
        metrics = train_worker(values, report=_print_reporter if rank == 0 else lambda metrics, checkpoint: None)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(json.dumps({"event": "finished", "metrics": metrics}), flush=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
