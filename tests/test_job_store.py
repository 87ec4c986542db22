"""Job persistence: the state machine, gap-free event cursors, cancel, limits, tenancy (SQLite + PostgreSQL)."""

from __future__ import annotations

import pytest

from tuneforge.common.errors import FailedPrecondition, NotFound, ResourceExhausted
from tuneforge.store.metadata import MetadataStore
from tuneforge.training.job_store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore
from tuneforge.training.jobs import JobSpecInput

SPEC = JobSpecInput(base_model="tiny-qwen2", dataset_version_id="dsv-aaaaaaaaaaaaaaaaaaaaaaaa", adapter_name="bot")


@pytest.fixture()
def jobs(database_url: str):
    store = MetadataStore(database_url)
    store.migrate()
    yield JobStore(store, max_active_per_tenant=2)
    store.close()


def test_lifecycle_with_a_gap_free_event_log(jobs: JobStore) -> None:
    job = jobs.create("acme", SPEC)
    assert job.state == QUEUED and job.id.startswith("job-")
    jobs.transition(job.id, RUNNING, "workers started", runner_id="raysubmit_1")
    for step in (1, 2):
        jobs.record_metrics(job.id, {"step": step, "total_steps": 2, "loss": 3.0 - step, "learning_rate": 1e-4})
    done = jobs.transition(job.id, SUCCEEDED, "registered bot:1", adapter_version="bot:1")
    assert (done.step, done.total_steps, done.adapter_version, done.runner_id) == (2, 2, "bot:1", "raysubmit_1")
    assert done.metrics["loss"] == 1.0 and done.started_at is not None and done.ended_at is not None
    events = jobs.events("acme", job.id)
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.state for e in events if e.type == "state_changed"] == ["validating_files", QUEUED, RUNNING, SUCCEEDED]
    # a client that saw event 3 reconnects and gets exactly the rest
    assert [e.sequence for e in jobs.events("acme", job.id, after=3)] == [4, 5, 6]


def test_forbidden_transitions_are_refused(jobs: JobStore) -> None:
    job = jobs.create("acme", SPEC)
    with pytest.raises(FailedPrecondition, match="cannot become succeeded"):
        jobs.transition(job.id, SUCCEEDED, "too early")
    jobs.transition(job.id, FAILED, "out of memory on worker 0", error_code="out_of_memory")
    failed = jobs.get("acme", job.id)
    assert (failed.error_code, failed.error_message) == ("out_of_memory", "out of memory on worker 0")
    with pytest.raises(FailedPrecondition):
        jobs.transition(job.id, RUNNING, "zombie")


def test_cancel_queued_at_once_and_running_by_request(jobs: JobStore) -> None:
    queued = jobs.create("acme", SPEC)
    assert jobs.cancel("acme", queued.id).state == CANCELLED
    with pytest.raises(FailedPrecondition, match="already cancelled"):
        jobs.cancel("acme", queued.id)
    running = jobs.create("acme", SPEC)
    jobs.transition(running.id, RUNNING, "started")
    flagged = jobs.cancel("acme", running.id)
    assert flagged.state == RUNNING and flagged.cancel_requested
    assert [j.id for j in jobs.unfinished()] == [running.id]


def test_idempotency_limits_and_tenancy(jobs: JobStore) -> None:
    first = jobs.create("acme", SPEC, idempotency_key="k1")
    assert jobs.create("acme", SPEC, idempotency_key="k1").id == first.id
    other = JobSpecInput(base_model="tiny-qwen2", dataset_version_id=SPEC.dataset_version_id, adapter_name="other")
    with pytest.raises(FailedPrecondition):
        jobs.create("acme", other, idempotency_key="k1")
    jobs.create("acme", SPEC)
    with pytest.raises(ResourceExhausted, match="limit 2"):
        jobs.create("acme", SPEC)
    assert jobs.create("globex", SPEC).state == QUEUED  # limits are per tenant
    for call in (
        lambda: jobs.get("globex", first.id),
        lambda: jobs.events("globex", first.id),
        lambda: jobs.cancel("globex", first.id),
    ):
        with pytest.raises(NotFound):
            call()
    page, token = jobs.list("acme", page_size=1)
    assert len(page) == 1 and token
    assert {j.id for j in jobs.list("acme", states=[QUEUED])[0]} >= {first.id}
