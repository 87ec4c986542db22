"""DatasetService bootstrap: `tuneforge serve curation`."""

from __future__ import annotations

import asyncio

import grpc

from tuneforge.catalog.feedback import FeedbackStore
from tuneforge.common.logging import get_logger
from tuneforge.common.server import TuneforgeServer
from tuneforge.common.settings import Settings
from tuneforge.curation.feedback import FeedbackExporter, FeedbackExportServicer
from tuneforge.curation.files import FileCatalog
from tuneforge.curation.generation import GenerationRuns, Generator, LocalGenerator, RemoteGenerator
from tuneforge.curation.generation_servicer import GenerationServicer
from tuneforge.curation.runner import BuildRunner
from tuneforge.curation.servicer import DatasetServicer
from tuneforge.curation.versions import DatasetVersions
from tuneforge.curation.worker import WorkerConfig
from tuneforge.platform import Platform, PlatformComponent, build_server
from tuneforge.v1 import (
    curation_pb2,
    curation_pb2_grpc,
    feedback_pb2,
    feedback_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
)

log = get_logger(__name__)


class CurationComponent(PlatformComponent):
    """Hosts DatasetService; builds dataset versions in worker processes."""

    service_names = (
        curation_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
        feedback_pb2.DESCRIPTOR.services_by_name["FeedbackExportService"].full_name,
        generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,
    )

    def __init__(self, platform: Platform) -> None:
        super().__init__(platform)
        settings = platform.settings
        self.max_invalid_fraction = settings.curation.max_invalid_fraction
        self.files = FileCatalog(platform.metadata, platform.artifacts, settings.max_upload_bytes)
        self.runner = BuildRunner(
            WorkerConfig(
                database_url=str(settings.database_url),
                artifact_root=str(platform.artifacts.root),
                model_cache_dir=str(settings.models.cache_dir),
                trust_remote_code=tuple(settings.models.trust_remote_code),
                processes=settings.curation.build_processes,
                lease_ttl_s=settings.curation.build_lease_ttl_s,
            ),
            platform.metadata,
            platform.artifacts,
            settings.curation.workers,
        )
        self.versions = DatasetVersions(
            platform.metadata,
            platform.artifacts,
            self.files,
            platform.models,
            settings.curation.import_roots,
            self.runner.submit,
            self.runner.cancel,
        )
        self.generation = GenerationRuns(platform.metadata, self.files)
        self.remote_generator: RemoteGenerator | None = None
        if settings.curation.inference_address:  # a cluster: another pod's inference service, with a service key
            key = settings.curation.inference_api_key
            assert key is not None  # the settings refuse an address without a key
            self.remote_generator = RemoteGenerator(settings.curation.inference_address, key.get_secret_value())
        self._generation_sweep: asyncio.Task[None] | None = None

    def generator(self) -> Generator | None:
        """What Self-Instruct runs generate through: another pod's inference service where one is set,
        else this process's once it serves."""
        if self.remote_generator is not None:
            return self.remote_generator
        local = self.platform.local_inference
        return LocalGenerator(local) if local is not None else None

    def register(self, server: grpc.aio.Server) -> None:
        curation_pb2_grpc.add_DatasetServiceServicer_to_server(
            DatasetServicer(self.files, self.versions, self.max_invalid_fraction), server
        )
        exporter = FeedbackExporter(FeedbackStore(self.platform.metadata), self.files)
        feedback_pb2_grpc.add_FeedbackExportServiceServicer_to_server(FeedbackExportServicer(exporter), server)
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(
            GenerationServicer(self.generation, self.versions, self.generator, self.max_invalid_fraction), server
        )

    async def start(self) -> None:
        await super().start()
        # before SERVING: builds left by a previous run are adopted (still running) or started again
        await asyncio.to_thread(self.runner.start)
        self._generation_sweep = asyncio.create_task(self._offer_generation_runs(), name="tuneforge-generation-sweep")

    async def _offer_generation_runs(self) -> None:
        """Every half lease period, unfinished generation runs (a previous process's, a dead replica's) are
        offered to this replica; each runs only where its lease is taken, so once among the replicas."""
        while True:
            try:
                generator = self.generator()
                if generator is not None:
                    for info in await asyncio.to_thread(self.generation.unfinished):
                        self.generation.start(info, generator)
            except Exception as exc:  # a broken sweep must not end the loop; the next one retries
                log.error("generation_runs_sweep_failed", error=repr(exc))
            await asyncio.sleep(self.generation.leases.ttl_s / 2)

    async def stop(self) -> None:
        if self._generation_sweep is not None:
            self._generation_sweep.cancel()
        await self.generation.stop()
        if self.remote_generator is not None:
            await self.remote_generator.close()
        # unfinished builds stay PROCESSING and are built again by the next start
        await asyncio.to_thread(self.runner.stop)


async def create_server(settings: Settings) -> tuple[TuneforgeServer, int]:
    """A server hosting DatasetService alone (not yet started)."""
    return await build_server(settings, [CurationComponent])
