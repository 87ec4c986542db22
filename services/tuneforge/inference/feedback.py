"""Feedback on served answers, at the inference front: each answer's id and record, FeedbackService's
gRPC glue and the OpenAI-compatible API's `/v1/feedback` bodies.

The front records every answer it serves (prompt, resolved model, sampling, answer) under its response
id when generation finishes, in the metadata store for `inference.feedback_window_s`, so the feedback
stored with an id carries what really produced the answer, whichever front replica served it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import grpc

from tuneforge.catalog.feedback import (
    FeedbackFilter,
    FeedbackInput,
    FeedbackItem,
    FeedbackStore,
    ServedResponse,
)
from tuneforge.common.auth import current_principal
from tuneforge.common.convert import resource_times
from tuneforge.common.errors import InvalidArgument
from tuneforge.common.logging import get_logger
from tuneforge.inference.engine import Sampling
from tuneforge.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc, inference_pb2

log = get_logger(__name__)

RATING_TO_PROTO = {
    "": feedback_pb2.FEEDBACK_RATING_UNSPECIFIED,
    "up": feedback_pb2.FEEDBACK_RATING_UP,
    "down": feedback_pb2.FEEDBACK_RATING_DOWN,
}
RATING_FROM_PROTO = {value: name for name, value in RATING_TO_PROTO.items()}


class ResponseRecorder:
    """Records served answers (off the event loop) so they can be rated by their response id."""

    def __init__(self, store: FeedbackStore, base_model: str) -> None:
        self.store = store
        self.base_model = base_model

    async def record(
        self,
        tenant: str,
        response_id: str,
        model: str,
        messages: Sequence[tuple[str, str]],
        sampling: Sampling,
        answer: str,
        finish_reason: str,
    ) -> None:
        response = ServedResponse(
            id=response_id,
            tenant=tenant,
            model=model,
            base_model=self.base_model,
            messages=[{"role": role, "content": content} for role, content in messages],
            sampling={**dataclasses.asdict(sampling), "stop": list(sampling.stop)},
            answer=answer,
            finish_reason=finish_reason,
        )
        try:
            await asyncio.to_thread(self.store.record_response, response)
        except Exception as exc:  # serving goes on; only feedback on this answer will be NOT_FOUND
            log.warning("served_response_not_recorded", response_id=response_id, error=repr(exc))


def _sampling_message(sampling: dict[str, Any]) -> inference_pb2.SamplingParams:
    message = inference_pb2.SamplingParams(
        temperature=sampling.get("temperature", 0.0),
        top_p=sampling.get("top_p", 0.0),
        max_tokens=sampling.get("max_tokens", 0),
        stop=sampling.get("stop", []),
    )
    if sampling.get("seed") is not None:
        message.seed = sampling["seed"]
    return message


def feedback_message(item: FeedbackItem) -> feedback_pb2.Feedback:
    """A stored item as its protobuf message."""
    return feedback_pb2.Feedback(
        id=item.id,
        response_id=item.response_id,
        rating=RATING_TO_PROTO[item.rating],
        score=item.score,
        corrected_answer=item.corrected_answer,
        comment=item.comment,
        model=item.model,
        base_model=item.base_model,
        messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in item.messages],
        answer=item.answer,
        sampling=_sampling_message(item.sampling),
        times=resource_times(item.created_at, item.updated_at),
        exported_file_ids=list(item.exported_file_ids),
    )


def _rating(value: int) -> str:
    """The domain's rating; an unknown enum number passes through as text, for the domain's check to
    name `rating` together with every other bad field."""
    return RATING_FROM_PROTO.get(value, f"FeedbackRating {value}")


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    """SubmitFeedback, GetFeedback and ListFeedback for the caller's tenant."""

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store

    async def SubmitFeedback(
        self, request: feedback_pb2.SubmitFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> feedback_pb2.SubmitFeedbackResponse:
        given = FeedbackInput(
            response_id=request.response_id,
            rating=_rating(request.rating),
            score=request.score,
            corrected_answer=request.corrected_answer,
            comment=request.comment,
        )
        item = await asyncio.to_thread(self.store.submit, current_principal().tenant, given)
        return feedback_pb2.SubmitFeedbackResponse(feedback=feedback_message(item))

    async def GetFeedback(
        self, request: feedback_pb2.GetFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> feedback_pb2.GetFeedbackResponse:
        item = await asyncio.to_thread(self.store.get, current_principal().tenant, request.feedback_id)
        return feedback_pb2.GetFeedbackResponse(feedback=feedback_message(item))

    async def ListFeedback(
        self, request: feedback_pb2.ListFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> feedback_pb2.ListFeedbackResponse:
        filters = FeedbackFilter(
            model=request.model,
            rating=_rating(request.rating),
            min_score=request.min_score,
            only_corrected=request.only_corrected,
            only_unexported=request.only_unexported,
        )
        items, token = await asyncio.to_thread(
            self.store.list, current_principal().tenant, filters, request.page_size, request.page_token
        )
        return feedback_pb2.ListFeedbackResponse(
            feedback=[feedback_message(item) for item in items], next_page_token=token
        )


def _json_field(body: dict[str, Any], name: str, kind: type, what: str, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidArgument.for_field(name, f"must be {what}, got {type(value).__name__}")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # JSON can escape lone surrogates, which no UTF-8 text (or store) holds
            raise InvalidArgument.for_field(name, "must be Unicode text: it holds a lone surrogate") from None
    return value


def feedback_input_from_json(body: Any) -> FeedbackInput:
    """`POST /v1/feedback`'s body: `{response_id, rating: up|down, score: 1-5, corrected_answer, comment}`."""
    if not isinstance(body, dict):
        raise InvalidArgument.for_field("body", "must be a JSON object")
    return FeedbackInput(
        response_id=_json_field(body, "response_id", str, "a string (the completion's id)", ""),
        rating=_json_field(body, "rating", str, '"up" or "down"', ""),
        score=_json_field(body, "score", int, "an integer from 1 to 5", 0),
        corrected_answer=_json_field(body, "corrected_answer", str, "a string", ""),
        comment=_json_field(body, "comment", str, "a string", ""),
    )


def feedback_json(item: FeedbackItem) -> dict[str, Any]:
    """A stored item as the HTTP API returns it."""
    return {
        "object": "feedback",
        "id": item.id,
        "response_id": item.response_id,
        "rating": item.rating or None,
        "score": item.score or None,
        "corrected_answer": item.corrected_answer,
        "comment": item.comment,
        "model": item.model,
        "created": int(item.created_at.timestamp()),
    }
