"""Concurrent creates with one idempotency key make one resource: jobs, eval runs, dataset versions.

On SQLite and PostgreSQL (the `database_url` fixture). A client that times out retries with the
same key, and the first try may still be running: every try must answer with the one resource,
never INTERNAL, and a key reused for another request is FAILED_PRECONDITION however they interleave.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MODEL_CACHE

from tuneforge.common.errors import FailedPrecondition
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore

#: Concurrent callers per race: enough that losers outnumber the winner on both backends.
CALLERS = 8


@pytest.fixture()
def metadata(database_url: str) -> Iterator[MetadataStore]:
    store = MetadataStore(database_url)
    store.migrate()
    yield store
    store.close()


def _race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Runs the calls at once (released together by a barrier); each result, or the exception it raised."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except Exception as exc:  # the test inspects what each caller got
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _one_resource(results: list[Any]) -> str:
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    ids = {r.id for r in results}
    assert len(ids) == 1, ids
    return ids.pop()


def test_concurrent_job_creates_with_one_key_make_one_job(metadata: MetadataStore) -> None:
    from tuneforge.training.job_store import JobStore
    from tuneforge.training.jobs import JobSpecInput

    jobs = JobStore(metadata, max_active_per_tenant=CALLERS + 2)
    spec = JobSpecInput(base_model="tiny-qwen2", dataset_version_id="dsv-" + "c" * 24, adapter_name="bot")
    job_id = _one_resource(_race([lambda: jobs.create("acme", spec, "retry-1")] * CALLERS))
    assert [j.id for j in jobs.list("acme")[0]] == [job_id]
    assert [e.sequence for e in jobs.events("acme", job_id)] == [1, 2]  # its events once, not once per caller

    other = JobSpecInput(base_model="tiny-qwen2", dataset_version_id="dsv-" + "c" * 24, adapter_name="other")
    mixed = _race([lambda: jobs.create("acme", spec, "retry-2"), lambda: jobs.create("acme", other, "retry-2")] * 4)
    refused = [r for r in mixed if isinstance(r, Exception)]
    assert refused and all(isinstance(r, FailedPrecondition) for r in refused), refused
    assert "already used for a different job" in str(refused[0])
    assert len({r.id for r in mixed if not isinstance(r, Exception)}) == 1


def test_concurrent_eval_run_creates_with_one_key_make_one_run(metadata: MetadataStore, tmp_path: Path) -> None:
    from tuneforge.evaluation.runs import EvalRuns
    from tuneforge.evaluation.suite_store import SuiteStore

    artifacts = ArtifactStore(tmp_path / "artifacts")
    suites = SuiteStore(metadata, artifacts)
    item = {
        "id": "q1",
        "category": "instruction_following",
        "messages": [{"role": "user", "content": "Say hi"}],
        "checks": [{"type": "max_words", "params": {"n": 40}}],
    }
    suite = suites.create("acme", "race", json.dumps(item).encode())
    runs = EvalRuns(metadata, artifacts, suites)
    run_id = _one_resource(_race([lambda: runs.create("acme", suite.id, ["base"], {}, "retry-1")] * CALLERS))
    assert [r.id for r in runs.list("acme")[0]] == [run_id]

    mixed = _race(
        [
            lambda: runs.create("acme", suite.id, ["base"], {}, "retry-2"),
            lambda: runs.create("acme", suite.id, ["base"], {"temperature": 0.5}, "retry-2"),
        ]
        * 4
    )
    refused = [r for r in mixed if isinstance(r, Exception)]
    assert refused and all(isinstance(r, FailedPrecondition) for r in refused), refused


def test_concurrent_dataset_version_creates_with_one_key_make_one_version(
    metadata: MetadataStore, tmp_path: Path
) -> None:
    from tuneforge.curation.files import FileCatalog
    from tuneforge.curation.pipeline import CurationOptions
    from tuneforge.curation.versions import DatasetVersions, VersionSpec
    from tuneforge.models import ModelResolver

    root = tmp_path / "imports"
    root.mkdir()
    record = {"instruction": "Name a colour", "input": "", "output": "Blue"}
    (root / "data.jsonl").write_text(json.dumps(record) + "\n")
    artifacts = ArtifactStore(tmp_path / "artifacts")
    built: list[str] = []
    versions = DatasetVersions(
        metadata,
        artifacts,
        FileCatalog(metadata, artifacts, 1 << 20),
        ModelResolver(MODEL_CACHE),
        [root],
        lambda tenant, version: built.append(version),
    )
    spec = VersionSpec("race", (), "data.jsonl", "auto", "tiny-qwen2", CurationOptions())
    versions.template_hash("tiny-qwen2")  # the tokenizer loads once, before the race
    version_id = _one_resource(_race([lambda: versions.create("acme", spec, "retry-1")] * CALLERS))
    assert built == [version_id]  # built once
    # the same content under other keys (or none) is the same version too, however the calls interleave
    keys = [f"other-{n}" for n in range(CALLERS // 2)] + [""] * (CALLERS // 2)
    assert _one_resource(_race([lambda k=k: versions.create("acme", spec, k) for k in keys])) == version_id

    other = VersionSpec("race", (), "data.jsonl", "auto", "tiny-qwen2", CurationOptions(validation_fraction=0.5))
    mixed = _race([lambda: versions.create("acme", other, "retry-1")] * 4)
    assert all(isinstance(r, FailedPrecondition) for r in mixed), mixed
