import datetime

from google.protobuf import struct_pb2 as _struct_pb2
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

class EvalRunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVAL_RUN_STATE_UNSPECIFIED: _ClassVar[EvalRunState]
    EVAL_RUN_STATE_QUEUED: _ClassVar[EvalRunState]
    EVAL_RUN_STATE_RUNNING: _ClassVar[EvalRunState]
    EVAL_RUN_STATE_SUCCEEDED: _ClassVar[EvalRunState]
    EVAL_RUN_STATE_FAILED: _ClassVar[EvalRunState]
    EVAL_RUN_STATE_CANCELLED: _ClassVar[EvalRunState]

class ReportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_FORMAT_UNSPECIFIED: _ClassVar[ReportFormat]
    REPORT_FORMAT_JSON: _ClassVar[ReportFormat]
    REPORT_FORMAT_MARKDOWN: _ClassVar[ReportFormat]
    REPORT_FORMAT_HTML: _ClassVar[ReportFormat]
EVAL_RUN_STATE_UNSPECIFIED: EvalRunState
EVAL_RUN_STATE_QUEUED: EvalRunState
EVAL_RUN_STATE_RUNNING: EvalRunState
EVAL_RUN_STATE_SUCCEEDED: EvalRunState
EVAL_RUN_STATE_FAILED: EvalRunState
EVAL_RUN_STATE_CANCELLED: EvalRunState
REPORT_FORMAT_UNSPECIFIED: ReportFormat
REPORT_FORMAT_JSON: ReportFormat
REPORT_FORMAT_MARKDOWN: ReportFormat
REPORT_FORMAT_HTML: ReportFormat

class CheckSpec(_message.Message):
    __slots__ = ("type", "params")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    type: str
    params: _struct_pb2.Struct
    def __init__(self, type: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SuiteItem(_message.Message):
    __slots__ = ("id", "category", "messages", "checks", "reference", "rubric")
    ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    RUBRIC_FIELD_NUMBER: _ClassVar[int]
    id: str
    category: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    checks: _containers.RepeatedCompositeFieldContainer[CheckSpec]
    reference: str
    rubric: str
    def __init__(self, id: _Optional[str] = ..., category: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., checks: _Optional[_Iterable[_Union[CheckSpec, _Mapping]]] = ..., reference: _Optional[str] = ..., rubric: _Optional[str] = ...) -> None: ...

class Suite(_message.Message):
    __slots__ = ("id", "name", "num_items", "category_counts", "builtin", "digest", "times")
    class CategoryCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    num_items: int
    category_counts: _containers.ScalarMap[str, int]
    builtin: bool
    digest: _common_pb2.ContentDigest
    times: _common_pb2.ResourceTimes
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., num_items: _Optional[int] = ..., category_counts: _Optional[_Mapping[str, int]] = ..., builtin: _Optional[bool] = ..., digest: _Optional[_Union[_common_pb2.ContentDigest, _Mapping]] = ..., times: _Optional[_Union[_common_pb2.ResourceTimes, _Mapping]] = ...) -> None: ...

class CreateSuiteRequest(_message.Message):
    __slots__ = ("idempotency_key", "name", "jsonl")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    JSONL_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    name: str
    jsonl: bytes
    def __init__(self, idempotency_key: _Optional[str] = ..., name: _Optional[str] = ..., jsonl: _Optional[bytes] = ...) -> None: ...

class CreateSuiteResponse(_message.Message):
    __slots__ = ("suite",)
    SUITE_FIELD_NUMBER: _ClassVar[int]
    suite: Suite
    def __init__(self, suite: _Optional[_Union[Suite, _Mapping]] = ...) -> None: ...

class GetSuiteRequest(_message.Message):
    __slots__ = ("suite_id",)
    SUITE_ID_FIELD_NUMBER: _ClassVar[int]
    suite_id: str
    def __init__(self, suite_id: _Optional[str] = ...) -> None: ...

class GetSuiteResponse(_message.Message):
    __slots__ = ("suite", "items")
    SUITE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    suite: Suite
    items: _containers.RepeatedCompositeFieldContainer[SuiteItem]
    def __init__(self, suite: _Optional[_Union[Suite, _Mapping]] = ..., items: _Optional[_Iterable[_Union[SuiteItem, _Mapping]]] = ...) -> None: ...

class ListSuitesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSuitesResponse(_message.Message):
    __slots__ = ("suites", "next_page_token")
    SUITES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    suites: _containers.RepeatedCompositeFieldContainer[Suite]
    next_page_token: str
    def __init__(self, suites: _Optional[_Iterable[_Union[Suite, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateEvalRunRequest(_message.Message):
    __slots__ = ("idempotency_key", "suite_id", "models", "sampling", "judge_model")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SUITE_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    JUDGE_MODEL_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    suite_id: str
    models: _containers.RepeatedScalarFieldContainer[str]
    sampling: _inference_pb2.SamplingParams
    judge_model: str
    def __init__(self, idempotency_key: _Optional[str] = ..., suite_id: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., sampling: _Optional[_Union[_inference_pb2.SamplingParams, _Mapping]] = ..., judge_model: _Optional[str] = ...) -> None: ...

class EvalProgress(_message.Message):
    __slots__ = ("completed", "total")
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    completed: int
    total: int
    def __init__(self, completed: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class EvalRun(_message.Message):
    __slots__ = ("id", "suite_id", "models", "state", "progress", "sampling", "failure_reason", "times", "judge_model")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUITE_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    JUDGE_MODEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    suite_id: str
    models: _containers.RepeatedScalarFieldContainer[str]
    state: EvalRunState
    progress: EvalProgress
    sampling: _inference_pb2.SamplingParams
    failure_reason: str
    times: _common_pb2.ResourceTimes
    judge_model: str
    def __init__(self, id: _Optional[str] = ..., suite_id: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., state: _Optional[_Union[EvalRunState, str]] = ..., progress: _Optional[_Union[EvalProgress, _Mapping]] = ..., sampling: _Optional[_Union[_inference_pb2.SamplingParams, _Mapping]] = ..., failure_reason: _Optional[str] = ..., times: _Optional[_Union[_common_pb2.ResourceTimes, _Mapping]] = ..., judge_model: _Optional[str] = ...) -> None: ...

class CreateEvalRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: EvalRun
    def __init__(self, run: _Optional[_Union[EvalRun, _Mapping]] = ...) -> None: ...

class GetEvalRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetEvalRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: EvalRun
    def __init__(self, run: _Optional[_Union[EvalRun, _Mapping]] = ...) -> None: ...

class ListEvalRunsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEvalRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[EvalRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[EvalRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelEvalRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class CancelEvalRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: EvalRun
    def __init__(self, run: _Optional[_Union[EvalRun, _Mapping]] = ...) -> None: ...

class StreamEvalRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class StreamEvalRunResponse(_message.Message):
    __slots__ = ("run", "time")
    RUN_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    run: EvalRun
    time: _timestamp_pb2.Timestamp
    def __init__(self, run: _Optional[_Union[EvalRun, _Mapping]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CheckResult(_message.Message):
    __slots__ = ("type", "passed", "reason", "score")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    type: str
    passed: bool
    reason: str
    score: float
    def __init__(self, type: _Optional[str] = ..., passed: _Optional[bool] = ..., reason: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class EvalResult(_message.Message):
    __slots__ = ("item_id", "category", "model", "output", "checks", "passed", "judge_score", "judge_reason", "human_scores")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    JUDGE_SCORE_FIELD_NUMBER: _ClassVar[int]
    JUDGE_REASON_FIELD_NUMBER: _ClassVar[int]
    HUMAN_SCORES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    category: str
    model: str
    output: str
    checks: _containers.RepeatedCompositeFieldContainer[CheckResult]
    passed: bool
    judge_score: float
    judge_reason: str
    human_scores: _containers.RepeatedCompositeFieldContainer[HumanScore]
    def __init__(self, item_id: _Optional[str] = ..., category: _Optional[str] = ..., model: _Optional[str] = ..., output: _Optional[str] = ..., checks: _Optional[_Iterable[_Union[CheckResult, _Mapping]]] = ..., passed: _Optional[bool] = ..., judge_score: _Optional[float] = ..., judge_reason: _Optional[str] = ..., human_scores: _Optional[_Iterable[_Union[HumanScore, _Mapping]]] = ...) -> None: ...

class HumanScore(_message.Message):
    __slots__ = ("rater", "score", "comment")
    RATER_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    rater: str
    score: int
    comment: str
    def __init__(self, rater: _Optional[str] = ..., score: _Optional[int] = ..., comment: _Optional[str] = ...) -> None: ...

class ListEvalResultsRequest(_message.Message):
    __slots__ = ("run_id", "model", "category", "page_size", "page_token")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    model: str
    category: str
    page_size: int
    page_token: str
    def __init__(self, run_id: _Optional[str] = ..., model: _Optional[str] = ..., category: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEvalResultsResponse(_message.Message):
    __slots__ = ("results", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EvalResult]
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[EvalResult, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CategoryComparison(_message.Message):
    __slots__ = ("category", "model", "reference_pass_rate", "pass_rate", "difference_ci_low", "difference_ci_high", "fixed", "broken", "reference_judge_score", "judge_score", "reference_human_score", "human_score")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_PASS_RATE_FIELD_NUMBER: _ClassVar[int]
    PASS_RATE_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    FIXED_FIELD_NUMBER: _ClassVar[int]
    BROKEN_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_JUDGE_SCORE_FIELD_NUMBER: _ClassVar[int]
    JUDGE_SCORE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_HUMAN_SCORE_FIELD_NUMBER: _ClassVar[int]
    HUMAN_SCORE_FIELD_NUMBER: _ClassVar[int]
    category: str
    model: str
    reference_pass_rate: float
    pass_rate: float
    difference_ci_low: float
    difference_ci_high: float
    fixed: int
    broken: int
    reference_judge_score: float
    judge_score: float
    reference_human_score: float
    human_score: float
    def __init__(self, category: _Optional[str] = ..., model: _Optional[str] = ..., reference_pass_rate: _Optional[float] = ..., pass_rate: _Optional[float] = ..., difference_ci_low: _Optional[float] = ..., difference_ci_high: _Optional[float] = ..., fixed: _Optional[int] = ..., broken: _Optional[int] = ..., reference_judge_score: _Optional[float] = ..., judge_score: _Optional[float] = ..., reference_human_score: _Optional[float] = ..., human_score: _Optional[float] = ...) -> None: ...

class GetEvalReportRequest(_message.Message):
    __slots__ = ("run_id", "format")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    format: ReportFormat
    def __init__(self, run_id: _Optional[str] = ..., format: _Optional[_Union[ReportFormat, str]] = ...) -> None: ...

class GetEvalReportResponse(_message.Message):
    __slots__ = ("comparisons", "content", "warnings")
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    comparisons: _containers.RepeatedCompositeFieldContainer[CategoryComparison]
    content: bytes
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, comparisons: _Optional[_Iterable[_Union[CategoryComparison, _Mapping]]] = ..., content: _Optional[bytes] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class ImportHumanScoresRequest(_message.Message):
    __slots__ = ("run_id", "jsonl")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JSONL_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    jsonl: bytes
    def __init__(self, run_id: _Optional[str] = ..., jsonl: _Optional[bytes] = ...) -> None: ...

class ImportHumanScoresResponse(_message.Message):
    __slots__ = ("imported", "run")
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    imported: int
    run: EvalRun
    def __init__(self, imported: _Optional[int] = ..., run: _Optional[_Union[EvalRun, _Mapping]] = ...) -> None: ...
