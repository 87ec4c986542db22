"""The curation pipeline end to end on files: formats, every issue code, corrupted input, dedup, ids, splits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import MODEL_CACHE

from tuneforge.curation.pipeline import CurationOptions, CurationResult, InputFile, curate, version_id
from tuneforge.models import ModelResolver, template_hash


@pytest.fixture(scope="module")
def tokenizer():
    resolver = ModelResolver(MODEL_CACHE)
    return resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))


def _file(tmp_path: Path, name: str, content: bytes | list[Any], data_format: str = "auto") -> InputFile:
    if isinstance(content, list):
        content = b"".join(
            (line if isinstance(line, bytes) else json.dumps(line, ensure_ascii=False).encode()) + b"\n"
            for line in content
        )
    path = tmp_path / name
    path.write_bytes(content)
    return InputFile(name, path, hashlib.sha256(content).hexdigest(), data_format)


def _run(tmp_path: Path, tokenizer, files: list[InputFile], **options: Any) -> tuple[CurationResult, Path]:
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
    result = curate(files, tokenizer, CurationOptions(**options), out, tmp_path / f"work-{out.name}")
    return result, out


def _issues(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "issues.jsonl").read_text().splitlines()]


def _rows(out: Path, split: str = "train") -> list[dict[str, Any]]:
    return [row for path in sorted(out.glob(f"{split}-*.parquet")) for row in pq.read_table(path).to_pylist()]


def _all_messages(out: Path) -> list[list[dict[str, str]]]:
    return [json.loads(r["messages"]) for split in ("train", "validation") for r in _rows(out, split)]


GOOD = {"instruction": "Name a colour.", "output": "Blue."}


def test_the_three_formats_become_the_same_conversation(tmp_path: Path, tokenizer) -> None:
    alpaca = _file(
        tmp_path, "a.jsonl", [{"instruction": "Add 2 and 2.", "input": "", "output": "4", "system": "Math."}]
    )
    sharegpt = _file(
        tmp_path,
        "s.jsonl",
        [
            {
                "system": "Math.",
                "conversations": [{"from": "human", "value": "Add 2 and 2."}, {"from": "gpt", "value": "4"}],
            }
        ],
    )
    openai = _file(
        tmp_path,
        "o.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Math."},
                    {"role": "user", "content": [{"type": "text", "text": "Add 2 and 2."}]},
                    {"role": "assistant", "content": "4"},
                ]
            }
        ],
    )
    conversations = []
    for item in (alpaca, sharegpt, openai):
        result, out = _run(tmp_path, tokenizer, [item], validation_fraction=0)
        assert result.ok, result.failure_reason
        conversations.append(_all_messages(out))
    assert (
        conversations[0]
        == conversations[1]
        == conversations[2]
        == [
            [
                {"role": "system", "content": "Math."},
                {"role": "user", "content": "Add 2 and 2."},
                {"role": "assistant", "content": "4"},
            ]
        ]
    )


def test_alpaca_json_outputs_are_serialized_deterministically(tmp_path: Path, tokenizer) -> None:
    item = _file(
        tmp_path,
        "a.jsonl",
        [{"instruction": "Extract.", "input": "On 4 March 2025.", "output": {"date": "2025-03-04", "b": [1, 2]}}],
    )
    _result, out = _run(tmp_path, tokenizer, [item], validation_fraction=0)
    answer = _all_messages(out)[0][-1]["content"]
    assert answer == '{"b": [1, 2], "date": "2025-03-04"}'
    assert json.loads(answer)["date"] == "2025-03-04"


CASES: list[tuple[bytes | dict[str, Any], str, str]] = [
    (b'{"instruction": "x", "output": ', "invalid_json", ""),
    (b'\xff\xfe{"instruction": "x"}', "invalid_utf8", ""),
    (b'{"instruction": "a\x00b", "output": "c"}', "nul_byte", ""),
    (b"[1, 2, 3]", "wrong_type", ""),
    (b"[" * 100_000 + b"]" * 100_000, "nesting_too_deep", ""),
    ({"instruction": 5, "output": "x"}, "wrong_type", "instruction"),
    ({"instruction": "x"}, "missing_field", "output"),
    ({"instruction": "   ", "output": "x"}, "empty_content", "messages[0]"),
    ({"instruction": "\u200b\u200b", "output": "x"}, "empty_content", "messages[0]"),
]


def test_every_record_error_code_is_reported_with_its_line_and_good_records_survive(tmp_path: Path, tokenizer) -> None:
    lines: list[Any] = []
    for content, _, _ in CASES:
        distinct = hashlib.sha256(str(len(lines)).encode()).hexdigest()  # unlike each other: no near duplicates
        lines += [GOOD | {"instruction": f"good {distinct}"}, content]
    lines.append(GOOD | {"instruction": "good last"})
    result, out = _run(
        tmp_path, tokenizer, [_file(tmp_path, "mixed.jsonl", lines)], max_invalid_fraction=0.9, validation_fraction=0
    )
    assert result.ok, result.failure_reason
    issues = {(i["line"], i["code"]): i for i in _issues(out)}
    for index, (_, code, field) in enumerate(CASES):
        line = 2 * index + 2
        assert (line, code) in issues, (line, code, issues)
        assert issues[(line, code)]["field"] == field
        assert issues[(line, code)]["error"] is True
    kept = [m[0]["content"] for m in _all_messages(out)]
    assert len(kept) == len(CASES) + 1  # every good record survived its bad neighbour
    assert result.counts["invalid"] == len(CASES)


CONVERSATION_CASES: list[tuple[dict[str, Any], str]] = [
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]}, "unrecognized_role"),
    ({"conversations": [{"from": "human", "value": "hi"}]}, "missing_assistant_message"),
    ({"conversations": [{"from": "gpt", "value": "hello"}]}, "missing_user_message"),
    (
        {
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "system", "value": "late"},
                {"from": "gpt", "value": "yo"},
            ]
        },
        "misplaced_system_message",
    ),
    ({"conversations": [{"from": "human"}]}, "missing_field"),
    ({"conversations": "not a list"}, "wrong_type"),
    ({"conversations": [{"from": "human", "value": ["x"]}, {"from": "gpt", "value": "y"}]}, "wrong_type"),
]


def test_conversation_rules(tmp_path: Path, tokenizer) -> None:
    good = {"conversations": [{"from": "human", "value": "fine"}, {"from": "gpt", "value": "ok"}]}
    trailing = {
        "conversations": [
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"},
            {"from": "human", "value": "dangling"},
        ]
    }
    lines = [good, *[case for case, _ in CONVERSATION_CASES], trailing]
    _result, out = _run(
        tmp_path, tokenizer, [_file(tmp_path, "c.jsonl", lines)], max_invalid_fraction=1.0, validation_fraction=0
    )
    codes = {(i["line"], i["code"]) for i in _issues(out)}
    for index, (_, code) in enumerate(CONVERSATION_CASES):
        assert (index + 2, code) in codes
    assert (len(lines), "trailing_messages_dropped") in codes
    assert [m[-1]["content"] for m in _all_messages(out)] == ["ok", "a"]


def test_corrupted_upload_bom_crlf_blank_lines_and_a_5mb_line(tmp_path: Path, tokenizer) -> None:
    good = json.dumps(GOOD).encode()
    huge = b'{"instruction": "' + b"x" * (5 * 1024 * 1024) + b'", "output": "y"}'
    content = (
        b"\xef\xbb\xbf"
        + good
        + b"\r\n\r\n"
        + huge
        + b"\r\n"
        + json.dumps({"instruction": "second", "output": "z"}).encode()
        + b"\r\n"
    )
    _result, out = _run(
        tmp_path, tokenizer, [_file(tmp_path, "c.jsonl", content)], max_invalid_fraction=0.9, validation_fraction=0
    )
    issues = {(i["line"], i["code"]) for i in _issues(out)}
    assert (1, "bom_removed") in issues
    assert (3, "line_too_long") in issues
    assert sorted(m[0]["content"] for m in _all_messages(out)) == ["Name a colour.", "second"]
    assert not any("\r" in m[0]["content"] for m in _all_messages(out))


@pytest.mark.parametrize(
    "content, code",
    [
        (b"", "empty_file"),
        (b"\n \n\r\n", "empty_file"),
        (b'[{"instruction": "a", "output": "b"}]', "json_array_file"),
        (b'[\n  {"instruction": "a", "output": "b"}\n]\n', "json_array_file"),
        (b'{"text": "no known keys"}\n', "unknown_format"),
    ],
)
def test_files_that_cannot_be_read_fail_with_a_clear_reason(
    tmp_path: Path, tokenizer, content: bytes, code: str
) -> None:
    result, out = _run(tmp_path, tokenizer, [_file(tmp_path, "bad.jsonl", content)])
    assert not result.ok
    assert code in {i["code"] for i in _issues(out)}
    assert result.failure_reason
    assert json.loads((out / "report.json").read_text())["status"] == "failed"


def test_a_mostly_invalid_file_fails_the_version_with_the_report(tmp_path: Path, tokenizer) -> None:
    lines = [GOOD, b"junk", b"junk", b"junk"]
    result, out = _run(tmp_path, tokenizer, [_file(tmp_path, "m.jsonl", lines)])
    assert not result.ok and "3 of 4 records are invalid" in result.failure_reason
    assert "invalid_json" in (out / "report.md").read_text()


def test_length_policy_drop_and_truncate(tmp_path: Path, tokenizer) -> None:
    long = {"instruction": "Summarize.", "output": "word " * 200}
    short = {"instruction": "Hi", "output": "Hello"}
    item = _file(tmp_path, "l.jsonl", [long, short])
    dropped, out = _run(tmp_path, tokenizer, [item], max_seq_len=64, validation_fraction=0, max_invalid_fraction=1)
    assert dropped.counts["too_long"] == 1 and dropped.counts["train_records"] == 1
    assert "too_long" in {i["code"] for i in _issues(out)}
    cut, out = _run(tmp_path, tokenizer, [item], max_seq_len=64, length_policy="truncate", validation_fraction=0)
    assert cut.counts["truncated"] == 1 and cut.counts["train_records"] == 2
    assert max(r["num_tokens"] for r in _rows(out)) == 64


def test_exact_and_near_duplicates_are_removed_keeping_the_first(tmp_path: Path, tokenizer) -> None:
    base = "Please summarize the attached quarterly sales report for the north-east region in three bullet points."
    lines = [
        {"instruction": base, "output": "Sales grew."},
        {"instruction": "Something else entirely about gardening tomatoes.", "output": "Water daily."},
        {"instruction": base, "output": "Sales grew."},  # exact
        {"instruction": "  " + base.upper() + " ", "output": "sales grew."},  # exact after normalization
        {"instruction": base.replace("three", "3"), "output": "Sales grew."},  # near
    ]
    result, out = _run(tmp_path, tokenizer, [_file(tmp_path, "d.jsonl", lines)], validation_fraction=0)
    assert result.counts["exact_duplicates"] == 2 and result.counts["near_duplicates"] == 1
    kept = [m[0]["content"] for m in _all_messages(out)]
    assert kept == [base, "Something else entirely about gardening tomatoes."]
    clusters = json.loads((out / "report.json").read_text())["duplicate_clusters"]
    assert {"kind": "exact", "kept": "d.jsonl:1", "removed": ["d.jsonl:3", "d.jsonl:4"]} in clusters
    assert {"kind": "near", "kept": "d.jsonl:1", "removed": ["d.jsonl:5"]} in clusters
    none, _ = _run(
        tmp_path, tokenizer, [_file(tmp_path, "d.jsonl", lines)], validation_fraction=0, near_duplicate_threshold=1.0
    )
    assert none.counts["near_duplicates"] == 0


def test_leakage_against_evaluation_prompts(tmp_path: Path, tokenizer) -> None:
    lines = [
        {"instruction": "What is the capital of France? Answer in one word.", "output": "Paris"},
        {"instruction": "Write a haiku about autumn leaves falling.", "output": "..."},
    ]
    eval_prompts = [[{"role": "user", "content": "What is the capital of France?  Answer in one word"}]]
    result = curate(
        [_file(tmp_path, "t.jsonl", lines)],
        tokenizer,
        CurationOptions(validation_fraction=0),
        tmp_path / "out",
        tmp_path / "work",
        eval_prompts=eval_prompts,
    )
    assert result.counts["leaked"] == 1 and result.counts["train_records"] == 1


def test_ids_and_splits_are_deterministic(tmp_path: Path, tokenizer) -> None:
    lines = [{"instruction": f"Question number {i} about topic {i * 7}", "output": f"Answer {i}"} for i in range(200)]
    item = _file(tmp_path, "s.jsonl", lines)
    options = CurationOptions(validation_fraction=0.2, seed=3)
    hashed = template_hash(tokenizer)
    assert version_id([item], options, hashed) == version_id(
        [item], CurationOptions(validation_fraction=0.2, seed=3, batch_size=7), hashed
    )
    assert version_id([item], options, hashed) != version_id([item], CurationOptions(seed=4), hashed)
    first, out1 = _run(tmp_path, tokenizer, [item], validation_fraction=0.2, seed=3)
    _again, out2 = _run(tmp_path, tokenizer, [item], validation_fraction=0.2, seed=3, batch_size=7)
    assert _rows(out1, "validation") == _rows(out2, "validation")
    assert _rows(out1) == _rows(out2)
    assert 20 <= first.counts["validation_records"] <= 60
    _other, out3 = _run(tmp_path, tokenizer, [item], validation_fraction=0.2, seed=4)
    assert {r["origin"] for r in _rows(out3, "validation")} != {r["origin"] for r in _rows(out1, "validation")}


def test_records_carry_ids_masks_and_pii_counts(tmp_path: Path, tokenizer) -> None:
    lines = [{"instruction": "Contact bob@example.com or 13812345678.", "output": "Done."}]
    result, out = _run(tmp_path, tokenizer, [_file(tmp_path, "p.jsonl", lines)], validation_fraction=0)
    row = _rows(out)[0]
    assert json.loads(row["messages"])[0]["content"] == "Contact [EMAIL] or [PHONE]."
    assert len(row["input_ids"]) == len(row["loss_mask"]) == row["num_tokens"]
    trained = [t for t, m in zip(row["input_ids"], row["loss_mask"], strict=True) if m]
    assert tokenizer.decode(trained) == "Done.<|im_end|>"
    assert result.counts["pii_replacements"] == {"email": 1, "phone": 1}
    report = json.loads((out / "report.json").read_text())
    assert report["token_lengths"]["max"] == row["num_tokens"]
    assert (out / "token_lengths.svg").read_text().startswith("<svg")


def test_the_pipeline_runs_under_ray_data_with_identical_results(tmp_path: Path, tokenizer, local_ray) -> None:
    from tuneforge.curation.distributed import ray_data_batches

    demo = Path(__file__).resolve().parents[1] / "services" / "tuneforge" / "demo_data"
    files = [
        InputFile(name, demo / name, hashlib.sha256((demo / name).read_bytes()).hexdigest())
        for name in ("translation_alpaca.jsonl", "support_sharegpt.jsonl", "event_dates.jsonl")
    ]
    options = CurationOptions(validation_fraction=0.2, batch_size=16)
    local = curate(files, tokenizer, options, tmp_path / "local", tmp_path / "local-work")
    distributed = curate(
        files,
        tokenizer,
        options,
        tmp_path / "ray",
        tmp_path / "ray-work",
        batches=ray_data_batches(str(MODEL_CACHE / "tiny-qwen2"), options, concurrency=2),
    )
    assert distributed.ok and distributed.counts == local.counts
    for split in ("train", "validation"):
        assert _rows(tmp_path / "ray", split) == _rows(tmp_path / "local", split)
    assert _issues(tmp_path / "ray") == _issues(tmp_path / "local")


def test_a_format_override_applies_to_the_whole_file(tmp_path: Path, tokenizer) -> None:
    lines = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    item = _file(tmp_path, "o.jsonl", lines, data_format="alpaca")
    result, out = _run(tmp_path, tokenizer, [item])
    assert not result.ok
    assert [(i["code"], i["field"]) for i in _issues(out)] == [("missing_field", "instruction")]


def test_source_uri_reads_only_inside_the_import_roots(tmp_path: Path, tokenizer) -> None:
    from tuneforge.common.errors import InvalidArgument
    from tuneforge.curation.versions import DatasetVersions

    root = tmp_path / "imports"
    (root / "team").mkdir(parents=True)
    (root / "team" / "data.jsonl").write_text(json.dumps(GOOD) + "\n")
    (tmp_path / "secret.jsonl").write_text("{}\n")
    (root / "escape.jsonl").symlink_to(tmp_path / "secret.jsonl")
    versions = DatasetVersions(None, None, None, None, [root], lambda tenant, vid: None)  # type: ignore[arg-type]
    assert versions._source_path("team/data.jsonl") == (root / "team" / "data.jsonl").resolve()
    assert versions._source_path(f"file://{root}/team/data.jsonl") == (root / "team" / "data.jsonl").resolve()
    for uri in (
        "../secret.jsonl",
        str(tmp_path / "secret.jsonl"),
        "escape.jsonl",
        "team/missing.jsonl",
        "s3://bucket/x.jsonl",
    ):
        with pytest.raises(InvalidArgument) as info:
            versions._source_path(uri)
        assert info.value.violations[0].field == "source_uri"
    closed = DatasetVersions(None, None, None, None, [], lambda tenant, vid: None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="import_roots"):
        closed._source_path("team/data.jsonl")
