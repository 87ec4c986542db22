"""Suites from JSONL (line-numbered errors), paired bootstrap comparisons, and the rendered reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuneforge.common.errors import InvalidArgument
from tuneforge.evaluation.compare import OVERALL, bootstrap_interval, compare, render_html, render_json, render_markdown
from tuneforge.evaluation.suites import parse_suite, suite_jsonl

GOOD = {
    "id": "date-1",
    "category": "structured_output",
    "messages": [{"role": "user", "content": "Extract the date as JSON."}],
    "checks": [{"type": "json_valid"}, {"type": "json_equals", "params": {"expected": {"date": "2025-03-13"}}}],
}


def _jsonl(*records) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records).encode()


def test_a_good_suite_round_trips() -> None:
    second = {**GOOD, "id": "zh-1", "category": "multilingual", "reference": "猫在桌子上。"}
    second["checks"] = [{"type": "language", "params": {"expected": "zh"}}, {"type": "chrf", "params": {"min": 40}}]
    suite = parse_suite("mine", _jsonl(GOOD, "", second))
    assert [i.id for i in suite.items] == ["date-1", "zh-1"]
    assert suite.category_counts() == {"structured_output": 1, "multilingual": 1}
    again = parse_suite("mine", suite_jsonl(suite))
    assert again.items == suite.items


def test_a_malformed_suite_names_every_bad_line() -> None:
    bad_role = {**GOOD, "id": "x", "messages": [{"role": "wizard", "content": "hi"}]}
    bad_check = {**GOOD, "id": "y", "checks": [{"type": "max_words", "params": {}}]}
    answer_last = {**GOOD, "id": "z", "messages": [{"role": "assistant", "content": "hi"}]}
    with pytest.raises(InvalidArgument) as info:
        parse_suite("broken", _jsonl(GOOD, "{not json", bad_role, GOOD, bad_check, {"id": "w"}, answer_last, "[1]"))
    found = [(v.line, v.field) for v in info.value.violations]
    assert found == [
        (2, "jsonl"),
        (3, "messages[0].role"),
        (4, "id"),  # repeats line 1
        (5, "checks[0].params"),
        (6, "category"),
        (7, "messages[0].role"),
        (8, "item"),
    ]
    assert "line 2" in info.value.message and "repeats line 1" in info.value.violations[2].description
    with pytest.raises(InvalidArgument):
        parse_suite("empty", b"\n\n")
    with pytest.raises(InvalidArgument) as encoding:
        parse_suite("latin1", "caf\xe9".encode("latin-1"))
    assert encoding.value.violations[0].field == "jsonl"


def test_bootstrap_is_deterministic_with_a_seed_and_covers_the_estimate() -> None:
    diffs = np.array([1, 0, 0, 1, 1, 0, -1, 1, 0, 1] * 4, dtype=float)
    first, again = bootstrap_interval(diffs, seed=5), bootstrap_interval(diffs, seed=5)
    assert first == again
    assert bootstrap_interval(diffs, seed=6) != first
    low, high = first
    assert low < diffs.mean() < high and low > 0  # a clear gain: the interval excludes zero
    flat = np.zeros(30)
    assert bootstrap_interval(flat, seed=1) == (0.0, 0.0)


def test_comparison_per_category_with_flips_and_reports() -> None:
    categories = {f"s{i}": "structured_output" for i in range(20)} | {f"r{i}": "refusal" for i in range(10)}
    base = {i: (i.startswith("r") or i in ("s0", "s1")) for i in categories}
    tuned = {i: (i.startswith("s") or i in ("r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8")) for i in categories}
    report = compare({"base": base, "bot:1": tuned}, categories, "base", seed=3)
    structured = report["categories"]["structured_output"]
    assert structured["pass_rate"] == {"base": 0.1, "bot:1": 1.0}
    gain = structured["difference"]["bot:1"]
    assert gain["estimate"] == pytest.approx(0.9) and gain["excludes_zero"] and gain["low"] > 0.7
    refusal = report["categories"]["refusal"]["difference"]["bot:1"]
    assert refusal["estimate"] == pytest.approx(-0.1) and not refusal["excludes_zero"]
    assert report["categories"][OVERALL]["items"] == 30
    assert list(report["categories"])[-1] == OVERALL
    assert sorted(report["flips"]["bot:1"]["fixed"]) == sorted(f"s{i}" for i in range(2, 20))
    assert report["flips"]["bot:1"]["broken"] == ["r9"]
    assert compare({"base": base, "bot:1": tuned}, categories, "base", seed=3) == report  # deterministic

    outputs = {"base": {"r9": "I cannot help"}, "bot:1": {"r9": "Sure, here is how"}}
    markdown = render_markdown(report, outputs)
    assert "| structured_output | 20 | 10.0% | 100.0% | +90.0% [" in markdown and "*" in markdown
    assert "broken: `r9`" in markdown and "Sure, here is how" in markdown
    html = render_html(report, outputs)
    assert html.startswith("<!doctype html>") and "<svg" in html and "Sure, here is how" in html
    assert json.loads(render_json(report))["categories"]["refusal"]["items"] == 10


def test_the_leakage_guard_names_items_that_copy_training_prompts(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tuneforge.catalog.datasets import DatasetCatalog
    from tuneforge.evaluation.leakage import leaked_items
    from tuneforge.store.artifacts import ArtifactStore
    from tuneforge.store.metadata import MetadataStore

    prompt = "Extract the event and its date from the text as JSON.\n\nThe product launch is on March 13, 2025."
    training = [
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": '{"date": "2025-03-13"}'}],
        [
            {"role": "user", "content": "Translate into French: good morning"},
            {"role": "assistant", "content": "bonjour"},
        ],
    ]
    training.append(
        [
            {
                "role": "system",
                "content": "You are the support assistant of Acme Corp. Answer politely, in one short paragraph. " * 4,
            },
            {"role": "user", "content": "Where is my parcel?"},
            {"role": "assistant", "content": "On its way."},
        ]
    )
    artifacts = ArtifactStore(tmp_path / "artifacts")
    directory = artifacts.for_tenant("acme").path("datasets/dsv-" + "a" * 24)
    directory.mkdir(parents=True)
    pq.write_table(pa.table({"messages": [json.dumps(m) for m in training]}), directory / "train-00000.parquet")
    datasets = DatasetCatalog(MetadataStore(f"sqlite:///{tmp_path / 'm.db'}"), artifacts)
    copied = {**GOOD, "id": "copied", "messages": [{"role": "user", "content": prompt.upper()}]}
    fresh = {**GOOD, "id": "fresh", "messages": [{"role": "user", "content": "Summarise the plot of Hamlet."}]}
    house_rules = "You are the support assistant of Acme Corp. Answer politely, in one short paragraph. " * 4
    shared_system = {  # a system prompt shared with training is no leak: only the user's turns count
        **GOOD,
        "id": "same-system-prompt",
        "messages": [{"role": "system", "content": house_rules}, {"role": "user", "content": "Name a colour."}],
    }
    suite = parse_suite("s", "\n".join(json.dumps(i) for i in (copied, fresh, shared_system)).encode())
    conversations = list(datasets.training_conversations("acme", "dsv-" + "a" * 24))
    assert conversations == training
    assert leaked_items(suite.items, conversations) == ["copied"]  # case and spacing do not hide a copy
    assert list(datasets.training_conversations("globex", "dsv-" + "a" * 24)) == []  # another tenant's: none
    assert leaked_items(suite.items, []) == []
    report = compare({"base": {"copied": True}, "bot": {"copied": True}}, {"copied": "x"}, "base")
    report["leakage"] = {"message": "1 of 2 suite items near-duplicate training prompts of bot"}
    assert "Leakage warning" in render_markdown(report) and "Leakage warning" in render_html(report)
