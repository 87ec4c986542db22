"""gRPC glue for TrainingService (jobs, run by the JobRunner on Ray) and AdapterService (the registry)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc

from tuneforge.catalog.adapters import AdapterInfo, AdapterRegistry, AdapterVersionInfo
from tuneforge.catalog.datasets import DatasetCatalog
from tuneforge.common.auth import current_principal
from tuneforge.common.convert import (
    GATE_SOURCES,
    MODEL_KIND_NAMES,
    MODEL_KINDS,
    promotion_message,
    resource_times,
    timestamp,
)
from tuneforge.common.errors import InvalidArgument, NotFound, Unavailable
from tuneforge.models import ModelResolver
from tuneforge.training.job_store import FINAL, JobEvent, JobInfo, JobStore
from tuneforge.training.jobs import validate_job_spec
from tuneforge.training.promotion import GateSpec, PromotionGate, PromotionGates
from tuneforge.training.runner import JobRunner, list_checkpoints
from tuneforge.training.spec import JobSpecInput
from tuneforge.training.spec_proto import spec_input, spec_message
from tuneforge.v1 import common_pb2, training_pb2, training_pb2_grpc

#: Seconds between looks at the store while following a job's events.
FOLLOW_INTERVAL_S = 0.25


def job_message(info: JobInfo) -> training_pb2.Job:
    return training_pb2.Job(
        id=info.id,
        spec=spec_message(JobSpecInput.model_validate(info.spec)),
        state=training_pb2.JobState.Value(f"JOB_STATE_{info.state.upper()}"),
        error=training_pb2.JobError(code=info.error_code, message=info.error_message) if info.error_code else None,
        step=info.step,
        total_steps=info.total_steps,
        metrics=info.metrics,
        adapter_version=info.adapter_version,
        times=resource_times(info.created_at, info.updated_at),
        start_time=timestamp(info.started_at),
        end_time=timestamp(info.ended_at),
    )


def event_message(event: JobEvent) -> training_pb2.JobEvent:
    return training_pb2.JobEvent(
        sequence=event.sequence,
        create_time=timestamp(event.created_at),
        type=training_pb2.JobEventType.Value(f"JOB_EVENT_TYPE_{event.type.upper()}"),
        level=common_pb2.Severity.Value(f"SEVERITY_{event.level.upper()}"),
        message=event.message,
        state=training_pb2.JobState.Value(f"JOB_STATE_{event.state.upper()}") if event.state else 0,
        step=event.step,
        metrics=event.metrics,
    )


def _state_name(value: int, field: str) -> str:
    if value not in training_pb2.JobState.values() or value == training_pb2.JOB_STATE_UNSPECIFIED:
        raise InvalidArgument.for_field(field, f"{value} is not a job state")
    return training_pb2.JobState.Name(value).removeprefix("JOB_STATE_").lower()


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    """Creates, reads and cancels jobs and streams their events; the JobRunner does the running."""

    def __init__(self, jobs: JobStore, runner: JobRunner, datasets: DatasetCatalog, models: ModelResolver) -> None:
        self.jobs = jobs
        self.runner = runner
        self.datasets = datasets
        self.models = models
        #: Set when the server drains: streams following a job end at once instead of holding the drain.
        self.draining = asyncio.Event()

    def drain(self) -> None:
        """Ends the streams that follow jobs; their clients reconnect (here after a restart, or to another replica)."""
        self.draining.set()

    async def CreateJob(
        self, request: training_pb2.CreateJobRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.CreateJobResponse:
        tenant = current_principal().tenant
        spec, problems = spec_input(request.spec)
        facts = await asyncio.to_thread(validate_job_spec, tenant, spec, self.datasets, self.models, problems)
        spec.max_seq_len = facts["max_seq_len"]  # as accepted: the row length the job will use
        info = await asyncio.to_thread(self.jobs.create, tenant, spec, request.idempotency_key)
        return training_pb2.CreateJobResponse(job=job_message(info))

    async def GetJob(
        self, request: training_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.GetJobResponse:
        info = await asyncio.to_thread(self.jobs.get, current_principal().tenant, request.job_id)
        return training_pb2.GetJobResponse(job=job_message(info))

    async def ListJobs(
        self, request: training_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ListJobsResponse:
        states = [_state_name(v, f"states[{i}]") for i, v in enumerate(request.states)]
        page, token = await asyncio.to_thread(
            self.jobs.list, current_principal().tenant, states, request.page_size, request.page_token
        )
        return training_pb2.ListJobsResponse(jobs=[job_message(j) for j in page], next_page_token=token)

    async def CancelJob(
        self, request: training_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.CancelJobResponse:
        info = await asyncio.to_thread(self.jobs.cancel, current_principal().tenant, request.job_id)
        if info.state in FINAL and info.runner_id:  # cancelled while queued on the cluster: stop it there too
            await asyncio.to_thread(self.runner.stop_submission, info.runner_id)
        return training_pb2.CancelJobResponse(job=job_message(info))

    async def StreamJobEvents(
        self, request: training_pb2.StreamJobEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[training_pb2.StreamJobEventsResponse]:
        tenant = current_principal().tenant
        if request.after_sequence < 0:
            raise InvalidArgument.for_field("after_sequence", "must not be negative")
        cursor = request.after_sequence
        while True:
            events = await asyncio.to_thread(self.jobs.events, tenant, request.job_id, cursor)
            for event in events:
                yield training_pb2.StreamJobEventsResponse(event=event_message(event))
                cursor = event.sequence
            if events:
                continue
            if request.no_follow:
                return
            info = await asyncio.to_thread(self.jobs.get, tenant, request.job_id)
            if info.state in FINAL:
                # the final state change is the job's last event; drain anything written just before it
                rest = await asyncio.to_thread(self.jobs.events, tenant, request.job_id, cursor)
                for event in rest:
                    yield training_pb2.StreamJobEventsResponse(event=event_message(event))
                return
            if self.draining.is_set():
                # the job goes on training on Ray; a reconnect with this cursor misses and repeats nothing
                raise Unavailable(
                    f"the server is shutting down; reconnect with after_sequence={cursor} to follow the job on"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.draining.wait(), FOLLOW_INTERVAL_S)

    async def ListCheckpoints(
        self, request: training_pb2.ListCheckpointsRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ListCheckpointsResponse:
        info = await asyncio.to_thread(self.jobs.get, current_principal().tenant, request.job_id)
        found = await asyncio.to_thread(list_checkpoints, Path(self.runner.output_dir(info)))
        return training_pb2.ListCheckpointsResponse(
            checkpoints=[
                training_pb2.Checkpoint(
                    id=c["id"],
                    step=c["step"],
                    metrics=c["metrics"],
                    create_time=timestamp(datetime.fromtimestamp(c["created_at"], UTC)),
                    weights=common_pb2.ContentDigest(sha256=c["sha256"], size_bytes=c["size_bytes"]),
                )
                for c in found
            ]
        )


def adapter_message(info: AdapterInfo) -> training_pb2.Adapter:
    return training_pb2.Adapter(
        name=info.name,
        latest_version=info.latest_version,
        aliases=info.aliases,
        base_model=info.base_model,
        times=resource_times(info.created_at, info.updated_at),
        kind=MODEL_KINDS[info.kind],
    )


def gate_message(gate: PromotionGate) -> training_pb2.PromotionGate:
    spec = gate.spec
    message = training_pb2.PromotionGate(
        adapter=gate.adapter,
        alias=gate.alias,
        suite_ids=spec.suite_ids,
        target_categories=spec.target_categories,
        max_drop=spec.max_drop,
        source=GATE_SOURCES[gate.source],
        updated_by=gate.updated_by,
    )
    if spec.min_judge_score is not None:
        message.min_judge_score = spec.min_judge_score
    if gate.created_at is not None and gate.updated_at is not None:
        message.times.CopyFrom(resource_times(gate.created_at, gate.updated_at))
    return message


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
            promotions=[promotion_message(p) for p in lineage.get("promotions", [])],
            source_adapter_version=lineage.get("source_adapter_version", ""),
        ),
        kind=MODEL_KINDS[info.kind],
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

    def __init__(self, registry: AdapterRegistry, gates: PromotionGates) -> None:
        self.registry = registry
        self.gates = gates

    async def GetAdapter(
        self, request: training_pb2.GetAdapterRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.GetAdapterResponse:
        info = await asyncio.to_thread(self.registry.get_adapter, current_principal().tenant, request.name)
        return training_pb2.GetAdapterResponse(adapter=adapter_message(info))

    async def ListAdapters(
        self, request: training_pb2.ListAdaptersRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ListAdaptersResponse:
        unknown = [k for k in request.kinds if k not in MODEL_KIND_NAMES]
        if unknown:
            raise InvalidArgument.for_field("kinds", f"{unknown[0]} is not a model kind")
        kinds = tuple(MODEL_KIND_NAMES[k] for k in request.kinds) or ("adapter",)
        page, token = await asyncio.to_thread(
            self.registry.list_adapters, current_principal().tenant, request.page_size, request.page_token, kinds
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
        principal = current_principal()
        info, record = await asyncio.to_thread(
            functools.partial(
                self.gates.promote,
                principal.tenant,
                request.adapter,
                request.alias,
                request.version,
                by=principal.key_name,
                force=request.force,
                reason=request.reason,
            )
        )
        response = training_pb2.SetAdapterAliasResponse(adapter=adapter_message(info))
        if record is not None:
            response.promotion.CopyFrom(promotion_message(record))
        return response

    async def SetPromotionGate(
        self, request: training_pb2.SetPromotionGateRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.SetPromotionGateResponse:
        principal = current_principal()
        g = request.gate
        spec = GateSpec(
            list(g.suite_ids),
            list(g.target_categories),
            g.max_drop,
            g.min_judge_score if g.HasField("min_judge_score") else None,
        )
        gate = await asyncio.to_thread(
            self.gates.set_gate, principal.tenant, request.adapter, request.alias, spec, principal.key_name
        )
        return training_pb2.SetPromotionGateResponse(gate=gate_message(gate))

    async def GetPromotionGate(
        self, request: training_pb2.GetPromotionGateRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.GetPromotionGateResponse:
        gate = await asyncio.to_thread(self.gates.get_gate, current_principal().tenant, request.adapter, request.alias)
        if gate is None:
            raise NotFound("promotion gate", f"{request.adapter}:{request.alias}")
        return training_pb2.GetPromotionGateResponse(gate=gate_message(gate))

    async def DeletePromotionGate(
        self, request: training_pb2.DeletePromotionGateRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.DeletePromotionGateResponse:
        await asyncio.to_thread(self.gates.delete_gate, current_principal().tenant, request.adapter, request.alias)
        return training_pb2.DeletePromotionGateResponse()

    async def DeleteAdapterVersion(
        self, request: training_pb2.DeleteAdapterVersionRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.DeleteAdapterVersionResponse:
        await asyncio.to_thread(
            self.registry.delete_version, current_principal().tenant, request.adapter, request.version
        )
        return training_pb2.DeleteAdapterVersionResponse()
