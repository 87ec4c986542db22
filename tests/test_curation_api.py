"""DatasetService dataset versions over gRPC: build, read back, idempotency, tenancy, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.v1 import curation_pb2

DEMO = Path(__file__).resolve().parents[1] / "services" / "tuneforge" / "demo_data"


@pytest.fixture(scope="module")
def built(platform_server, keys_file) -> dict:
    """One version built from two demo files for tenant acme, shared by the read-back tests."""
    from conftest import ACME_KEY

    with TuneforgeClient(platform_server.address, api_key=ACME_KEY) as client:
        files = [client.upload_file(DEMO / name).id for name in ("translation_alpaca.jsonl", "support_sharegpt.jsonl")]
        version = client.create_dataset_version(
            "support", files, "tiny-qwen2", idempotency_key="build-1", validation_fraction=0.2, max_seq_len=512
        )
        assert version.state == curation_pb2.DATASET_VERSION_STATE_PROCESSING
        done = client.wait_for_dataset_version(version.id, timeout=300)
        return {"files": files, "version": done}


def test_a_version_is_built_and_ready(built: dict) -> None:
    version = built["version"]
    assert version.state == curation_pb2.DATASET_VERSION_STATE_READY, version.failure_reason
    assert version.id.startswith("dsv-") and version.dataset == "support"
    counts = version.counts
    assert counts.records_in == 50
    assert counts.invalid == 4  # broken JSON, missing output, unrecognized role, no answer
    assert counts.exact_duplicates == 2 and counts.near_duplicates >= 1
    assert counts.train_records + counts.validation_records == 50 - 4 - counts.exact_duplicates - counts.near_duplicates
    assert dict(counts.pii_replacements)["email"] == 16
    assert version.bytes_processed == version.bytes_total > 0
    assert len(version.template_hash) == 64


def test_same_input_and_settings_give_the_same_version(acme: TuneforgeClient, built: dict) -> None:
    again = acme.create_dataset_version(
        "support", built["files"], "tiny-qwen2", validation_fraction=0.2, max_seq_len=512
    )
    assert again.id == built["version"].id
    assert again.state == curation_pb2.DATASET_VERSION_STATE_READY  # not built twice
    other = acme.create_dataset_version(
        "support",
        built["files"],
        "tiny-qwen2",
        validation_fraction=0.2,
        max_seq_len=256,
        idempotency_key="other-settings",
    )
    assert other.id != built["version"].id
    acme.wait_for_dataset_version(other.id, timeout=300)


def test_idempotency_key_reuse_for_another_request_is_refused(acme: TuneforgeClient, built: dict) -> None:
    same = acme.create_dataset_version(
        "support", built["files"], "tiny-qwen2", idempotency_key="build-1", validation_fraction=0.2, max_seq_len=512
    )
    assert same.id == built["version"].id
    with pytest.raises(TuneforgeError) as info:
        acme.create_dataset_version("support", built["files"][:1], "tiny-qwen2", idempotency_key="build-1")
    assert info.value.code == "FAILED_PRECONDITION"


def test_report_issues_and_preview(acme: TuneforgeClient, built: dict) -> None:
    vid = built["version"].id
    report = acme.call(acme.datasets.GetDatasetReport, curation_pb2.GetDatasetReportRequest(dataset_version_id=vid))
    assert dict(report.issue_counts) == {
        "invalid_json": 1,
        "missing_field": 1,
        "unrecognized_role": 1,
        "missing_assistant_message": 1,
    }
    assert any(c.kind == "exact" for c in report.duplicate_clusters)
    assert "PII replaced" in report.markdown and report.token_length_svg.startswith("<svg")
    assert json.loads(report.json)["counts"]["records_in"] == 50

    issues, token = [], ""
    while True:
        page = acme.call(
            acme.datasets.ListDatasetIssues,
            curation_pb2.ListDatasetIssuesRequest(dataset_version_id=vid, page_size=1, page_token=token),
        )
        issues += page.issues
        token = page.next_page_token
        if not token:
            break
    assert [(i.source, i.line, i.code) for i in issues] == [
        ("translation_alpaca.jsonl", 28, "invalid_json"),
        ("translation_alpaca.jsonl", 29, "missing_field"),
        ("support_sharegpt.jsonl", 20, "unrecognized_role"),
        ("support_sharegpt.jsonl", 21, "missing_assistant_message"),
    ]
    only = acme.call(
        acme.datasets.ListDatasetIssues,
        curation_pb2.ListDatasetIssuesRequest(dataset_version_id=vid, code="missing_field"),
    )
    assert [i.line for i in only.issues] == [29] and only.issues[0].field == "output"

    preview = acme.call(
        acme.datasets.PreviewDatasetRecords, curation_pb2.PreviewDatasetRecordsRequest(dataset_version_id=vid, limit=3)
    )
    assert len(preview.records) == 3
    record = preview.records[0]
    assert record.text.startswith("<|im_start|>") and "<|im_start|>assistant\n" in record.text
    assert 0 < record.num_loss_tokens < record.num_tokens


def test_list_filters_by_dataset(acme: TuneforgeClient, built: dict) -> None:
    listed = acme.call(acme.datasets.ListDatasetVersions, curation_pb2.ListDatasetVersionsRequest(dataset="support"))
    assert built["version"].id in [v.id for v in listed.dataset_versions]
    other = acme.call(acme.datasets.ListDatasetVersions, curation_pb2.ListDatasetVersionsRequest(dataset="nothing"))
    assert list(other.dataset_versions) == []


def test_other_tenants_see_nothing(globex: TuneforgeClient, built: dict) -> None:
    vid = built["version"].id
    for method, request in [
        (globex.datasets.GetDatasetVersion, curation_pb2.GetDatasetVersionRequest(dataset_version_id=vid)),
        (globex.datasets.GetDatasetReport, curation_pb2.GetDatasetReportRequest(dataset_version_id=vid)),
        (globex.datasets.ListDatasetIssues, curation_pb2.ListDatasetIssuesRequest(dataset_version_id=vid)),
        (globex.datasets.PreviewDatasetRecords, curation_pb2.PreviewDatasetRecordsRequest(dataset_version_id=vid)),
        (globex.datasets.DeleteDatasetVersion, curation_pb2.DeleteDatasetVersionRequest(dataset_version_id=vid)),
    ]:
        with pytest.raises(TuneforgeError) as info:
            globex.call(method, request)
        assert info.value.code == "NOT_FOUND", method
    assert vid not in [
        v.id
        for v in globex.call(
            globex.datasets.ListDatasetVersions, curation_pb2.ListDatasetVersionsRequest()
        ).dataset_versions
    ]
    with pytest.raises(TuneforgeError) as info:  # nor can they build from another tenant's files
        globex.create_dataset_version("steal", built["files"], "tiny-qwen2")
    assert info.value.code == "NOT_FOUND"


def test_invalid_requests_name_every_bad_field_at_once(acme: TuneforgeClient) -> None:
    request = curation_pb2.CreateDatasetVersionRequest(
        dataset="Not Valid",
        file_ids=["../x"],
        settings=curation_pb2.CurationSettings(max_seq_len=5, validation_fraction=0.9, near_duplicate_threshold=0),
    )
    with pytest.raises(TuneforgeError) as info:
        acme.call(acme.datasets.CreateDatasetVersion, request)
    assert info.value.code == "INVALID_ARGUMENT"
    fields = {name for name, _ in info.value.violations}
    assert fields == {
        "dataset",
        "file_ids[0]",
        "settings.base_model",
        "settings.max_seq_len",
        "settings.validation_fraction",
        "settings.near_duplicate_threshold",
    }


def test_unknown_base_model_and_server_paths(acme: TuneforgeClient) -> None:
    stored = acme.upload_file(b'{"instruction": "a", "output": "b"}\n', filename="tiny.jsonl")
    with pytest.raises(TuneforgeError) as info:
        acme.create_dataset_version("x", [stored.id], "not a model!")
    assert info.value.code == "INVALID_ARGUMENT" and info.value.violations[0][0] == "settings.base_model"
    request = curation_pb2.CreateDatasetVersionRequest(
        dataset="x", source_uri="/etc/passwd", settings=curation_pb2.CurationSettings(base_model="tiny-qwen2")
    )
    with pytest.raises(TuneforgeError) as info:
        acme.call(acme.datasets.CreateDatasetVersion, request)
    assert info.value.code == "INVALID_ARGUMENT" and info.value.violations[0][0] == "source_uri"


def test_a_failed_version_says_why_and_can_be_deleted(acme: TuneforgeClient) -> None:
    stored = acme.upload_file(b"[1, 2, 3]\n", filename="array.json")
    version = acme.wait_for_dataset_version(acme.create_dataset_version("bad", [stored.id], "tiny-qwen2").id)
    assert version.state == curation_pb2.DATASET_VERSION_STATE_FAILED
    assert "JSON array" in version.failure_reason
    report = acme.call(
        acme.datasets.GetDatasetReport, curation_pb2.GetDatasetReportRequest(dataset_version_id=version.id)
    )
    assert dict(report.issue_counts) == {"json_array_file": 1}
    acme.call(
        acme.datasets.DeleteDatasetVersion, curation_pb2.DeleteDatasetVersionRequest(dataset_version_id=version.id)
    )
    with pytest.raises(TuneforgeError) as info:
        acme.get_dataset_version(version.id)
    assert info.value.code == "NOT_FOUND"


def test_a_leakage_suite_s_prompts_are_kept_out_of_the_training_data(
    acme: TuneforgeClient, globex: TuneforgeClient, tmp_path: Path
) -> None:
    from tuneforge.v1 import evaluation_pb2

    topics = ["tide tables", "violin strings", "sourdough starters", "tax forms", "bike chains", "fern care"]
    prompts = [f"Explain in two sentences how {t} work and what beginners get wrong about {t}." for t in topics]
    records = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": f"Answer {i}."}]}
        for i, p in enumerate(prompts)
    ]
    data = tmp_path / "leaky.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    items = [
        {
            "id": f"held-{i}",
            "category": "long_form",
            "messages": [{"role": "user", "content": prompts[i]}],
            "checks": [{"type": "max_words", "params": {"n": 80}}],
        }
        for i in (1, 4)
    ]
    suite = acme.call(
        acme.evaluation.CreateSuite,
        evaluation_pb2.CreateSuiteRequest(name="held-out", jsonl="\n".join(json.dumps(i) for i in items).encode()),
    ).suite
    file_id = acme.upload_file(data).id
    plain = acme.create_dataset_version("leaky", [file_id], "tiny-qwen2", validation_fraction=0.0)
    guarded = acme.create_dataset_version(
        "leaky", [file_id], "tiny-qwen2", validation_fraction=0.0, leakage_suite_id=suite.id
    )
    assert guarded.id != plain.id and guarded.settings.leakage_suite_id == suite.id
    plain = acme.wait_for_dataset_version(plain.id, timeout=300)
    guarded = acme.wait_for_dataset_version(guarded.id, timeout=300)
    assert guarded.state == curation_pb2.DATASET_VERSION_STATE_READY, guarded.failure_reason
    assert (plain.counts.leaked, plain.counts.train_records) == (0, 6)
    assert (guarded.counts.leaked, guarded.counts.train_records) == (2, 4)
    preview = acme.call(
        acme.datasets.PreviewDatasetRecords,
        curation_pb2.PreviewDatasetRecordsRequest(dataset_version_id=guarded.id, limit=10),
    )
    kept = [m.content for r in preview.records for m in r.messages if m.role == "user"]
    assert sorted(kept) == sorted(p for i, p in enumerate(prompts) if i not in (1, 4))
    report = acme.call(
        acme.datasets.GetDatasetReport, curation_pb2.GetDatasetReportRequest(dataset_version_id=guarded.id)
    )
    assert sum(c.kind == "leaked" for c in report.duplicate_clusters) == 2

    for client, suite_id in ((acme, "suite-doesnotexist00000000"), (globex, suite.id)):  # globex cannot see it
        own_file = client.upload_file(data).id
        with pytest.raises(TuneforgeError) as refused:
            client.create_dataset_version("leaky", [own_file], "tiny-qwen2", leakage_suite_id=suite_id)
        assert refused.value.code == "INVALID_ARGUMENT"
        assert [f for f, _ in refused.value.violations] == ["settings.leakage_suite_id"]


def test_identical_bytes_under_two_dataset_names_are_two_versions(acme: TuneforgeClient) -> None:
    content = b'{"instruction": "Say hi.", "output": "Hi."}\n{"instruction": "Say bye.", "output": "Bye."}\n'
    stored = acme.upload_file(content, filename="same.jsonl")
    admin = acme.create_dataset_version("admin", [stored.id], "tiny-qwen2", validation_fraction=0.0)
    support = acme.create_dataset_version("support_bot", [stored.id], "tiny-qwen2", validation_fraction=0.0)
    assert admin.id != support.id and (admin.dataset, support.dataset) == ("admin", "support_bot")
    for version in (admin, support):
        done = acme.wait_for_dataset_version(version.id, timeout=300)
        assert done.state == curation_pb2.DATASET_VERSION_STATE_READY, done.failure_reason
    for name, version in (("admin", admin), ("support_bot", support)):
        listed = acme.call(acme.datasets.ListDatasetVersions, curation_pb2.ListDatasetVersionsRequest(dataset=name))
        assert [v.id for v in listed.dataset_versions] == [version.id]


def test_the_invalid_share_limit_is_set_per_request_and_a_mixed_file_keeps_every_format(
    acme: TuneforgeClient,
) -> None:
    lines = [
        {"instruction": "Translate 'cat' to French.", "output": "chat"},
        {"conversations": [{"from": "human", "value": "Capital of Peru?"}, {"from": "gpt", "value": "Lima."}]},
        {"messages": [{"role": "user", "content": "2 + 40?"}, {"role": "assistant", "content": "42"}]},
    ]
    broken = [b'{"instruction": "x", "output": "y", "score": NaN}', b'{"a": ' + b"1" * 5000 + b"}", b"{", b"[]"]
    content = b"\n".join([*(json.dumps(line).encode() for line in lines), *broken]) + b"\n"
    stored = acme.upload_file(content, filename="mixed.jsonl")
    refused = acme.wait_for_dataset_version(
        acme.create_dataset_version("mixed", [stored.id], "tiny-qwen2", validation_fraction=0.0).id, timeout=300
    )
    assert refused.state == curation_pb2.DATASET_VERSION_STATE_FAILED
    assert "4 of 7 records are invalid" in refused.failure_reason and refused.settings.max_invalid_fraction == 0.5
    kept = acme.wait_for_dataset_version(
        acme.create_dataset_version(
            "mixed", [stored.id], "tiny-qwen2", validation_fraction=0.0, max_invalid_fraction=0.6
        ).id,
        timeout=300,
    )
    assert kept.state == curation_pb2.DATASET_VERSION_STATE_READY, kept.failure_reason
    assert kept.settings.max_invalid_fraction == pytest.approx(0.6)
    assert (kept.counts.train_records, kept.counts.invalid) == (3, 4)
    assert dict(kept.counts.records_by_format) == {"alpaca": 1, "sharegpt": 1, "openai_chat": 1}
    issues = acme.call(
        acme.datasets.ListDatasetIssues, curation_pb2.ListDatasetIssuesRequest(dataset_version_id=kept.id)
    ).issues
    assert [(i.line, i.code) for i in issues] == [
        (4, "non_finite_number"),
        (5, "number_too_long"),
        (6, "invalid_json"),
        (7, "wrong_type"),
    ]
    with pytest.raises(TuneforgeError) as info:
        acme.create_dataset_version("mixed", [stored.id], "tiny-qwen2", max_invalid_fraction=1.5)
    assert [f for f, _ in info.value.violations] == ["settings.max_invalid_fraction"]


def test_a_file_uploaded_with_a_format_is_read_as_that_format(acme: TuneforgeClient) -> None:
    record = {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]}
    content = json.dumps(record).encode() + b"\n"
    as_alpaca = acme.upload_file(content, filename="chat.jsonl", data_format=curation_pb2.DATA_FORMAT_ALPACA)
    detected = acme.upload_file(content, filename="chat.jsonl")
    failed = acme.wait_for_dataset_version(
        acme.create_dataset_version("per-file", [as_alpaca.id], "tiny-qwen2", max_invalid_fraction=0.9).id
    )
    issues = acme.call(
        acme.datasets.ListDatasetIssues, curation_pb2.ListDatasetIssuesRequest(dataset_version_id=failed.id)
    ).issues
    assert [(i.line, i.code, i.field) for i in issues] == [(1, "missing_field", "instruction")]
    ready = acme.wait_for_dataset_version(
        acme.create_dataset_version("per-file", [detected.id], "tiny-qwen2", validation_fraction=0.0).id
    )
    assert ready.state == curation_pb2.DATASET_VERSION_STATE_READY and dict(ready.counts.records_by_format) == {
        "openai_chat": 1
    }


def test_the_cli_keeps_the_valid_records_of_a_mostly_invalid_file_with_max_invalid(
    platform_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import ACME_KEY

    from tuneforge.cli import main

    path = tmp_path / "mostly_broken.jsonl"
    path.write_bytes(b'{"instruction": "Name a fruit.", "output": "Pear."}\n{"instruction": "cut\n[]\n')
    common = ["datasets", "--address", platform_server.address, "--api-key", ACME_KEY, "upload", str(path)]
    options = ["--dataset", "cli_mixed", "--base-model", "tiny-qwen2", "--validation-fraction", "0"]
    assert main([*common, *options]) == 1
    assert "2 of 3 records are invalid" in capsys.readouterr().err
    assert main([*common, *options, "--max-invalid", "0.7"]) == 0
    assert "FAILED" not in capsys.readouterr().err
