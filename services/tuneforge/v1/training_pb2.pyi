import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tuneforge.v1 import common_pb2 as _common_pb2
from tuneforge.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainingMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_METHOD_UNSPECIFIED: _ClassVar[TrainingMethod]
    TRAINING_METHOD_LORA: _ClassVar[TrainingMethod]
    TRAINING_METHOD_FULL: _ClassVar[TrainingMethod]

class ZeroStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ZERO_STAGE_UNSPECIFIED: _ClassVar[ZeroStage]
    ZERO_STAGE_2: _ClassVar[ZeroStage]
    ZERO_STAGE_3: _ClassVar[ZeroStage]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_VALIDATING_FILES: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class JobEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_EVENT_TYPE_UNSPECIFIED: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_STATE_CHANGED: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_METRICS: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_EVALUATION: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_CHECKPOINT_SAVED: _ClassVar[JobEventType]
    JOB_EVENT_TYPE_LOG: _ClassVar[JobEventType]

class AdapterVersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADAPTER_VERSION_STATE_UNSPECIFIED: _ClassVar[AdapterVersionState]
    ADAPTER_VERSION_STATE_READY: _ClassVar[AdapterVersionState]
    ADAPTER_VERSION_STATE_DELETED: _ClassVar[AdapterVersionState]
TRAINING_METHOD_UNSPECIFIED: TrainingMethod
TRAINING_METHOD_LORA: TrainingMethod
TRAINING_METHOD_FULL: TrainingMethod
ZERO_STAGE_UNSPECIFIED: ZeroStage
ZERO_STAGE_2: ZeroStage
ZERO_STAGE_3: ZeroStage
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_VALIDATING_FILES: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_EVENT_TYPE_UNSPECIFIED: JobEventType
JOB_EVENT_TYPE_STATE_CHANGED: JobEventType
JOB_EVENT_TYPE_METRICS: JobEventType
JOB_EVENT_TYPE_EVALUATION: JobEventType
JOB_EVENT_TYPE_CHECKPOINT_SAVED: JobEventType
JOB_EVENT_TYPE_LOG: JobEventType
ADAPTER_VERSION_STATE_UNSPECIFIED: AdapterVersionState
ADAPTER_VERSION_STATE_READY: AdapterVersionState
ADAPTER_VERSION_STATE_DELETED: AdapterVersionState

class LoraSpec(_message.Message):
    __slots__ = ("r", "alpha", "dropout", "target_modules", "base_precision")
    R_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    BASE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    r: int
    alpha: float
    dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    base_precision: str
    def __init__(self, r: _Optional[int] = ..., alpha: _Optional[float] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ..., base_precision: _Optional[str] = ...) -> None: ...

class DeepSpeedSpec(_message.Message):
    __slots__ = ("stage", "offload_optimizer", "offload_parameters", "optimizer_precision")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_PRECISION_FIELD_NUMBER: _ClassVar[int]
    stage: ZeroStage
    offload_optimizer: bool
    offload_parameters: bool
    optimizer_precision: str
    def __init__(self, stage: _Optional[_Union[ZeroStage, str]] = ..., offload_optimizer: _Optional[bool] = ..., offload_parameters: _Optional[bool] = ..., optimizer_precision: _Optional[str] = ...) -> None: ...

class Hyperparameters(_message.Message):
    __slots__ = ("learning_rate", "epochs", "max_steps", "micro_batch_size", "gradient_accumulation_steps", "warmup_ratio", "weight_decay", "max_seq_len", "seed", "packing", "train_on_prompt", "gradient_checkpointing", "eval_every_steps", "checkpoint_every_steps", "torch_compile")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ON_PROMPT_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    EVAL_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    TORCH_COMPILE_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    epochs: float
    max_steps: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    warmup_ratio: float
    weight_decay: float
    max_seq_len: int
    seed: int
    packing: bool
    train_on_prompt: bool
    gradient_checkpointing: bool
    eval_every_steps: int
    checkpoint_every_steps: int
    torch_compile: bool
    def __init__(self, learning_rate: _Optional[float] = ..., epochs: _Optional[float] = ..., max_steps: _Optional[int] = ..., micro_batch_size: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., warmup_ratio: _Optional[float] = ..., weight_decay: _Optional[float] = ..., max_seq_len: _Optional[int] = ..., seed: _Optional[int] = ..., packing: _Optional[bool] = ..., train_on_prompt: _Optional[bool] = ..., gradient_checkpointing: _Optional[bool] = ..., eval_every_steps: _Optional[int] = ..., checkpoint_every_steps: _Optional[int] = ..., torch_compile: _Optional[bool] = ...) -> None: ...

class ResourceSpec(_message.Message):
    __slots__ = ("num_workers", "use_gpu", "gpus_per_worker", "cpus_per_worker", "max_failures")
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    USE_GPU_FIELD_NUMBER: _ClassVar[int]
    GPUS_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    CPUS_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURES_FIELD_NUMBER: _ClassVar[int]
    num_workers: int
    use_gpu: bool
    gpus_per_worker: int
    cpus_per_worker: int
    max_failures: int
    def __init__(self, num_workers: _Optional[int] = ..., use_gpu: _Optional[bool] = ..., gpus_per_worker: _Optional[int] = ..., cpus_per_worker: _Optional[int] = ..., max_failures: _Optional[int] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("base_model", "dataset_version_id", "method", "lora", "deepspeed", "hyperparameters", "resources", "adapter_name")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    DEEPSPEED_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    dataset_version_id: str
    method: TrainingMethod
    lora: LoraSpec
    deepspeed: DeepSpeedSpec
    hyperparameters: Hyperparameters
    resources: ResourceSpec
    adapter_name: str
    def __init__(self, base_model: _Optional[str] = ..., dataset_version_id: _Optional[str] = ..., method: _Optional[_Union[TrainingMethod, str]] = ..., lora: _Optional[_Union[LoraSpec, _Mapping]] = ..., deepspeed: _Optional[_Union[DeepSpeedSpec, _Mapping]] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., resources: _Optional[_Union[ResourceSpec, _Mapping]] = ..., adapter_name: _Optional[str] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "spec", "state", "error", "step", "total_steps", "metrics", "adapter_version", "times", "start_time", "end_time")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: JobSpec
    state: JobState
    error: JobError
    step: int
    total_steps: int
    metrics: _containers.ScalarMap[str, float]
    adapter_version: str
    times: _common_pb2.ResourceTimes
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., adapter_version: _Optional[str] = ..., times: _Optional[_Union[_common_pb2.ResourceTimes, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("idempotency_key", "spec")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    spec: JobSpec
    def __init__(self, idempotency_key: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ...) -> None: ...

class CreateJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("sequence", "create_time", "type", "level", "message", "state", "step", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    create_time: _timestamp_pb2.Timestamp
    type: JobEventType
    level: _common_pb2.Severity
    message: str
    state: JobState
    step: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, sequence: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[_Union[JobEventType, str]] = ..., level: _Optional[_Union[_common_pb2.Severity, str]] = ..., message: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., step: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class StreamJobEventsRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence", "no_follow")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    NO_FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    no_follow: bool
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., no_follow: _Optional[bool] = ...) -> None: ...

class StreamJobEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: JobEvent
    def __init__(self, event: _Optional[_Union[JobEvent, _Mapping]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("id", "step", "metrics", "create_time", "weights")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    step: int
    metrics: _containers.ScalarMap[str, float]
    create_time: _timestamp_pb2.Timestamp
    weights: _common_pb2.ContentDigest
    def __init__(self, id: _Optional[str] = ..., step: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., weights: _Optional[_Union[_common_pb2.ContentDigest, _Mapping]] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...

class AdapterLineage(_message.Message):
    __slots__ = ("base_model", "base_model_revision", "template_hash", "dataset_version_id", "job_id", "spec", "promotions", "source_adapter_version")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_REVISION_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_HASH_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PROMOTIONS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    base_model_revision: str
    template_hash: str
    dataset_version_id: str
    job_id: str
    spec: JobSpec
    promotions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Promotion]
    source_adapter_version: str
    def __init__(self, base_model: _Optional[str] = ..., base_model_revision: _Optional[str] = ..., template_hash: _Optional[str] = ..., dataset_version_id: _Optional[str] = ..., job_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., promotions: _Optional[_Iterable[_Union[_common_pb2.Promotion, _Mapping]]] = ..., source_adapter_version: _Optional[str] = ...) -> None: ...

class PromotionGate(_message.Message):
    __slots__ = ("adapter", "alias", "suite_ids", "target_categories", "max_drop", "min_judge_score", "source", "updated_by", "times")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    SUITE_IDS_FIELD_NUMBER: _ClassVar[int]
    TARGET_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    MAX_DROP_FIELD_NUMBER: _ClassVar[int]
    MIN_JUDGE_SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    alias: str
    suite_ids: _containers.RepeatedScalarFieldContainer[str]
    target_categories: _containers.RepeatedScalarFieldContainer[str]
    max_drop: float
    min_judge_score: float
    source: _common_pb2.PromotionGateSource
    updated_by: str
    times: _common_pb2.ResourceTimes
    def __init__(self, adapter: _Optional[str] = ..., alias: _Optional[str] = ..., suite_ids: _Optional[_Iterable[str]] = ..., target_categories: _Optional[_Iterable[str]] = ..., max_drop: _Optional[float] = ..., min_judge_score: _Optional[float] = ..., source: _Optional[_Union[_common_pb2.PromotionGateSource, str]] = ..., updated_by: _Optional[str] = ..., times: _Optional[_Union[_common_pb2.ResourceTimes, _Mapping]] = ...) -> None: ...

class AdapterFile(_message.Message):
    __slots__ = ("name", "digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: _common_pb2.ContentDigest
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[_Union[_common_pb2.ContentDigest, _Mapping]] = ...) -> None: ...

class AdapterVersion(_message.Message):
    __slots__ = ("adapter", "version", "state", "rank", "target_modules", "lineage", "metrics", "files", "times", "kind")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    version: int
    state: AdapterVersionState
    rank: int
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    lineage: AdapterLineage
    metrics: _containers.ScalarMap[str, float]
    files: _containers.RepeatedCompositeFieldContainer[AdapterFile]
    times: _common_pb2.ResourceTimes
    kind: _inference_pb2.ModelKind
    def __init__(self, adapter: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[AdapterVersionState, str]] = ..., rank: _Optional[int] = ..., target_modules: _Optional[_Iterable[str]] = ..., lineage: _Optional[_Union[AdapterLineage, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., files: _Optional[_Iterable[_Union[AdapterFile, _Mapping]]] = ..., times: _Optional[_Union[_common_pb2.ResourceTimes, _Mapping]] = ..., kind: _Optional[_Union[_inference_pb2.ModelKind, str]] = ...) -> None: ...

class Adapter(_message.Message):
    __slots__ = ("name", "latest_version", "aliases", "base_model", "times", "kind")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    latest_version: int
    aliases: _containers.ScalarMap[str, int]
    base_model: str
    times: _common_pb2.ResourceTimes
    kind: _inference_pb2.ModelKind
    def __init__(self, name: _Optional[str] = ..., latest_version: _Optional[int] = ..., aliases: _Optional[_Mapping[str, int]] = ..., base_model: _Optional[str] = ..., times: _Optional[_Union[_common_pb2.ResourceTimes, _Mapping]] = ..., kind: _Optional[_Union[_inference_pb2.ModelKind, str]] = ...) -> None: ...

class GetAdapterRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetAdapterResponse(_message.Message):
    __slots__ = ("adapter",)
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    adapter: Adapter
    def __init__(self, adapter: _Optional[_Union[Adapter, _Mapping]] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "kinds")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    kinds: _containers.RepeatedScalarFieldContainer[_inference_pb2.ModelKind]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[_inference_pb2.ModelKind, str]]] = ...) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("adapters", "next_page_token")
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[Adapter]
    next_page_token: str
    def __init__(self, adapters: _Optional[_Iterable[_Union[Adapter, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetAdapterVersionRequest(_message.Message):
    __slots__ = ("adapter", "version", "alias")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    version: int
    alias: str
    def __init__(self, adapter: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ...) -> None: ...

class GetAdapterVersionResponse(_message.Message):
    __slots__ = ("adapter_version",)
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    adapter_version: AdapterVersion
    def __init__(self, adapter_version: _Optional[_Union[AdapterVersion, _Mapping]] = ...) -> None: ...

class ListAdapterVersionsRequest(_message.Message):
    __slots__ = ("adapter", "page_size", "page_token")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    page_size: int
    page_token: str
    def __init__(self, adapter: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAdapterVersionsResponse(_message.Message):
    __slots__ = ("adapter_versions", "next_page_token")
    ADAPTER_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    adapter_versions: _containers.RepeatedCompositeFieldContainer[AdapterVersion]
    next_page_token: str
    def __init__(self, adapter_versions: _Optional[_Iterable[_Union[AdapterVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetAdapterAliasRequest(_message.Message):
    __slots__ = ("adapter", "alias", "version", "force", "reason")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    alias: str
    version: int
    force: bool
    reason: str
    def __init__(self, adapter: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ..., force: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class SetAdapterAliasResponse(_message.Message):
    __slots__ = ("adapter", "promotion")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    adapter: Adapter
    promotion: _common_pb2.Promotion
    def __init__(self, adapter: _Optional[_Union[Adapter, _Mapping]] = ..., promotion: _Optional[_Union[_common_pb2.Promotion, _Mapping]] = ...) -> None: ...

class SetPromotionGateRequest(_message.Message):
    __slots__ = ("adapter", "alias", "gate")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    alias: str
    gate: PromotionGate
    def __init__(self, adapter: _Optional[str] = ..., alias: _Optional[str] = ..., gate: _Optional[_Union[PromotionGate, _Mapping]] = ...) -> None: ...

class SetPromotionGateResponse(_message.Message):
    __slots__ = ("gate",)
    GATE_FIELD_NUMBER: _ClassVar[int]
    gate: PromotionGate
    def __init__(self, gate: _Optional[_Union[PromotionGate, _Mapping]] = ...) -> None: ...

class GetPromotionGateRequest(_message.Message):
    __slots__ = ("adapter", "alias")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    alias: str
    def __init__(self, adapter: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class GetPromotionGateResponse(_message.Message):
    __slots__ = ("gate",)
    GATE_FIELD_NUMBER: _ClassVar[int]
    gate: PromotionGate
    def __init__(self, gate: _Optional[_Union[PromotionGate, _Mapping]] = ...) -> None: ...

class DeletePromotionGateRequest(_message.Message):
    __slots__ = ("adapter", "alias")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    alias: str
    def __init__(self, adapter: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class DeletePromotionGateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteAdapterVersionRequest(_message.Message):
    __slots__ = ("adapter", "version")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    version: int
    def __init__(self, adapter: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DeleteAdapterVersionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
