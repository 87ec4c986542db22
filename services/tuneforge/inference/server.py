"""InferenceService bootstrap: `tuneforge serve inference`.

Embedded (the default): the engine runs in this process; SERVING once the base model is loaded.
Cluster mode (`inference.serve_url`): generation runs on the Ray Serve application behind Serve's HTTP
proxy (`remote.py`); SERVING while that application answers, NOT_SERVING while it does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from tuneforge.catalog.adapters import AdapterRegistry
from tuneforge.catalog.feedback import FeedbackStore
from tuneforge.common.logging import get_logger
from tuneforge.common.server import TuneforgeServer
from tuneforge.common.settings import Settings
from tuneforge.inference.base_model import load_base_model
from tuneforge.inference.engine import Engine
from tuneforge.inference.feedback import FeedbackServicer, ResponseRecorder
from tuneforge.inference.frontend import InferenceFrontend, Limits
from tuneforge.inference.model_engines import engine_loader
from tuneforge.inference.remote import ServeFrontend, connect
from tuneforge.inference.servicer import InferenceServicer
from tuneforge.platform import Platform, PlatformComponent, build_server
from tuneforge.v1 import feedback_pb2, feedback_pb2_grpc, inference_pb2, inference_pb2_grpc

log = get_logger(__name__)


class InferenceComponent(PlatformComponent):
    """Hosts InferenceService; `start()` loads the base model off the event loop."""

    service_names = (
        inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
        feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"].full_name,
    )

    #: Seconds between sweeps that unload deleted adapter versions.
    sweep_interval_s = 5.0

    def __init__(self, platform: Platform) -> None:
        super().__init__(platform)
        self.servicer = InferenceServicer()
        self.engine: Engine | None = None
        self.remote: ServeFrontend | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.http = None
        #: Served answers and the feedback on them (FeedbackService, `/v1/feedback`).
        self.feedback = FeedbackStore(platform.metadata, platform.settings.inference.feedback_window_s)

    def register(self, server: grpc.aio.Server) -> None:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(self.servicer, server)
        feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(FeedbackServicer(self.feedback), server)

    async def start(self) -> None:
        await super().start()
        settings = self.platform.settings.inference
        loop = asyncio.get_running_loop()
        start = loop.time()
        registry = AdapterRegistry(self.platform.metadata, self.platform.artifacts)
        if settings.serve_url:
            self.remote = await connect(self.platform.settings, self.platform.models, registry, self.platform.artifacts)
            frontend: InferenceFrontend = self.remote
            log.info("inference_on_ray_serve", serve_url=settings.serve_url, base_model=frontend.base_name)
        else:
            base = await asyncio.to_thread(
                load_base_model, self.platform.models, settings.base_model, settings.dtype, settings.device
            )
            self.engine = Engine(
                base.model,
                base.tokenizer,
                max_adapters=settings.max_adapters,
                max_rank=settings.max_rank,
                targets=tuple(settings.lora_targets),
                max_batch_size=settings.max_batch_size,
                batch_wait_s=settings.batch_wait_ms / 1000,
                max_step_tokens=settings.max_step_tokens,
                kv_cache_tokens=settings.kv_cache_tokens or None,
                kv_memory_fraction=settings.kv_memory_fraction,
                host_cache_bytes=settings.adapter_host_cache_mb * 2**20,
            )
            frontend = InferenceFrontend(
                self.engine,
                base.name,
                base.template_hash,
                registry,
                self.platform.artifacts,
                Limits(settings.max_prompt_tokens, settings.max_new_tokens, settings.max_concurrent_per_tenant),
                model_loader=engine_loader(self.platform.models, settings),
                max_model_engines=settings.max_model_engines,
            )
            log.info(
                "base_model_loaded",
                model=settings.base_model,
                seconds=round(loop.time() - start, 2),
                template_hash=base.template_hash[:16],
            )
        responses = ResponseRecorder(self.feedback, frontend.base_name)
        self.servicer.responses = responses
        if settings.http_port is not None:
            from tuneforge.inference.http import OpenAIServer

            self.http = OpenAIServer(frontend, self.platform.settings, self.feedback, responses)
            await self.http.start(self.platform.settings.host, settings.http_port)
        self.servicer.frontend = frontend
        self.platform.local_inference = frontend  # evaluation in this process generates through it
        self._sweeper = asyncio.create_task(self._sweep(frontend), name="tuneforge-adapter-sweeper")

    def health_updates(self) -> AsyncIterator[bool] | None:
        if self.remote is None:
            return None
        return self.remote.health_updates(self.platform.settings.inference.serve_health_interval_s)

    async def _sweep(self, frontend: InferenceFrontend) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                await frontend.sweep_deleted()
            except Exception as exc:  # the next sweep retries
                log.warning("adapter_sweep_failed", error=repr(exc))

    async def stop(self) -> None:
        frontend = self.servicer.frontend
        if self.platform.local_inference is frontend:
            self.platform.local_inference = None
        self.servicer.frontend = None
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.http is not None:
            await self.http.stop()
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop)
        if frontend is not None:
            await asyncio.to_thread(frontend.stop_models)
        if self.remote is not None:
            await self.remote.close()
        elif frontend is not None:
            frontend.close()


async def create_server(settings: Settings) -> tuple[TuneforgeServer, int]:
    """A server hosting InferenceService (not yet started)."""
    return await build_server(settings, [InferenceComponent])
