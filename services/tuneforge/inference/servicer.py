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

from tuneforge.common.auth import current_principal
from tuneforge.common.convert import promotion_message
from tuneforge.common.errors import Unavailable
from tuneforge.inference.frontend import InferenceFrontend, Target
from tuneforge.v1 import inference_pb2, inference_pb2_grpc

FINISH = {
    "stop": inference_pb2.FINISH_REASON_STOP,
    "length": inference_pb2.FINISH_REASON_LENGTH,
    "stop_sequence": inference_pb2.FINISH_REASON_STOP_SEQUENCE,
}


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Generate, GenerateStream and ListModels for the caller's tenant."""

    def __init__(self) -> None:
        self.frontend: InferenceFrontend | None = None

    def _ready(self) -> InferenceFrontend:
        if self.frontend is None:
            raise Unavailable("the base model is still loading; retry when health reports SERVING")
        return self.frontend

    async def _start(self, request) -> tuple[InferenceFrontend, str, Target, list[int], object]:
        frontend = self._ready()
        tenant = current_principal().tenant
        prompt = await frontend.render_prompt([(m.role, m.content) for m in request.messages])
        s = request.sampling
        sampling = frontend.sampling(
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            stop=list(s.stop),
            seed=s.seed if s.HasField("seed") else None,
        )
        target = await frontend.resolve(tenant, request.model)
        return frontend, tenant, target, prompt, sampling

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GenerateResponse:
        frontend, tenant, target, prompt, sampling = await self._start(request)
        parts: list[str] = []
        async for event in frontend.stream(tenant, target, prompt, sampling):
            parts.append(event.delta)
            if event.finish_reason:
                _raise_if_failed(event)
                return inference_pb2.GenerateResponse(
                    text="".join(parts),
                    finish_reason=FINISH.get(event.finish_reason, 0),
                    usage=inference_pb2.Usage(
                        prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens
                    ),
                    resolved_model=target.name,
                )
        raise Unavailable("generation ended without a result")

    async def GenerateStream(
        self, request: inference_pb2.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateStreamResponse]:
        frontend, tenant, target, prompt, sampling = await self._start(request)
        first = True
        async for event in frontend.stream(tenant, target, prompt, sampling):
            if event.finish_reason:
                _raise_if_failed(event)
            message = inference_pb2.GenerateStreamResponse(delta=event.delta)
            if first:
                message.resolved_model, first = target.name, False
            if event.finish_reason:
                message.finish_reason = FINISH.get(event.finish_reason, 0)
                message.usage.prompt_tokens = event.prompt_tokens
                message.usage.completion_tokens = event.completion_tokens
            if message.delta or event.finish_reason or message.resolved_model:
                yield message

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        frontend = self._ready()
        entries = await frontend.model_entries(current_principal().tenant)
        models = []
        for entry in entries:
            model = inference_pb2.ModelInfo(
                name=entry.name, base_model=frontend.base_name, is_base=entry.is_base, version=entry.version
            )
            if entry.promotion is not None:
                model.promotion.CopyFrom(promotion_message(entry.promotion))
            models.append(model)
        return inference_pb2.ListModelsResponse(models=models)


def _raise_if_failed(event) -> None:
    if event.finish_reason == "error":
        raise Unavailable(f"generation failed on this replica: {event.error}; retry")
