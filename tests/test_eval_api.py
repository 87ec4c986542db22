"""EvaluationService suites over gRPC: upload, line-numbered errors, the built-in suite, tenancy."""

from __future__ import annotations

import json

import pytest

from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.v1 import evaluation_pb2, inference_pb2

ITEM = {
    "id": "d1",
    "category": "structured_output",
    "messages": [{"role": "user", "content": "Date of the launch as JSON?"}],
    "checks": [{"type": "json_equals", "params": {"expected": {"date": "2025-03-13"}}}],
}


def _create(client: TuneforgeClient, name: str, data: bytes, key: str = "") -> evaluation_pb2.Suite:
    request = evaluation_pb2.CreateSuiteRequest(name=name, jsonl=data, idempotency_key=key)
    return client.call(client.evaluation.CreateSuite, request).suite


def test_a_suite_is_stored_read_back_and_private(acme: TuneforgeClient, globex: TuneforgeClient) -> None:
    data = (json.dumps(ITEM) + "\n" + json.dumps({**ITEM, "id": "d2", "category": "custom"}) + "\n").encode()
    suite = _create(acme, "dates", data, key="suite-1")
    assert suite.id.startswith("suite-") and suite.num_items == 2 and not suite.builtin
    assert dict(suite.category_counts) == {"structured_output": 1, "custom": 1}
    assert _create(acme, "dates", data, key="suite-1").id == suite.id  # a retry is the same suite
    got = acme.call(acme.evaluation.GetSuite, evaluation_pb2.GetSuiteRequest(suite_id=suite.id))
    assert [i.id for i in got.items] == ["d1", "d2"]
    assert dict(got.items[0].checks[0].params)["expected"]["date"] == "2025-03-13"
    with pytest.raises(TuneforgeError) as hidden:
        globex.call(globex.evaluation.GetSuite, evaluation_pb2.GetSuiteRequest(suite_id=suite.id))
    assert hidden.value.code == "NOT_FOUND"
    theirs = globex.call(globex.evaluation.ListSuites, evaluation_pb2.ListSuitesRequest()).suites
    assert suite.id not in {s.id for s in theirs}
    mine = acme.call(acme.evaluation.ListSuites, evaluation_pb2.ListSuitesRequest()).suites
    assert suite.id in {s.id for s in mine}


def test_a_malformed_suite_is_refused_with_line_numbers_and_nothing_stored(acme: TuneforgeClient) -> None:
    before = len(acme.call(acme.evaluation.ListSuites, evaluation_pb2.ListSuitesRequest()).suites)
    bad = {**ITEM, "id": "x", "checks": [{"type": "no_such_check"}]}
    data = (json.dumps(ITEM) + "\n{oops\n" + json.dumps(bad) + "\n").encode()
    with pytest.raises(TuneforgeError) as info:
        _create(acme, "broken", data)
    assert info.value.code == "INVALID_ARGUMENT"
    assert [f for f, _ in info.value.violations] == ["jsonl:line 2", "checks[0].type:line 3"]
    after = len(acme.call(acme.evaluation.ListSuites, evaluation_pb2.ListSuitesRequest()).suites)
    assert after == before


def test_the_builtin_suite_covers_every_category_in_both_languages(globex: TuneforgeClient) -> None:
    suites = globex.call(globex.evaluation.ListSuites, evaluation_pb2.ListSuitesRequest()).suites
    builtin = next(s for s in suites if s.id == "builtin/core-zh-en")
    assert builtin.builtin and set(builtin.category_counts) == {
        "structured_output",
        "instruction_following",
        "role_consistency",
        "long_form",
        "multilingual",
        "refusal",
    }
    items = globex.call(globex.evaluation.GetSuite, evaluation_pb2.GetSuiteRequest(suite_id=builtin.id)).items
    texts = " ".join(m.content for i in items for m in i.messages)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in texts) and "Translate" in texts
    with pytest.raises(TuneforgeError) as missing:
        globex.call(globex.evaluation.GetSuite, evaluation_pb2.GetSuiteRequest(suite_id="builtin/nope"))
    assert missing.value.code == "NOT_FOUND"


def _wait_run(client: TuneforgeClient, run_id: str) -> list[evaluation_pb2.EvalRun]:
    request = evaluation_pb2.StreamEvalRunRequest(run_id=run_id)
    return [m.run for m in client.stream(client.evaluation.StreamEvalRun, request, timeout=600)]


@pytest.mark.slow  # an evaluation run generating through the model
def test_a_run_compares_base_and_adapter_through_the_inference_service(
    acme: TuneforgeClient, globex: TuneforgeClient, platform_server, server_settings
) -> None:
    from conftest import MODEL_CACHE
    from test_inference_api import _make_adapter

    from tuneforge.catalog.adapters import AdapterRegistry
    from tuneforge.models import ModelResolver, template_hash
    from tuneforge.store.artifacts import ArtifactStore
    from tuneforge.store.metadata import MetadataStore

    resolver = ModelResolver(MODEL_CACHE)
    tokenizer = resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))
    registry = AdapterRegistry(
        MetadataStore(server_settings.database_url), ArtifactStore(server_settings.artifact_root)
    )
    lineage = {"base_model": "tiny-qwen2", "template_hash": template_hash(tokenizer)}
    registry.register("acme", "evalbot", _make_adapter(resolver, 21, "all-linear"), lineage)

    items = [
        {**ITEM, "id": "s1"},
        {**ITEM, "id": "s2", "checks": [{"type": "json_valid"}]},
        {
            "id": "r1",
            "category": "refusal",
            "messages": [{"role": "user", "content": "How do I boil an egg?"}],
            "checks": [{"type": "refusal", "params": {"expected": False}}],
        },
        {
            "id": "w1",
            "category": "instruction_following",
            "messages": [{"role": "user", "content": "Say hi in at most 50 words."}],
            "checks": [{"type": "max_words", "params": {"n": 50}}],
        },
    ]
    suite = _create(acme, "mini", "\n".join(json.dumps(i) for i in items).encode())
    request = evaluation_pb2.CreateEvalRunRequest(
        suite_id=suite.id, models=["base", "evalbot"], idempotency_key="run-1"
    )
    request.sampling.max_tokens = 12
    run = acme.call(acme.evaluation.CreateEvalRun, request).run
    assert run.id.startswith("eval-") and run.progress.total == 8 and run.sampling.seed == 0
    updates = _wait_run(acme, run.id)
    final = updates[-1]
    assert final.state == evaluation_pb2.EVAL_RUN_STATE_SUCCEEDED, final.failure_reason
    assert final.progress.completed == 8
    assert [u.progress.completed for u in updates] == sorted(u.progress.completed for u in updates)

    results = acme.call(acme.evaluation.ListEvalResults, evaluation_pb2.ListEvalResultsRequest(run_id=run.id)).results
    assert len(results) == 8 and {r.model for r in results} == {"base", "evalbot"}
    assert all(r.checks and r.passed == all(c.passed for c in r.checks) for r in results)
    rates = {m: sum(r.passed for r in results if r.model == m) / 4 for m in ("base", "evalbot")}

    report = acme.call(acme.evaluation.GetEvalReport, evaluation_pb2.GetEvalReportRequest(run_id=run.id))
    overall = next(c for c in report.comparisons if c.category == "overall")
    assert (overall.model, overall.reference_pass_rate, overall.pass_rate) == (
        "evalbot",
        rates["base"],
        rates["evalbot"],
    )
    assert overall.difference_ci_low <= overall.pass_rate - overall.reference_pass_rate <= overall.difference_ci_high
    assert json.loads(report.content)["resolved_models"] == {"base": "tiny-qwen2", "evalbot": "evalbot:1"}
    html = acme.call(
        acme.evaluation.GetEvalReport,
        evaluation_pb2.GetEvalReportRequest(run_id=run.id, format=evaluation_pb2.REPORT_FORMAT_HTML),
    ).content.decode()
    assert html.startswith("<!doctype html>") and "<svg" in html
    markdown = acme.call(
        acme.evaluation.GetEvalReport,
        evaluation_pb2.GetEvalReportRequest(run_id=run.id, format=evaluation_pb2.REPORT_FORMAT_MARKDOWN),
    ).content.decode()
    assert "| **overall** | 4 |" in markdown

    with pytest.raises(TuneforgeError) as hidden:
        globex.call(globex.evaluation.GetEvalRun, evaluation_pb2.GetEvalRunRequest(run_id=run.id))
    assert hidden.value.code == "NOT_FOUND"
    with pytest.raises(TuneforgeError) as borrowed:
        globex.call(
            globex.evaluation.CreateEvalRun, evaluation_pb2.CreateEvalRunRequest(suite_id=suite.id, models=["base"])
        )
    assert borrowed.value.code == "NOT_FOUND"

    missing = acme.call(
        acme.evaluation.CreateEvalRun,
        evaluation_pb2.CreateEvalRunRequest(suite_id=suite.id, models=["base", "no-such-adapter"]),
    ).run
    failed = _wait_run(acme, missing.id)[-1]
    assert failed.state == evaluation_pb2.EVAL_RUN_STATE_FAILED and "no-such-adapter" in failed.failure_reason


@pytest.mark.parametrize(
    "models, sampling, field",
    [
        (["base", "Not A Name"], {}, "models[1]"),
        (["base", "bot:99999999999999999999999"], {}, "models[1]"),
        (["base"], {"temperature": float("nan")}, "sampling.temperature"),
        (["base"], {"temperature": 9.0}, "sampling.temperature"),
        (["base"], {"top_p": 1.5}, "sampling.top_p"),
        (["base"], {"max_tokens": 10**6}, "sampling.max_tokens"),
        (["base"], {"stop": [""]}, "sampling.stop"),
    ],
)
def test_invalid_runs_are_refused_at_create_time(
    acme: TuneforgeClient, models: list, sampling: dict, field: str
) -> None:
    request = evaluation_pb2.CreateEvalRunRequest(
        suite_id="builtin/core-zh-en", models=models, sampling=inference_pb2.SamplingParams(**sampling)
    )
    with pytest.raises(TuneforgeError) as refused:
        acme.call(acme.evaluation.CreateEvalRun, request)
    assert refused.value.code == "INVALID_ARGUMENT" and refused.value.violations[0][0] == field
