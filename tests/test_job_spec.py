"""Job specs are validated whole before anything is queued, every bad field named at once."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from conftest import MODEL_CACHE

from tuneforge.catalog.datasets import DatasetCatalog
from tuneforge.common.errors import InvalidArgument
from tuneforge.models import ModelResolver
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore
from tuneforge.store.tables import DatasetVersionRow, utcnow
from tuneforge.training.jobs import linear_module_names, validate_job_spec
from tuneforge.training.spec import JobSpecInput, parse_spec

READY_ID = "dsv-aaaaaaaaaaaaaaaaaaaaaaaa"
BUILDING_ID = "dsv-bbbbbbbbbbbbbbbbbbbbbbbb"


@pytest.fixture()
def metadata(tmp_path: Path):
    store = MetadataStore(f"sqlite:///{tmp_path / 'm.db'}")
    store.migrate()
    now = utcnow()
    with store.session() as session:
        for vid, state in ((READY_ID, "ready"), (BUILDING_ID, "processing")):
            session.add(
                DatasetVersionRow(
                    tenant="acme",
                    id=vid,
                    dataset="d",
                    state=state,
                    base_model="tiny-qwen2",
                    data_format="auto",
                    inputs_json="[]",
                    options_json=json.dumps({"max_seq_len": 512}),
                    counts_json="{}",
                    template_hash="t" * 64,
                    failure_reason="",
                    bytes_total=0,
                    bytes_processed=0,
                    created_at=now,
                    updated_at=now,
                )
            )
    yield store
    store.close()


@pytest.fixture(scope="module")
def resolver() -> ModelResolver:
    return ModelResolver(MODEL_CACHE)


def _spec(**overrides: object) -> JobSpecInput:
    values: dict[str, object] = {"base_model": "tiny-qwen2", "dataset_version_id": READY_ID, "adapter_name": "bot"}
    values.update(overrides)
    return JobSpecInput.model_validate(values)


def _catalog(metadata: MetadataStore) -> DatasetCatalog:
    return DatasetCatalog(metadata, ArtifactStore(Path(tempfile.mkdtemp(prefix="artifacts-"))))


def _validate(metadata: MetadataStore, resolver: ModelResolver, tenant: str = "acme", **overrides: object) -> dict:
    """The service's two checks: the spec's own fields (`parse_spec`), then what it names."""
    values: dict[str, object] = {"base_model": "tiny-qwen2", "dataset_version_id": READY_ID, "adapter_name": "bot"}
    spec, problems = parse_spec({**values, **overrides})
    return validate_job_spec(tenant, spec, _catalog(metadata), resolver, problems)


def _fields(exc: InvalidArgument) -> set[str]:
    return {v.field for v in exc.violations}


def test_a_good_spec_passes_with_recipe_defaults(metadata: MetadataStore, resolver: ModelResolver) -> None:
    spec = _spec()
    assert (spec.lora_r, spec.lora_alpha, spec.lora_dropout, spec.target_modules) == (
        64,
        16.0,
        0.1,
        ["q_proj", "v_proj"],
    )
    assert spec.learning_rate == 2e-4
    facts = validate_job_spec("acme", spec, _catalog(metadata), resolver)
    assert facts["max_seq_len"] == 512 and facts["template_hash"] == "t" * 64


def test_the_model_s_linear_layers_are_listed_without_loading_weights(resolver: ModelResolver) -> None:
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= linear_module_names(
        resolver, "tiny-qwen2"
    )


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"dataset_version_id": "dsv-cccccccccccccccccccccccc"}, "spec.dataset_version_id"),
        ({"dataset_version_id": BUILDING_ID}, "spec.dataset_version_id"),
        ({"dataset_version_id": "../etc"}, "spec.dataset_version_id"),
        ({"max_seq_len": 128}, "spec.hyperparameters.max_seq_len"),
        ({"target_modules": ["q_proj", "qkv_proj"]}, "spec.lora.target_modules"),
        ({"base_model": "smollm2-135m-instruct"}, "spec.base_model"),
        ({"adapter_name": "Bad Name"}, "spec.adapter_name"),
        ({"lora_r": 0}, "spec.lora.r"),
        ({"deepspeed_stage": 1}, "spec.deepspeed.stage"),
        ({"base_precision": "fp4"}, "spec.lora.base_precision"),
        ({"base_precision": "fp8"}, "spec.lora.base_precision"),  # fp8 needs GPUs
        ({"base_precision": "fp8", "use_gpu": True, "method": "full"}, "spec.lora.base_precision"),
        ({"optimizer_precision": "fp16"}, "spec.deepspeed.optimizer_precision"),
        ({"optimizer_precision": "bf16", "method": "full", "use_gpu": True}, "spec.deepspeed.optimizer_precision"),
        ({"optimizer_precision": "bf16", "method": "full", "deepspeed_stage": 3}, "spec.deepspeed.optimizer_precision"),
    ],
)
def test_each_bad_field_is_named(metadata: MetadataStore, resolver: ModelResolver, overrides: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        _validate(metadata, resolver, **overrides)
    assert field in _fields(info.value)


def test_all_problems_are_reported_at_once_and_other_tenants_see_no_dataset(
    metadata: MetadataStore, resolver: ModelResolver
) -> None:
    with pytest.raises(InvalidArgument) as info:
        _validate(metadata, resolver, lora_r=0, learning_rate=5.0, target_modules=["nope"], max_seq_len=64)
    assert _fields(info.value) == {
        "spec.lora.r",
        "spec.hyperparameters.learning_rate",
        "spec.lora.target_modules",
        "spec.hyperparameters.max_seq_len",
    }
    with pytest.raises(InvalidArgument) as info:
        _validate(metadata, resolver, "globex")
    assert _fields(info.value) == {"spec.dataset_version_id"}


@pytest.mark.parametrize("requested", [None, True, False])
def test_torch_compile_travels_from_the_wire_to_the_worker_and_unset_stays_the_trainer_s_choice(
    requested: bool | None,
) -> None:
    import torch

    from tuneforge.training.jobs import train_config
    from tuneforge.training.spec_proto import spec_input, spec_message
    from tuneforge.training.trainer import TrainConfig, compiles

    spec = _spec(torch_compile=requested)
    back, problems = spec_input(spec_message(spec))
    assert not problems and back.torch_compile is requested
    values = train_config(back, base_model_path="/m", dataset_dir="/d", output_dir="/o", max_seq_len=512)
    config = TrainConfig(**values)
    assert config.torch_compile is requested
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert compiles(config, gpu) is (True if requested is None else requested)
    assert compiles(config, cpu) is (False if requested is None else requested)
    zero3 = TrainConfig(**{**values, "method": "full", "deepspeed_stage": 3})
    assert compiles(zero3, gpu) is (False if requested is None else requested)


def test_bf16_optimizer_state_reaches_deepspeed_only_on_gpu() -> None:
    import torch

    from tuneforge.training.jobs import train_config
    from tuneforge.training.spec_proto import spec_input, spec_message
    from tuneforge.training.trainer import TrainConfig, deepspeed_config

    spec = _spec(method="full", deepspeed_stage=3, offload_optimizer=True, offload_parameters=True, use_gpu=True)
    spec.optimizer_precision = "bf16"
    back, problems = spec_input(spec_message(spec))
    assert not problems
    config = TrainConfig(**train_config(back, base_model_path="/m", dataset_dir="/d", output_dir="/o", max_seq_len=512))
    gpu = deepspeed_config(config, torch.device("cuda", 0))
    assert gpu["bf16"] == {"enabled": True, "bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}
    assert gpu["zero_optimization"]["offload_param"]["device"] == "cpu" and gpu["optimizer"]["type"] == "AdamW"
    assert deepspeed_config(config, torch.device("cpu"))["bf16"] == {"enabled": False}
    default = TrainConfig(**{**config.__dict__, "optimizer_precision": "fp32"})
    assert deepspeed_config(default, torch.device("cuda", 0))["bf16"] == {"enabled": True}


# -- one spec model: defaults and ranges live in training.spec.JobSpecInput only ---------------------


def test_a_request_maps_only_what_it_sets_and_explicit_zeros_are_honoured() -> None:
    from tuneforge.training.spec_proto import spec_input
    from tuneforge.v1 import training_pb2

    bare = training_pb2.JobSpec(base_model="tiny-qwen2", dataset_version_id=READY_ID, adapter_name="bot")
    spec, problems = spec_input(bare)
    assert not problems
    assert spec == _spec()  # every default is the model's
    assert (spec.max_failures, spec.warmup_ratio, spec.learning_rate) == (2, 0.03, 2e-4)
    zeros = training_pb2.JobSpec()
    zeros.CopyFrom(bare)
    zeros.resources.max_failures = 0  # no retries
    zeros.hyperparameters.warmup_ratio = 0.0  # no warm-up
    zeros.method = training_pb2.TRAINING_METHOD_FULL
    spec, problems = spec_input(zeros)
    assert not problems
    assert (spec.max_failures, spec.warmup_ratio, spec.learning_rate) == (0, 0.0, 1e-5)  # full's own default rate


def test_an_unknown_method_and_out_of_range_fields_are_named_from_the_wire() -> None:
    from tuneforge.training.spec_proto import spec_input
    from tuneforge.v1 import training_pb2

    message = training_pb2.JobSpec(base_model="tiny-qwen2", dataset_version_id=READY_ID, adapter_name="bot")
    message.method = 7  # type: ignore[assignment]  # a value newer clients might send
    message.resources.max_failures = 101
    message.hyperparameters.warmup_ratio = 1.0
    spec, problems = spec_input(message)
    described = {p.field: p.description for p in problems}
    assert set(described) == {
        "spec.method",
        "spec.resources.max_failures",
        "spec.hyperparameters.warmup_ratio",
    }, described
    assert "'lora' or 'full'" in described["spec.method"]
    assert spec.max_failures == 2  # the bad field's default stands in while the rest is checked


def test_the_trainer_takes_every_default_from_the_spec() -> None:
    from dataclasses import MISSING, fields

    from tuneforge.training.spec import DEFAULT_LEARNING_RATE, spec_defaults
    from tuneforge.training.trainer import TrainConfig

    defaults = spec_defaults()
    shared = [f for f in fields(TrainConfig) if f.name in defaults and f.name not in ("learning_rate", "max_seq_len")]
    service_only = {
        "num_workers",
        "use_gpu",
        "gpus_per_worker",
        "cpus_per_worker",
        "max_failures",
    }  # Ray's, not a worker's
    assert {f.name for f in shared} == set(defaults) - service_only - {"learning_rate", "max_seq_len"}
    for f in shared:
        value = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
        assert value == defaults[f.name], f.name
    assert TrainConfig("/m", "/d", "/o").learning_rate == DEFAULT_LEARNING_RATE["lora"] == _spec().learning_rate


def test_the_cli_sends_only_the_flags_given() -> None:
    from tuneforge.cli import build_parser
    from tuneforge.cli.jobs import _job_spec

    base = ["jobs", "create", "--base-model", "tiny-qwen2", "--dataset-version", READY_ID, "--adapter-name", "bot"]
    bare = _job_spec(build_parser().parse_args(base))
    assert not bare.HasField("hyperparameters") and not bare.HasField("resources") and not bare.HasField("lora")
    zero = _job_spec(build_parser().parse_args([*base, "--max-failures", "0", "--warmup-ratio", "0"]))
    assert zero.resources.HasField("max_failures") and zero.resources.max_failures == 0
    assert zero.hyperparameters.HasField("warmup_ratio") and zero.hyperparameters.warmup_ratio == 0
