"""gRPC glue for AdapterService (and TrainingService, whose job calls arrive with the job lifecycle)."""

from __future__ import annotations

import asyncio

import grpc

from tuneforge.common.auth import current_principal
from tuneforge.common.convert import resource_times
from tuneforge.common.errors import InvalidArgument
from tuneforge.training.registry import AdapterInfo, AdapterRegistry, AdapterVersionInfo
from tuneforge.v1 import common_pb2, training_pb2, training_pb2_grpc


def adapter_message(info: AdapterInfo) -> training_pb2.Adapter:
    return training_pb2.Adapter(
        name=info.name,
        latest_version=info.latest_version,
        aliases=info.aliases,
        base_model=info.base_model,
        times=resource_times(info.created_at, info.updated_at),
    )


def version_message(info: AdapterVersionInfo) -> training_pb2.AdapterVersion:
    lineage = info.lineage
    spec = training_pb2.JobSpec()
    if lineage.get("spec"):
        from google.protobuf import json_format

        json_format.ParseDict(lineage["spec"], spec, ignore_unknown_fields=True)
    return training_pb2.AdapterVersion(
        adapter=info.adapter,
        version=info.version,
        state=training_pb2.ADAPTER_VERSION_STATE_READY
        if info.state == "ready"
        else training_pb2.ADAPTER_VERSION_STATE_DELETED,
        rank=info.rank,
        target_modules=info.target_modules,
        lineage=training_pb2.AdapterLineage(
            base_model=lineage.get("base_model", ""),
            base_model_revision=lineage.get("base_model_revision", ""),
            template_hash=lineage.get("template_hash", ""),
            dataset_version_id=lineage.get("dataset_version_id", ""),
            job_id=lineage.get("job_id", ""),
            spec=spec,
        ),
        metrics={k: float(v) for k, v in info.metrics.items()},
        files=[
            training_pb2.AdapterFile(
                name=f["name"], digest=common_pb2.ContentDigest(sha256=f["sha256"], size_bytes=f["size_bytes"])
            )
            for f in info.files
        ],
        times=resource_times(info.created_at, info.updated_at),
    )


class AdapterServicer(training_pb2_grpc.AdapterServiceServicer):
    """Reads the registry and moves aliases; versions are registered by successful training jobs."""

    def __init__(self, registry: AdapterRegistry) -> None:
        self.registry = registry

    async def GetAdapter(
        self, request: training_pb2.GetAdapterRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.GetAdapterResponse:
        info = await asyncio.to_thread(self.registry.get_adapter, current_principal().tenant, request.name)
        return training_pb2.GetAdapterResponse(adapter=adapter_message(info))

    async def ListAdapters(
        self, request: training_pb2.ListAdaptersRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ListAdaptersResponse:
        page, token = await asyncio.to_thread(
            self.registry.list_adapters, current_principal().tenant, request.page_size, request.page_token
        )
        return training_pb2.ListAdaptersResponse(adapters=[adapter_message(a) for a in page], next_page_token=token)

    async def GetAdapterVersion(
        self, request: training_pb2.GetAdapterVersionRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.GetAdapterVersionResponse:
        selector = request.WhichOneof("selector")
        version = request.version if selector == "version" else None
        alias = request.alias if selector == "alias" and request.alias != "latest" else None
        if selector == "version" and request.version <= 0:
            raise InvalidArgument.for_field("version", "must be 1 or more")
        info = await asyncio.to_thread(
            self.registry.get_version, current_principal().tenant, request.adapter, version, alias
        )
        return training_pb2.GetAdapterVersionResponse(adapter_version=version_message(info))

    async def ListAdapterVersions(
        self, request: training_pb2.ListAdapterVersionsRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ListAdapterVersionsResponse:
        page, token = await asyncio.to_thread(
            self.registry.list_versions,
            current_principal().tenant,
            request.adapter,
            request.page_size,
            request.page_token,
        )
        return training_pb2.ListAdapterVersionsResponse(
            adapter_versions=[version_message(v) for v in page], next_page_token=token
        )

    async def SetAdapterAlias(
        self, request: training_pb2.SetAdapterAliasRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.SetAdapterAliasResponse:
        info = await asyncio.to_thread(
            self.registry.set_alias, current_principal().tenant, request.adapter, request.alias, request.version
        )
        return training_pb2.SetAdapterAliasResponse(adapter=adapter_message(info))

    async def DeleteAdapterVersion(
        self, request: training_pb2.DeleteAdapterVersionRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.DeleteAdapterVersionResponse:
        await asyncio.to_thread(
            self.registry.delete_version, current_principal().tenant, request.adapter, request.version
        )
        return training_pb2.DeleteAdapterVersionResponse()
