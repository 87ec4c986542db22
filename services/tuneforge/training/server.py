"""TrainingService + AdapterService bootstrap: `tuneforge serve training`.

AdapterService (the registry) is served; TrainingService's job calls answer UNIMPLEMENTED until the
job lifecycle lands (never a fake result).
"""

from __future__ import annotations

import grpc

from tuneforge.common.server import TuneforgeServer, build_server
from tuneforge.common.settings import Settings
from tuneforge.platform import Platform, PlatformComponent
from tuneforge.training.registry import AdapterRegistry
from tuneforge.training.servicer import AdapterServicer
from tuneforge.v1 import training_pb2, training_pb2_grpc


class TrainingComponent(PlatformComponent):
    """Hosts TrainingService and AdapterService on a server."""

    service_names = (
        training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
        training_pb2.DESCRIPTOR.services_by_name["AdapterService"].full_name,
    )

    def __init__(self, platform: Platform) -> None:
        super().__init__(platform)
        self.registry = AdapterRegistry(platform.metadata, platform.artifacts)

    def register(self, server: grpc.aio.Server) -> None:
        training_pb2_grpc.add_TrainingServiceServicer_to_server(training_pb2_grpc.TrainingServiceServicer(), server)
        training_pb2_grpc.add_AdapterServiceServicer_to_server(AdapterServicer(self.registry), server)


async def create_server(settings: Settings) -> tuple[TuneforgeServer, int]:
    """A server hosting TrainingService and AdapterService (not yet started)."""
    return await build_server(settings, [TrainingComponent])
