from tuneforge.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExportKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_KIND_UNSPECIFIED: _ClassVar[ExportKind]
    EXPORT_KIND_MERGE: _ClassVar[ExportKind]
    EXPORT_KIND_EXPORT: _ClassVar[ExportKind]

class ExportState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_STATE_UNSPECIFIED: _ClassVar[ExportState]
    EXPORT_STATE_QUEUED: _ClassVar[ExportState]
    EXPORT_STATE_RUNNING: _ClassVar[ExportState]
    EXPORT_STATE_SUCCEEDED: _ClassVar[ExportState]
    EXPORT_STATE_FAILED: _ClassVar[ExportState]
    EXPORT_STATE_CANCELLED: _ClassVar[ExportState]
EXPORT_KIND_UNSPECIFIED: ExportKind
EXPORT_KIND_MERGE: ExportKind
EXPORT_KIND_EXPORT: ExportKind
EXPORT_STATE_UNSPECIFIED: ExportState
EXPORT_STATE_QUEUED: ExportState
EXPORT_STATE_RUNNING: ExportState
EXPORT_STATE_SUCCEEDED: ExportState
EXPORT_STATE_FAILED: ExportState
EXPORT_STATE_CANCELLED: ExportState

class ExportFile(_message.Message):
    __slots__ = ("name", "digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: _common_pb2.ContentDigest
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[_Union[_common_pb2.ContentDigest, _Mapping]] = ...) -> None: ...

class ModelExport(_message.Message):
    __slots__ = ("id", "kind", "source", "format", "quant", "dtype", "state", "progress", "stage", "error", "files", "model_version", "times")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: ExportKind
    source: str
    format: str
    quant: str
    dtype: str
    state: ExportState
    progress: float
    stage: str
    error: str
    files: _containers.RepeatedCompositeFieldContainer[ExportFile]
    model_version: str
    times: _common_pb2.ResourceTimes
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[ExportKind, str]] = ..., source: _Optional[str] = ..., format: _Optional[str] = ..., quant: _Optional[str] = ..., dtype: _Optional[str] = ..., state: _Optional[_Union[ExportState, str]] = ..., progress: _Optional[float] = ..., stage: _Optional[str] = ..., error: _Optional[str] = ..., files: _Optional[_Iterable[_Union[ExportFile, _Mapping]]] = ..., model_version: _Optional[str] = ..., times: _Optional[_Union[_common_pb2.ResourceTimes, _Mapping]] = ...) -> None: ...

class MergeAdapterRequest(_message.Message):
    __slots__ = ("adapter", "model_name", "dtype", "idempotency_key")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    model_name: str
    dtype: str
    idempotency_key: str
    def __init__(self, adapter: _Optional[str] = ..., model_name: _Optional[str] = ..., dtype: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class MergeAdapterResponse(_message.Message):
    __slots__ = ("export",)
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    export: ModelExport
    def __init__(self, export: _Optional[_Union[ModelExport, _Mapping]] = ...) -> None: ...

class ExportModelRequest(_message.Message):
    __slots__ = ("model", "format", "quant", "idempotency_key")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    model: str
    format: str
    quant: str
    idempotency_key: str
    def __init__(self, model: _Optional[str] = ..., format: _Optional[str] = ..., quant: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class ExportModelResponse(_message.Message):
    __slots__ = ("export",)
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    export: ModelExport
    def __init__(self, export: _Optional[_Union[ModelExport, _Mapping]] = ...) -> None: ...

class GetExportRequest(_message.Message):
    __slots__ = ("export_id",)
    EXPORT_ID_FIELD_NUMBER: _ClassVar[int]
    export_id: str
    def __init__(self, export_id: _Optional[str] = ...) -> None: ...

class GetExportResponse(_message.Message):
    __slots__ = ("export",)
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    export: ModelExport
    def __init__(self, export: _Optional[_Union[ModelExport, _Mapping]] = ...) -> None: ...

class ListExportsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListExportsResponse(_message.Message):
    __slots__ = ("exports", "next_page_token")
    EXPORTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    exports: _containers.RepeatedCompositeFieldContainer[ModelExport]
    next_page_token: str
    def __init__(self, exports: _Optional[_Iterable[_Union[ModelExport, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelExportRequest(_message.Message):
    __slots__ = ("export_id",)
    EXPORT_ID_FIELD_NUMBER: _ClassVar[int]
    export_id: str
    def __init__(self, export_id: _Optional[str] = ...) -> None: ...

class CancelExportResponse(_message.Message):
    __slots__ = ("export",)
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    export: ModelExport
    def __init__(self, export: _Optional[_Union[ModelExport, _Mapping]] = ...) -> None: ...

class DownloadExportRequest(_message.Message):
    __slots__ = ("export_id",)
    EXPORT_ID_FIELD_NUMBER: _ClassVar[int]
    export_id: str
    def __init__(self, export_id: _Optional[str] = ...) -> None: ...

class DownloadExportResponse(_message.Message):
    __slots__ = ("name", "offset", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    offset: int
    data: bytes
    def __init__(self, name: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
