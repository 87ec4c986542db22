"""EvaluationService bootstrap: `tuneforge serve evaluation`.

The contract is complete; suites, runs and reports are built on top of this server by the
evaluation issue. Until then its calls answer UNIMPLEMENTED (never a fake result).
"""

from __future__ import annotations

import grpc

from tuneforge.common.server import TuneforgeServer, build_server
from tuneforge.common.settings import Settings
from tuneforge.platform import PlatformComponent
from tuneforge.v1 import evaluation_pb2, evaluation_pb2_grpc


class EvaluationComponent(PlatformComponent):
    """Hosts EvaluationService on a server."""

    service_names = (evaluation_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name,)

    def register(self, server: grpc.aio.Server) -> None:
        evaluation_pb2_grpc.add_EvaluationServiceServicer_to_server(
            evaluation_pb2_grpc.EvaluationServiceServicer(), server
        )


async def create_server(settings: Settings) -> tuple[TuneforgeServer, int]:
    """A server hosting EvaluationService (not yet started)."""
    return await build_server(settings, [EvaluationComponent])
