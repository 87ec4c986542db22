"""InferenceService bootstrap: `tuneforge serve inference`. SERVING only once the base model is loaded."""

from __future__ import annotations

import asyncio

import grpc

from tuneforge.common.logging import get_logger
from tuneforge.common.server import TuneforgeServer, build_server
from tuneforge.common.settings import Settings
from tuneforge.inference.base_model import load_base_model
from tuneforge.inference.servicer import InferenceServicer
from tuneforge.platform import Platform, PlatformComponent
from tuneforge.v1 import inference_pb2, inference_pb2_grpc

log = get_logger(__name__)


class InferenceComponent(PlatformComponent):
    """Hosts InferenceService; `start()` loads the base model off the event loop."""

    service_names = (inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,)

    def __init__(self, platform: Platform) -> None:
        super().__init__(platform)
        self.servicer = InferenceServicer()

    def register(self, server: grpc.aio.Server) -> None:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        await super().start()
        settings = self.platform.settings.inference
        loop = asyncio.get_running_loop()
        start = loop.time()
        self.servicer.base = await asyncio.to_thread(
            load_base_model, self.platform.models, settings.base_model, settings.dtype, settings.device
        )
        log.info(
            "base_model_loaded",
            model=settings.base_model,
            seconds=round(loop.time() - start, 2),
            template_hash=self.servicer.base.template_hash[:16],
        )

    async def stop(self) -> None:
        self.servicer.base = None


async def create_server(settings: Settings) -> tuple[TuneforgeServer, int]:
    """A server hosting InferenceService (not yet started)."""
    return await build_server(settings, [InferenceComponent])
