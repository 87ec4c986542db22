from tuneforge.v1 import common_pb2 as _common_pb2
from tuneforge.v1 import curation_pb2 as _curation_pb2
from tuneforge.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerationRunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GENERATION_RUN_STATE_UNSPECIFIED: _ClassVar[GenerationRunState]
    GENERATION_RUN_STATE_QUEUED: _ClassVar[GenerationRunState]
    GENERATION_RUN_STATE_RUNNING: _ClassVar[GenerationRunState]
    GENERATION_RUN_STATE_SUCCEEDED: _ClassVar[GenerationRunState]
    GENERATION_RUN_STATE_FAILED: _ClassVar[GenerationRunState]
    GENERATION_RUN_STATE_CANCELLED: _ClassVar[GenerationRunState]

class CandidateStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANDIDATE_STATUS_UNSPECIFIED: _ClassVar[CandidateStatus]
    CANDIDATE_STATUS_PENDING: _ClassVar[CandidateStatus]
    CANDIDATE_STATUS_ACCEPTED: _ClassVar[CandidateStatus]
    CANDIDATE_STATUS_REJECTED: _ClassVar[CandidateStatus]
    CANDIDATE_STATUS_FILTERED: _ClassVar[CandidateStatus]

class ReviewDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVIEW_DECISION_UNSPECIFIED: _ClassVar[ReviewDecision]
    REVIEW_DECISION_ACCEPT: _ClassVar[ReviewDecision]
    REVIEW_DECISION_REJECT: _ClassVar[ReviewDecision]
GENERATION_RUN_STATE_UNSPECIFIED: GenerationRunState
GENERATION_RUN_STATE_QUEUED: GenerationRunState
GENERATION_RUN_STATE_RUNNING: GenerationRunState
GENERATION_RUN_STATE_SUCCEEDED: GenerationRunState
GENERATION_RUN_STATE_FAILED: GenerationRunState
GENERATION_RUN_STATE_CANCELLED: GenerationRunState
CANDIDATE_STATUS_UNSPECIFIED: CandidateStatus
CANDIDATE_STATUS_PENDING: CandidateStatus
CANDIDATE_STATUS_ACCEPTED: CandidateStatus
CANDIDATE_STATUS_REJECTED: CandidateStatus
CANDIDATE_STATUS_FILTERED: CandidateStatus
REVIEW_DECISION_UNSPECIFIED: ReviewDecision
REVIEW_DECISION_ACCEPT: ReviewDecision
REVIEW_DECISION_REJECT: ReviewDecision

class CreateGenerationRunRequest(_message.Message):
    __slots__ = ("idempotency_key", "seeds", "seed_file_id", "model", "count", "seeds_per_prompt", "sampling")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FILE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEEDS_PER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    seeds: _containers.RepeatedScalarFieldContainer[str]
    seed_file_id: str
    model: str
    count: int
    seeds_per_prompt: int
    sampling: _inference_pb2.SamplingParams
    def __init__(self, idempotency_key: _Optional[str] = ..., seeds: _Optional[_Iterable[str]] = ..., seed_file_id: _Optional[str] = ..., model: _Optional[str] = ..., count: _Optional[int] = ..., seeds_per_prompt: _Optional[int] = ..., sampling: _Optional[_Union[_inference_pb2.SamplingParams, _Mapping]] = ...) -> None: ...

class CreateGenerationRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: GenerationRun
    def __init__(self, run: _Optional[_Union[GenerationRun, _Mapping]] = ...) -> None: ...

class GenerationProgress(_message.Message):
    __slots__ = ("proposed", "total", "kept", "duplicates", "invalid", "accepted", "rejected")
    PROPOSED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    proposed: int
    total: int
    kept: int
    duplicates: int
    invalid: int
    accepted: int
    rejected: int
    def __init__(self, proposed: _Optional[int] = ..., total: _Optional[int] = ..., kept: _Optional[int] = ..., duplicates: _Optional[int] = ..., invalid: _Optional[int] = ..., accepted: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class GenerationRun(_message.Message):
    __slots__ = ("id", "state", "progress", "model", "resolved_model", "seeds", "seeds_per_prompt", "sampling", "failure_reason", "times", "built_file_ids")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_MODEL_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    SEEDS_PER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    BUILT_FILE_IDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: GenerationRunState
    progress: GenerationProgress
    model: str
    resolved_model: str
    seeds: _containers.RepeatedScalarFieldContainer[str]
    seeds_per_prompt: int
    sampling: _inference_pb2.SamplingParams
    failure_reason: str
    times: _common_pb2.ResourceTimes
    built_file_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[GenerationRunState, str]] = ..., progress: _Optional[_Union[GenerationProgress, _Mapping]] = ..., model: _Optional[str] = ..., resolved_model: _Optional[str] = ..., seeds: _Optional[_Iterable[str]] = ..., seeds_per_prompt: _Optional[int] = ..., sampling: _Optional[_Union[_inference_pb2.SamplingParams, _Mapping]] = ..., failure_reason: _Optional[str] = ..., times: _Optional[_Union[_common_pb2.ResourceTimes, _Mapping]] = ..., built_file_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetGenerationRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetGenerationRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: GenerationRun
    def __init__(self, run: _Optional[_Union[GenerationRun, _Mapping]] = ...) -> None: ...

class ListGenerationRunsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListGenerationRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[GenerationRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[GenerationRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelGenerationRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class CancelGenerationRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: GenerationRun
    def __init__(self, run: _Optional[_Union[GenerationRun, _Mapping]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("id", "run_id", "index", "instruction", "answer", "status", "filter_reason", "seeds", "model", "reviewer", "edited", "original_instruction", "original_answer", "times")
    ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FILTER_REASON_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    EDITED_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_ANSWER_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    id: str
    run_id: str
    index: int
    instruction: str
    answer: str
    status: CandidateStatus
    filter_reason: str
    seeds: _containers.RepeatedScalarFieldContainer[str]
    model: str
    reviewer: str
    edited: bool
    original_instruction: str
    original_answer: str
    times: _common_pb2.ResourceTimes
    def __init__(self, id: _Optional[str] = ..., run_id: _Optional[str] = ..., index: _Optional[int] = ..., instruction: _Optional[str] = ..., answer: _Optional[str] = ..., status: _Optional[_Union[CandidateStatus, str]] = ..., filter_reason: _Optional[str] = ..., seeds: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., reviewer: _Optional[str] = ..., edited: _Optional[bool] = ..., original_instruction: _Optional[str] = ..., original_answer: _Optional[str] = ..., times: _Optional[_Union[_common_pb2.ResourceTimes, _Mapping]] = ...) -> None: ...

class ListCandidatesRequest(_message.Message):
    __slots__ = ("run_id", "statuses")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    statuses: _containers.RepeatedScalarFieldContainer[CandidateStatus]
    def __init__(self, run_id: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[CandidateStatus, str]]] = ...) -> None: ...

class ListCandidatesResponse(_message.Message):
    __slots__ = ("candidates",)
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class ReviewCandidateRequest(_message.Message):
    __slots__ = ("candidate_id", "decision", "instruction", "answer")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    decision: ReviewDecision
    instruction: str
    answer: str
    def __init__(self, candidate_id: _Optional[str] = ..., decision: _Optional[_Union[ReviewDecision, str]] = ..., instruction: _Optional[str] = ..., answer: _Optional[str] = ...) -> None: ...

class ReviewCandidateResponse(_message.Message):
    __slots__ = ("candidate",)
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    candidate: Candidate
    def __init__(self, candidate: _Optional[_Union[Candidate, _Mapping]] = ...) -> None: ...

class BuildDatasetFromCandidatesRequest(_message.Message):
    __slots__ = ("idempotency_key", "run_id", "dataset", "settings")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    run_id: str
    dataset: str
    settings: _curation_pb2.CurationSettings
    def __init__(self, idempotency_key: _Optional[str] = ..., run_id: _Optional[str] = ..., dataset: _Optional[str] = ..., settings: _Optional[_Union[_curation_pb2.CurationSettings, _Mapping]] = ...) -> None: ...

class BuildDatasetFromCandidatesResponse(_message.Message):
    __slots__ = ("file", "candidate_ids", "dataset_version")
    FILE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    file: _curation_pb2.File
    candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    dataset_version: _curation_pb2.DatasetVersion
    def __init__(self, file: _Optional[_Union[_curation_pb2.File, _Mapping]] = ..., candidate_ids: _Optional[_Iterable[str]] = ..., dataset_version: _Optional[_Union[_curation_pb2.DatasetVersion, _Mapping]] = ...) -> None: ...
