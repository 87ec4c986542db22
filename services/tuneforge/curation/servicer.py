"""gRPC glue for DatasetService: protobuf in, domain call, protobuf out. No domain logic here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from tuneforge.common.auth import current_principal
from tuneforge.common.convert import resource_times
from tuneforge.common.errors import InvalidArgument
from tuneforge.curation.files import DATA_FORMATS, FileCatalog, StoredFile
from tuneforge.curation.pipeline import CurationOptions, parse_options
from tuneforge.curation.versions import DatasetVersions, VersionInfo, VersionSpec
from tuneforge.v1 import common_pb2, curation_pb2, curation_pb2_grpc

_FORMAT_TO_PROTO = {name: index for index, name in enumerate(DATA_FORMATS)}
_STATE_TO_PROTO = {"uploading": curation_pb2.FILE_STATE_UPLOADING, "ready": curation_pb2.FILE_STATE_READY}


#: Largest chunk one UploadFile message may carry (UploadFileRequest.chunk says so).
MAX_UPLOAD_CHUNK_BYTES = 4 * 2**20


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


_VERSION_STATES = {
    "processing": curation_pb2.DATASET_VERSION_STATE_PROCESSING,
    "ready": curation_pb2.DATASET_VERSION_STATE_READY,
    "failed": curation_pb2.DATASET_VERSION_STATE_FAILED,
    "cancelled": curation_pb2.DATASET_VERSION_STATE_CANCELLED,
}
_LENGTH_POLICIES = {curation_pb2.LENGTH_POLICY_DROP: "drop", curation_pb2.LENGTH_POLICY_TRUNCATE: "truncate"}
_COUNT_FIELDS = (
    "records_in",
    "invalid",
    "exact_duplicates",
    "near_duplicates",
    "too_long",
    "leaked",
    "train_records",
    "validation_records",
    "train_tokens",
    "truncated",
)


def version_message(info: VersionInfo) -> curation_pb2.DatasetVersion:
    options = info.options
    counts = info.counts
    return curation_pb2.DatasetVersion(
        id=info.id,
        dataset=info.dataset,
        state=_VERSION_STATES[info.state],
        settings=curation_pb2.CurationSettings(
            base_model=info.base_model,
            max_seq_len=options["max_seq_len"],
            length_policy=curation_pb2.LENGTH_POLICY_TRUNCATE
            if options["length_policy"] == "truncate"
            else curation_pb2.LENGTH_POLICY_DROP,
            validation_fraction=options["validation_fraction"],
            near_duplicate_threshold=options["near_duplicate_threshold"],
            scrub_pii=options["scrub_pii"],
            seed=options["seed"],
            leakage_suite_id=options.get("leakage_suite_id", ""),
            max_invalid_fraction=options.get("max_invalid_fraction", CurationOptions().max_invalid_fraction),
        ),
        file_ids=[i["file_id"] for i in info.inputs],
        counts=curation_pb2.DatasetCounts(
            **{name: int(counts.get(name, 0)) for name in _COUNT_FIELDS},
            pii_replacements=counts.get("pii_replacements", {}),
            records_by_format=counts.get("records_by_format", {}),
        ),
        template_hash=info.template_hash,
        failure_reason=info.failure_reason,
        times=resource_times(info.created_at, info.updated_at),
        base_model=info.base_model,
        bytes_processed=info.bytes_processed,
        bytes_total=info.bytes_total,
        format=_FORMAT_TO_PROTO[info.data_format],
    )


def version_spec(request: curation_pb2.CreateDatasetVersionRequest, max_invalid_fraction: float = 0.5) -> VersionSpec:
    """The domain's request; `max_invalid_fraction` is the service's default for requests that leave it unset."""
    settings = request.settings
    values: dict[str, Any] = {}  # only what the request sets: defaults live in CurationOptions
    if settings.max_seq_len:
        values["max_seq_len"] = settings.max_seq_len
    if settings.length_policy:
        values["length_policy"] = _LENGTH_POLICIES.get(settings.length_policy, f"LengthPolicy {settings.length_policy}")
    if settings.seed:
        values["seed"] = settings.seed
    for name in ("validation_fraction", "near_duplicate_threshold", "scrub_pii", "max_invalid_fraction"):
        if settings.HasField(name):
            values[name] = getattr(settings, name)
    values.setdefault("max_invalid_fraction", max_invalid_fraction)  # the service's own default
    options, problems = parse_options(values)
    return VersionSpec(
        dataset=request.dataset,
        file_ids=tuple(request.file_ids),
        source_uri=request.source_uri,
        data_format=_format_name(request.format, "format"),
        base_model=settings.base_model,
        options=options,
        leakage_suite_id=settings.leakage_suite_id,
        option_problems=tuple(problems),
    )


def _format_name(value: int, field: str) -> str:
    if value < 0 or value >= len(DATA_FORMATS):
        raise InvalidArgument.for_field(field, f"unknown data format {value}")
    return DATA_FORMATS[value]


class DatasetServicer(curation_pb2_grpc.DatasetServiceServicer):
    """Serves uploads, file listings and dataset versions."""

    def __init__(self, files: FileCatalog, versions: DatasetVersions, max_invalid_fraction: float = 0.5) -> None:
        self.files = files
        self.versions = versions
        self.max_invalid_fraction = max_invalid_fraction

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
                if len(message.chunk) > MAX_UPLOAD_CHUNK_BYTES:
                    raise InvalidArgument.for_field(
                        f"message[{index}].chunk",
                        f"is {len(message.chunk)} bytes; the contract allows at most {MAX_UPLOAD_CHUNK_BYTES} (4 MiB)",
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

    async def CreateDatasetVersion(
        self, request: curation_pb2.CreateDatasetVersionRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.CreateDatasetVersionResponse:
        spec = version_spec(request, self.max_invalid_fraction)
        info = await asyncio.to_thread(self.versions.create, current_principal().tenant, spec, request.idempotency_key)
        return curation_pb2.CreateDatasetVersionResponse(dataset_version=version_message(info))

    async def GetDatasetVersion(
        self, request: curation_pb2.GetDatasetVersionRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.GetDatasetVersionResponse:
        info = await asyncio.to_thread(self.versions.get, current_principal().tenant, request.dataset_version_id)
        return curation_pb2.GetDatasetVersionResponse(dataset_version=version_message(info))

    async def ListDatasetVersions(
        self, request: curation_pb2.ListDatasetVersionsRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.ListDatasetVersionsResponse:
        page, token = await asyncio.to_thread(
            self.versions.list, current_principal().tenant, request.dataset, request.page_size, request.page_token
        )
        return curation_pb2.ListDatasetVersionsResponse(
            dataset_versions=[version_message(v) for v in page], next_page_token=token
        )

    async def GetDatasetReport(
        self, request: curation_pb2.GetDatasetReportRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.GetDatasetReportResponse:
        tenant = current_principal().tenant
        info, report, markdown = await asyncio.to_thread(self.versions.report, tenant, request.dataset_version_id)
        svg = await asyncio.to_thread(
            self.versions.artifacts.for_tenant(tenant).read_bytes, f"datasets/{info.id}/token_lengths.svg"
        )
        return curation_pb2.GetDatasetReportResponse(
            dataset_version=version_message(info),
            issue_counts=report["issue_counts"],
            duplicate_clusters=[
                curation_pb2.DuplicateCluster(kept=c["kept"], removed=c["removed"], kind=c["kind"])
                for c in report["duplicate_clusters"]
            ],
            markdown=markdown,
            create_time=version_message(info).times.update_time,
            json=json.dumps(report, ensure_ascii=False, sort_keys=True),
            token_length_svg=svg.decode(),
        )

    async def ListDatasetIssues(
        self, request: curation_pb2.ListDatasetIssuesRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.ListDatasetIssuesResponse:
        page, token = await asyncio.to_thread(
            self.versions.issues,
            current_principal().tenant,
            request.dataset_version_id,
            request.code,
            request.page_size,
            request.page_token,
        )
        return curation_pb2.ListDatasetIssuesResponse(
            issues=[
                common_pb2.InputIssue(
                    code=i["code"],
                    message=i["message"],
                    source=i["source"],
                    line=i["line"],
                    field=i["field"],
                    severity=common_pb2.SEVERITY_ERROR if i["error"] else common_pb2.SEVERITY_WARNING,
                )
                for i in page
            ],
            next_page_token=token,
        )

    async def PreviewDatasetRecords(
        self, request: curation_pb2.PreviewDatasetRecordsRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.PreviewDatasetRecordsResponse:
        rows = await asyncio.to_thread(
            self.versions.preview,
            current_principal().tenant,
            request.dataset_version_id,
            request.split or "train",
            request.limit,
        )
        return curation_pb2.PreviewDatasetRecordsResponse(
            records=[
                curation_pb2.RenderedRecord(
                    origin=r["origin"],
                    messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in r["messages"]],
                    text=r["text"],
                    num_tokens=r["num_tokens"],
                    num_loss_tokens=r["num_loss_tokens"],
                )
                for r in rows
            ]
        )

    async def DeleteDatasetVersion(
        self, request: curation_pb2.DeleteDatasetVersionRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.DeleteDatasetVersionResponse:
        await asyncio.to_thread(self.versions.delete, current_principal().tenant, request.dataset_version_id)
        return curation_pb2.DeleteDatasetVersionResponse()

    async def CancelDatasetVersion(
        self, request: curation_pb2.CancelDatasetVersionRequest, context: grpc.aio.ServicerContext
    ) -> curation_pb2.CancelDatasetVersionResponse:
        principal = current_principal()
        info = await asyncio.to_thread(
            self.versions.cancel, principal.tenant, request.dataset_version_id, principal.key_name or principal.tenant
        )
        return curation_pb2.CancelDatasetVersionResponse(dataset_version=version_message(info))
