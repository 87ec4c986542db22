"""JobSpec messages ↔ the domain's JobSpecInput (zero values become the recipe's defaults here, once)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from tuneforge.training.jobs import JobSpecInput
from tuneforge.v1 import training_pb2

_METHODS = {training_pb2.TRAINING_METHOD_UNSPECIFIED: "lora", training_pb2.TRAINING_METHOD_LORA: "lora"}
_METHODS[training_pb2.TRAINING_METHOD_FULL] = "full"


def spec_input(message: training_pb2.JobSpec) -> JobSpecInput:
    """The domain spec of a request, with the defaults the contract documents filled in."""
    lora, hyper, resources = message.lora, message.hyperparameters, message.resources
    return JobSpecInput(
        base_model=message.base_model,
        dataset_version_id=message.dataset_version_id,
        adapter_name=message.adapter_name,
        method=_METHODS.get(message.method, f"unknown({message.method})"),
        lora_r=lora.r or 64,
        lora_alpha=lora.alpha or 16.0,
        lora_dropout=lora.dropout if lora.HasField("dropout") else 0.1,
        target_modules=list(lora.target_modules),
        base_precision=lora.base_precision or "bf16",
        learning_rate=hyper.learning_rate,
        epochs=hyper.epochs or 1.0,
        max_steps=hyper.max_steps,
        micro_batch_size=hyper.micro_batch_size or 1,
        gradient_accumulation_steps=hyper.gradient_accumulation_steps or 1,
        warmup_ratio=hyper.warmup_ratio,
        weight_decay=hyper.weight_decay,
        max_seq_len=hyper.max_seq_len,
        seed=hyper.seed,
        train_on_prompt=hyper.train_on_prompt,
        gradient_checkpointing=hyper.gradient_checkpointing,
        torch_compile=hyper.torch_compile if hyper.HasField("torch_compile") else None,
        packing=hyper.packing if hyper.HasField("packing") else True,
        eval_every_steps=hyper.eval_every_steps,
        checkpoint_every_steps=hyper.checkpoint_every_steps,
        deepspeed_stage=int(message.deepspeed.stage),
        offload_optimizer=message.deepspeed.offload_optimizer,
        offload_parameters=message.deepspeed.offload_parameters,
        optimizer_precision=message.deepspeed.optimizer_precision or "fp32",
        num_workers=resources.num_workers or 1,
        use_gpu=resources.use_gpu,
        gpus_per_worker=resources.gpus_per_worker or 1,
        cpus_per_worker=resources.cpus_per_worker or 1,
        max_failures=resources.max_failures or 2,
    ).with_defaults()


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
