"""The web console in headless Chromium (Playwright for Python, Debian's /usr/bin/chromium), over the
session's platform server: sign-in, the playground side by side, a job page whose curves grow, a
dataset report, an evaluation started from the page, adapters; another tenant's ids and CSRF-less
posts refused. One browser and one page for the module; a screenshot of every page is written under
the module's tmp dir (and $TUNEFORGE_TEST_ARTIFACTS when set).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ACME_KEY, GLOBEX_KEY, MODEL_CACHE, SERVICE_KEY

from tuneforge.client import TuneforgeClient
from tuneforge.platform import BackgroundServer
from tuneforge.v1 import evaluation_pb2, feedback_pb2, feedback_pb2_grpc, inference_pb2, training_pb2
from tuneforge.web import ConsoleServer, ServiceAddresses
from tuneforge.web.playground import json_verdict

pytestmark = pytest.mark.slow  # generates with the embedded model and builds a dataset version
CHROMIUM = Path("/usr/bin/chromium")
PROMPT = "Name three colours."
CORRECTION = "Red, green and blue."
SYSTEM = "You are terse."
#: How long the page may take to show what the platform did (answers, a build, a run, a refresh).
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def console(platform_server: BackgroundServer) -> Iterator[str]:
    """The console over the session server, on its loop, with its key check (as `tuneforge up` runs it)."""
    server = ConsoleServer(ServiceAddresses.single(platform_server.address), platform_server.server.resolver)
    asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), platform_server.loop).result(30)
    yield server.url.rstrip("/")
    asyncio.run_coroutine_threadsafe(server.stop(), platform_server.loop).result(30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: `make bootstrap` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def page(browser) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(WAIT_MS)
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory):
    """Saves a full-page screenshot under the module's tmp dir and $TUNEFORGE_TEST_ARTIFACTS."""
    folder = tmp_path_factory.mktemp("console-screenshots")
    extra = os.environ.get("TUNEFORGE_TEST_ARTIFACTS")

    def take(page, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / f"console-{name}.png")
        assert path.stat().st_size > 1000
        return path

    return take


@pytest.fixture(scope="module")
def adapters(platform_server: BackgroundServer, server_settings) -> list[str]:
    """Two random LoRA adapters of acme (as a training job would register them), `beta` with alias prod."""
    from test_inference_api import _make_adapter

    from tuneforge.catalog.adapters import AdapterRegistry
    from tuneforge.models import ModelResolver, template_hash
    from tuneforge.store.artifacts import ArtifactStore
    from tuneforge.store.metadata import MetadataStore

    resolver = ModelResolver(MODEL_CACHE)
    lineage = {
        "base_model": "tiny-qwen2",
        "template_hash": template_hash(resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))),
        "job_id": "job-console",
    }
    registry = AdapterRegistry(
        MetadataStore(server_settings.database_url), ArtifactStore(server_settings.artifact_root)
    )
    registry.register("acme", "console-alpha", _make_adapter(resolver, 31, ["q_proj", "v_proj"]), lineage)
    registry.register("acme", "console-beta", _make_adapter(resolver, 32, "all-linear"), lineage)
    registry.set_alias("acme", "console-beta", "prod", 1)
    return ["console-alpha", "console-beta:prod"]


def _sign_in(page, console: str, key: str) -> None:
    page.goto(f"{console}/signin")
    page.fill("#api_key", key)
    page.click("#signin")


def test_json_answers_get_a_verdict_and_pretty_print() -> None:
    assert json_verdict('{"date":"2025-03-13","n":[1,2]}') == {
        "valid": True,
        "pretty": '{\n  "date": "2025-03-13",\n  "n": [\n    1,\n    2\n  ]\n}',
    }
    assert json_verdict('```json\n{"a": 1}\n```')["valid"] is True
    broken = json_verdict('{"date": 2025-03-13}')
    assert broken["valid"] is False and "line 1" in broken["error"]
    assert json_verdict("Red, green and blue.") is None


def test_sessions_are_bounded_and_a_flood_of_sign_in_pages_evicts_no_signed_in_one() -> None:
    from tuneforge.common.auth import Principal
    from tuneforge.web.sessions import SessionStore

    store = SessionStore(max_sessions=10, idle_s=60)
    signed_in = store.sign_in(store.new(), ACME_KEY, Principal("acme", "member", "ci"))
    anonymous = [store.new() for _ in range(50)]  # sign-in forms: at most a tenth of the sessions
    assert store.get(signed_in.id) is signed_in and signed_in.signed_in
    assert store.get(anonymous[0].id) is None and store.get(anonymous[-1].id) is anonymous[-1]
    assert signed_in.csrf_matches(signed_in.csrf_token) and not signed_in.csrf_matches(anonymous[-1].csrf_token)
    assert not signed_in.csrf_matches("") and not signed_in.csrf_matches(None)
    store.idle_s = 0.0
    assert store.get(signed_in.id) is None  # idle past its time: gone


def test_a_wrong_key_is_refused_and_the_right_one_signs_in(page, console: str, shots, dataset_version) -> None:
    # (the dataset version the report test opens builds meanwhile)
    response = page.goto(f"{console}/jobs")
    assert page.url.startswith(f"{console}/signin?next=/jobs") and response.ok
    cookie = next(c for c in page.context.cookies() if c["name"] == "tuneforge_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.fill("#api_key", "tf_not_a_key_0123456789")
    page.click("#signin")
    assert "not accepted" in page.inner_text("#signin-error")
    shots(page, "signin-refused")
    page.fill("#api_key", ACME_KEY)
    page.click("#signin")
    page.wait_for_url(f"{console}/jobs")
    assert "acme" in page.inner_text("#tenant")
    signed_in = next(c for c in page.context.cookies() if c["name"] == "tuneforge_console")
    assert signed_in["value"] != cookie["value"]  # a new session id at sign-in


def test_the_playground_answers_side_by_side_like_the_service(
    page, console: str, shots, adapters: list[str], platform_server: BackgroundServer
) -> None:
    page.goto(f"{console}/playground")
    page.fill("textarea[name=system]", SYSTEM)
    page.fill("textarea[name=user]", PROMPT)
    page.fill("input[name=max_tokens]", "12")
    selects = page.locator("select[name=model]")
    for index, model in enumerate(adapters):
        selects.nth(index).select_option(model)
    page.click("#run")
    page.locator(".answer[data-done=true]").nth(2).wait_for()  # locators: the console's CSP forbids eval
    shots(page, "playground")
    cards = page.locator(".answer")
    shown = {cards.nth(i).get_attribute("data-model"): cards.nth(i).inner_text() for i in range(3)}
    with TuneforgeClient(platform_server.address, api_key=ACME_KEY) as client:
        for model in ["", *adapters]:
            request = inference_pb2.GenerateRequest(model=model, sampling=inference_pb2.SamplingParams(max_tokens=12))
            request.messages.add(role="system", content=SYSTEM)
            request.messages.add(role="user", content=PROMPT)
            answer = client.call(client.inference.Generate, request)
            card = shown[model]
            assert answer.text.strip() in card, (model, card)  # greedy: the same words the service gives
            assert f"→ {answer.resolved_model}" in card
    assert "console-beta:1" in shown["console-beta:prod"]  # the alias resolved


def test_an_answer_is_rated_with_a_correction(page, console: str, shots, platform_server: BackgroundServer) -> None:
    card = page.locator(".answer[data-model='console-alpha']")
    card.locator("input[name=rating][value=down]").check()
    card.locator("select[name=score]").select_option("2")
    card.locator("textarea[name=corrected_answer]").fill(CORRECTION)
    card.locator("input[name=comment]").fill("not colours")
    card.locator("form.rating button").click()
    card.locator(".saved.ok").wait_for()
    feedback_id = card.get_attribute("data-feedback")
    shots(page, "playground-rated")
    with TuneforgeClient(platform_server.address, api_key=ACME_KEY) as client:
        stub = feedback_pb2_grpc.FeedbackServiceStub(client.channel)
        stored = client.call(stub.GetFeedback, feedback_pb2.GetFeedbackRequest(feedback_id=feedback_id))
    item = stored.feedback
    assert (item.model, item.rating, item.score, item.corrected_answer, item.comment) == (
        "console-alpha:1",
        feedback_pb2.FEEDBACK_RATING_DOWN,
        2,
        CORRECTION,
        "not colours",
    )
    assert [m.content for m in item.messages] == [SYSTEM, PROMPT] and item.sampling.max_tokens == 12


@pytest.fixture(scope="module")
def exported() -> dict[str, str]:
    """What the export test started: the feedback item and the page of the version being built from it."""
    return {}


def test_feedback_is_exported_into_a_dataset_version(page, console: str, shots, exported) -> None:
    page.goto(f"{console}/feedback")
    row = page.locator("#feedback tr", has_text=CORRECTION)
    exported["feedback_id"] = row.locator("code").first.inner_text()
    shots(page, "feedback")
    page.fill("#export-feedback input[name=model]", "console-alpha")  # this module's item, whatever else acme rated
    page.fill("#export-dataset", "console-feedback")
    page.click("#export")
    page.wait_for_url(f"{console}/datasets/dsv-*")
    assert "1 feedback item(s) exported" in page.inner_text(".notice")
    exported["url"] = page.url  # built while the tests below run; the last one reads it


@pytest.fixture(scope="module")
def live_job(platform_server: BackgroundServer, server_settings) -> Iterator[tuple[str, object]]:
    """A job of acme whose events the test writes as the runner would (no training started): it stays
    VALIDATING_FILES, a state the runner leaves alone, so nothing reaches Ray."""
    from tuneforge.common.names import new_id
    from tuneforge.store.metadata import MetadataStore
    from tuneforge.store.tables import JobRow, utcnow
    from tuneforge.training.job_store import VALIDATING, JobStore
    from tuneforge.training.jobs import JobSpecInput

    metadata = MetadataStore(server_settings.database_url)
    spec = JobSpecInput(base_model="tiny-qwen2", dataset_version_id="dsv-" + "c" * 24, adapter_name="console-curve")
    job_id, now = new_id("job"), utcnow()
    with metadata.session() as session:
        session.add(
            JobRow(
                id=job_id,
                tenant="acme",
                state=VALIDATING,
                spec_json=json.dumps(spec.model_dump(), sort_keys=True),
                created_at=now,
                updated_at=now,
            )
        )
    jobs = JobStore(metadata)
    yield job_id, jobs
    metadata.close()


def _steps(jobs, job_id: str, first: int, last: int) -> None:
    records = [
        {"event": "step", "step": s, "total_steps": 8, "loss": 3.0 / s, "tokens_per_second": 900.0 + s}
        | ({"validation_loss": 3.2 / s} if s % 2 == 0 else {})
        for s in range(first, last + 1)
    ]
    jobs.apply_log(job_id, records, 0)


def _points(page, series: str) -> int:
    return int(page.get_attribute(f'#curves polyline[data-series="{series}"]', "data-count"))


def test_a_job_page_draws_curves_that_grow_with_new_events(page, console: str, shots, live_job) -> None:
    job_id, jobs = live_job
    _steps(jobs, job_id, 1, 2)
    page.goto(f"{console}/jobs")
    page.click(f"a[href='/jobs/{job_id}']")
    assert (_points(page, "loss"), _points(page, "validation loss"), _points(page, "tokens/s")) == (2, 1, 2)
    _steps(jobs, job_id, 3, 6)  # the job moves on while the page is open: the page refreshes itself
    page.locator('#curves polyline[data-series="loss"][data-count="6"]').wait_for(timeout=30_000)
    assert (_points(page, "validation loss"), _points(page, "tokens/s")) == (3, 6)
    assert "step 6/8" in page.inner_text("#live")
    shots(page, "job")
    page.click("#cancel-job")
    assert "cancellation of" in page.inner_text(".notice")
    assert page.inner_text("#job-state") == "cancelled"
    assert page.locator("#cancel-job").count() == 0


def test_a_short_job_is_followed_live_from_its_page_to_its_end(
    page, console: str, shots, platform_server: BackgroundServer, dataset_version: str
) -> None:
    """A real 3-step LoRA job on the session's Ray head, watched from a page opened once: its loss curve
    fills in and its state reaches succeeded without a reload (the page's live refresh)."""
    from tuneforge.v1 import curation_pb2

    with TuneforgeClient(platform_server.address, api_key=ACME_KEY) as client:
        ready = client.wait_for_dataset_version(dataset_version, timeout=300)
        assert ready.state == curation_pb2.DATASET_VERSION_STATE_READY, ready.failure_reason
        spec = training_pb2.JobSpec(
            base_model="tiny-qwen2",
            dataset_version_id=dataset_version,
            adapter_name="console-live",
            lora=training_pb2.LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
            hyperparameters=training_pb2.Hyperparameters(learning_rate=5e-3, max_steps=3, micro_batch_size=2, seed=3),
            resources=training_pb2.ResourceSpec(num_workers=1, cpus_per_worker=1),
        )
        job = client.create_job(spec)
    page.goto(f"{console}/jobs/{job.id}")
    page.locator('#curves polyline[data-series="loss"][data-count="3"]').wait_for(timeout=600_000)
    page.locator("#job-state:text-is('succeeded')").wait_for(timeout=600_000)
    assert page.url == f"{console}/jobs/{job.id}" and "console-live:1" in page.inner_text("#live")
    shots(page, "job-live")


@pytest.fixture(scope="module")
def dataset_version(platform_server: BackgroundServer) -> str:
    """A small READY version of acme: a broken line, an e-mail address to scrub, a duplicate."""
    lines = [
        json.dumps({"instruction": "When did the launch happen?", "output": "On 2025-03-13."}),
        "{not json",
        json.dumps({"instruction": "Write to me at jane.doe@example.com", "output": "I will write to you."}),
        json.dumps({"instruction": "When did the launch happen?", "output": "On 2025-03-13."}),
        *(json.dumps({"instruction": f"Say the number {n}.", "output": f"{n}"}) for n in range(8)),
    ]
    with TuneforgeClient(platform_server.address, api_key=ACME_KEY) as client:
        stored = client.upload_file(("\n".join(lines) + "\n").encode(), filename="console.jsonl")
        version = client.create_dataset_version("console-data", [stored.id], "tiny-qwen2", validation_fraction=0.2)
        return version.id


def test_a_dataset_report_shows_counts_issues_lengths_and_records(
    page, console: str, shots, dataset_version: str, platform_server: BackgroundServer
) -> None:
    with TuneforgeClient(platform_server.address, api_key=ACME_KEY) as client:
        ready = client.wait_for_dataset_version(dataset_version)
    assert ready.state == 2, ready.failure_reason
    page.goto(f"{console}/datasets")
    page.click(f"a[href='/datasets/{dataset_version}']")
    counts = page.inner_text("#counts")
    assert "records in\t12" in counts and "invalid\t1" in counts and "exact duplicates\t1" in counts
    assert "email" in page.inner_text("#pii")
    issue = page.locator("#issues tr", has_text="invalid_json")
    assert issue.locator("td.line").inner_text() == "2"  # the line of the broken record
    assert page.locator("#histogram svg rect").count() > 2
    assert page.locator(".record").count() >= 3
    shots(page, "dataset")


@pytest.fixture(scope="module")
def suite_id(platform_server: BackgroundServer) -> str:
    items = [
        {
            "id": "j1",
            "category": "structured_output",
            "messages": [{"role": "user", "content": "The launch date as JSON?"}],
            "checks": [{"type": "json_valid"}],
        },
        {
            "id": "w1",
            "category": "instruction_following",
            "messages": [{"role": "user", "content": "Say hi in at most 5 words."}],
            "checks": [{"type": "max_words", "params": {"n": 5}}],
        },
    ]
    with TuneforgeClient(platform_server.address, api_key=ACME_KEY) as client:
        request = evaluation_pb2.CreateSuiteRequest(name="console", jsonl="\n".join(map(json.dumps, items)).encode())
        return client.call(client.evaluation.CreateSuite, request).suite.id


def test_an_evaluation_started_from_the_page_reports_its_comparison(
    page, console: str, shots, suite_id: str, adapters: list[str]
) -> None:
    page.goto(f"{console}/evaluations")
    page.select_option("#suite", suite_id)
    page.check("input[name=models][value='console-alpha']")
    page.fill("input[name=max_tokens]", "8")
    page.click("#start")
    page.wait_for_url(f"{console}/evaluations/eval-*")
    page.locator("#run-state:text-is('succeeded')").wait_for()
    rows = page.inner_text("#comparisons")
    assert "overall" in rows and "console-alpha" in rows and "structured_output" in rows
    assert page.locator("#report-charts svg").count() == 2
    assert page.locator("#report-charts rect.interval").count() == 3  # two categories and overall
    assert page.locator("#flipped").count() + page.locator("#no-flips").count() == 1
    assert "2/2" not in page.inner_text("#live") and "4/4" in page.inner_text("#live")
    shots(page, "evaluation")
    page.goto(f"{console}/evaluations")
    shots(page, "evaluations")


def test_the_adapters_page_shows_versions_aliases_gates_and_verdicts(
    page, console: str, shots, adapters, suite_id: str, platform_server: BackgroundServer
) -> None:
    with TuneforgeClient(platform_server.address, api_key=ACME_KEY) as client:
        gate = training_pb2.PromotionGate(suite_ids=[suite_id], target_categories=["structured_output"], max_drop=0.05)
        request = training_pb2.SetPromotionGateRequest(adapter="console-beta", alias="prod", gate=gate)
        client.call(client.adapters.SetPromotionGate, request)
        forced = training_pb2.SetAdapterAliasRequest(
            adapter="console-beta", alias="prod", version=1, force=True, reason="trying the console"
        )
        client.call(client.adapters.SetAdapterAlias, forced)
    page.goto(f"{console}/adapters")
    assert "prod" in page.inner_text("#adapters")
    page.click("a[href='/adapters/console-beta']")
    alias = page.inner_text("#alias-prod")
    assert "console-beta:prod → version 1" in alias and f"suites {suite_id}" in alias
    assert "Gate verdict: failed, forced by acme-ci: “trying the console”" in alias
    assert "job-console" in page.inner_text("#versions")
    shots(page, "adapter")


def test_models_are_listed_beside_adapters_with_their_kind(
    page, console: str, shots, platform_server: BackgroundServer, server_settings
) -> None:
    from tuneforge.catalog.adapters import AdapterRegistry
    from tuneforge.store.artifacts import ArtifactStore
    from tuneforge.store.metadata import MetadataStore

    metadata = MetadataStore(server_settings.database_url)
    registry = AdapterRegistry(metadata, ArtifactStore(server_settings.artifact_root))
    registry.register_model("acme", "console-full", MODEL_CACHE / "tiny-qwen2", {"base_model": "tiny-qwen2"})
    metadata.close()
    page.goto(f"{console}/adapters")
    row = page.locator("#adapters tr", has=page.locator("a[href='/adapters/console-full']"))
    assert row.locator("td.kind").inner_text() == "full fine-tune"
    beta = page.locator("#adapters tr", has=page.locator("a[href='/adapters/console-beta']"))
    assert beta.locator("td.kind").inner_text() == "adapter"
    shots(page, "adapters-and-models")


def test_json_answers_show_pretty_and_badged_in_the_page(page, console: str, adapters) -> None:
    """The page's side of the JSON verdict (the server's is tested above): canned streams, one valid and
    one broken JSON answer, through the page's own script."""
    answers = {"": ('{"date": "2025-03-13"}', True), "console-alpha": ('{"date": 2025-}', False)}

    def fulfil(route) -> None:
        text, valid = answers[json.loads(route.request.post_data)["model"]]
        verdict = json_verdict(text)
        assert verdict["valid"] is valid
        usage = {"prompt_tokens": 3, "completion_tokens": 5}
        done = {"done": True, "text": text, "finish_reason": "stop", "usage": usage, "json": verdict}
        body = "".join(json.dumps(line) + "\n" for line in ({"delta": text}, done))
        route.fulfill(status=200, headers={"Content-Type": "application/x-ndjson"}, body=body)

    page.route(f"{console}/api/generate", fulfil)
    try:
        page.goto(f"{console}/playground")
        page.fill("textarea[name=user]", "The date as JSON?")
        page.locator("select[name=model]").first.select_option("console-alpha")
        page.click("#run")
        page.locator(".answer[data-done=true]").nth(1).wait_for()
        base, alpha = page.locator(".answer[data-model='']"), page.locator(".answer[data-model='console-alpha']")
        assert base.locator(".badge.valid").inner_text() == "valid JSON"
        assert base.locator("pre.text").inner_text() == '{\n  "date": "2025-03-13"\n}'
        assert alpha.locator(".badge.invalid").inner_text() == "invalid JSON"
    finally:
        page.unroute(f"{console}/api/generate")


def test_another_tenant_gets_404_for_acme_s_ids(browser, console: str, live_job, dataset_version, adapters) -> None:
    context = browser.new_context()
    try:
        theirs = context.new_page()
        _sign_in(theirs, console, GLOBEX_KEY)
        theirs.wait_for_url(f"{console}/playground")
        for path in (f"/jobs/{live_job[0]}", f"/datasets/{dataset_version}", "/adapters/console-beta"):
            response = theirs.goto(console + path)
            assert response.status == 404, path
            assert theirs.inner_text("h1") == "Not found"
        assert live_job[0] not in theirs.goto(f"{console}/jobs").text()
    finally:
        context.close()


def test_posts_without_the_csrf_token_are_refused(page, console: str, live_job) -> None:
    request = page.context.request  # the signed-in session's cookie, but no token
    refused = request.post(f"{console}/jobs/{live_job[0]}/cancel", form={"x": "1"}, max_redirects=0)
    assert refused.status == 403
    forged = request.post(f"{console}/api/generate", data={"user": "hi"}, headers={"X-CSRF-Token": "forged"})
    assert forged.status == 403
    signout = request.post(f"{console}/signout", max_redirects=0)
    assert signout.status == 403
    assert page.goto(f"{console}/jobs").url == f"{console}/jobs"  # still signed in


def test_sign_in_sends_only_to_paths_of_the_console(page, console: str) -> None:
    """`next` never leads off the console: a tab or newline that URL parsers drop, `//host`, a scheme."""
    request = page.context.request  # signed in: /signin redirects to `next` at once
    for target in ("/%09/evil.example", "/%0a/evil.example", "//evil.example", "https://evil.example", "/\\evil"):
        answer = request.get(f"{console}/signin?next={target}", max_redirects=0)
        assert answer.status == 303 and answer.headers["location"] == "/playground", target
    kept = request.get(f"{console}/signin?next=/jobs%3Fstate%3Drunning", max_redirects=0)
    assert kept.headers["location"] == "/jobs?state=running"


def test_a_service_key_cannot_sign_in(browser, console: str) -> None:
    """The inference pods' key belongs to no tenant: no console page could work with it."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{console}/signin")
        page.fill("#api_key", SERVICE_KEY)
        page.click("#signin")
        assert "service key" in page.inner_text("#signin-error")
        assert page.goto(f"{console}/jobs").url.startswith(f"{console}/signin")
    finally:
        context.close()


def test_bad_input_is_refused_naming_the_field(page, console: str) -> None:
    page.goto(f"{console}/playground")
    token = page.get_attribute('meta[name="csrf-token"]', "content")
    request = page.context.request

    def post(path: str, body: dict) -> tuple[int, dict]:
        answer = request.post(f"{console}{path}", data=body, headers={"X-CSRF-Token": token})
        return answer.status, answer.json()["error"]

    status, error = post("/api/generate", {"user": "hi", "temperature": 5})
    assert status == 400 and error["field"] == "temperature"
    status, error = post("/api/generate", {"user": " "})
    assert status == 400 and error["field"] == "user"
    status, error = post("/api/generate", {"user": "hi", "model": "no-such-adapter"})
    assert status == 404 and "no-such-adapter" in error["message"]  # the service's own answer
    status, error = post("/api/feedback", {"response_id": "chatcmpl-" + "0" * 24, "rating": "up"})
    assert status == 404
    status, error = post("/api/feedback", {"response_id": "chatcmpl-x", "rating": "sideways"})
    assert status == 400 and error["field"] == "rating"
    status, error = post("/api/feedback", {"response_id": "chatcmpl-x", "score": 9})
    assert status == 400 and error["field"] == "score"


def test_signing_out_ends_the_session(page, console: str, live_job) -> None:
    page.goto(f"{console}/jobs")
    page.click("form.who button")
    page.wait_for_url(f"{console}/signin")
    page.goto(f"{console}/jobs")
    assert page.url.startswith(f"{console}/signin?next=/jobs")
    fragment = page.context.request.get(f"{console}/jobs/{live_job[0]}/live", max_redirects=0)
    assert fragment.status == 303  # a live refresh after sign-out leads back to the page, not the fragment
    assert fragment.headers["location"] == f"/signin?next=/jobs/{live_job[0]}"


def test_the_version_built_from_feedback_names_its_items(page, console: str, shots, exported) -> None:
    _sign_in(page, console, ACME_KEY)
    page.goto(exported["url"])
    page.locator("#version-state:text-is('ready')").wait_for()  # the page follows the build
    assert exported["feedback_id"] in page.inner_text("#feedback-lineage")
    assert CORRECTION in page.inner_text(".record")
    shots(page, "dataset-from-feedback")


def test_tuneforge_console_serves_alone_with_the_services_keys_file(
    platform_server: BackgroundServer, keys_file: Path, tmp_path: Path
) -> None:
    """`tuneforge console` as its own process (the chart's Deployment): the keys file the services read,
    the services' address; a key of it signs in, the pages come from the services, SIGTERM stops it."""
    import http.cookiejar
    import re
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.parse
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tuneforge.cli", "console", "--address", platform_server.address]
    command += ["--keys-file", str(keys_file), "--port", str(port)]
    env = {**os.environ, "TUNEFORGE_HOME": str(tmp_path), "TUNEFORGE_LOG_FORMAT": "console"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines: list[str] = []
        while not lines or (lines[-1] and "Tuneforge console:" not in lines[-1]):  # log lines, then the address
            lines.append(process.stdout.readline())
        assert lines[-1] == f"Tuneforge console: http://127.0.0.1:{port}/\n", lines
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        base = f"http://127.0.0.1:{port}"
        form = opener.open(f"{base}/signin", timeout=30).read().decode()
        token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(f"{base}/signin", urllib.parse.urlencode({"csrf_token": token, "api_key": "nope"}).encode())
        assert refused.value.code == 401
        body = urllib.parse.urlencode({"csrf_token": token, "api_key": GLOBEX_KEY, "next": "/datasets"}).encode()
        page = opener.open(f"{base}/signin", body, timeout=30)
        assert page.url == f"{base}/datasets" and "tenant <strong>globex</strong>" in page.read().decode()
    finally:
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert process.wait(30) == 0 and time.monotonic() - started < 10
