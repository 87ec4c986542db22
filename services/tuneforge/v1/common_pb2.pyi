import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_DEBUG: _ClassVar[Severity]
    SEVERITY_INFO: _ClassVar[Severity]
    SEVERITY_WARNING: _ClassVar[Severity]
    SEVERITY_ERROR: _ClassVar[Severity]

class PromotionGateSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMOTION_GATE_SOURCE_UNSPECIFIED: _ClassVar[PromotionGateSource]
    PROMOTION_GATE_SOURCE_TENANT: _ClassVar[PromotionGateSource]
    PROMOTION_GATE_SOURCE_PLATFORM: _ClassVar[PromotionGateSource]
SEVERITY_UNSPECIFIED: Severity
SEVERITY_DEBUG: Severity
SEVERITY_INFO: Severity
SEVERITY_WARNING: Severity
SEVERITY_ERROR: Severity
PROMOTION_GATE_SOURCE_UNSPECIFIED: PromotionGateSource
PROMOTION_GATE_SOURCE_TENANT: PromotionGateSource
PROMOTION_GATE_SOURCE_PLATFORM: PromotionGateSource

class InputIssue(_message.Message):
    __slots__ = ("code", "message", "source", "line", "field", "severity")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    source: str
    line: int
    field: str
    severity: Severity
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., source: _Optional[str] = ..., line: _Optional[int] = ..., field: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ResourceTimes(_message.Message):
    __slots__ = ("create_time", "update_time")
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ContentDigest(_message.Message):
    __slots__ = ("sha256", "size_bytes")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class GateCategoryResult(_message.Message):
    __slots__ = ("suite_id", "run_id", "category", "target", "difference", "difference_ci_low", "difference_ci_high", "passed", "reason")
    SUITE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    suite_id: str
    run_id: str
    category: str
    target: bool
    difference: float
    difference_ci_low: float
    difference_ci_high: float
    passed: bool
    reason: str
    def __init__(self, suite_id: _Optional[str] = ..., run_id: _Optional[str] = ..., category: _Optional[str] = ..., target: _Optional[bool] = ..., difference: _Optional[float] = ..., difference_ci_low: _Optional[float] = ..., difference_ci_high: _Optional[float] = ..., passed: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class Promotion(_message.Message):
    __slots__ = ("alias", "passed", "forced", "reason", "moved_by", "move_time", "run_ids", "categories", "failures", "gate_source", "judge_score")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MOVED_BY_FIELD_NUMBER: _ClassVar[int]
    MOVE_TIME_FIELD_NUMBER: _ClassVar[int]
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    GATE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    JUDGE_SCORE_FIELD_NUMBER: _ClassVar[int]
    alias: str
    passed: bool
    forced: bool
    reason: str
    moved_by: str
    move_time: _timestamp_pb2.Timestamp
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    categories: _containers.RepeatedCompositeFieldContainer[GateCategoryResult]
    failures: _containers.RepeatedScalarFieldContainer[str]
    gate_source: PromotionGateSource
    judge_score: float
    def __init__(self, alias: _Optional[str] = ..., passed: _Optional[bool] = ..., forced: _Optional[bool] = ..., reason: _Optional[str] = ..., moved_by: _Optional[str] = ..., move_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., run_ids: _Optional[_Iterable[str]] = ..., categories: _Optional[_Iterable[_Union[GateCategoryResult, _Mapping]]] = ..., failures: _Optional[_Iterable[str]] = ..., gate_source: _Optional[_Union[PromotionGateSource, str]] = ..., judge_score: _Optional[float] = ...) -> None: ...
