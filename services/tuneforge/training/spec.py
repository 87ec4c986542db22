"""The training job spec: one model holding every default and range (the Qwen2.5 LoRA recipe).

`JobSpecInput` is what the service stores, what the CLI and the contract convert to (mapping only
the fields a request sets), and where the trainer's `TrainConfig` takes its defaults from. Its
checks cover each field and the fields that depend on each other; `validate_job_spec`
(`training/jobs.py`) adds what needs the metadata store and the model (dataset version, chat
template, LoRA targets). Errors name the contract's fields (`spec.lora.r`), all at once.

This module needs only pydantic, so it loads on GPU workers that carry just the training stack.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneforge.common.errors import FieldViolation

DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")
#: Peak learning rate when the spec gives none, by method.
DEFAULT_LEARNING_RATE = {"lora": 2e-4, "full": 1e-5}

#: The fields of the JobSpec's Hyperparameters and ResourceSpec messages (JobSpecInput names them alike).
HYPERPARAMETER_FIELDS = (
    "learning_rate",
    "epochs",
    "max_steps",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "warmup_ratio",
    "weight_decay",
    "max_seq_len",
    "seed",
    "packing",
    "train_on_prompt",
    "gradient_checkpointing",
    "torch_compile",
    "eval_every_steps",
    "checkpoint_every_steps",
)
RESOURCE_FIELDS = ("num_workers", "use_gpu", "gpus_per_worker", "cpus_per_worker", "max_failures")

#: Each field's name in the JobSpec message, for errors.
FIELD_PATHS: dict[str, str] = {
    "base_model": "spec.base_model",
    "dataset_version_id": "spec.dataset_version_id",
    "adapter_name": "spec.adapter_name",
    "method": "spec.method",
    "lora_r": "spec.lora.r",
    "lora_alpha": "spec.lora.alpha",
    "lora_dropout": "spec.lora.dropout",
    "target_modules": "spec.lora.target_modules",
    "base_precision": "spec.lora.base_precision",
    **{name: f"spec.hyperparameters.{name}" for name in HYPERPARAMETER_FIELDS},
    "deepspeed_stage": "spec.deepspeed.stage",
    "offload_optimizer": "spec.deepspeed.offload_optimizer",
    "offload_parameters": "spec.deepspeed.offload_parameters",
    "optimizer_precision": "spec.deepspeed.optimizer_precision",
    **{name: f"spec.resources.{name}" for name in RESOURCE_FIELDS},
}

_INT64 = 2**63 - 1


class _SpecError(ValueError):
    """A check across fields, reported on `field`."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(description)
        self.field = field
        self.description = description


class JobSpecInput(BaseModel):
    """A job spec as the domain sees it; every field has the recipe's default and its range."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    base_model: str
    dataset_version_id: str
    adapter_name: str
    method: Literal["lora", "full"] = "lora"
    lora_r: int = Field(64, ge=1, le=256)
    lora_alpha: float = Field(16.0, gt=0, le=1e6)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    #: Module names, or the single entry `all-linear`.
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS), min_length=1)
    base_precision: Literal["bf16", "fp8"] = "bf16"
    #: None: DEFAULT_LEARNING_RATE of the method (filled in when the spec is checked).
    learning_rate: float | None = Field(None, gt=0, le=1)
    epochs: float = Field(1.0, ge=0, le=1e6)
    max_steps: int = Field(0, ge=0, le=_INT64)
    micro_batch_size: int = Field(1, ge=1, le=256)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, le=1e3)
    #: 0: the dataset version's max_seq_len.
    max_seq_len: int = Field(0, ge=0, le=1_048_576)
    seed: int = Field(0, ge=-(2**63), le=_INT64)
    train_on_prompt: bool = False
    gradient_checkpointing: bool = False
    #: None: the trainer decides (compiled on GPU without DeepSpeed).
    torch_compile: bool | None = None
    packing: bool = True
    eval_every_steps: int = Field(0, ge=0, le=_INT64)
    checkpoint_every_steps: int = Field(0, ge=0, le=_INT64)
    deepspeed_stage: Literal[0, 2, 3] = 0
    offload_optimizer: bool = False
    offload_parameters: bool = False
    optimizer_precision: Literal["fp32", "bf16"] = "fp32"
    num_workers: int = Field(1, ge=1, le=1024)
    use_gpu: bool = False
    gpus_per_worker: int = Field(1, ge=1, le=16)
    cpus_per_worker: int = Field(1, ge=1, le=256)
    max_failures: int = Field(2, ge=0, le=100)

    @model_validator(mode="after")
    def _fields_that_depend_on_each_other(self) -> JobSpecInput:
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATE[self.method]
        if self.epochs <= 0 and self.max_steps <= 0:
            raise _SpecError("epochs", "give epochs or max_steps")
        if "all-linear" in self.target_modules and len(self.target_modules) > 1:
            raise _SpecError("target_modules", "all-linear stands alone")
        if self.base_precision == "fp8" and not (self.method == "lora" and self.use_gpu):
            raise _SpecError(
                "base_precision", "fp8 needs LORA on GPUs (use_gpu): full fine-tuning trains the base weights"
            )
        if self.offload_parameters and self.deepspeed_stage != 3:
            raise _SpecError("offload_parameters", "needs ZeRO-3")
        if self.optimizer_precision == "bf16" and not (self.deepspeed_stage in (2, 3) and self.use_gpu):
            raise _SpecError(
                "optimizer_precision", "bf16 optimizer state needs DeepSpeed ZeRO-2 or ZeRO-3 on GPUs (use_gpu)"
            )
        return self


def _violation(error: dict[str, Any]) -> tuple[str, FieldViolation]:
    name = str(error["loc"][0]) if error["loc"] else ""
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _SpecError):
        return cause.field, FieldViolation(FIELD_PATHS[cause.field], cause.description)
    if error["type"] == "extra_forbidden":
        return name, FieldViolation(f"spec.{name}", "is not a job spec field")
    described = error["msg"]
    if error["type"] == "literal_error":
        described = "must be " + error["msg"].removeprefix("Input should be ")
    return name, FieldViolation(FIELD_PATHS.get(name, f"spec.{name}"), described.replace("Input should", "must"))


def parse_spec(values: dict[str, Any]) -> tuple[JobSpecInput, list[FieldViolation]]:
    """The spec `values` give (absent fields take their defaults) and every problem with them.

    With problems, the spec returned has the recipe's default in place of each bad field, so the
    checks that need the store and the model can still run and report theirs in the same answer.
    """
    values = dict(values)
    problems: list[FieldViolation] = []
    for _ in range(len(JobSpecInput.model_fields) + 1):
        try:
            return JobSpecInput.model_validate(values), problems
        except ValidationError as exc:
            for error in exc.errors():
                name, violation = _violation(error)
                if violation not in problems:
                    problems.append(violation)
                values.pop(name, None)
                if name in ("base_model", "dataset_version_id", "adapter_name"):
                    values[name] = ""  # required: checked again, with a clearer message, by validate_job_spec
    raise AssertionError("unreachable: every pass drops at least one field")


def spec_defaults() -> dict[str, Any]:
    """Each optional field's default, for the trainer's `TrainConfig`."""
    return {
        name: (field.default_factory() if field.default_factory else field.default)  # type: ignore[call-arg]
        for name, field in JobSpecInput.model_fields.items()
        if not field.is_required()
    }
