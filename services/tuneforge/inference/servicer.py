"""gRPC glue for InferenceService: tenant from the API key, everything else in InferenceFrontend.

The gRPC API is served by our own grpc.aio front (the same server, interceptors and auth as every
other service) rather than Ray Serve's gRPC proxy: the proxy would need the API-key interceptor,
error mapping and health of the platform re-built inside Serve. In a cluster the front forwards the
resolved request to the replicas through Serve's HTTP proxy (`remote.py`), so one front serves both
modes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from tuneforge.catalog.feedback import new_response_id
from tuneforge.common.auth import current_principal
from tuneforge.common.convert import MODEL_KINDS, promotion_message
from tuneforge.common.errors import InvalidArgument, Unavailable
from tuneforge.inference.engine import Sampling
from tuneforge.inference.feedback import ResponseRecorder
from tuneforge.inference.frontend import InferenceFrontend, Target
from tuneforge.inference.structured import JSON_OBJECT, JSON_SCHEMA, TEXT, ResponseFormat
from tuneforge.v1 import inference_pb2, inference_pb2_grpc

FINISH = {
    "stop": inference_pb2.FINISH_REASON_STOP,
    "length": inference_pb2.FINISH_REASON_LENGTH,
    "stop_sequence": inference_pb2.FINISH_REASON_STOP_SEQUENCE,
}
RESPONSE_FORMATS = {
    inference_pb2.RESPONSE_FORMAT_TYPE_UNSPECIFIED: TEXT,
    inference_pb2.RESPONSE_FORMAT_TYPE_TEXT: TEXT,
    inference_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT: JSON_OBJECT,
    inference_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: JSON_SCHEMA,
}


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Generate, GenerateStream and ListModels for the caller's tenant."""

    def __init__(self) -> None:
        self.frontend: InferenceFrontend | None = None
        #: Where served answers are recorded for feedback (None: they are not).
        self.responses: ResponseRecorder | None = None

    def _ready(self) -> InferenceFrontend:
        if self.frontend is None:
            raise Unavailable("the base model is still loading; retry when health reports SERVING")
        return self.frontend

    async def _start(
        self, request
    ) -> tuple[InferenceFrontend, str, Target, list[int], Sampling, ResponseFormat | None]:
        frontend = self._ready()
        tenant = current_principal().tenant
        messages = [(m.role, m.content) for m in request.messages]
        frontend.check_messages(messages)  # cheap checks before a model version may be loaded
        s = request.sampling
        sampling = frontend.sampling(
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            stop=list(s.stop),
            seed=s.seed if s.HasField("seed") else None,
        )
        response_format = await _response_format(frontend, request)
        target = await frontend.resolve(tenant, request.model)
        prompt = await frontend.render_prompt(messages, target=target)  # with the target's chat template
        return frontend, tenant, target, prompt, sampling, response_format

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GenerateResponse:
        frontend, tenant, target, prompt, sampling, response_format = await self._start(request)
        response_id = new_response_id()
        parts: list[str] = []
        async for event in frontend.stream(tenant, target, prompt, sampling, response_format):
            parts.append(event.delta)
            if event.finish_reason:
                _raise_if_failed(event)
                await self._record(tenant, response_id, target, request, sampling, "".join(parts), event.finish_reason)
                return inference_pb2.GenerateResponse(
                    text="".join(parts),
                    finish_reason=FINISH.get(event.finish_reason, 0),
                    usage=inference_pb2.Usage(
                        prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens
                    ),
                    resolved_model=target.name,
                    response_id=response_id,
                )
        raise Unavailable("generation ended without a result")

    async def GenerateStream(
        self, request: inference_pb2.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateStreamResponse]:
        frontend, tenant, target, prompt, sampling, response_format = await self._start(request)
        response_id = new_response_id()
        first = True
        parts: list[str] = []
        async for event in frontend.stream(tenant, target, prompt, sampling, response_format):
            parts.append(event.delta)
            if event.finish_reason:
                _raise_if_failed(event)
                await self._record(tenant, response_id, target, request, sampling, "".join(parts), event.finish_reason)
            message = inference_pb2.GenerateStreamResponse(delta=event.delta)
            if first:
                message.resolved_model, message.response_id, first = target.name, response_id, False
            if event.finish_reason:
                message.finish_reason = FINISH.get(event.finish_reason, 0)
                message.usage.prompt_tokens = event.prompt_tokens
                message.usage.completion_tokens = event.completion_tokens
            if message.delta or event.finish_reason or message.resolved_model:
                yield message

    async def _record(
        self,
        tenant: str,
        response_id: str,
        target: Target,
        request: inference_pb2.GenerateRequest | inference_pb2.GenerateStreamRequest,
        sampling: Sampling,
        answer: str,
        finish: str,
    ) -> None:
        """Keeps the answer under its id for feedback (before the client sees the answer end)."""
        if self.responses is not None:
            messages = [(m.role, m.content) for m in request.messages]
            await self.responses.record(tenant, response_id, target.name, messages, sampling, answer, finish)

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        frontend = self._ready()
        entries = await frontend.model_entries(current_principal().tenant)
        models = []
        for entry in entries:
            model = inference_pb2.ModelInfo(
                name=entry.name,
                base_model=entry.base_model or frontend.base_name,
                is_base=entry.is_base,
                version=entry.version,
                kind=MODEL_KINDS.get(entry.kind, 0),
                loaded=entry.loaded,
            )
            if entry.promotion is not None:
                model.promotion.CopyFrom(promotion_message(entry.promotion))
            models.append(model)
        return inference_pb2.ListModelsResponse(models=models)


async def _response_format(frontend: InferenceFrontend, request) -> ResponseFormat | None:
    """The request's `response_format` as the domain's (None: free text); INVALID_ARGUMENT naming the field."""
    if not request.HasField("response_format"):
        return None
    given = request.response_format
    kind = RESPONSE_FORMATS.get(given.type)
    if kind is None:
        raise InvalidArgument.for_field("response_format.type", f"unknown value {given.type}")
    return await frontend.check_response_format(
        kind, given.json_schema, given.name, "response_format.json_schema", "response_format.type"
    )


def _raise_if_failed(event) -> None:
    """An answer that ended without finishing (an engine error, a cancellation) is an error, never a reply."""
    if event.finish_reason == "error":
        raise Unavailable(f"generation failed on this replica: {event.error}; retry")
    if event.finish_reason not in FINISH:
        raise Unavailable(f"generation ended early on this replica ({event.finish_reason}); retry")
