import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tuneforge.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_FORMAT_UNSPECIFIED: _ClassVar[DataFormat]
    DATA_FORMAT_ALPACA: _ClassVar[DataFormat]
    DATA_FORMAT_SHAREGPT: _ClassVar[DataFormat]
    DATA_FORMAT_OPENAI_CHAT: _ClassVar[DataFormat]

class FileState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_STATE_UNSPECIFIED: _ClassVar[FileState]
    FILE_STATE_UPLOADING: _ClassVar[FileState]
    FILE_STATE_READY: _ClassVar[FileState]

class LengthPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LENGTH_POLICY_UNSPECIFIED: _ClassVar[LengthPolicy]
    LENGTH_POLICY_DROP: _ClassVar[LengthPolicy]
    LENGTH_POLICY_TRUNCATE: _ClassVar[LengthPolicy]

class DatasetVersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_VERSION_STATE_UNSPECIFIED: _ClassVar[DatasetVersionState]
    DATASET_VERSION_STATE_PROCESSING: _ClassVar[DatasetVersionState]
    DATASET_VERSION_STATE_READY: _ClassVar[DatasetVersionState]
    DATASET_VERSION_STATE_FAILED: _ClassVar[DatasetVersionState]
    DATASET_VERSION_STATE_CANCELLED: _ClassVar[DatasetVersionState]
DATA_FORMAT_UNSPECIFIED: DataFormat
DATA_FORMAT_ALPACA: DataFormat
DATA_FORMAT_SHAREGPT: DataFormat
DATA_FORMAT_OPENAI_CHAT: DataFormat
FILE_STATE_UNSPECIFIED: FileState
FILE_STATE_UPLOADING: FileState
FILE_STATE_READY: FileState
LENGTH_POLICY_UNSPECIFIED: LengthPolicy
LENGTH_POLICY_DROP: LengthPolicy
LENGTH_POLICY_TRUNCATE: LengthPolicy
DATASET_VERSION_STATE_UNSPECIFIED: DatasetVersionState
DATASET_VERSION_STATE_PROCESSING: DatasetVersionState
DATASET_VERSION_STATE_READY: DatasetVersionState
DATASET_VERSION_STATE_FAILED: DatasetVersionState
DATASET_VERSION_STATE_CANCELLED: DatasetVersionState

class File(_message.Message):
    __slots__ = ("id", "filename", "state", "digest", "format", "times")
    ID_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    id: str
    filename: str
    state: FileState
    digest: _common_pb2.ContentDigest
    format: DataFormat
    times: _common_pb2.ResourceTimes
    def __init__(self, id: _Optional[str] = ..., filename: _Optional[str] = ..., state: _Optional[_Union[FileState, str]] = ..., digest: _Optional[_Union[_common_pb2.ContentDigest, _Mapping]] = ..., format: _Optional[_Union[DataFormat, str]] = ..., times: _Optional[_Union[_common_pb2.ResourceTimes, _Mapping]] = ...) -> None: ...

class UploadFileHeader(_message.Message):
    __slots__ = ("filename", "format", "idempotency_key", "expected_sha256")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SHA256_FIELD_NUMBER: _ClassVar[int]
    filename: str
    format: DataFormat
    idempotency_key: str
    expected_sha256: str
    def __init__(self, filename: _Optional[str] = ..., format: _Optional[_Union[DataFormat, str]] = ..., idempotency_key: _Optional[str] = ..., expected_sha256: _Optional[str] = ...) -> None: ...

class UploadFileRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadFileHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadFileHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadFileResponse(_message.Message):
    __slots__ = ("file",)
    FILE_FIELD_NUMBER: _ClassVar[int]
    file: File
    def __init__(self, file: _Optional[_Union[File, _Mapping]] = ...) -> None: ...

class GetFileRequest(_message.Message):
    __slots__ = ("file_id",)
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    def __init__(self, file_id: _Optional[str] = ...) -> None: ...

class GetFileResponse(_message.Message):
    __slots__ = ("file",)
    FILE_FIELD_NUMBER: _ClassVar[int]
    file: File
    def __init__(self, file: _Optional[_Union[File, _Mapping]] = ...) -> None: ...

class ListFilesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFilesResponse(_message.Message):
    __slots__ = ("files", "next_page_token")
    FILES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[File]
    next_page_token: str
    def __init__(self, files: _Optional[_Iterable[_Union[File, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteFileRequest(_message.Message):
    __slots__ = ("file_id",)
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    def __init__(self, file_id: _Optional[str] = ...) -> None: ...

class DeleteFileResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CurationSettings(_message.Message):
    __slots__ = ("base_model", "max_seq_len", "length_policy", "validation_fraction", "near_duplicate_threshold", "scrub_pii", "seed", "leakage_suite_id", "max_invalid_fraction")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    LENGTH_POLICY_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    NEAR_DUPLICATE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SCRUB_PII_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LEAKAGE_SUITE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_INVALID_FRACTION_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    max_seq_len: int
    length_policy: LengthPolicy
    validation_fraction: float
    near_duplicate_threshold: float
    scrub_pii: bool
    seed: int
    leakage_suite_id: str
    max_invalid_fraction: float
    def __init__(self, base_model: _Optional[str] = ..., max_seq_len: _Optional[int] = ..., length_policy: _Optional[_Union[LengthPolicy, str]] = ..., validation_fraction: _Optional[float] = ..., near_duplicate_threshold: _Optional[float] = ..., scrub_pii: _Optional[bool] = ..., seed: _Optional[int] = ..., leakage_suite_id: _Optional[str] = ..., max_invalid_fraction: _Optional[float] = ...) -> None: ...

class CreateDatasetVersionRequest(_message.Message):
    __slots__ = ("idempotency_key", "dataset", "file_ids", "source_uri", "format", "settings")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    FILE_IDS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    dataset: str
    file_ids: _containers.RepeatedScalarFieldContainer[str]
    source_uri: str
    format: DataFormat
    settings: CurationSettings
    def __init__(self, idempotency_key: _Optional[str] = ..., dataset: _Optional[str] = ..., file_ids: _Optional[_Iterable[str]] = ..., source_uri: _Optional[str] = ..., format: _Optional[_Union[DataFormat, str]] = ..., settings: _Optional[_Union[CurationSettings, _Mapping]] = ...) -> None: ...

class CreateDatasetVersionResponse(_message.Message):
    __slots__ = ("dataset_version",)
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    dataset_version: DatasetVersion
    def __init__(self, dataset_version: _Optional[_Union[DatasetVersion, _Mapping]] = ...) -> None: ...

class DatasetCounts(_message.Message):
    __slots__ = ("records_in", "invalid", "exact_duplicates", "near_duplicates", "too_long", "leaked", "train_records", "validation_records", "train_tokens", "pii_replacements", "records_by_format", "truncated")
    class PiiReplacementsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class RecordsByFormatEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RECORDS_IN_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    EXACT_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    NEAR_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    TOO_LONG_FIELD_NUMBER: _ClassVar[int]
    LEAKED_FIELD_NUMBER: _ClassVar[int]
    TRAIN_RECORDS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_RECORDS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PII_REPLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_BY_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    records_in: int
    invalid: int
    exact_duplicates: int
    near_duplicates: int
    too_long: int
    leaked: int
    train_records: int
    validation_records: int
    train_tokens: int
    pii_replacements: _containers.ScalarMap[str, int]
    records_by_format: _containers.ScalarMap[str, int]
    truncated: int
    def __init__(self, records_in: _Optional[int] = ..., invalid: _Optional[int] = ..., exact_duplicates: _Optional[int] = ..., near_duplicates: _Optional[int] = ..., too_long: _Optional[int] = ..., leaked: _Optional[int] = ..., train_records: _Optional[int] = ..., validation_records: _Optional[int] = ..., train_tokens: _Optional[int] = ..., pii_replacements: _Optional[_Mapping[str, int]] = ..., records_by_format: _Optional[_Mapping[str, int]] = ..., truncated: _Optional[int] = ...) -> None: ...

class DatasetVersion(_message.Message):
    __slots__ = ("id", "dataset", "state", "settings", "file_ids", "counts", "template_hash", "failure_reason", "times", "base_model", "bytes_processed", "bytes_total", "format")
    ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    FILE_IDS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_HASH_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BYTES_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    id: str
    dataset: str
    state: DatasetVersionState
    settings: CurationSettings
    file_ids: _containers.RepeatedScalarFieldContainer[str]
    counts: DatasetCounts
    template_hash: str
    failure_reason: str
    times: _common_pb2.ResourceTimes
    base_model: str
    bytes_processed: int
    bytes_total: int
    format: DataFormat
    def __init__(self, id: _Optional[str] = ..., dataset: _Optional[str] = ..., state: _Optional[_Union[DatasetVersionState, str]] = ..., settings: _Optional[_Union[CurationSettings, _Mapping]] = ..., file_ids: _Optional[_Iterable[str]] = ..., counts: _Optional[_Union[DatasetCounts, _Mapping]] = ..., template_hash: _Optional[str] = ..., failure_reason: _Optional[str] = ..., times: _Optional[_Union[_common_pb2.ResourceTimes, _Mapping]] = ..., base_model: _Optional[str] = ..., bytes_processed: _Optional[int] = ..., bytes_total: _Optional[int] = ..., format: _Optional[_Union[DataFormat, str]] = ...) -> None: ...

class GetDatasetVersionRequest(_message.Message):
    __slots__ = ("dataset_version_id",)
    DATASET_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_version_id: str
    def __init__(self, dataset_version_id: _Optional[str] = ...) -> None: ...

class GetDatasetVersionResponse(_message.Message):
    __slots__ = ("dataset_version",)
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    dataset_version: DatasetVersion
    def __init__(self, dataset_version: _Optional[_Union[DatasetVersion, _Mapping]] = ...) -> None: ...

class ListDatasetVersionsRequest(_message.Message):
    __slots__ = ("dataset", "page_size", "page_token")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    page_size: int
    page_token: str
    def __init__(self, dataset: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetVersionsResponse(_message.Message):
    __slots__ = ("dataset_versions", "next_page_token")
    DATASET_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dataset_versions: _containers.RepeatedCompositeFieldContainer[DatasetVersion]
    next_page_token: str
    def __init__(self, dataset_versions: _Optional[_Iterable[_Union[DatasetVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDatasetReportRequest(_message.Message):
    __slots__ = ("dataset_version_id",)
    DATASET_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_version_id: str
    def __init__(self, dataset_version_id: _Optional[str] = ...) -> None: ...

class DuplicateCluster(_message.Message):
    __slots__ = ("kept", "removed", "kind")
    KEPT_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    kept: str
    removed: _containers.RepeatedScalarFieldContainer[str]
    kind: str
    def __init__(self, kept: _Optional[str] = ..., removed: _Optional[_Iterable[str]] = ..., kind: _Optional[str] = ...) -> None: ...

class GetDatasetReportResponse(_message.Message):
    __slots__ = ("dataset_version", "issue_counts", "duplicate_clusters", "markdown", "create_time", "json", "token_length_svg")
    class IssueCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    ISSUE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    MARKDOWN_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LENGTH_SVG_FIELD_NUMBER: _ClassVar[int]
    dataset_version: DatasetVersion
    issue_counts: _containers.ScalarMap[str, int]
    duplicate_clusters: _containers.RepeatedCompositeFieldContainer[DuplicateCluster]
    markdown: str
    create_time: _timestamp_pb2.Timestamp
    json: str
    token_length_svg: str
    def __init__(self, dataset_version: _Optional[_Union[DatasetVersion, _Mapping]] = ..., issue_counts: _Optional[_Mapping[str, int]] = ..., duplicate_clusters: _Optional[_Iterable[_Union[DuplicateCluster, _Mapping]]] = ..., markdown: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., json: _Optional[str] = ..., token_length_svg: _Optional[str] = ...) -> None: ...

class ListDatasetIssuesRequest(_message.Message):
    __slots__ = ("dataset_version_id", "code", "page_size", "page_token")
    DATASET_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dataset_version_id: str
    code: str
    page_size: int
    page_token: str
    def __init__(self, dataset_version_id: _Optional[str] = ..., code: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetIssuesResponse(_message.Message):
    __slots__ = ("issues", "next_page_token")
    ISSUES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    issues: _containers.RepeatedCompositeFieldContainer[_common_pb2.InputIssue]
    next_page_token: str
    def __init__(self, issues: _Optional[_Iterable[_Union[_common_pb2.InputIssue, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PreviewDatasetRecordsRequest(_message.Message):
    __slots__ = ("dataset_version_id", "split", "limit")
    DATASET_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    dataset_version_id: str
    split: str
    limit: int
    def __init__(self, dataset_version_id: _Optional[str] = ..., split: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class RenderedRecord(_message.Message):
    __slots__ = ("origin", "messages", "text", "num_tokens", "num_loss_tokens")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_LOSS_TOKENS_FIELD_NUMBER: _ClassVar[int]
    origin: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    text: str
    num_tokens: int
    num_loss_tokens: int
    def __init__(self, origin: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., text: _Optional[str] = ..., num_tokens: _Optional[int] = ..., num_loss_tokens: _Optional[int] = ...) -> None: ...

class PreviewDatasetRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[RenderedRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[RenderedRecord, _Mapping]]] = ...) -> None: ...

class DeleteDatasetVersionRequest(_message.Message):
    __slots__ = ("dataset_version_id",)
    DATASET_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_version_id: str
    def __init__(self, dataset_version_id: _Optional[str] = ...) -> None: ...

class DeleteDatasetVersionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CancelDatasetVersionRequest(_message.Message):
    __slots__ = ("dataset_version_id",)
    DATASET_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_version_id: str
    def __init__(self, dataset_version_id: _Optional[str] = ...) -> None: ...

class CancelDatasetVersionResponse(_message.Message):
    __slots__ = ("dataset_version",)
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    dataset_version: DatasetVersion
    def __init__(self, dataset_version: _Optional[_Union[DatasetVersion, _Mapping]] = ...) -> None: ...
