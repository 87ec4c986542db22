"""TrainingService + AdapterService bootstrap: `tuneforge serve training`.

The contract is complete; the job lifecycle and the registry are built on top of this server by the
training issue. Until then their calls answer UNIMPLEMENTED (never a fake result), while health,
auth and the stores are live.
"""

from __future__ import annotations

import grpc

from tuneforge.common.server import TuneforgeServer, build_server
from tuneforge.common.settings import Settings
from tuneforge.platform import PlatformComponent
from tuneforge.v1 import training_pb2, training_pb2_grpc


class TrainingComponent(PlatformComponent):
    """Hosts TrainingService and AdapterService on a server."""

    service_names = (
        training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
        training_pb2.DESCRIPTOR.services_by_name["AdapterService"].full_name,
    )

    def register(self, server: grpc.aio.Server) -> None:
        training_pb2_grpc.add_TrainingServiceServicer_to_server(training_pb2_grpc.TrainingServiceServicer(), server)
        training_pb2_grpc.add_AdapterServiceServicer_to_server(training_pb2_grpc.AdapterServiceServicer(), server)


async def create_server(settings: Settings) -> tuple[TuneforgeServer, int]:
    """A server hosting TrainingService and AdapterService (not yet started)."""
    return await build_server(settings, [TrainingComponent])
