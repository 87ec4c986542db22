"""Self-Instruct data generation (#19 point 4) over real gRPC on the session server with tiny-qwen2.

A run samples seed tasks into few-shot prompts, the embedded model proposes new tasks and answers
them, candidates are screened (curation's validation, de-duplication against the seeds and each
other), people review them, and the accepted pairs become a dataset version whose report names
each line's candidate, run, model and reviewer.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from conftest import ACME_KEY, SERVICE_KEY

from tuneforge.cli import main
from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.common.errors import FailedPrecondition
from tuneforge.curation.generation import (
    DUPLICATE,
    DUPLICATE_OF_SEED,
    GenerationRuns,
    RemoteGenerator,
    instruction_messages,
    parse_instruction,
    screen,
    seeds_from_file,
)
from tuneforge.platform import BackgroundServer
from tuneforge.v1 import curation_pb2, generation_pb2, generation_pb2_grpc, inference_pb2

BASE = "tiny-qwen2"
SEEDS = [
    "Write a haiku about autumn leaves.",
    "Explain what a binary search does.",
    "List three uses of baking soda.",
    "Translate 'good morning' into French.",
]
FINAL = (
    generation_pb2.GENERATION_RUN_STATE_SUCCEEDED,
    generation_pb2.GENERATION_RUN_STATE_FAILED,
    generation_pb2.GENERATION_RUN_STATE_CANCELLED,
)


def _stub(client: TuneforgeClient) -> generation_pb2_grpc.GenerationServiceStub:
    return generation_pb2_grpc.GenerationServiceStub(client.channel)


def _refused(call, *args, **kwargs) -> TuneforgeError:
    with pytest.raises(TuneforgeError) as refused:
        call(*args, **kwargs)
    return refused.value


def run_to_end(client: TuneforgeClient, count: int = 4, **fields) -> generation_pb2.GenerationRun:
    """Creates a run (temperature 1, a fixed seed, a few tokens) and polls it until it ends."""
    request = generation_pb2.CreateGenerationRunRequest(
        seeds=fields.pop("seeds", SEEDS),
        count=count,
        sampling=inference_pb2.SamplingParams(temperature=1.0, max_tokens=12, seed=fields.pop("seed", 11)),
        **fields,
    )
    stub = _stub(client)
    run = client.call(stub.CreateGenerationRun, request).run
    deadline = time.monotonic() + 120
    while run.state not in FINAL and time.monotonic() < deadline:
        time.sleep(0.2)
        run = client.call(stub.GetGenerationRun, generation_pb2.GetGenerationRunRequest(run_id=run.id)).run
    return run


def _candidates(client: TuneforgeClient, run_id: str, *statuses: int) -> list[generation_pb2.Candidate]:
    request = generation_pb2.ListCandidatesRequest(run_id=run_id, statuses=statuses)
    return list(client.call(_stub(client).ListCandidates, request).candidates)


def _review(client: TuneforgeClient, candidate_id: str, decision: int, **edits: str) -> generation_pb2.Candidate:
    request = generation_pb2.ReviewCandidateRequest(candidate_id=candidate_id, decision=decision, **edits)
    return client.call(_stub(client).ReviewCandidate, request).candidate


ACCEPT, REJECT = generation_pb2.REVIEW_DECISION_ACCEPT, generation_pb2.REVIEW_DECISION_REJECT


def test_run_proposes_screens_and_builds_a_reviewed_dataset_version(
    acme: TuneforgeClient, platform_server: BackgroundServer
) -> None:
    run = run_to_end(acme, count=3)
    assert run.state == generation_pb2.GENERATION_RUN_STATE_SUCCEEDED, run.failure_reason
    assert run.resolved_model == BASE and run.progress.total == 3 and run.progress.proposed == 3
    candidates = _candidates(acme, run.id)
    assert [c.index for c in candidates] == [0, 1, 2]
    for candidate in candidates:  # each prompt showed 3 of the seeds; the text is the model's own
        assert len(candidate.seeds) == 3 and set(candidate.seeds) <= set(SEEDS)
        assert candidate.model == BASE and candidate.original_instruction == candidate.instruction
    kept = _candidates(acme, run.id, generation_pb2.CANDIDATE_STATUS_PENDING)
    assert run.progress.kept == len(kept) >= 2, [(c.instruction, c.filter_reason) for c in candidates]

    first = _review(acme, kept[0].id, ACCEPT)
    assert first.status == generation_pb2.CANDIDATE_STATUS_ACCEPTED and first.reviewer == "acme-ci"
    assert not first.edited
    edited = _review(acme, kept[1].id, ACCEPT, answer="Pack light and label every box.")
    assert edited.edited and edited.answer == "Pack light and label every box."
    assert edited.original_answer == kept[1].answer
    for rest in kept[2:]:
        assert _review(acme, rest.id, REJECT).status == generation_pb2.CANDIDATE_STATUS_REJECTED
    invalid = _refused(_review, acme, kept[0].id, ACCEPT, instruction="x" * 5000)  # edits are validated too
    assert invalid.code == "INVALID_ARGUMENT" and [name for name, _ in invalid.violations] == ["instruction"]

    request = generation_pb2.BuildDatasetFromCandidatesRequest(
        run_id=run.id, dataset="self-instruct", settings=curation_pb2.CurationSettings(base_model=BASE)
    )
    built = acme.call(_stub(acme).BuildDatasetFromCandidates, request)
    assert list(built.candidate_ids) == [first.id, edited.id]
    files = next(c for c in platform_server.server.components if hasattr(c, "generation")).files
    lines = [json.loads(line) for line in files.read("acme", built.file.id).decode().splitlines()]
    assert lines[1]["messages"] == [
        {"role": "user", "content": edited.instruction},
        {"role": "assistant", "content": "Pack light and label every box."},
    ]
    version = acme.wait_for_dataset_version(built.dataset_version.id, timeout=300)
    assert version.state == curation_pb2.DATASET_VERSION_STATE_READY, version.failure_reason
    report = acme.call(
        acme.datasets.GetDatasetReport, curation_pb2.GetDatasetReportRequest(dataset_version_id=version.id)
    )
    lineage = json.loads(report.json)["generation_lineage"]
    assert [(x["line"], x["candidate_id"], x["run_id"], x["model"], x["reviewer"]) for x in lineage] == [
        (1, first.id, run.id, BASE, "acme-ci"),
        (2, edited.id, run.id, BASE, "acme-ci"),
    ]
    assert "## From Self-Instruct generation" in report.markdown and f"| {first.id} | {run.id} |" in report.markdown
    after = acme.call(_stub(acme).GetGenerationRun, generation_pb2.GetGenerationRunRequest(run_id=run.id)).run
    assert list(after.built_file_ids) == [built.file.id] and after.progress.accepted == 2


def test_screen_drops_invalid_pairs_and_duplicates_of_seeds_and_each_other() -> None:
    seeds = [
        "Write a haiku about autumn leaves.",
        "Explain in simple words what a binary search does and why it needs a sorted list of items.",
    ]
    proposals = [
        ("Write a haiku about autumn leaves!", "Red leaves fall."),  # a seed again, but for case and punctuation
        ("Describe how a hash map stores its keys and values.", "In buckets."),
        ("describe how a  hash map stores its keys and values", "Buckets again."),  # the candidate before
        ("", "An answer to nothing."),  # no instruction: curation's empty_content
        ("Name a prime number.", "   "),  # a blank answer
        ("Summarize the plot of Hamlet in two sentences.", "A prince avenges his father."),
        # a near duplicate of a seed (MinHash estimate of 5-gram Jaccard >= 0.85)
        ("Explain in simple words what binary search does and why it needs a sorted list of items", "It halves."),
    ]
    reasons = screen(seeds, ["Summarize the plot of Hamlet in two sentences"], proposals)
    assert reasons == [DUPLICATE_OF_SEED, "", DUPLICATE, "empty_content", "empty_content", DUPLICATE, DUPLICATE_OF_SEED]
    assert screen(seeds, [], [("x" * 5000, "long")]) == ["too_long"]


def test_prompts_and_seed_files_parse_robustly() -> None:
    messages = instruction_messages(["Do A.", "Do B."])
    assert messages[-1][1].endswith("Task 3:") and "Task 1: Do A." in messages[-1][1]
    assert parse_instruction('\n\n  Task 4: "Plan a picnic."\nTask 5: more') == "Plan a picnic."
    assert parse_instruction("3. Sort a list.") == "Sort a list." and parse_instruction("\n \n") == ""
    data = b'{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Q1"}]}\n'
    data += b'{"instruction": "Q2", "output": "A"}\n\nplain task\n'
    assert seeds_from_file(data) == ["Q1", "Q2", "plain task"]


def test_runs_are_tenant_scoped_and_bad_input_names_fields(acme: TuneforgeClient, globex: TuneforgeClient) -> None:
    stub, theirs = _stub(acme), _stub(globex)
    seeds = acme.upload_file(b'{"instruction": "Name a color."}\nName a bird.\n', "seeds.jsonl")
    run = run_to_end(acme, count=1, seed=5, seeds=[], seed_file_id=seeds.id)
    assert list(run.seeds) == ["Name a color.", "Name a bird."]
    from_their_file = generation_pb2.CreateGenerationRunRequest(seed_file_id=seeds.id, count=1)
    assert _refused(globex.call, theirs.CreateGenerationRun, from_their_file).code == "NOT_FOUND"
    candidate = _candidates(acme, run.id)[0]
    for call, request in (
        (theirs.GetGenerationRun, generation_pb2.GetGenerationRunRequest(run_id=run.id)),
        (theirs.CancelGenerationRun, generation_pb2.CancelGenerationRunRequest(run_id=run.id)),
        (theirs.ListCandidates, generation_pb2.ListCandidatesRequest(run_id=run.id)),
        (theirs.ReviewCandidate, generation_pb2.ReviewCandidateRequest(candidate_id=candidate.id, decision=ACCEPT)),
        (
            theirs.BuildDatasetFromCandidates,
            generation_pb2.BuildDatasetFromCandidatesRequest(
                run_id=run.id, dataset="x", settings=curation_pb2.CurationSettings(base_model=BASE)
            ),
        ),
    ):
        assert _refused(globex.call, call, request).code == "NOT_FOUND"
    listed = globex.call(theirs.ListGenerationRuns, generation_pb2.ListGenerationRunsRequest()).runs
    assert run.id not in [r.id for r in listed]
    assert run.id in [r.id for r in acme.call(stub.ListGenerationRuns, generation_pb2.ListGenerationRunsRequest()).runs]

    def violations(call, request) -> list[str]:
        error = _refused(acme.call, call, request)
        assert error.code == "INVALID_ARGUMENT", error
        return [name for name, _ in error.violations]

    create = stub.CreateGenerationRun
    bad = generation_pb2.CreateGenerationRunRequest(
        seeds=["ok", " "], count=0, seeds_per_prompt=9, sampling=inference_pb2.SamplingParams(temperature=7)
    )
    assert violations(create, bad) == ["seeds[1]", "count", "seeds_per_prompt", "sampling.temperature"]
    assert violations(create, generation_pb2.CreateGenerationRunRequest(count=2)) == ["seeds"]
    sampling = inference_pb2.SamplingParams(stop=[""], seed=-1, top_p=float("nan"))
    bad_sampling = generation_pb2.CreateGenerationRunRequest(seeds=["a"], count=1, sampling=sampling)
    assert violations(create, bad_sampling) == ["sampling.top_p", "sampling.stop", "sampling.seed"]
    no_file = generation_pb2.CreateGenerationRunRequest(seed_file_id="nope", count=2)
    assert violations(create, no_file) == ["seed_file_id"]
    get = generation_pb2.GetGenerationRunRequest(run_id="eval-123")
    assert violations(stub.GetGenerationRun, get) == ["run_id"]
    review = generation_pb2.ReviewCandidateRequest(candidate_id=candidate.id)
    assert violations(stub.ReviewCandidate, review) == ["decision"]
    build = generation_pb2.BuildDatasetFromCandidatesRequest(run_id=run.id, dataset="Bad Name!")
    assert violations(stub.BuildDatasetFromCandidates, build) == ["dataset", "settings.base_model"]
    nothing = generation_pb2.BuildDatasetFromCandidatesRequest(
        run_id=run.id, dataset="none-accepted", settings=curation_pb2.CurationSettings(base_model=BASE)
    )
    assert _refused(acme.call, stub.BuildDatasetFromCandidates, nothing).code == "FAILED_PRECONDITION"
    finished = generation_pb2.CancelGenerationRunRequest(run_id=run.id)
    assert _refused(acme.call, stub.CancelGenerationRun, finished).code == "FAILED_PRECONDITION"


def test_selfinstruct_cli_creates_shows_reviews_and_cancels(
    platform_server: BackgroundServer, capsys: pytest.CaptureFixture[str]
) -> None:
    def printed(prefix: str) -> list[str]:  # the command's own lines, not the in-process server's log lines
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith(prefix)]

    client = ["--address", platform_server.address, "--api-key", ACME_KEY]
    create = ["create", "--seed", SEEDS[0], "--seed", SEEDS[1], "--count", "2", "--max-tokens", "8"]
    assert main(["selfinstruct", *client, *create, "--temperature", "1", "--sampling-seed", "3", "--follow"]) == 0
    (line,) = printed("gen-")
    run_id = line.split()[0]
    assert "succeeded" in line and "2/2 proposed" in line
    assert main(["selfinstruct", *client, "show", run_id]) == 0
    candidates = printed("cand-")
    assert len(candidates) == 2
    pending = [c.split()[0] for c in candidates if " pending " in c]
    assert pending, candidates
    assert main(["selfinstruct", *client, "review", pending[0], "--reject"]) == 0
    (reviewed,) = printed("cand-")
    assert " rejected " in reviewed and "acme-ci" in reviewed
    assert main(["selfinstruct", *client, "list"]) == 0 and any(run_id in x for x in printed("gen-"))
    assert main(["selfinstruct", *client, "cancel", run_id]) == 1  # already succeeded: FAILED_PRECONDITION
    assert main(["selfinstruct", *client, "build", run_id, "--dataset", "x", "--base-model", BASE]) == 1


def test_a_run_generates_through_another_pods_inference_service_with_a_service_key(
    acme: TuneforgeClient, platform_server: BackgroundServer
) -> None:
    """Cluster mode: curation calls the InferenceService over gRPC with a `service` key on the tenant's behalf."""
    component = next(c for c in platform_server.server.components if hasattr(c, "generation"))
    remote = RemoteGenerator(platform_server.address, SERVICE_KEY)
    runs = GenerationRuns(component.generation.metadata, component.files)  # a replica of its own (its own leases)

    async def run_remotely() -> str:
        info = runs.create("acme", SEEDS, "", "base", 2, 2, {"temperature": 1.0, "max_tokens": 6, "seed": 3})
        await runs._drive(info, remote)
        with pytest.raises(FailedPrecondition, match="no-such-adapter"):
            await remote.resolve("acme", "no-such-adapter")
        await remote.close()
        return info.id

    run_id = asyncio.run_coroutine_threadsafe(run_remotely(), platform_server.loop).result(120)
    run = acme.call(_stub(acme).GetGenerationRun, generation_pb2.GetGenerationRunRequest(run_id=run_id)).run
    assert run.state == generation_pb2.GENERATION_RUN_STATE_SUCCEEDED, run.failure_reason
    assert run.resolved_model == BASE and run.progress.proposed == 2


def test_a_cancelled_run_stops_and_keeps_what_it_proposed(acme: TuneforgeClient) -> None:
    stub = _stub(acme)
    request = generation_pb2.CreateGenerationRunRequest(
        seeds=SEEDS, count=200, sampling=inference_pb2.SamplingParams(temperature=1.0, max_tokens=4, seed=1)
    )
    run = acme.call(stub.CreateGenerationRun, request).run
    cancelled = acme.call(stub.CancelGenerationRun, generation_pb2.CancelGenerationRunRequest(run_id=run.id)).run
    deadline = time.monotonic() + 60
    while cancelled.state not in FINAL and time.monotonic() < deadline:
        time.sleep(0.2)
        cancelled = acme.call(stub.GetGenerationRun, generation_pb2.GetGenerationRunRequest(run_id=run.id)).run
    assert cancelled.state == generation_pb2.GENERATION_RUN_STATE_CANCELLED
    assert cancelled.progress.proposed < 200
    assert len(_candidates(acme, run.id)) == cancelled.progress.proposed  # reviewable as far as it got
