"""Training job specs: defaults from the Qwen2.5 tuning recipe, and validation of the whole spec.

`validate_job_spec` checks everything before a job is queued and reports every problem at once as
field violations (torchtune-style): the dataset version must exist for the tenant and be READY, the
base model must be the one the dataset was rendered with (same chat template), rows must hold the
dataset's longest sample, LoRA targets must exist in the model (checked on the meta device, no
weights loaded), and every hyper-parameter must be in range.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tuneforge.common.errors import FieldViolation, InvalidArgument
from tuneforge.common.names import check_resource_id, check_resource_name
from tuneforge.models import ModelResolver
from tuneforge.store.metadata import MetadataStore
from tuneforge.store.tables import DatasetVersionRow

DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")


@dataclass
class JobSpecInput:
    """A job spec as the domain sees it, with the defaults of the Qwen2.5 LoRA recipe."""

    base_model: str
    dataset_version_id: str
    adapter_name: str
    method: str = "lora"
    lora_r: int = 64
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    base_precision: str = "bf16"
    learning_rate: float = 0.0
    epochs: float = 1.0
    max_steps: int = 0
    micro_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_seq_len: int = 0
    seed: int = 0
    train_on_prompt: bool = False
    gradient_checkpointing: bool = False
    #: None: the trainer decides (compiled on GPU without DeepSpeed).
    torch_compile: bool | None = None
    packing: bool = True
    eval_every_steps: int = 0
    checkpoint_every_steps: int = 0
    deepspeed_stage: int = 0
    offload_optimizer: bool = False
    offload_parameters: bool = False
    optimizer_precision: str = "fp32"
    num_workers: int = 1
    use_gpu: bool = False
    gpus_per_worker: int = 1
    cpus_per_worker: int = 1
    max_failures: int = 2

    def with_defaults(self) -> JobSpecInput:
        """The spec with zero values replaced by the recipe's defaults."""
        if not self.learning_rate:
            self.learning_rate = 2e-4 if self.method == "lora" else 1e-5
        if not self.target_modules:
            self.target_modules = list(DEFAULT_LORA_TARGETS)
        return self


def linear_module_names(resolver: ModelResolver, base_model: str) -> set[str]:
    """Short names of the model's Linear layers (what LoRA can target), from its config on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    resolved = resolver.resolve(base_model, field="spec.base_model")
    config = resolver.load_config(resolved)  # bounded in time and number for a hub model
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=resolved.trust_remote_code)
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def validate_job_spec(
    tenant: str, spec: JobSpecInput, metadata: MetadataStore, resolver: ModelResolver
) -> dict[str, Any]:
    """Checks the whole spec; returns facts about its dataset version; one InvalidArgument lists all problems."""
    problems: list[FieldViolation] = []

    def check(condition: bool, name: str, description: str) -> None:
        if not condition:
            problems.append(FieldViolation(name, description))

    try:
        check_resource_name(spec.adapter_name, "spec.adapter_name")
    except InvalidArgument as exc:
        problems += exc.violations
    check(spec.method in ("lora", "full"), "spec.method", "must be LORA or FULL")
    check(1 <= spec.lora_r <= 256, "spec.lora.r", "must be between 1 and 256")
    check(spec.lora_alpha > 0, "spec.lora.alpha", "must be positive")
    check(0 <= spec.lora_dropout < 1, "spec.lora.dropout", "must be in [0, 1)")
    check(spec.base_precision in ("bf16", "fp8"), "spec.lora.base_precision", "must be bf16 or fp8")
    check(
        spec.base_precision != "fp8" or (spec.method == "lora" and spec.use_gpu),
        "spec.lora.base_precision",
        "fp8 needs LORA on GPUs (use_gpu): full fine-tuning trains the base weights",
    )
    check(0 < spec.learning_rate <= 1, "spec.hyperparameters.learning_rate", "must be in (0, 1]")
    check(spec.epochs > 0 or spec.max_steps > 0, "spec.hyperparameters.epochs", "give epochs or max_steps")
    check(spec.max_steps >= 0, "spec.hyperparameters.max_steps", "must not be negative")
    check(1 <= spec.micro_batch_size <= 256, "spec.hyperparameters.micro_batch_size", "must be between 1 and 256")
    check(
        1 <= spec.gradient_accumulation_steps <= 1024,
        "spec.hyperparameters.gradient_accumulation_steps",
        "must be between 1 and 1024",
    )
    check(0 <= spec.warmup_ratio < 1, "spec.hyperparameters.warmup_ratio", "must be in [0, 1)")
    check(spec.weight_decay >= 0, "spec.hyperparameters.weight_decay", "must not be negative")
    check(spec.deepspeed_stage in (0, 2, 3), "spec.deepspeed.stage", "must be ZeRO-2 or ZeRO-3")
    check(not spec.offload_parameters or spec.deepspeed_stage == 3, "spec.deepspeed.offload_parameters", "needs ZeRO-3")
    check(spec.optimizer_precision in ("fp32", "bf16"), "spec.deepspeed.optimizer_precision", "must be fp32 or bf16")
    check(
        spec.optimizer_precision != "bf16" or (spec.deepspeed_stage in (2, 3) and spec.use_gpu),
        "spec.deepspeed.optimizer_precision",
        "bf16 optimizer state needs DeepSpeed ZeRO-2 or ZeRO-3 on GPUs (use_gpu)",
    )
    check(1 <= spec.num_workers <= 1024, "spec.resources.num_workers", "must be between 1 and 1024")
    check(1 <= spec.gpus_per_worker <= 16, "spec.resources.gpus_per_worker", "must be between 1 and 16")
    check(1 <= spec.cpus_per_worker <= 256, "spec.resources.cpus_per_worker", "must be between 1 and 256")
    check(spec.eval_every_steps >= 0, "spec.hyperparameters.eval_every_steps", "must not be negative")
    check(spec.checkpoint_every_steps >= 0, "spec.hyperparameters.checkpoint_every_steps", "must not be negative")
    check(0 <= spec.max_seq_len <= 1_048_576, "spec.hyperparameters.max_seq_len", "must be between 0 and 1048576")
    check(0 <= spec.max_failures <= 100, "spec.resources.max_failures", "must be between 0 and 100")

    facts: dict[str, Any] = {}
    try:
        check_resource_id(spec.dataset_version_id, "spec.dataset_version_id", "dsv")
        with metadata.session() as session:
            row = session.get(DatasetVersionRow, (tenant, spec.dataset_version_id))
            if row is None:
                problems.append(
                    FieldViolation(
                        "spec.dataset_version_id", f"no dataset version {spec.dataset_version_id!r} for this tenant"
                    )
                )
            elif row.state != "ready":
                problems.append(FieldViolation("spec.dataset_version_id", f"dataset version is {row.state}, not ready"))
            else:
                options = json.loads(row.options_json)
                facts = {
                    "dataset_base_model": row.base_model,
                    "dataset_max_seq_len": options["max_seq_len"],
                    "template_hash": row.template_hash,
                }
    except InvalidArgument as exc:
        problems += exc.violations
    if facts:
        if spec.base_model != facts["dataset_base_model"]:
            problems.append(
                FieldViolation(
                    "spec.base_model",
                    f"the dataset was rendered with the chat template of {facts['dataset_base_model']!r}; train that "
                    "model or build a dataset version for this one",
                )
            )
        rows = spec.max_seq_len or facts["dataset_max_seq_len"]
        if rows < facts["dataset_max_seq_len"]:
            problems.append(
                FieldViolation(
                    "spec.hyperparameters.max_seq_len",
                    f"{rows} tokens is shorter than the dataset's samples (up to {facts['dataset_max_seq_len']}); "
                    "rows must hold a whole sample",
                )
            )
        facts["max_seq_len"] = rows
    if spec.method == "lora" and spec.target_modules != ["all-linear"]:
        try:
            available = linear_module_names(resolver, spec.base_model)
        except InvalidArgument as exc:
            problems += exc.violations
        except Exception as exc:  # a model we cannot read is a problem with the spec's base_model
            problems.append(FieldViolation("spec.base_model", f"cannot be read: {exc}"))
        else:
            missing = sorted(set(spec.target_modules) - available)
            if missing:
                problems.append(
                    FieldViolation(
                        "spec.lora.target_modules",
                        f"{', '.join(missing)} not in {spec.base_model}; its linear layers are "
                        f"{', '.join(sorted(available))} (or use all-linear)",
                    )
                )
    if problems:
        raise InvalidArgument(
            "invalid job spec: " + "; ".join(f"{p.field}: {p.description}" for p in problems), problems
        )
    return facts


def train_config(
    spec: JobSpecInput,
    *,
    base_model_path: str,
    dataset_dir: str,
    output_dir: str,
    max_seq_len: int,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """The per-worker `TrainConfig` values a validated job spec implies: every field the two share by name."""
    from dataclasses import fields

    from tuneforge.training.trainer import TrainConfig

    shared = {f.name for f in fields(TrainConfig)} & {f.name for f in fields(JobSpecInput)}
    values = {name: getattr(spec, name) for name in shared}
    values["target_modules"] = list(spec.target_modules)
    values.update(
        base_model_path=base_model_path,
        dataset_dir=dataset_dir,
        output_dir=output_dir,
        max_seq_len=max_seq_len,
        trust_remote_code=trust_remote_code,
    )
    return values
