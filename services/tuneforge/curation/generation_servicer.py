"""GenerationService: glue between protobuf and `curation.generation` (Self-Instruct runs and their review)."""

from __future__ import annotations

import asyncio

import grpc

from tuneforge.common.auth import current_principal
from tuneforge.common.convert import resource_times, sampling_message
from tuneforge.common.errors import InvalidArgument
from tuneforge.curation import generation
from tuneforge.curation.generation import CandidateInfo, GenerationRuns, RunInfo
from tuneforge.curation.servicer import file_message, version_message, version_spec
from tuneforge.curation.versions import DatasetVersions, validate_spec
from tuneforge.v1 import curation_pb2, generation_pb2, generation_pb2_grpc

_STATES = {
    generation.QUEUED: generation_pb2.GENERATION_RUN_STATE_QUEUED,
    generation.RUNNING: generation_pb2.GENERATION_RUN_STATE_RUNNING,
    generation.SUCCEEDED: generation_pb2.GENERATION_RUN_STATE_SUCCEEDED,
    generation.FAILED: generation_pb2.GENERATION_RUN_STATE_FAILED,
    generation.CANCELLED: generation_pb2.GENERATION_RUN_STATE_CANCELLED,
}
_STATUSES = {
    generation.PENDING: generation_pb2.CANDIDATE_STATUS_PENDING,
    generation.ACCEPTED: generation_pb2.CANDIDATE_STATUS_ACCEPTED,
    generation.REJECTED: generation_pb2.CANDIDATE_STATUS_REJECTED,
    generation.FILTERED: generation_pb2.CANDIDATE_STATUS_FILTERED,
}
_STATUS_NAMES = {number: name for name, number in _STATUSES.items()}


def run_message(info: RunInfo) -> generation_pb2.GenerationRun:
    counts = info.counts
    return generation_pb2.GenerationRun(
        id=info.id,
        state=_STATES[info.state],
        progress=generation_pb2.GenerationProgress(
            proposed=sum(counts.get(s, 0) for s in _STATUSES),
            total=info.count,
            kept=sum(counts.get(s, 0) for s in (generation.PENDING, generation.ACCEPTED, generation.REJECTED)),
            duplicates=counts.get("duplicates", 0),
            invalid=counts.get("invalid", 0),
            accepted=counts.get(generation.ACCEPTED, 0),
            rejected=counts.get(generation.REJECTED, 0),
        ),
        model=info.model,
        resolved_model=info.resolved_model,
        seeds=info.seeds,
        seeds_per_prompt=info.seeds_per_prompt,
        sampling=sampling_message(info.sampling),
        failure_reason=info.failure_reason,
        times=resource_times(info.created_at, info.updated_at),
        built_file_ids=info.built_file_ids,
    )


def candidate_message(info: CandidateInfo) -> generation_pb2.Candidate:
    return generation_pb2.Candidate(
        id=info.id,
        run_id=info.run_id,
        index=info.index,
        instruction=info.instruction,
        answer=info.answer,
        status=_STATUSES[info.status],
        filter_reason=info.filter_reason,
        seeds=info.seeds,
        model=info.model,
        reviewer=info.reviewer,
        edited=info.edited,
        original_instruction=info.original_instruction,
        original_answer=info.original_answer,
        times=resource_times(info.created_at, info.updated_at),
    )


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    """GenerationService for the caller's tenant; runs start on this replica once created."""

    def __init__(
        self, runs: GenerationRuns, versions: DatasetVersions, generator: object, max_invalid_fraction: float
    ) -> None:
        self.runs = runs
        self.versions = versions
        self.generator = generator  # () -> Generator | None: the inference service may come up later
        self.max_invalid_fraction = max_invalid_fraction

    async def CreateGenerationRun(
        self, request: generation_pb2.CreateGenerationRunRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.CreateGenerationRunResponse:
        sampling = {
            "temperature": request.sampling.temperature,
            "top_p": request.sampling.top_p,
            "max_tokens": request.sampling.max_tokens,
            "stop": list(request.sampling.stop),
        }
        if request.sampling.HasField("seed"):
            sampling["seed"] = request.sampling.seed
        info = await asyncio.to_thread(
            self.runs.create,
            current_principal().tenant,
            list(request.seeds),
            request.seed_file_id,
            request.model,
            request.count,
            request.seeds_per_prompt,
            sampling,
            request.idempotency_key,
        )
        if info.state == generation.QUEUED:
            self.runs.start(info, self.generator())  # type: ignore[operator]
        return generation_pb2.CreateGenerationRunResponse(run=run_message(info))

    async def GetGenerationRun(
        self, request: generation_pb2.GetGenerationRunRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GetGenerationRunResponse:
        info = await asyncio.to_thread(self.runs.get, current_principal().tenant, request.run_id)
        return generation_pb2.GetGenerationRunResponse(run=run_message(info))

    async def ListGenerationRuns(
        self, request: generation_pb2.ListGenerationRunsRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ListGenerationRunsResponse:
        page, token = await asyncio.to_thread(
            self.runs.list, current_principal().tenant, request.page_size, request.page_token
        )
        return generation_pb2.ListGenerationRunsResponse(runs=[run_message(i) for i in page], next_page_token=token)

    async def CancelGenerationRun(
        self, request: generation_pb2.CancelGenerationRunRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.CancelGenerationRunResponse:
        info = await asyncio.to_thread(self.runs.cancel, current_principal().tenant, request.run_id)
        return generation_pb2.CancelGenerationRunResponse(run=run_message(info))

    async def ListCandidates(
        self, request: generation_pb2.ListCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ListCandidatesResponse:
        unknown = [i for i, s in enumerate(request.statuses) if s not in _STATUS_NAMES]
        if unknown:
            raise InvalidArgument.for_field(f"statuses[{unknown[0]}]", "is not a candidate status")
        statuses = [_STATUS_NAMES[s] for s in request.statuses]
        found = await asyncio.to_thread(self.runs.candidates, current_principal().tenant, request.run_id, statuses)
        return generation_pb2.ListCandidatesResponse(candidates=[candidate_message(c) for c in found])

    async def ReviewCandidate(
        self, request: generation_pb2.ReviewCandidateRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ReviewCandidateResponse:
        decisions = {generation_pb2.REVIEW_DECISION_ACCEPT: True, generation_pb2.REVIEW_DECISION_REJECT: False}
        if request.decision not in decisions:
            raise InvalidArgument.for_field("decision", "must be REVIEW_DECISION_ACCEPT or REVIEW_DECISION_REJECT")
        principal = current_principal()
        info = await asyncio.to_thread(
            self.runs.review,
            principal.tenant,
            request.candidate_id,
            decisions[request.decision],
            principal.key_name,
            request.instruction,
            request.answer,
        )
        return generation_pb2.ReviewCandidateResponse(candidate=candidate_message(info))

    async def BuildDatasetFromCandidates(
        self, request: generation_pb2.BuildDatasetFromCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.BuildDatasetFromCandidatesResponse:
        tenant = current_principal().tenant
        await asyncio.to_thread(self.runs.get, tenant, request.run_id)  # bad or unknown run first
        # the version's fields are checked whole before a file is written (a placeholder stands for its id)
        placeholder = curation_pb2.CreateDatasetVersionRequest(
            dataset=request.dataset, file_ids=["file-" + "0" * 24], settings=request.settings
        )
        validate_spec(version_spec(placeholder, self.max_invalid_fraction), request.idempotency_key)
        written = await asyncio.to_thread(self.runs.write_accepted, tenant, request.run_id)
        spec = version_spec(
            curation_pb2.CreateDatasetVersionRequest(
                dataset=request.dataset,
                file_ids=[written.file.id],
                format=curation_pb2.DATA_FORMAT_OPENAI_CHAT,
                settings=request.settings,
            ),
            self.max_invalid_fraction,
        )
        version = await asyncio.to_thread(self.versions.create, tenant, spec, request.idempotency_key)
        return generation_pb2.BuildDatasetFromCandidatesResponse(
            file=file_message(written.file),
            candidate_ids=written.candidate_ids,
            dataset_version=version_message(version),
        )
