"""The console's Generate pages: Self-Instruct runs started from seed tasks, their progress, the review
of their candidates (accept, edit and accept, reject) and a dataset version built from the accepted ones.

Every page is built from GenerationService's answers to the signed-in key; a run in progress carries
a `data-live` fragment that the page's script re-fetches until the run is final.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from tuneforge.client import TuneforgeError
from tuneforge.v1 import curation_pb2, generation_pb2, inference_pb2
from tuneforge.web.app import BACKEND, render, session_of
from tuneforge.web.backend import Caller

FINAL = {
    generation_pb2.GENERATION_RUN_STATE_SUCCEEDED,
    generation_pb2.GENERATION_RUN_STATE_FAILED,
    generation_pb2.GENERATION_RUN_STATE_CANCELLED,
}
#: Numbers the start form accepts (the service checks them again and names any bad field).
INTEGER_FIELDS = ("count", "seeds_per_prompt", "max_tokens")


def _caller(request: web.Request) -> Caller:
    return request.app[BACKEND].caller(session_of(request).api_key)


def _state(run: generation_pb2.GenerationRun) -> str:
    return generation_pb2.GenerationRunState.Name(run.state).removeprefix("GENERATION_RUN_STATE_").lower()


def _status(candidate: generation_pb2.Candidate) -> str:
    return generation_pb2.CandidateStatus.Name(candidate.status).removeprefix("CANDIDATE_STATUS_").lower()


def _bad_form(field: str, message: str) -> TuneforgeError:
    return TuneforgeError("INVALID_ARGUMENT", f"{field}: {message}", [(field, message)])


async def runs(request: web.Request) -> web.Response:
    caller = _caller(request)
    found = await caller.pages(
        caller.backend.generation.ListGenerationRuns, generation_pb2.ListGenerationRunsRequest(page_size=100), "runs"
    )
    files = await caller.pages(caller.backend.datasets.ListFiles, curation_pb2.ListFilesRequest(page_size=100), "files")
    return render(
        request,
        "generation.html",
        runs=[(run, _state(run)) for run in found],
        files=files,
        form_id=uuid.uuid4().hex,
    )


async def start_run(request: web.Request) -> web.Response:
    """CreateGenerationRun from the form: seed tasks one per line, or an uploaded file of them."""
    form = await request.post()
    numbers: dict[str, int] = {}
    for name in INTEGER_FIELDS:
        text = str(form.get(name, "") or "0").strip()
        if not text.isdigit():
            raise _bad_form(name, "must be a whole number")
        numbers[name] = int(text)
    try:
        temperature = float(str(form.get("temperature", "") or "0"))
    except ValueError:
        raise _bad_form("temperature", "must be a number") from None
    seeds = [line.strip() for line in str(form.get("seeds", "")).splitlines() if line.strip()]
    caller = _caller(request)
    run = (
        await caller.call(
            caller.backend.generation.CreateGenerationRun,
            generation_pb2.CreateGenerationRunRequest(
                idempotency_key=str(form.get("form_id", "")) or uuid.uuid4().hex,
                seeds=seeds,
                seed_file_id="" if seeds else str(form.get("seed_file_id", "")).strip(),
                model=str(form.get("model", "")).strip(),
                count=numbers["count"],
                seeds_per_prompt=numbers["seeds_per_prompt"],
                sampling=inference_pb2.SamplingParams(temperature=temperature, max_tokens=numbers["max_tokens"]),
            ),
        )
    ).run
    raise web.HTTPSeeOther(f"/generate/{run.id}")


async def _run_view(caller: Caller, run_id: str) -> dict[str, Any]:
    stub = caller.backend.generation
    run = (await caller.call(stub.GetGenerationRun, generation_pb2.GetGenerationRunRequest(run_id=run_id))).run
    listed = await caller.call(stub.ListCandidates, generation_pb2.ListCandidatesRequest(run_id=run_id))
    return {
        "run": run,
        "state": _state(run),
        "final": run.state in FINAL,
        "candidates": [(c, _status(c)) for c in listed.candidates],
    }


async def run_page(request: web.Request) -> web.Response:
    caller = _caller(request)
    view = await _run_view(caller, request.match_info["run_id"])
    models = (await caller.call(caller.backend.inference.ListModels, inference_pb2.ListModelsRequest())).models
    base = next((m.name for m in models if m.is_base), "")
    return render(request, "generation_run.html", base_model=base, form_id=uuid.uuid4().hex, **view)


async def run_live(request: web.Request) -> web.Response:
    return render(request, "generation_live.html", **await _run_view(_caller(request), request.match_info["run_id"]))


async def cancel_run(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    caller = _caller(request)
    await caller.call(
        caller.backend.generation.CancelGenerationRun, generation_pb2.CancelGenerationRunRequest(run_id=run_id)
    )
    raise web.HTTPSeeOther(f"/generate/{run_id}")


async def review(request: web.Request) -> web.Response:
    """Accept (with the edited text as the form holds it) or reject one candidate."""
    form = await request.post()
    decisions = {"accept": generation_pb2.REVIEW_DECISION_ACCEPT, "reject": generation_pb2.REVIEW_DECISION_REJECT}
    decision = str(form.get("decision", ""))
    if decision not in decisions:
        raise _bad_form("decision", "must be accept or reject")
    editing = decision == "accept"
    caller = _caller(request)
    candidate = (
        await caller.call(
            caller.backend.generation.ReviewCandidate,
            generation_pb2.ReviewCandidateRequest(
                candidate_id=request.match_info["candidate_id"],
                decision=decisions[decision],
                instruction=str(form.get("instruction", "")) if editing else "",
                answer=str(form.get("answer", "")) if editing else "",
            ),
        )
    ).candidate
    session_of(request).notices.append(f"candidate {candidate.index} {_status(candidate)}")
    raise web.HTTPSeeOther(f"/generate/{candidate.run_id}#{candidate.id}")


async def build(request: web.Request) -> web.Response:
    """The accepted candidates into a new file and a dataset version built from it (curation's pipeline)."""
    form = await request.post()
    run_id = request.match_info["run_id"]
    caller = _caller(request)
    built = await caller.call(
        caller.backend.generation.BuildDatasetFromCandidates,
        generation_pb2.BuildDatasetFromCandidatesRequest(
            idempotency_key=str(form.get("form_id", "")) or uuid.uuid4().hex,
            run_id=run_id,
            dataset=str(form.get("dataset", "")).strip(),
            settings=curation_pb2.CurationSettings(base_model=str(form.get("base_model", "")).strip()),
        ),
    )
    session_of(request).notices.append(f"{len(built.candidate_ids)} accepted pair(s) written into file {built.file.id}")
    raise web.HTTPSeeOther(f"/datasets/{built.dataset_version.id}")


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/generate", runs)
    router.add_post("/generate", start_run)
    router.add_get("/generate/{run_id}", run_page)
    router.add_get("/generate/{run_id}/live", run_live)
    router.add_post("/generate/{run_id}/cancel", cancel_run)
    router.add_post("/generate/{run_id}/build", build)
    router.add_post("/generate/candidates/{candidate_id}/review", review)
