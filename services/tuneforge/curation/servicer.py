"""gRPC glue for DatasetService: protobuf in, domain call, protobuf out. No domain logic here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from tuneforge.common.auth import current_principal
from tuneforge.common.convert import resource_times
from tuneforge.common.errors import InvalidArgument
from tuneforge.curation.files import DATA_FORMATS, FileCatalog, StoredFile
from tuneforge.v1 import common_pb2, curation_pb2, curation_pb2_grpc

_FORMAT_TO_PROTO = {name: index for index, name in enumerate(DATA_FORMATS)}
_STATE_TO_PROTO = {"uploading": curation_pb2.FILE_STATE_UPLOADING, "ready": curation_pb2.FILE_STATE_READY}


def file_message(stored: StoredFile) -> curation_pb2.File:
    digest = None
    if stored.sha256 is not None:
        digest = common_pb2.ContentDigest(sha256=stored.sha256, size_bytes=stored.size_bytes or 0)
    return curation_pb2.File(
        id=stored.id,
        filename=stored.filename,
        state=_STATE_TO_PROTO[stored.state],
        digest=digest,
        format=_FORMAT_TO_PROTO[stored.data_format],
        times=resource_times(stored.created_at, stored.updated_at),
    )


def _format_name(value: int, field: str) -> str:
    if value < 0 or value >= len(DATA_FORMATS):
        raise InvalidArgument.for_field(field, f"unknown data format {value}")
    return DATA_FORMATS[value]


class DatasetServicer(curation_pb2_grpc.DatasetServiceServicer):
    """Serves uploads and file listings; dataset-version calls arrive with the curation pipeline."""

    def __init__(self, files: FileCatalog) -> None:
        self.files = files

    async def UploadFile(
        self, request_iterator: AsyncIterator[curation_pb2.UploadFileRequest], context: grpc.aio.ServicerContext
    ) -> curation_pb2.UploadFileResponse:
        tenant = current_principal().tenant
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument.for_field("header", "the first message of an upload must carry the header")
        header = first.header
        outcome = await asyncio.to_thread(
            self.files.begin_upload,
            tenant,
            header.filename,
            _format_name(header.format, "header.format"),
            header.idempotency_key,
            header.expected_sha256,
        )
        if isinstance(outcome, StoredFile):  # an idempotent repeat of a finished upload
            return curation_pb2.UploadFileResponse(file=file_message(outcome))
        try:
            index = 1
            async for message in request_iterator:
                index += 1
                if message.WhichOneof("payload") != "chunk":
                    raise InvalidArgument.for_field(
                        f"message[{index}]", "only the first message may carry a header; later ones carry chunks"
                    )
                await asyncio.to_thread(outcome.write, message.chunk)
            stored = await asyncio.to_thread(outcome.finish)
        except BaseException:
            outcome.abort()  # quick and synchronous: must also run when the call is being cancelled
            raise
        return curation_pb2.UploadFileResponse(file=file_message(stored))

    async def GetFile(
        self, request: curation_pb2.GetFileRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.GetFileResponse:
        stored = await asyncio.to_thread(self.files.get, current_principal().tenant, request.file_id)
        return curation_pb2.GetFileResponse(file=file_message(stored))

    async def ListFiles(
        self, request: curation_pb2.ListFilesRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.ListFilesResponse:
        page, token = await asyncio.to_thread(
            self.files.list, current_principal().tenant, request.page_size, request.page_token
        )
        return curation_pb2.ListFilesResponse(files=[file_message(f) for f in page], next_page_token=token)

    async def DeleteFile(
        self, request: curation_pb2.DeleteFileRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.DeleteFileResponse:
        await asyncio.to_thread(self.files.delete, current_principal().tenant, request.file_id)
        return curation_pb2.DeleteFileResponse()
