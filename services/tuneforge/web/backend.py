"""The console's way to the platform: the gRPC services, called with the signed-in tenant's own key.

The console never reads a store: every page is built from what the services answer to that key,
so tenant isolation is the services' own (another tenant's id is NOT_FOUND there, and here). In a
cluster each service runs behind its own address; embedded, one address serves them all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from tuneforge.client import TuneforgeError
from tuneforge.v1 import (
    curation_pb2_grpc,
    evaluation_pb2_grpc,
    feedback_pb2_grpc,
    generation_pb2_grpc,
    inference_pb2_grpc,
    training_pb2_grpc,
)

#: Seconds a unary call may take before the page reports the service as unavailable.
CALL_TIMEOUT_S = 30.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServiceAddresses:
    """gRPC addresses (`host:port`) of each service; embedded, all four are the same server."""

    curation: str
    training: str
    inference: str
    evaluation: str

    @classmethod
    def single(cls, address: str) -> ServiceAddresses:
        return cls(address, address, address, address)


class Backend:
    """One aio channel per distinct address, the services' stubs, and calls that carry a caller's key."""

    def __init__(self, addresses: ServiceAddresses) -> None:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self._channels: dict[str, grpc.aio.Channel] = {}
        for address in {addresses.curation, addresses.training, addresses.inference, addresses.evaluation}:
            self._channels[address] = grpc.aio.insecure_channel(address, options=options)
        self.datasets = curation_pb2_grpc.DatasetServiceStub(self._channels[addresses.curation])
        self.training = training_pb2_grpc.TrainingServiceStub(self._channels[addresses.training])
        self.adapters = training_pb2_grpc.AdapterServiceStub(self._channels[addresses.training])
        self.inference = inference_pb2_grpc.InferenceServiceStub(self._channels[addresses.inference])
        self.evaluation = evaluation_pb2_grpc.EvaluationServiceStub(self._channels[addresses.evaluation])
        # feedback is taken next to the inference service and exported by curation (it owns files)
        self.feedback = feedback_pb2_grpc.FeedbackServiceStub(self._channels[addresses.inference])
        self.feedback_export = feedback_pb2_grpc.FeedbackExportServiceStub(self._channels[addresses.curation])
        self.generation = generation_pb2_grpc.GenerationServiceStub(self._channels[addresses.curation])  # Self-Instruct

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    def caller(self, api_key: str) -> Caller:
        return Caller(self, api_key)


class Caller:
    """The services as one signed-in key sees them; failures raise `tuneforge.client.TuneforgeError`."""

    def __init__(self, backend: Backend, api_key: str) -> None:
        self.backend = backend
        self._metadata = (("authorization", f"Bearer {api_key}"),)

    async def call(self, method: Any, request: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise TuneforgeError.from_rpc_error(error) from None

    async def stream(self, method: Any, request: Any, timeout: float | None = None) -> AsyncIterator[Any]:
        """A server stream's messages; the call is cancelled when the reader stops early."""
        call = method(request, metadata=self._metadata, timeout=timeout)
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as error:
            raise TuneforgeError.from_rpc_error(error) from None
        finally:
            call.cancel()

    async def pages(self, method: Any, request: Any, field: str, limit: int = 1000) -> list[Any]:
        """Every item of a paged list call (at most `limit`), following `next_page_token`."""
        items: list[Any] = []
        while True:
            response = await self.call(method, request)
            items.extend(getattr(response, field))
            if not response.next_page_token or len(items) >= limit:
                return items[:limit]
            request.page_token = response.next_page_token
