"""TrainingService + AdapterService + ExportService bootstrap: `tuneforge serve training`.

Jobs run on the Ray cluster at `training.ray_address` (or `RAY_ADDRESS`), else on a local Ray head
the service starts; the JobRunner reconciles them with Ray in the background.
"""

from __future__ import annotations

import grpc

from tuneforge.catalog.adapters import AdapterRegistry
from tuneforge.catalog.datasets import DatasetCatalog
from tuneforge.catalog.evaluations import EvaluationCatalog
from tuneforge.catalog.suites import SuiteCatalog
from tuneforge.common.server import TuneforgeServer
from tuneforge.common.settings import Settings
from tuneforge.platform import Platform, PlatformComponent, build_server
from tuneforge.training.export_servicer import ExportServicer
from tuneforge.training.exports import ModelExports
from tuneforge.training.job_store import JobStore
from tuneforge.training.promotion import PromotionGates
from tuneforge.training.runner import JobRunner
from tuneforge.training.servicer import AdapterServicer, TrainingServicer
from tuneforge.v1 import export_pb2, export_pb2_grpc, training_pb2, training_pb2_grpc


class TrainingComponent(PlatformComponent):
    """Hosts TrainingService and AdapterService on a server."""

    service_names = (
        training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
        training_pb2.DESCRIPTOR.services_by_name["AdapterService"].full_name,
        export_pb2.DESCRIPTOR.services_by_name["ExportService"].full_name,
    )

    def __init__(self, platform: Platform) -> None:
        super().__init__(platform)
        settings = platform.settings
        self.registry = AdapterRegistry(platform.metadata, platform.artifacts)
        self.jobs = JobStore(platform.metadata, settings.training.max_active_jobs_per_tenant)
        self.runner = JobRunner(
            settings, self.jobs, self.registry, platform.metadata, platform.artifacts, platform.models
        )
        self.servicer: TrainingServicer | None = None
        #: Merges and exports (ExportService), run on a worker thread of this process.
        self.exports = ModelExports(platform.metadata, platform.artifacts, self.registry, platform.models)

    def register(self, server: grpc.aio.Server) -> None:
        datasets = DatasetCatalog(self.platform.metadata, self.platform.artifacts)
        self.servicer = TrainingServicer(self.jobs, self.runner, datasets, self.platform.models)
        training_pb2_grpc.add_TrainingServiceServicer_to_server(self.servicer, server)
        gates = PromotionGates(
            self.platform.metadata,
            self.registry,
            EvaluationCatalog(self.platform.metadata, self.platform.artifacts),
            SuiteCatalog(self.platform.metadata, self.platform.artifacts),
            self.platform.settings.training.promotion_gates,
        )
        training_pb2_grpc.add_AdapterServiceServicer_to_server(AdapterServicer(self.registry, gates), server)
        export_pb2_grpc.add_ExportServiceServicer_to_server(ExportServicer(self.exports), server)

    async def start(self) -> None:
        await super().start()
        await self.runner.start()  # picks up the jobs a previous process left queued or running
        self.exports.start_sweeps()  # and the exports it left queued or running

    def drain(self) -> None:
        """Streams that follow jobs end now, so the drain does not wait for jobs that run for hours."""
        if self.servicer is not None:
            self.servicer.drain()

    async def stop(self) -> None:
        """Stops reconciling and releases the leases; the jobs go on running on Ray (see `JobRunner.stop`)."""
        await self.runner.stop()
        await self.exports.stop()


async def create_server(settings: Settings) -> tuple[TuneforgeServer, int]:
    """A server hosting TrainingService and AdapterService (not yet started)."""
    return await build_server(settings, [TrainingComponent])
