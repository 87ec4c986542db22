"""Feedback on served answers (#19 points 2-3) over real gRPC and HTTP on the session server.

An answer's response id rates it (thumbs, 1-5, correction, comment), stored with the prompt, model
and sampling the server recorded; an export writes accepted feedback into a new raw file that the
normal curation pipeline builds into a dataset version whose report names each feedback item.
"""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest
from conftest import ACME_KEY, GLOBEX_KEY

from tuneforge.cli import main
from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.platform import BackgroundServer
from tuneforge.store.tables import utcnow
from tuneforge.v1 import (
    common_pb2,
    curation_pb2,
    evaluation_pb2,
    feedback_pb2,
    feedback_pb2_grpc,
    inference_pb2,
)

BASE = "tiny-qwen2"


def _messages(*pairs: tuple[str, str]) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role=r, content=c) for r, c in pairs]


def _generate(
    client: TuneforgeClient, prompt: str, temperature: float = 0.0, seed: int = 7
) -> inference_pb2.GenerateResponse:
    request = inference_pb2.GenerateRequest(
        messages=_messages(("system", "Be brief."), ("user", prompt)),
        sampling=inference_pb2.SamplingParams(max_tokens=6, seed=seed, temperature=temperature),
    )
    return client.call(client.inference.Generate, request)


def _stubs(client: TuneforgeClient):
    return (
        feedback_pb2_grpc.FeedbackServiceStub(client.channel),
        feedback_pb2_grpc.FeedbackExportServiceStub(client.channel),
    )


def _submit(client: TuneforgeClient, response_id: str, **fields) -> feedback_pb2.Feedback:
    stub, _ = _stubs(client)
    request = feedback_pb2.SubmitFeedbackRequest(response_id=response_id, **fields)
    return client.call(stub.SubmitFeedback, request).feedback


def _refused(call, *args, **kwargs) -> TuneforgeError:
    with pytest.raises(TuneforgeError) as refused:
        call(*args, **kwargs)
    return refused.value


def _component(platform_server: BackgroundServer, attribute: str):
    return next(c for c in platform_server.server.components if hasattr(c, attribute))


def test_feedback_with_a_correction_becomes_the_next_dataset_version(
    acme: TuneforgeClient, platform_server: BackgroundServer
) -> None:
    feedback, export = _stubs(acme)
    first = _generate(acme, "How do I reset my password?")
    assert first.response_id.startswith("chatcmpl-") and first.resolved_model == BASE
    stream = list(
        acme.stream(
            acme.inference.GenerateStream,
            inference_pb2.GenerateStreamRequest(
                messages=_messages(("user", "What is the capital of the moon base?")),
                sampling=inference_pb2.SamplingParams(max_tokens=5),
            ),
        )
    )
    leaked_id = stream[0].response_id
    assert leaked_id.startswith("chatcmpl-") and all(not m.response_id for m in stream[1:])
    approved = _generate(acme, "Say hello.", temperature=1.0)  # sampled: tiny-qwen2's greedy answer is blank
    worse = _generate(acme, "Say hello.", temperature=1.0, seed=8)
    assert approved.text.strip() and worse.text.strip() and worse.text != approved.text

    correction = "Open Settings, then Security, then Reset password. Write to help@example.com if stuck."
    rated = _submit(
        acme,
        first.response_id,
        rating=feedback_pb2.FEEDBACK_RATING_DOWN,
        score=2,
        corrected_answer=correction,
        comment="made up menu",
    )
    # what produced the answer comes from the server's record, not the client
    assert rated.id.startswith("fb-") and rated.response_id == first.response_id
    assert (rated.model, rated.base_model, rated.answer) == (BASE, BASE, first.text)
    assert [(m.role, m.content) for m in rated.messages] == [
        ("system", "Be brief."),
        ("user", "How do I reset my password?"),
    ]
    assert rated.sampling.max_tokens == 6 and rated.sampling.seed == 7
    again = _submit(
        acme, first.response_id, rating=feedback_pb2.FEEDBACK_RATING_DOWN, score=1, corrected_answer=correction
    )
    assert (again.id, again.score, again.comment) == (rated.id, 1, "")  # one item per answer, replaced
    leaked = _submit(acme, leaked_id, corrected_answer="The moon base has no capital.")
    thumbs_up = _submit(acme, approved.response_id, rating=feedback_pb2.FEEDBACK_RATING_UP)
    thumbs_down = _submit(acme, worse.response_id, rating=feedback_pb2.FEEDBACK_RATING_DOWN)

    listed = acme.call(feedback.ListFeedback, feedback_pb2.ListFeedbackRequest(only_corrected=True, page_size=1))
    assert [f.id for f in listed.feedback] == [leaked.id] and listed.next_page_token
    rest = acme.call(
        feedback.ListFeedback,
        feedback_pb2.ListFeedbackRequest(only_corrected=True, page_size=1, page_token=listed.next_page_token),
    )
    assert [f.id for f in rest.feedback] == [rated.id]
    ups = acme.call(feedback.ListFeedback, feedback_pb2.ListFeedbackRequest(rating=feedback_pb2.FEEDBACK_RATING_UP))
    assert thumbs_up.id in [f.id for f in ups.feedback] and rated.id not in [f.id for f in ups.feedback]

    suite = acme.call(  # the eval suite holds the moon prompt: the leakage guard must keep it out
        acme.evaluation.CreateSuite,
        evaluation_pb2.CreateSuiteRequest(
            name="moon-held-out",
            jsonl=json.dumps(
                {
                    "id": "moon",
                    "category": "facts",
                    "messages": [{"role": "user", "content": "What is the capital of the moon base?"}],
                    "checks": [{"type": "max_words", "params": {"n": 20}}],
                }
            ).encode(),
        ),
    ).suite
    # named items (the session's tenant may hold other tests' feedback); an export of all is checked below
    done = acme.call(export.ExportFeedback, feedback_pb2.ExportFeedbackRequest(feedback_ids=[rated.id, leaked.id]))
    assert list(done.feedback_ids) == [rated.id, leaked.id]
    assert list(done.preference_feedback_ids) == [rated.id, leaked.id]
    assert done.instruction_file.filename.endswith(".jsonl") and done.preference_file.id

    version = acme.create_dataset_version(
        "from-feedback", [done.instruction_file.id], BASE, validation_fraction=0.0, leakage_suite_id=suite.id
    )
    version = acme.wait_for_dataset_version(version.id, timeout=300)
    assert version.state == curation_pb2.DATASET_VERSION_STATE_READY, version.failure_reason
    assert (version.counts.records_in, version.counts.leaked, version.counts.train_records) == (2, 1, 1)
    assert version.counts.pii_replacements["email"] == 1
    preview = acme.call(
        acme.datasets.PreviewDatasetRecords,
        curation_pb2.PreviewDatasetRecordsRequest(dataset_version_id=version.id, limit=5),
    )
    [record] = preview.records
    assert record.messages[-1].role == "assistant"
    assert record.messages[-1].content == correction.replace("help@example.com", "[EMAIL]")
    report = acme.call(
        acme.datasets.GetDatasetReport, curation_pb2.GetDatasetReportRequest(dataset_version_id=version.id)
    )
    lineage = json.loads(report.json)["feedback_lineage"]
    assert [(x["file_id"], x["line"], x["feedback_id"]) for x in lineage] == [
        (done.instruction_file.id, 1, rated.id),
        (done.instruction_file.id, 2, leaked.id),
    ]
    assert f"| {done.instruction_file.id} | 2 | {leaked.id} | instruction |" in report.markdown
    shown = acme.call(feedback.GetFeedback, feedback_pb2.GetFeedbackRequest(feedback_id=rated.id)).feedback
    assert set(shown.exported_file_ids) == {done.instruction_file.id, done.preference_file.id}

    # an answer rated up is exported as served only on request; nothing is exported twice unless asked
    not_accepted = feedback_pb2.ExportFeedbackRequest(feedback_ids=[thumbs_up.id])
    assert _refused(acme.call, export.ExportFeedback, not_accepted).code == "FAILED_PRECONDITION"
    everything = acme.call(export.ExportFeedback, feedback_pb2.ExportFeedbackRequest(include_approved=True))
    assert thumbs_up.id in everything.feedback_ids
    assert not {rated.id, leaked.id, thumbs_down.id} & set(everything.feedback_ids)
    # the answer rated up is chosen over the one rated down for the same prompt
    files = _component(platform_server, "files").files
    pairs = [json.loads(line) for line in files.read("acme", everything.preference_file.id).splitlines()]
    [pair] = [p for p in pairs if p["feedback_id"] == thumbs_up.id]
    assert (pair["chosen"], pair["rejected"], pair["rejected_feedback_id"]) == (
        approved.text,
        worse.text,
        thumbs_down.id,
    )
    assert pair["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


def test_feedback_over_the_openai_http_api(acme: TuneforgeClient, platform_server: BackgroundServer) -> None:
    import openai

    url = f"http://127.0.0.1:{_component(platform_server, 'engine').http.port}/v1"
    chat = openai.OpenAI(base_url=url, api_key=ACME_KEY, max_retries=0)
    completion = chat.chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "Pick a colour."}], max_tokens=4, temperature=0
    )
    chunks = list(
        chat.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": "Pick a number."}], max_tokens=4, stream=True
        )
    )
    streamed_id = chunks[0].id
    assert completion.id.startswith("chatcmpl-") and {c.id for c in chunks} == {streamed_id}

    def post(body: object, key: str = ACME_KEY) -> httpx.Response:
        return httpx.post(f"{url}/feedback", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    answer = completion.choices[0].message.content
    made = post({"response_id": completion.id, "rating": "up", "score": 5, "comment": "fine"})
    assert made.status_code == 200, made.text
    body = made.json()
    assert (body["object"], body["rating"], body["score"], body["model"]) == ("feedback", "up", 5, BASE)
    feedback, _ = _stubs(acme)
    stored = acme.call(feedback.GetFeedback, feedback_pb2.GetFeedbackRequest(feedback_id=body["id"])).feedback
    assert stored.answer == answer and [m.content for m in stored.messages] == ["Pick a colour."]
    assert stored.sampling.max_tokens == 4
    fixed = post({"response_id": streamed_id, "rating": "down", "corrected_answer": "Seven."})
    assert fixed.status_code == 200 and fixed.json()["corrected_answer"] == "Seven."
    read = httpx.get(f"{url}/feedback/{body['id']}", headers={"Authorization": f"Bearer {ACME_KEY}"}, timeout=30)
    assert read.status_code == 200 and read.json()["id"] == body["id"]

    for bad, field in (
        ({"response_id": completion.id, "score": 7}, "score"),
        ({"response_id": completion.id, "score": "5"}, "score"),
        ({"response_id": completion.id, "rating": "meh"}, "rating"),
        ({"response_id": "not-an-id", "rating": "up"}, "response_id"),
        ({"response_id": completion.id, "comment": "x" * 5000}, "comment"),
        ({"response_id": completion.id, "corrected_answer": 3}, "corrected_answer"),
        ({"response_id": completion.id}, "rating"),  # nothing said about the answer
        (["not", "an", "object"], "body"),
    ):
        refused = post(bad)
        assert refused.status_code == 400, (bad, refused.text)
        assert refused.json()["error"]["param"] == field, (bad, refused.text)
    # another tenant's answer and feedback look exactly like missing ones
    assert post({"response_id": completion.id, "rating": "down"}, GLOBEX_KEY).status_code == 404
    other = httpx.get(f"{url}/feedback/{body['id']}", headers={"Authorization": f"Bearer {GLOBEX_KEY}"}, timeout=30)
    assert other.status_code == 404 and other.json()["error"]["type"] == "not_found_error"
    assert post({"response_id": completion.id, "rating": "up"}, "wrong-key").status_code == 401


def test_feedback_is_tenant_scoped_and_validated_over_grpc(
    acme: TuneforgeClient, globex: TuneforgeClient, platform_server: BackgroundServer
) -> None:
    feedback, export = _stubs(acme)
    theirs, their_export = _stubs(globex)
    answer = _generate(acme, "Name a fruit.")
    refused = _refused(_submit, globex, answer.response_id, rating=feedback_pb2.FEEDBACK_RATING_UP)
    assert refused.code == "NOT_FOUND"
    item = _submit(acme, answer.response_id, score=4, corrected_answer="An apple.")
    for call, request in (
        (theirs.GetFeedback, feedback_pb2.GetFeedbackRequest(feedback_id=item.id)),
        (their_export.ExportFeedback, feedback_pb2.ExportFeedbackRequest(feedback_ids=[item.id])),
    ):
        assert _refused(globex.call, call, request).code == "NOT_FOUND"
    listed = globex.call(theirs.ListFeedback, feedback_pb2.ListFeedbackRequest())
    assert item.id not in [f.id for f in listed.feedback]

    def violations(call, request) -> list[str]:
        error = _refused(acme.call, call, request)
        assert error.code == "INVALID_ARGUMENT", error
        return [name for name, _ in error.violations]

    submit = feedback.SubmitFeedback
    rid = answer.response_id
    assert violations(submit, feedback_pb2.SubmitFeedbackRequest(response_id=rid, score=6)) == ["score"]
    assert violations(submit, feedback_pb2.SubmitFeedbackRequest(response_id=rid, rating=9)) == ["rating"]
    assert violations(submit, feedback_pb2.SubmitFeedbackRequest(response_id=rid)) == ["rating"]
    assert violations(submit, feedback_pb2.SubmitFeedbackRequest(response_id="x", score=3)) == ["response_id"]
    too_long = feedback_pb2.SubmitFeedbackRequest(response_id=rid, score=9, corrected_answer="y" * 40000)
    assert violations(submit, too_long) == ["score", "corrected_answer"]  # every bad field at once
    unknown = feedback_pb2.SubmitFeedbackRequest(response_id=rid, rating=9, score=-1)
    assert violations(submit, unknown) == ["rating", "score"]
    assert violations(feedback.ListFeedback, feedback_pb2.ListFeedbackRequest(rating=7)) == ["rating"]
    long_comment = feedback_pb2.SubmitFeedbackRequest(response_id=rid, comment="z" * 5000)
    assert violations(submit, long_comment) == ["comment"]
    get = feedback_pb2.GetFeedbackRequest(feedback_id="file-0123456789abcdef")
    assert violations(feedback.GetFeedback, get) == ["feedback_id"]
    assert violations(feedback.ListFeedback, feedback_pb2.ListFeedbackRequest(page_size=5000)) == ["page_size"]
    assert violations(feedback.ListFeedback, feedback_pb2.ListFeedbackRequest(min_score=9)) == ["min_score"]
    exporting = feedback_pb2.ExportFeedbackRequest(feedback_ids=[item.id, "nope"])
    assert violations(export.ExportFeedback, exporting) == ["feedback_ids[1]"]

    # an answer past the feedback window can no longer be rated; feedback already given keeps its copy
    late = _generate(acme, "Name a vegetable.")
    store = _component(platform_server, "engine").feedback
    assert store.prune_expired(utcnow() + timedelta(days=30)) >= 1
    assert _refused(_submit, acme, late.response_id, score=3).code == "NOT_FOUND"
    assert _submit(acme, answer.response_id, score=5).id == item.id


def test_feedback_cli_submits_lists_and_exports(
    acme: TuneforgeClient, platform_server: BackgroundServer, capsys: pytest.CaptureFixture[str]
) -> None:
    def printed() -> list[str]:  # the command's own lines, not the in-process server's log lines
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith(("fb-", "file-"))]

    answer = _generate(acme, "Spell 'cat'.")
    client = ["--address", platform_server.address, "--api-key", ACME_KEY]
    correct = ["submit", answer.response_id, "--down", "--score", "1", "--correct", "C, A, T."]
    assert main(["feedback", *client, *correct]) == 0
    feedback_id = printed()[0].split()[0]
    assert feedback_id.startswith("fb-")
    assert main(["feedback", *client, "list", "--only-corrected", "--only-unexported"]) == 0
    assert feedback_id in [line.split()[0] for line in printed()]
    assert main(["feedback", *client, "export", "--ids", feedback_id]) == 0
    out = printed()
    assert out[0].endswith("1 instruction records") and out[1].endswith(
        "1 preference pairs (kept for preference tuning)"
    )
    assert main(["feedback", *client, "submit", answer.response_id, "--score", "9"]) == 1
    assert "score" in capsys.readouterr().err
