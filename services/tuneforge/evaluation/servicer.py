"""gRPC glue for EvaluationService: suites, runs (with progress streaming), per-item results, reports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf import json_format, struct_pb2

from tuneforge.common.auth import current_principal
from tuneforge.common.convert import resource_times, timestamp
from tuneforge.common.errors import InvalidArgument
from tuneforge.evaluation.answers import AnswerSource
from tuneforge.evaluation.compare import OVERALL
from tuneforge.evaluation.runs import FINAL, EvalRuns
from tuneforge.evaluation.suite_store import SuiteInfo, SuiteStore
from tuneforge.evaluation.suites import Suite
from tuneforge.store.tables import utcnow
from tuneforge.v1 import common_pb2, evaluation_pb2, evaluation_pb2_grpc, inference_pb2


def suite_message(info: SuiteInfo) -> evaluation_pb2.Suite:
    return evaluation_pb2.Suite(
        id=info.id,
        name=info.name,
        num_items=info.num_items,
        category_counts=info.category_counts,
        builtin=info.builtin,
        digest=common_pb2.ContentDigest(sha256=info.sha256, size_bytes=info.size_bytes),
        times=resource_times(info.created_at, info.updated_at),
    )


def item_messages(suite: Suite) -> list[evaluation_pb2.SuiteItem]:
    items = []
    for item in suite.items:
        checks = []
        for check in item.checks:
            params = struct_pb2.Struct()
            json_format.ParseDict(check.get("params", {}), params)
            checks.append(evaluation_pb2.CheckSpec(type=check["type"], params=params))
        items.append(
            evaluation_pb2.SuiteItem(
                id=item.id,
                category=item.category,
                messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in item.messages],
                checks=checks,
                reference=item.reference,
                rubric=item.rubric,
            )
        )
    return items


FORMATS = {
    evaluation_pb2.REPORT_FORMAT_UNSPECIFIED: "json",
    evaluation_pb2.REPORT_FORMAT_JSON: "json",
    evaluation_pb2.REPORT_FORMAT_MARKDOWN: "markdown",
    evaluation_pb2.REPORT_FORMAT_HTML: "html",
}
STREAM_INTERVAL_S = 0.5


class EvaluationServicer(evaluation_pb2_grpc.EvaluationServiceServicer):
    """Suites per tenant and the built-in ones; runs generating through `source()` (None: no inference yet)."""

    def __init__(self, suites: SuiteStore, runs: EvalRuns, source: Callable[[], AnswerSource | None]) -> None:
        self.suites = suites
        self.runs = runs
        self.source = source

    async def CreateEvalRun(
        self, request: evaluation_pb2.CreateEvalRunRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_pb2.CreateEvalRunResponse:
        s = request.sampling
        sampling = {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "stop": list(s.stop),
            "seed": s.seed if s.HasField("seed") else 0,  # recorded, so the run can be repeated
        }
        info = await asyncio.to_thread(
            self.runs.create,
            current_principal().tenant,
            request.suite_id,
            list(request.models),
            sampling,
            request.idempotency_key,
            request.judge_model,
        )
        if info.state == "queued":
            self.runs.start(info, self.source())
        return evaluation_pb2.CreateEvalRunResponse(run=run_message(info))

    async def GetEvalRun(
        self, request: evaluation_pb2.GetEvalRunRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_pb2.GetEvalRunResponse:
        info = await asyncio.to_thread(self.runs.get, current_principal().tenant, request.run_id)
        return evaluation_pb2.GetEvalRunResponse(run=run_message(info))

    async def ListEvalRuns(
        self, request: evaluation_pb2.ListEvalRunsRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_pb2.ListEvalRunsResponse:
        page, token = await asyncio.to_thread(
            self.runs.list, current_principal().tenant, request.page_size, request.page_token
        )
        return evaluation_pb2.ListEvalRunsResponse(runs=[run_message(r) for r in page], next_page_token=token)

    async def CancelEvalRun(
        self, request: evaluation_pb2.CancelEvalRunRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_pb2.CancelEvalRunResponse:
        info = await asyncio.to_thread(self.runs.cancel, current_principal().tenant, request.run_id)
        return evaluation_pb2.CancelEvalRunResponse(run=run_message(info))

    async def StreamEvalRun(
        self, request: evaluation_pb2.StreamEvalRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[evaluation_pb2.StreamEvalRunResponse]:
        tenant = current_principal().tenant
        last = None
        while True:
            info = await asyncio.to_thread(self.runs.get, tenant, request.run_id)
            state = (info.state, info.completed)
            if state != last:
                last = state
                yield evaluation_pb2.StreamEvalRunResponse(run=run_message(info), time=timestamp(utcnow()))
            if info.state in FINAL:
                return
            await asyncio.sleep(STREAM_INTERVAL_S)

    async def ListEvalResults(
        self, request: evaluation_pb2.ListEvalResultsRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_pb2.ListEvalResultsResponse:
        rows, token = await asyncio.to_thread(
            self.runs.results,
            current_principal().tenant,
            request.run_id,
            request.model,
            request.category,
            request.page_size,
            request.page_token,
        )
        results = []
        for row, ratings in rows:
            checks = [
                evaluation_pb2.CheckResult(type=c["type"], passed=c["passed"], reason=c["reason"], score=c.get("score"))
                for c in json.loads(row.checks_json)
            ]
            results.append(
                evaluation_pb2.EvalResult(
                    item_id=row.item_id,
                    category=row.category,
                    model=row.model,
                    output=row.output,
                    checks=checks,
                    passed=row.passed,
                    judge_score=row.judge_score,
                    judge_reason=row.judge_reason,
                    human_scores=[
                        evaluation_pb2.HumanScore(rater=r.rater, score=r.score, comment=r.comment) for r in ratings
                    ],
                )
            )
        return evaluation_pb2.ListEvalResultsResponse(results=results, next_page_token=token)

    async def GetEvalReport(
        self, request: evaluation_pb2.GetEvalReportRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_pb2.GetEvalReportResponse:
        fmt = FORMATS.get(request.format)
        if fmt is None:
            raise InvalidArgument.for_field("format", f"{request.format} is not a report format")
        report, content = await asyncio.to_thread(self.runs.report, current_principal().tenant, request.run_id, fmt)
        comparisons = []
        base = report["baseline"]
        for category, entry in report["categories"].items():
            for model, diff in entry["difference"].items():
                flips = report["flips"][model]
                ids = (
                    None
                    if category == OVERALL
                    else {i for i, c in report.get("item_categories", {}).items() if c == category}
                )
                comparisons.append(
                    evaluation_pb2.CategoryComparison(
                        category=category,
                        model=model,
                        reference_pass_rate=entry["pass_rate"][base],
                        pass_rate=entry["pass_rate"][model],
                        difference_ci_low=diff["low"],
                        difference_ci_high=diff["high"],
                        fixed=len([i for i in flips["fixed"] if ids is None or i in ids]),
                        broken=len([i for i in flips["broken"] if ids is None or i in ids]),
                    )
                )
        scores = report.get("scores", {})
        for comparison in comparisons:
            for kind in ("judge", "human"):
                for model, field in ((base, f"reference_{kind}_score"), (comparison.model, f"{kind}_score")):
                    value = scores.get(model, {}).get(comparison.category, {}).get(kind)
                    if value is not None:
                        setattr(comparison, field, value["mean"])
        warnings = [report["leakage"]["message"]] if report.get("leakage") else []
        return evaluation_pb2.GetEvalReportResponse(comparisons=comparisons, content=content, warnings=warnings)

    async def ImportHumanScores(
        self, request: evaluation_pb2.ImportHumanScoresRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_pb2.ImportHumanScoresResponse:
        count, info = await asyncio.to_thread(
            self.runs.import_human_scores, current_principal().tenant, request.run_id, request.jsonl
        )
        return evaluation_pb2.ImportHumanScoresResponse(imported=count, run=run_message(info))

    async def CreateSuite(
        self, request: evaluation_pb2.CreateSuiteRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_pb2.CreateSuiteResponse:
        info = await asyncio.to_thread(
            self.suites.create, current_principal().tenant, request.name, request.jsonl, request.idempotency_key
        )
        return evaluation_pb2.CreateSuiteResponse(suite=suite_message(info))

    async def GetSuite(
        self, request: evaluation_pb2.GetSuiteRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_pb2.GetSuiteResponse:
        info, suite = await asyncio.to_thread(self.suites.get, current_principal().tenant, request.suite_id)
        return evaluation_pb2.GetSuiteResponse(suite=suite_message(info), items=item_messages(suite))

    async def ListSuites(
        self, request: evaluation_pb2.ListSuitesRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_pb2.ListSuitesResponse:
        page, token = await asyncio.to_thread(
            self.suites.list, current_principal().tenant, request.page_size, request.page_token
        )
        return evaluation_pb2.ListSuitesResponse(suites=[suite_message(s) for s in page], next_page_token=token)


def run_message(info) -> evaluation_pb2.EvalRun:
    sampling = inference_pb2.SamplingParams(
        temperature=info.sampling.get("temperature", 0.0),
        top_p=info.sampling.get("top_p", 0.0),
        max_tokens=info.sampling.get("max_tokens", 0),
        stop=info.sampling.get("stop", []),
    )
    if info.sampling.get("seed") is not None:
        sampling.seed = info.sampling["seed"]
    return evaluation_pb2.EvalRun(
        id=info.id,
        suite_id=info.suite_id,
        models=info.models,
        state=evaluation_pb2.EvalRunState.Value(f"EVAL_RUN_STATE_{info.state.upper()}"),
        progress=evaluation_pb2.EvalProgress(completed=info.completed, total=info.total),
        sampling=sampling,
        failure_reason=info.failure_reason,
        times=resource_times(info.created_at, info.updated_at),
        judge_model=info.judge_model,
    )
