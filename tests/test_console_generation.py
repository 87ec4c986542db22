"""The console's Generate pages in headless Chromium (#19 point 4): Self-Instruct pairs generated with
the embedded model from seed tasks typed into the page, one accepted as it is, one edited and accepted,
one rejected, and a dataset version built from the accepted ones whose report names each line's
candidate, the generating model and the reviewer. Another tenant's run is 404 and a POST without the
CSRF token 403. Reuses test_console's browser, page, console and screenshot fixtures (module-scoped:
this module gets its own browser page and console).
"""

from __future__ import annotations

import json

import pytest
from conftest import ACME_KEY, GLOBEX_KEY
from test_console import _sign_in, browser, console, page, shots  # noqa: F401 - fixtures used by name

from tuneforge.client import TuneforgeClient
from tuneforge.platform import BackgroundServer
from tuneforge.v1 import curation_pb2, generation_pb2, generation_pb2_grpc

pytestmark = pytest.mark.slow  # generates with the embedded model and builds a dataset version
SEEDS = ["Write a haiku about rain.", "Explain what a compiler does.", "List two uses of vinegar."]
EDITED = "Label every box and pack the heavy things first."


def test_self_instruct_pairs_are_generated_reviewed_and_built_in_the_console(
    page,  # noqa: F811
    console: str,  # noqa: F811
    shots,  # noqa: F811
    browser,  # noqa: F811
    platform_server: BackgroundServer,
    acme: TuneforgeClient,
) -> None:
    page.goto(f"{console}/signin?next=/generate")
    page.fill("#api_key", ACME_KEY)
    page.click("#signin")
    page.wait_for_url(f"{console}/generate")
    page.fill("#seeds", "\n".join(SEEDS))
    page.fill("#gen-count", "3")
    page.fill("#gen-temperature", "1.0")
    page.fill("#gen-max-tokens", "10")
    shots(page, "generate")
    page.click("#generate")
    page.wait_for_url(f"{console}/generate/gen-*")
    run_id = page.url.rsplit("/", 1)[1]
    page.locator("#generation-state.succeeded").wait_for()  # the live fragment follows the run to its end
    kept = page.locator("tr.candidate.pending")
    assert kept.count() >= 2, page.inner_text("#candidates")
    shots(page, "generate-review")

    first = kept.nth(0)
    first_id = first.get_attribute("id")
    first.locator("button.accept").click()
    page.locator(f"tr#{first_id}.accepted").wait_for()
    assert "accepted" in page.inner_text(".notice")
    second = page.locator("tr.candidate.pending").nth(0)
    second_id = second.get_attribute("id")
    second.locator("textarea[name=answer]").fill(EDITED)
    second.locator("button.accept").click()
    page.locator(f"tr#{second_id}.accepted").wait_for()
    for _ in range(page.locator("tr.candidate.pending").count()):  # the rest rejected
        rest_id = page.locator("tr.candidate.pending").nth(0).get_attribute("id")
        page.locator(f"tr#{rest_id} button.reject").click()
        page.locator(f"tr#{rest_id}.rejected").wait_for()
    rows = page.inner_text("#candidates")
    assert "(edited)" in rows and "acme-ci" in rows
    shots(page, "generate-reviewed")

    page.fill("#build-dataset", "console-self-instruct")
    page.click("#build")
    page.wait_for_url(f"{console}/datasets/dsv-*")
    assert "2 accepted pair(s) written" in page.inner_text(".notice")
    page.locator("#version-state.ready").wait_for()
    lineage_rows = page.inner_text("#generation-lineage")
    assert run_id in lineage_rows and "acme-ci" in lineage_rows and "tiny-qwen2" in lineage_rows
    shots(page, "generate-dataset")
    version_id = page.url.rsplit("/", 1)[1]
    report = acme.call(
        acme.datasets.GetDatasetReport, curation_pb2.GetDatasetReportRequest(dataset_version_id=version_id)
    )
    lineage = json.loads(report.json)["generation_lineage"]
    assert [(x["candidate_id"], x["run_id"], x["model"], x["reviewer"]) for x in lineage] == [
        (first_id, run_id, "tiny-qwen2", "acme-ci"),
        (second_id, run_id, "tiny-qwen2", "acme-ci"),
    ]
    stub = generation_pb2_grpc.GenerationServiceStub(acme.channel)
    listed = acme.call(stub.ListCandidates, generation_pb2.ListCandidatesRequest(run_id=run_id)).candidates
    assert next(c for c in listed if c.id == second_id).answer == EDITED

    token = page.get_attribute('meta[name="csrf-token"]', "content")
    bad = page.context.request.post(
        f"{console}/generate",
        form={"csrf_token": token, "seeds": "A task.", "count": "0", "temperature": "9"},
        headers={"Accept": "application/json"},
    )
    assert bad.status == 400  # the service's own check, every bad field named
    assert [v[0] for v in bad.json()["error"]["violations"]] == ["count", "sampling.temperature"]
    refused = page.context.request.post(f"{console}/generate/{run_id}/build", form={"dataset": "x"}, max_redirects=0)
    assert refused.status == 403  # no CSRF token
    context = browser.new_context()
    try:
        theirs = context.new_page()
        _sign_in(theirs, console, GLOBEX_KEY)
        theirs.wait_for_url(f"{console}/playground")
        assert theirs.goto(f"{console}/generate/{run_id}").status == 404
        assert run_id not in theirs.goto(f"{console}/generate").text()
    finally:
        context.close()
