"""gRPC glue for InferenceService."""

from __future__ import annotations

import grpc

from tuneforge.common.errors import Unavailable
from tuneforge.inference.base_model import LoadedBaseModel
from tuneforge.v1 import inference_pb2, inference_pb2_grpc


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Lists the models of the replica; generation arrives with the serving engine."""

    def __init__(self) -> None:
        self.base: LoadedBaseModel | None = None

    def _ready_base(self) -> LoadedBaseModel:
        if self.base is None:
            raise Unavailable("the base model is still loading; retry when health reports SERVING")
        return self.base

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        base = self._ready_base()
        return inference_pb2.ListModelsResponse(
            models=[inference_pb2.ModelInfo(name=base.name, base_model=base.name, is_base=True)]
        )
