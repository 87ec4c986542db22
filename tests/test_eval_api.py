"""EvaluationService suites over gRPC: upload, line-numbered errors, the built-in suite, tenancy."""

from __future__ import annotations

import json

import pytest

from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.v1 import evaluation_pb2

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
