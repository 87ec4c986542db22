"""Training job specs checked against what they name, and the trainer's config a spec implies.

The spec itself (defaults, ranges, fields that depend on each other) is `training.spec.JobSpecInput`.
`validate_job_spec` adds, before a job is queued, what needs the store and the model, and reports
every problem at once as field violations (torchtune-style): the dataset version must exist for the
tenant and be READY, the base model must be the one the dataset was rendered with (same chat
template), rows must hold the dataset's longest sample, LoRA targets must exist in the model
(checked on the meta device, no weights loaded).
"""

from __future__ import annotations

from typing import Any

from tuneforge.catalog.datasets import DatasetCatalog
from tuneforge.common.errors import FieldViolation, InvalidArgument
from tuneforge.common.names import check_resource_id, check_resource_name
from tuneforge.models import ModelResolver
from tuneforge.training.spec import JobSpecInput


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
    tenant: str,
    spec: JobSpecInput,
    datasets: DatasetCatalog,
    resolver: ModelResolver,
    problems: list[FieldViolation] | None = None,
) -> dict[str, Any]:
    """Checks what the spec names (dataset version, base model, LoRA targets) beside the spec's own
    field `problems` (from `parse_spec`); returns facts about its dataset version; one InvalidArgument
    lists every problem."""
    problems = list(problems or [])
    try:
        check_resource_name(spec.adapter_name, "spec.adapter_name")
    except InvalidArgument as exc:
        problems += exc.violations
    facts: dict[str, Any] = {}
    try:
        check_resource_id(spec.dataset_version_id, "spec.dataset_version_id", "dsv")
        version = datasets.get(tenant, spec.dataset_version_id)
        if version is None:
            problems.append(
                FieldViolation(
                    "spec.dataset_version_id", f"no dataset version {spec.dataset_version_id!r} for this tenant"
                )
            )
        elif version.state != "ready":
            problems.append(FieldViolation("spec.dataset_version_id", f"dataset version is {version.state}, not ready"))
        else:
            facts = {
                "dataset_base_model": version.base_model,
                "dataset_max_seq_len": version.max_seq_len,
                "template_hash": version.template_hash,
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

    shared = {f.name for f in fields(TrainConfig)} & set(JobSpecInput.model_fields)
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
