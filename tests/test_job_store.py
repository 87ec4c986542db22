"""Job persistence: the state machine, gap-free event cursors, cancel, limits, tenancy (SQLite + PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

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
    submitted = jobs.mark_submitted(job.id, f"{job.id}-1", "submitted to Ray")
    assert submitted is not None and (submitted.state, submitted.attempt) == (QUEUED, 1)
    log = [
        {"event": "started", "step": 0, "world_size": 2},
        {"event": "step", "step": 1, "total_steps": 2, "loss": 2.0, "learning_rate": 1e-4},
        {"event": "step", "step": 2, "total_steps": 2, "loss": 1.0, "validation_loss": 1.5, "checkpoint": "c-2"},
    ]
    running = jobs.apply_log(job.id, log[:2], offset=100)
    assert (running.state, running.step, running.log_offset) == (RUNNING, 1, 100)
    jobs.apply_log(job.id, log[2:], offset=150)
    done = jobs.transition(job.id, SUCCEEDED, "registered bot:1", adapter_version="bot:1")
    assert (done.step, done.total_steps, done.adapter_version, done.runner_id) == (2, 2, "bot:1", f"{job.id}-1")
    assert done.metrics["loss"] == 1.0 and done.started_at is not None and done.ended_at is not None
    events = jobs.events("acme", job.id)
    assert [e.sequence for e in events] == list(range(1, 10))
    assert [e.state for e in events if e.type == "state_changed"] == ["validating_files", QUEUED, RUNNING, SUCCEEDED]
    assert [e.type for e in events[3:8]] == ["state_changed", "metrics", "metrics", "evaluation", "checkpoint_saved"]
    assert events[6].metrics == {"validation_loss": 1.5}
    # a client that saw event 3 reconnects and gets exactly the rest
    assert [e.sequence for e in jobs.events("acme", job.id, after=3)] == [4, 5, 6, 7, 8, 9]
    # a restart of the workers is reported, not mistaken for a new start; a finished job takes no more records
    assert jobs.apply_log(job.id, [{"event": "started", "step": 2}], offset=200).log_offset == 150


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
    assert jobs.cancel("acme", running.id).cancel_requested  # asking twice is harmless
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


def test_concurrent_appenders_number_events_without_gaps_or_duplicates(jobs: JobStore) -> None:
    """The runner ingesting a log, a resubmission, a restart report and cancel, all at once on one job."""
    import threading

    job = jobs.create("acme", SPEC)
    jobs.transition(job.id, RUNNING, "started")
    rounds = 15
    barrier = threading.Barrier(4)
    failures: list[BaseException] = []

    def steps() -> None:
        barrier.wait()
        for step in range(1, rounds + 1):
            jobs.apply_log(job.id, [{"event": "step", "step": step, "total_steps": rounds, "loss": 1.0}], step)

    def restarts() -> None:
        barrier.wait()
        for step in range(rounds):
            jobs.apply_log(job.id, [{"event": "started", "step": step}], step)

    def submissions() -> None:
        barrier.wait()
        for attempt in range(rounds):
            jobs.mark_submitted(job.id, f"{job.id}-{attempt + 1}", "resubmitted")

    def cancel() -> None:
        barrier.wait()
        for _ in range(rounds):
            jobs.cancel("acme", job.id)

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # the test reports what any appender hit
                failures.append(exc)

        return run

    threads = [threading.Thread(target=guarded(work)) for work in (steps, restarts, submissions, cancel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    events = jobs.events("acme", job.id)
    # 3 state changes, every step, restart and submission once, and one cancellation request
    assert [e.sequence for e in events] == list(range(1, 3 + 3 * rounds + 2))
    assert sum(e.message == "cancellation requested; stopping the workers" for e in events) == 1
    assert [e.step for e in events if e.type == "metrics"] == list(range(1, rounds + 1))


def test_jobs_from_before_the_event_counter_go_on_numbering_after_their_last_event(database_url: str) -> None:
    from alembic import command
    from sqlalchemy import text

    store = MetadataStore(database_url)
    config = store._alembic_config()
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0009_leases")
    old = JobStore(store)
    with store.engine.begin() as connection:  # a job and its three events as the code before wrote them
        connection.execute(
            text(
                "INSERT INTO jobs (id, tenant, state, spec_json, error_code, error_message, step, total_steps, "
                "metrics_json, adapter_version, runner_id, cancel_requested, created_at, updated_at) VALUES "
                "('job-aaaaaaaaaaaaaaaaaaaaaaaa', 'acme', 'queued', :spec, '', '', 0, 0, '{}', '', '', false, "
                ":now, :now)"
            ),
            {"spec": json.dumps(SPEC.model_dump()), "now": datetime.now(UTC)},
        )
        for sequence in (1, 2, 3):
            connection.execute(
                text(
                    "INSERT INTO job_events (job_id, sequence, created_at, type, level, message, state, step, "
                    "metrics_json) VALUES ('job-aaaaaaaaaaaaaaaaaaaaaaaa', :sequence, :now, 'log', 'info', 'x', '', "
                    "0, '{}')"
                ),
                {"sequence": sequence, "now": datetime.now(UTC)},
            )
    store.migrate()
    old.cancel("acme", "job-aaaaaaaaaaaaaaaaaaaaaaaa")
    assert [e.sequence for e in old.events("acme", "job-aaaaaaaaaaaaaaaaaaaaaaaa")] == [1, 2, 3, 4]
    store.close()


def test_events_an_old_replica_adds_during_a_rolling_upgrade_do_not_block_the_counter(database_url: str) -> None:
    """A replica of the code before the counter numbers events max(sequence) + 1 and leaves the counter
    behind; the next event of this code follows whichever is newer instead of colliding."""
    from sqlalchemy import text

    store = MetadataStore(database_url)
    store.migrate()
    jobs = JobStore(store)
    job = jobs.create("acme", SPEC)
    before = [e.sequence for e in jobs.events("acme", job.id)]
    with store.engine.begin() as connection:  # the old replica's insert
        connection.execute(
            text(
                "INSERT INTO job_events (job_id, sequence, created_at, type, level, message, state, step, "
                "metrics_json) VALUES (:job, :sequence, :now, 'log', 'info', 'old replica', '', 0, '{}')"
            ),
            {"job": job.id, "sequence": before[-1] + 1, "now": datetime.now(UTC)},
        )
    jobs.cancel("acme", job.id)
    assert [e.sequence for e in jobs.events("acme", job.id)] == list(range(1, before[-1] + 3))
    store.close()
