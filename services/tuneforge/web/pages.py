"""The console's pages: jobs with live curves, datasets with their reports, evaluations, adapters.

Every page is built from the services' answers to the signed-in key. Pages of work in progress
(a running job, an evaluation run) carry a `data-live` fragment the page's script re-fetches every
few seconds until the work is final.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from datetime import UTC
from typing import Any

from aiohttp import web
from google.protobuf import timestamp_pb2

from tuneforge.client import TuneforgeError
from tuneforge.common.svg import grouped_bar_chart
from tuneforge.v1 import curation_pb2, evaluation_pb2, feedback_pb2, inference_pb2, training_pb2
from tuneforge.web.app import BACKEND, render, session_of
from tuneforge.web.backend import Caller
from tuneforge.web.charts import interval_chart, line_chart

FINAL_JOB_STATES = {training_pb2.JOB_STATE_SUCCEEDED, training_pb2.JOB_STATE_FAILED, training_pb2.JOB_STATE_CANCELLED}
FINAL_RUN_STATES = {
    evaluation_pb2.EVAL_RUN_STATE_SUCCEEDED,
    evaluation_pb2.EVAL_RUN_STATE_FAILED,
    evaluation_pb2.EVAL_RUN_STATE_CANCELLED,
}
#: Events a job page reads (the curves need every metrics event; jobs of the platform's size fit).
MAX_EVENTS = 20_000
#: Issues of a dataset version listed on its page (the counts by code cover all of them).
MAX_ISSUES = 200
PREVIEW_RECORDS = 5


def _state(enum: Any, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


def _time(stamp: timestamp_pb2.Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return ""
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


FILTERS = {
    "job_state": lambda v: _state(training_pb2.JobState, v, "JOB_STATE_"),
    "event_type": lambda v: _state(training_pb2.JobEventType, v, "JOB_EVENT_TYPE_"),
    "version_state": lambda v: _state(curation_pb2.DatasetVersionState, v, "DATASET_VERSION_STATE_"),
    "run_state": lambda v: _state(evaluation_pb2.EvalRunState, v, "EVAL_RUN_STATE_"),
    "timestamp": _time,
    "percent": lambda v: f"{v:.1%}",
    "signed_percent": lambda v: f"{v:+.1%}",
    "rating": lambda v: {feedback_pb2.FEEDBACK_RATING_UP: "good", feedback_pb2.FEEDBACK_RATING_DOWN: "bad"}.get(v, ""),
}


def _caller(request: web.Request) -> Caller:
    return request.app[BACKEND].caller(session_of(request).api_key)


async def index(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/playground")


# -- jobs ---------------------------------------------------------------------------------------


async def jobs(request: web.Request) -> web.Response:
    caller = _caller(request)
    listed = await caller.pages(caller.backend.training.ListJobs, training_pb2.ListJobsRequest(page_size=100), "jobs")
    return render(request, "jobs.html", jobs=listed)


def job_curves(events: list[training_pb2.JobEvent]) -> dict[str, str]:
    """The job's curves as inline SVG: training and validation loss, and tokens per second, by step."""
    loss: list[tuple[float, float]] = []
    validation: list[tuple[float, float]] = []
    speed: list[tuple[float, float]] = []
    for event in events:
        metrics = event.metrics
        if event.type == training_pb2.JOB_EVENT_TYPE_METRICS:
            if "loss" in metrics:
                loss.append((event.step, metrics["loss"]))
            if "tokens_per_second" in metrics:
                speed.append((event.step, metrics["tokens_per_second"]))
        elif event.type == training_pb2.JOB_EVENT_TYPE_EVALUATION and "validation_loss" in metrics:
            validation.append((event.step, metrics["validation_loss"]))
    return {
        "loss": line_chart({"loss": loss, "validation loss": validation}, "Loss"),
        "speed": line_chart({"tokens/s": speed}, "Training speed (tokens per second)"),
    }


async def _job_view(caller: Caller, job_id: str) -> dict[str, Any]:
    job = (await caller.call(caller.backend.training.GetJob, training_pb2.GetJobRequest(job_id=job_id))).job
    request = training_pb2.StreamJobEventsRequest(job_id=job_id, no_follow=True)
    events = []
    async for message in caller.stream(caller.backend.training.StreamJobEvents, request, timeout=60):
        events.append(message.event)
        if len(events) >= MAX_EVENTS:
            break
    checkpoints = (
        await caller.call(caller.backend.training.ListCheckpoints, training_pb2.ListCheckpointsRequest(job_id=job_id))
    ).checkpoints
    return {
        "job": job,
        "final": job.state in FINAL_JOB_STATES,
        "curves": job_curves(events),
        # the newest first, and not every metrics line: the curves show those
        "events": [e for e in reversed(events) if e.type != training_pb2.JOB_EVENT_TYPE_METRICS][:200],
        "checkpoints": checkpoints,
    }


async def job(request: web.Request) -> web.Response:
    return render(request, "job.html", **await _job_view(_caller(request), request.match_info["job_id"]))


async def job_live(request: web.Request) -> web.Response:
    return render(request, "job_live.html", **await _job_view(_caller(request), request.match_info["job_id"]))


async def cancel_job(request: web.Request) -> web.Response:
    caller, job_id = _caller(request), request.match_info["job_id"]
    job = (await caller.call(caller.backend.training.CancelJob, training_pb2.CancelJobRequest(job_id=job_id))).job
    state = FILTERS["job_state"](job.state)
    session_of(request).notices.append(f"cancellation of {job_id} requested; the job is {state}")
    raise web.HTTPSeeOther(f"/jobs/{job_id}")


# -- datasets -----------------------------------------------------------------------------------


async def datasets(request: web.Request) -> web.Response:
    caller = _caller(request)
    versions = await caller.pages(
        caller.backend.datasets.ListDatasetVersions,
        curation_pb2.ListDatasetVersionsRequest(page_size=100),
        "dataset_versions",
    )
    return render(request, "datasets.html", versions=versions)


async def dataset(request: web.Request) -> web.Response:
    return render(request, "dataset.html", **await _dataset_view(_caller(request), request.match_info["version_id"]))


async def dataset_live(request: web.Request) -> web.Response:
    view = await _dataset_view(_caller(request), request.match_info["version_id"])
    return render(request, "dataset_live.html", **view)


async def _dataset_view(caller: Caller, version_id: str) -> dict[str, Any]:
    datasets_stub = caller.backend.datasets
    version = (
        await caller.call(
            datasets_stub.GetDatasetVersion, curation_pb2.GetDatasetVersionRequest(dataset_version_id=version_id)
        )
    ).dataset_version
    context: dict[str, Any] = {
        "version": version,
        "report": None,
        "issues": [],
        "records": [],
        "histogram": {},
        "feedback_lineage": [],
        "generation_lineage": [],
    }
    if version.state in (curation_pb2.DATASET_VERSION_STATE_READY, curation_pb2.DATASET_VERSION_STATE_FAILED):
        report = await caller.call(
            datasets_stub.GetDatasetReport, curation_pb2.GetDatasetReportRequest(dataset_version_id=version_id)
        )
        context["report"] = report
        details = json.loads(report.json or "{}")
        context["histogram"] = details.get("token_lengths", {})
        context["feedback_lineage"] = details.get("feedback_lineage", [])  # lines written by a feedback export
        context["generation_lineage"] = details.get("generation_lineage", [])  # reviewed Self-Instruct pairs
        context["issues"] = await caller.pages(
            datasets_stub.ListDatasetIssues,
            curation_pb2.ListDatasetIssuesRequest(dataset_version_id=version_id, page_size=MAX_ISSUES),
            "issues",
            limit=MAX_ISSUES,
        )
    if version.state == curation_pb2.DATASET_VERSION_STATE_READY:
        context["records"] = (
            await caller.call(
                datasets_stub.PreviewDatasetRecords,
                curation_pb2.PreviewDatasetRecordsRequest(
                    dataset_version_id=version_id, split="train", limit=PREVIEW_RECORDS
                ),
            )
        ).records
    return context


# -- evaluations --------------------------------------------------------------------------------


async def evaluations(request: web.Request) -> web.Response:
    caller = _caller(request)
    runs = await caller.pages(
        caller.backend.evaluation.ListEvalRuns, evaluation_pb2.ListEvalRunsRequest(page_size=100), "runs"
    )
    suites = await caller.pages(
        caller.backend.evaluation.ListSuites, evaluation_pb2.ListSuitesRequest(page_size=100), "suites"
    )
    models = (await caller.call(caller.backend.inference.ListModels, inference_pb2.ListModelsRequest())).models
    return render(
        request,
        "evaluations.html",
        runs=runs,
        suites=suites,
        models=[m.name for m in models if not m.is_base],
        form_id=uuid.uuid4().hex,
    )


async def start_evaluation(request: web.Request) -> web.Response:
    form = await request.post()
    models = ["base", *[str(m) for m in form.getall("models", []) if str(m) and str(m) != "base"]]
    sampling = inference_pb2.SamplingParams()
    max_tokens = str(form.get("max_tokens", "")).strip()
    if max_tokens:
        if not max_tokens.isdigit():
            raise _bad_form("max_tokens", "max_tokens must be a whole number")
        sampling.max_tokens = int(max_tokens)
    caller = _caller(request)
    run = (
        await caller.call(
            caller.backend.evaluation.CreateEvalRun,
            evaluation_pb2.CreateEvalRunRequest(
                # one key per submitted form: a double submit of the same page makes one run
                idempotency_key=str(form.get("form_id", "")) or uuid.uuid4().hex,
                suite_id=str(form.get("suite_id", "")),
                models=models,
                sampling=sampling,
            ),
        )
    ).run
    raise web.HTTPSeeOther(f"/evaluations/{run.id}")


def _bad_form(field: str, message: str) -> Exception:
    return TuneforgeError("INVALID_ARGUMENT", message, [(field, message)])


async def _run_view(caller: Caller, run_id: str) -> dict[str, Any]:
    evaluation = caller.backend.evaluation
    run = (await caller.call(evaluation.GetEvalRun, evaluation_pb2.GetEvalRunRequest(run_id=run_id))).run
    context: dict[str, Any] = {"run": run, "final": run.state in FINAL_RUN_STATES, "report": None}
    if run.state != evaluation_pb2.EVAL_RUN_STATE_SUCCEEDED:
        return context
    response = await caller.call(evaluation.GetEvalReport, evaluation_pb2.GetEvalReportRequest(run_id=run_id))
    report = json.loads(response.content)
    results = await caller.pages(
        evaluation.ListEvalResults, evaluation_pb2.ListEvalResultsRequest(run_id=run_id, page_size=1000), "results"
    )
    outputs: dict[str, dict[str, str]] = defaultdict(dict)
    for result in results:
        outputs[result.model][result.item_id] = result.output
    baseline, models = report["baseline"], report["models"]
    groups = list(report["categories"])
    flipped = [
        {
            "model": model,
            "kind": kind,
            "item": item,
            "before": outputs[baseline].get(item, ""),
            "after": outputs[model].get(item, ""),
        }
        for model, kinds in report["flips"].items()
        for kind in ("fixed", "broken")
        for item in kinds[kind]
    ]
    intervals = [
        (f"{group} · {model}", d["estimate"], d["low"], d["high"])
        for group, entry in report["categories"].items()
        for model, d in entry["difference"].items()
    ]
    context["report"] = {
        "comparisons": response.comparisons,
        "warnings": response.warnings,
        "pass_rates": grouped_bar_chart(
            groups,
            {m: [report["categories"][g]["pass_rate"][m] for g in groups] for m in models},
            "Pass rate by category",
            "pass rate",
        ),
        "intervals": interval_chart(intervals, f"Difference from {baseline} (95% interval)"),
        "flipped": flipped,
        "baseline": baseline,
    }
    return context


async def evaluation(request: web.Request) -> web.Response:
    return render(request, "evaluation.html", **await _run_view(_caller(request), request.match_info["run_id"]))


async def evaluation_live(request: web.Request) -> web.Response:
    return render(request, "evaluation_live.html", **await _run_view(_caller(request), request.match_info["run_id"]))


# -- feedback -----------------------------------------------------------------------------------


async def feedback(request: web.Request) -> web.Response:
    caller = _caller(request)
    items = await caller.pages(
        caller.backend.feedback.ListFeedback, feedback_pb2.ListFeedbackRequest(page_size=100), "feedback", limit=200
    )
    models = (await caller.call(caller.backend.inference.ListModels, inference_pb2.ListModelsRequest())).models
    base = next((m.name for m in models if m.is_base), "")
    return render(request, "feedback.html", items=items, base_model=base, form_id=uuid.uuid4().hex)


async def export_feedback(request: web.Request) -> web.Response:
    """Accepted feedback into a new raw file (FeedbackExportService) and, with a dataset name, a version
    built from it through the normal curation pipeline."""
    form = await request.post()
    caller = _caller(request)
    exported = await caller.call(
        caller.backend.feedback_export.ExportFeedback,
        feedback_pb2.ExportFeedbackRequest(
            model=str(form.get("model", "")).strip(), include_approved=form.get("include_approved") == "on"
        ),
    )
    notices = session_of(request).notices
    file_id = exported.instruction_file.id
    notices.append(f"{len(exported.feedback_ids)} feedback item(s) exported into file {file_id}")
    dataset = str(form.get("dataset", "")).strip()
    if not dataset:
        raise web.HTTPSeeOther("/feedback")
    version = (
        await caller.call(
            caller.backend.datasets.CreateDatasetVersion,
            curation_pb2.CreateDatasetVersionRequest(
                idempotency_key=str(form.get("form_id", "")) or uuid.uuid4().hex,
                dataset=dataset,
                file_ids=[file_id],
                settings=curation_pb2.CurationSettings(base_model=str(form.get("base_model", "")).strip()),
            ),
        )
    ).dataset_version
    raise web.HTTPSeeOther(f"/datasets/{version.id}")


# -- adapters -----------------------------------------------------------------------------------


async def adapters(request: web.Request) -> web.Response:
    caller = _caller(request)
    every_kind = [
        inference_pb2.MODEL_KIND_ADAPTER,
        inference_pb2.MODEL_KIND_FULL_FINE_TUNE,
        inference_pb2.MODEL_KIND_MERGED,
    ]
    listed = await caller.pages(
        caller.backend.adapters.ListAdapters,
        training_pb2.ListAdaptersRequest(page_size=100, kinds=every_kind),  # full fine-tunes and merged models too
        "adapters",
    )
    kinds = {a.name: KIND_LABELS.get(a.kind, "adapter") for a in listed}
    return render(request, "adapters.html", adapters=listed, kinds=kinds)


#: How the adapters page names a line's kind.
KIND_LABELS = {
    inference_pb2.MODEL_KIND_ADAPTER: "adapter",
    inference_pb2.MODEL_KIND_FULL_FINE_TUNE: "full fine-tune",
    inference_pb2.MODEL_KIND_MERGED: "merged model",
}


async def adapter(request: web.Request) -> web.Response:
    caller, name = _caller(request), request.match_info["name"]
    stub = caller.backend.adapters
    found = (await caller.call(stub.GetAdapter, training_pb2.GetAdapterRequest(name=name))).adapter
    versions = await caller.pages(
        stub.ListAdapterVersions,
        training_pb2.ListAdapterVersionsRequest(adapter=name, page_size=100),
        "adapter_versions",
    )
    models = (await caller.call(caller.backend.inference.ListModels, inference_pb2.ListModelsRequest())).models
    aliases = []
    for alias, version in sorted(found.aliases.items()):
        entry = next((m for m in models if m.name == f"{name}:{alias}"), None)
        promotion = entry.promotion if entry is not None and entry.HasField("promotion") else None
        gate = await _gate(caller, name, alias)
        aliases.append({"alias": alias, "version": version, "promotion": promotion, "gate": gate})
    return render(request, "adapter.html", adapter=found, versions=versions, aliases=aliases)


async def _gate(caller: Caller, adapter: str, alias: str) -> training_pb2.PromotionGate | None:
    try:
        request = training_pb2.GetPromotionGateRequest(adapter=adapter, alias=alias)
        return (await caller.call(caller.backend.adapters.GetPromotionGate, request)).gate
    except TuneforgeError as exc:
        if exc.code == "NOT_FOUND":  # no gate guards this alias
            return None
        raise


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/", index)
    router.add_get("/jobs", jobs)
    router.add_get("/jobs/{job_id}", job)
    router.add_get("/jobs/{job_id}/live", job_live)
    router.add_post("/jobs/{job_id}/cancel", cancel_job)
    router.add_get("/datasets", datasets)
    router.add_get("/datasets/{version_id}", dataset)
    router.add_get("/datasets/{version_id}/live", dataset_live)
    router.add_get("/evaluations", evaluations)
    router.add_post("/evaluations", start_evaluation)
    router.add_get("/evaluations/{run_id}", evaluation)
    router.add_get("/evaluations/{run_id}/live", evaluation_live)
    router.add_get("/feedback", feedback)
    router.add_post("/feedback/export", export_feedback)
    router.add_get("/adapters", adapters)
    router.add_get("/adapters/{name}", adapter)
