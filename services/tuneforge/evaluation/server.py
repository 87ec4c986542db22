"""EvaluationService bootstrap: `tuneforge serve evaluation`.

Suites are served; runs and reports answer UNIMPLEMENTED until they are built (never a fake result).
"""

from __future__ import annotations

import grpc

from tuneforge.common.server import TuneforgeServer, build_server
from tuneforge.common.settings import Settings
from tuneforge.evaluation.servicer import EvaluationServicer
from tuneforge.evaluation.suite_store import SuiteStore
from tuneforge.platform import PlatformComponent
from tuneforge.v1 import evaluation_pb2, evaluation_pb2_grpc


class EvaluationComponent(PlatformComponent):
    """Hosts EvaluationService on a server."""

    service_names = (evaluation_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name,)

    def register(self, server: grpc.aio.Server) -> None:
        suites = SuiteStore(self.platform.metadata, self.platform.artifacts)
        evaluation_pb2_grpc.add_EvaluationServiceServicer_to_server(EvaluationServicer(suites), server)


async def create_server(settings: Settings) -> tuple[TuneforgeServer, int]:
    """A server hosting EvaluationService (not yet started)."""
    return await build_server(settings, [EvaluationComponent])
