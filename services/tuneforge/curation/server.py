"""DatasetService bootstrap: `tuneforge serve curation`."""

from __future__ import annotations

import grpc

from tuneforge.common.server import TuneforgeServer, build_server
from tuneforge.common.settings import Settings
from tuneforge.curation.files import FileCatalog
from tuneforge.curation.servicer import DatasetServicer
from tuneforge.platform import Platform, PlatformComponent
from tuneforge.v1 import curation_pb2, curation_pb2_grpc


class CurationComponent(PlatformComponent):
    """Hosts DatasetService on a server."""

    service_names = (curation_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,)

    def __init__(self, platform: Platform) -> None:
        super().__init__(platform)
        self.files = FileCatalog(platform.metadata, platform.artifacts, platform.settings.max_upload_bytes)

    def register(self, server: grpc.aio.Server) -> None:
        curation_pb2_grpc.add_DatasetServiceServicer_to_server(DatasetServicer(self.files), server)


async def create_server(settings: Settings) -> tuple[TuneforgeServer, int]:
    """A server hosting DatasetService alone (not yet started)."""
    return await build_server(settings, [CurationComponent])
