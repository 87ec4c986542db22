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

class FeedbackRating(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_RATING_UNSPECIFIED: _ClassVar[FeedbackRating]
    FEEDBACK_RATING_UP: _ClassVar[FeedbackRating]
    FEEDBACK_RATING_DOWN: _ClassVar[FeedbackRating]
FEEDBACK_RATING_UNSPECIFIED: FeedbackRating
FEEDBACK_RATING_UP: FeedbackRating
FEEDBACK_RATING_DOWN: FeedbackRating

class Feedback(_message.Message):
    __slots__ = ("id", "response_id", "rating", "score", "corrected_answer", "comment", "model", "base_model", "messages", "answer", "sampling", "times", "exported_file_ids")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_ANSWER_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_FILE_IDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    response_id: str
    rating: FeedbackRating
    score: int
    corrected_answer: str
    comment: str
    model: str
    base_model: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    answer: str
    sampling: _inference_pb2.SamplingParams
    times: _common_pb2.ResourceTimes
    exported_file_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., response_id: _Optional[str] = ..., rating: _Optional[_Union[FeedbackRating, str]] = ..., score: _Optional[int] = ..., corrected_answer: _Optional[str] = ..., comment: _Optional[str] = ..., model: _Optional[str] = ..., base_model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., answer: _Optional[str] = ..., sampling: _Optional[_Union[_inference_pb2.SamplingParams, _Mapping]] = ..., times: _Optional[_Union[_common_pb2.ResourceTimes, _Mapping]] = ..., exported_file_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("response_id", "rating", "score", "corrected_answer", "comment")
    RESPONSE_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_ANSWER_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    response_id: str
    rating: FeedbackRating
    score: int
    corrected_answer: str
    comment: str
    def __init__(self, response_id: _Optional[str] = ..., rating: _Optional[_Union[FeedbackRating, str]] = ..., score: _Optional[int] = ..., corrected_answer: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class SubmitFeedbackResponse(_message.Message):
    __slots__ = ("feedback",)
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    feedback: Feedback
    def __init__(self, feedback: _Optional[_Union[Feedback, _Mapping]] = ...) -> None: ...

class GetFeedbackRequest(_message.Message):
    __slots__ = ("feedback_id",)
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    def __init__(self, feedback_id: _Optional[str] = ...) -> None: ...

class GetFeedbackResponse(_message.Message):
    __slots__ = ("feedback",)
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    feedback: Feedback
    def __init__(self, feedback: _Optional[_Union[Feedback, _Mapping]] = ...) -> None: ...

class ListFeedbackRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "model", "rating", "min_score", "only_corrected", "only_unexported")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    ONLY_CORRECTED_FIELD_NUMBER: _ClassVar[int]
    ONLY_UNEXPORTED_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    model: str
    rating: FeedbackRating
    min_score: int
    only_corrected: bool
    only_unexported: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., model: _Optional[str] = ..., rating: _Optional[_Union[FeedbackRating, str]] = ..., min_score: _Optional[int] = ..., only_corrected: _Optional[bool] = ..., only_unexported: _Optional[bool] = ...) -> None: ...

class ListFeedbackResponse(_message.Message):
    __slots__ = ("feedback", "next_page_token")
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    feedback: _containers.RepeatedCompositeFieldContainer[Feedback]
    next_page_token: str
    def __init__(self, feedback: _Optional[_Iterable[_Union[Feedback, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportFeedbackRequest(_message.Message):
    __slots__ = ("feedback_ids", "model", "include_approved", "include_exported")
    FEEDBACK_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_APPROVED_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EXPORTED_FIELD_NUMBER: _ClassVar[int]
    feedback_ids: _containers.RepeatedScalarFieldContainer[str]
    model: str
    include_approved: bool
    include_exported: bool
    def __init__(self, feedback_ids: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., include_approved: _Optional[bool] = ..., include_exported: _Optional[bool] = ...) -> None: ...

class ExportFeedbackResponse(_message.Message):
    __slots__ = ("instruction_file", "preference_file", "feedback_ids", "preference_feedback_ids")
    INSTRUCTION_FILE_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FILE_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_IDS_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FEEDBACK_IDS_FIELD_NUMBER: _ClassVar[int]
    instruction_file: _curation_pb2.File
    preference_file: _curation_pb2.File
    feedback_ids: _containers.RepeatedScalarFieldContainer[str]
    preference_feedback_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, instruction_file: _Optional[_Union[_curation_pb2.File, _Mapping]] = ..., preference_file: _Optional[_Union[_curation_pb2.File, _Mapping]] = ..., feedback_ids: _Optional[_Iterable[str]] = ..., preference_feedback_ids: _Optional[_Iterable[str]] = ...) -> None: ...
