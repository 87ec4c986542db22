"""gRPC glue for ExportService: merges and exports (run by `training/exports.py`) and their downloads."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import grpc

from tuneforge.common.auth import current_principal
from tuneforge.common.convert import resource_times
from tuneforge.common.errors import DataLoss
from tuneforge.training.exports import EXPORT, ExportInfo, ModelExports
from tuneforge.v1 import common_pb2, export_pb2, export_pb2_grpc

#: Bytes per DownloadExport message.
DOWNLOAD_CHUNK = 1024 * 1024

_STATES = {
    "queued": export_pb2.EXPORT_STATE_QUEUED,
    "running": export_pb2.EXPORT_STATE_RUNNING,
    "succeeded": export_pb2.EXPORT_STATE_SUCCEEDED,
    "failed": export_pb2.EXPORT_STATE_FAILED,
    "cancelled": export_pb2.EXPORT_STATE_CANCELLED,
}


def export_message(info: ExportInfo) -> export_pb2.ModelExport:
    return export_pb2.ModelExport(
        id=info.id,
        kind=export_pb2.EXPORT_KIND_EXPORT if info.kind == EXPORT else export_pb2.EXPORT_KIND_MERGE,
        source=info.source,
        format=info.format,
        quant=info.quant,
        dtype=info.dtype,
        state=_STATES[info.state],
        progress=info.progress,
        stage=info.stage,
        error=info.error,
        files=[
            export_pb2.ExportFile(
                name=f["name"], digest=common_pb2.ContentDigest(sha256=f["sha256"], size_bytes=f["size_bytes"])
            )
            for f in info.files
        ],
        model_version=info.model_version,
        times=resource_times(info.created_at, info.updated_at),
    )


class ExportServicer(export_pb2_grpc.ExportServiceServicer):
    """Creates, reads and cancels exports and streams their files; `ModelExports` does the work."""

    def __init__(self, exports: ModelExports) -> None:
        self.exports = exports

    async def MergeAdapter(
        self, request: export_pb2.MergeAdapterRequest, context: grpc.aio.ServicerContext
    ) -> export_pb2.MergeAdapterResponse:
        create = functools.partial(
            self.exports.create_merge,
            current_principal().tenant,
            request.adapter,
            request.model_name,
            request.dtype,
            request.idempotency_key,
        )
        info = await asyncio.to_thread(create)
        self.exports.start(info)
        return export_pb2.MergeAdapterResponse(export=export_message(info))

    async def ExportModel(
        self, request: export_pb2.ExportModelRequest, context: grpc.aio.ServicerContext
    ) -> export_pb2.ExportModelResponse:
        create = functools.partial(
            self.exports.create_export,
            current_principal().tenant,
            request.model,
            request.format,
            request.quant,
            request.idempotency_key,
        )
        info = await asyncio.to_thread(create)
        self.exports.start(info)
        return export_pb2.ExportModelResponse(export=export_message(info))

    async def GetExport(
        self, request: export_pb2.GetExportRequest, context: grpc.aio.ServicerContext
    ) -> export_pb2.GetExportResponse:
        info = await asyncio.to_thread(self.exports.get, current_principal().tenant, request.export_id)
        return export_pb2.GetExportResponse(export=export_message(info))

    async def ListExports(
        self, request: export_pb2.ListExportsRequest, context: grpc.aio.ServicerContext
    ) -> export_pb2.ListExportsResponse:
        page, token = await asyncio.to_thread(
            self.exports.list, current_principal().tenant, request.page_size, request.page_token
        )
        return export_pb2.ListExportsResponse(exports=[export_message(i) for i in page], next_page_token=token)

    async def CancelExport(
        self, request: export_pb2.CancelExportRequest, context: grpc.aio.ServicerContext
    ) -> export_pb2.CancelExportResponse:
        info = await asyncio.to_thread(self.exports.cancel, current_principal().tenant, request.export_id)
        return export_pb2.CancelExportResponse(export=export_message(info))

    async def DownloadExport(
        self, request: export_pb2.DownloadExportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[export_pb2.DownloadExportResponse]:
        files = await asyncio.to_thread(self.exports.files, current_principal().tenant, request.export_id)
        for name, path in files:
            try:
                handle = await asyncio.to_thread(open, path, "rb")
            except FileNotFoundError as exc:
                raise DataLoss(f"file {name} of export {request.export_id} is missing from the artifact store") from exc
            try:
                offset = 0
                while chunk := await asyncio.to_thread(handle.read, DOWNLOAD_CHUNK):
                    yield export_pb2.DownloadExportResponse(name=name, offset=offset, data=chunk)
                    offset += len(chunk)
                if offset == 0:  # an empty file still arrives, as one empty chunk
                    yield export_pb2.DownloadExportResponse(name=name, offset=0, data=b"")
            finally:
                handle.close()
