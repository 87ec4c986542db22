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
from tuneforge.curation.runner import BuildRunner
from tuneforge.curation.servicer import DatasetServicer
from tuneforge.curation.versions import DatasetVersions
from tuneforge.curation.worker import WorkerConfig
from tuneforge.platform import Platform, PlatformComponent, build_server
from tuneforge.v1 import curation_pb2, curation_pb2_grpc, feedback_pb2, feedback_pb2_grpc

log = get_logger(__name__)


class CurationComponent(PlatformComponent):
    """Hosts DatasetService; builds dataset versions in worker processes."""

    service_names = (
        curation_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
        feedback_pb2.DESCRIPTOR.services_by_name["FeedbackExportService"].full_name,
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

    def register(self, server: grpc.aio.Server) -> None:
        curation_pb2_grpc.add_DatasetServiceServicer_to_server(
            DatasetServicer(self.files, self.versions, self.max_invalid_fraction), server
        )
        exporter = FeedbackExporter(FeedbackStore(self.platform.metadata), self.files)
        feedback_pb2_grpc.add_FeedbackExportServiceServicer_to_server(FeedbackExportServicer(exporter), server)

    async def start(self) -> None:
        await super().start()
        # before SERVING: builds left by a previous run are adopted (still running) or started again
        await asyncio.to_thread(self.runner.start)

    async def stop(self) -> None:
        # unfinished builds stay PROCESSING and are built again by the next start
        await asyncio.to_thread(self.runner.stop)


async def create_server(settings: Settings) -> tuple[TuneforgeServer, int]:
    """A server hosting DatasetService alone (not yet started)."""
    return await build_server(settings, [CurationComponent])
