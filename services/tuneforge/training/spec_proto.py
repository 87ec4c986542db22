"""JobSpec messages ↔ the domain's JobSpecInput.

A request maps only the fields it sets: a scalar without presence counts as set when it is not
zero/empty, an `optional` one when it is present (so `max_failures: 0` or `warmup_ratio: 0` is
honoured), and everything else takes its default from `JobSpecInput`, the one place defaults live.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from tuneforge.common.errors import FieldViolation
from tuneforge.training.spec import HYPERPARAMETER_FIELDS, RESOURCE_FIELDS, JobSpecInput, parse_spec
from tuneforge.v1 import training_pb2

_METHODS = {training_pb2.TRAINING_METHOD_LORA: "lora", training_pb2.TRAINING_METHOD_FULL: "full"}

#: (sub-message or "" for JobSpec itself, field in the message, field of JobSpecInput)
_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("", "base_model", "base_model"),
    ("", "dataset_version_id", "dataset_version_id"),
    ("", "adapter_name", "adapter_name"),
    ("lora", "r", "lora_r"),
    ("lora", "alpha", "lora_alpha"),
    ("lora", "dropout", "lora_dropout"),
    ("lora", "base_precision", "base_precision"),
    *(("hyperparameters", name, name) for name in HYPERPARAMETER_FIELDS),
    ("deepspeed", "offload_optimizer", "offload_optimizer"),
    ("deepspeed", "offload_parameters", "offload_parameters"),
    ("deepspeed", "optimizer_precision", "optimizer_precision"),
    *(("resources", name, name) for name in RESOURCE_FIELDS),
)


def _set(message: Message, name: str) -> bool:
    if message.DESCRIPTOR.fields_by_name[name].has_presence:
        return message.HasField(name)
    return bool(getattr(message, name))


def spec_values(message: training_pb2.JobSpec) -> dict[str, Any]:
    """The JobSpecInput fields the request sets."""
    values: dict[str, Any] = {}
    for part, name, field in _FIELDS:
        owner = getattr(message, part) if part else message
        if _set(owner, name):
            values[field] = getattr(owner, name)
    if message.lora.target_modules:
        values["target_modules"] = list(message.lora.target_modules)
    if message.method:
        values["method"] = _METHODS.get(message.method, f"TrainingMethod {message.method}")
    if message.deepspeed.stage:
        values["deepspeed_stage"] = int(message.deepspeed.stage)
    return values


def spec_input(message: training_pb2.JobSpec) -> tuple[JobSpecInput, list[FieldViolation]]:
    """The domain spec of a request (defaults where it sets nothing) and every problem with its fields."""
    return parse_spec(spec_values(message))


def spec_message(spec: JobSpecInput) -> training_pb2.JobSpec:
    """The spec as accepted, every default spelled out."""
    return training_pb2.JobSpec(
        base_model=spec.base_model,
        dataset_version_id=spec.dataset_version_id,
        adapter_name=spec.adapter_name,
        method=training_pb2.TRAINING_METHOD_FULL if spec.method == "full" else training_pb2.TRAINING_METHOD_LORA,
        lora=training_pb2.LoraSpec(
            r=spec.lora_r,
            alpha=spec.lora_alpha,
            dropout=spec.lora_dropout,
            target_modules=spec.target_modules,
            base_precision=spec.base_precision,
        ),
        deepspeed=training_pb2.DeepSpeedSpec(
            stage=spec.deepspeed_stage,
            offload_optimizer=spec.offload_optimizer,
            offload_parameters=spec.offload_parameters,
            optimizer_precision=spec.optimizer_precision,
        ),
        hyperparameters=training_pb2.Hyperparameters(
            learning_rate=spec.learning_rate,
            epochs=spec.epochs,
            max_steps=spec.max_steps,
            micro_batch_size=spec.micro_batch_size,
            gradient_accumulation_steps=spec.gradient_accumulation_steps,
            warmup_ratio=spec.warmup_ratio,
            weight_decay=spec.weight_decay,
            max_seq_len=spec.max_seq_len,
            seed=spec.seed,
            packing=spec.packing,
            train_on_prompt=spec.train_on_prompt,
            gradient_checkpointing=spec.gradient_checkpointing,
            torch_compile=spec.torch_compile,
            eval_every_steps=spec.eval_every_steps,
            checkpoint_every_steps=spec.checkpoint_every_steps,
        ),
        resources=training_pb2.ResourceSpec(
            num_workers=spec.num_workers,
            use_gpu=spec.use_gpu,
            gpus_per_worker=spec.gpus_per_worker,
            cpus_per_worker=spec.cpus_per_worker,
            max_failures=spec.max_failures,
        ),
    )


def spec_dict(spec: JobSpecInput) -> dict[str, Any]:
    """The spec as the JSON form of its message (what an adapter's lineage records)."""
    return json_format.MessageToDict(spec_message(spec), preserving_proto_field_name=True)
