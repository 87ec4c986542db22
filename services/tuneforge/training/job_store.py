"""Jobs as persistent resources with a state machine and a gap-free event log.

States follow hosted fine-tuning APIs: VALIDATING_FILES → QUEUED → RUNNING → SUCCEEDED | FAILED |
CANCELLED. Every state change is written together with its STATE_CHANGED event in one transaction,
and events are numbered from 1 per job without gaps, so a client streaming them can reconnect with
the last sequence it saw and miss or repeat nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update

from tuneforge.common.errors import FailedPrecondition, NotFound, ResourceExhausted
from tuneforge.common.names import check_idempotency_key, new_id
from tuneforge.store.idempotency import create_idempotent
from tuneforge.store.metadata import MetadataStore, newest_first_page, tenant_row
from tuneforge.store.tables import JobEventRow, JobRow, utcnow
from tuneforge.training.spec import JobSpecInput

VALIDATING, QUEUED, RUNNING = "validating_files", "queued", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({VALIDATING, QUEUED, RUNNING})
TRANSITIONS = {
    VALIDATING: {QUEUED, FAILED, CANCELLED},
    QUEUED: {RUNNING, FAILED, CANCELLED},
    RUNNING: {SUCCEEDED, FAILED, CANCELLED, QUEUED},  # back to QUEUED when a lost run is resubmitted
}


@dataclass(frozen=True)
class JobInfo:
    id: str
    state: str
    spec: dict[str, Any]
    error_code: str
    error_message: str
    step: int
    total_steps: int
    metrics: dict[str, float]
    adapter_version: str
    runner_id: str
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    tenant: str = ""
    log_offset: int = 0
    attempt: int = 0

    def spec_input(self) -> JobSpecInput:
        try:
            return JobSpecInput.model_validate(self.spec)
        except ValidationError:  # accepted by the checks of its day: a job is never stranded by newer ones
            return JobSpecInput.model_construct(**self.spec)


@dataclass(frozen=True)
class JobEvent:
    sequence: int
    created_at: datetime
    type: str
    level: str
    message: str
    state: str
    step: int
    metrics: dict[str, float]


def _info(row: JobRow) -> JobInfo:
    return JobInfo(
        row.id,
        row.state,
        json.loads(row.spec_json),
        row.error_code,
        row.error_message,
        row.step,
        row.total_steps,
        json.loads(row.metrics_json),
        row.adapter_version,
        row.runner_id,
        row.cancel_requested,
        row.created_at,
        row.updated_at,
        row.started_at,
        row.ended_at,
        row.tenant,
        row.log_offset,
        row.attempt,
    )


def _event(row: JobEventRow) -> JobEvent:
    return JobEvent(
        row.sequence,
        row.created_at,
        row.type,
        row.level,
        row.message,
        row.state,
        row.step,
        json.loads(row.metrics_json),
    )


class JobStore:
    """Persistence and state machine of training jobs (the runner moves them; clients read them)."""

    def __init__(self, metadata: MetadataStore, max_active_per_tenant: int = 4) -> None:
        self.metadata = metadata
        self.max_active_per_tenant = max_active_per_tenant

    def _append(
        self,
        session: Any,
        row: JobRow,
        type_: str,
        message: str,
        *,
        level: str = "info",
        state: str = "",
        step: int = 0,
        metrics: dict[str, float] | None = None,
    ) -> int:
        """Adds the job's next event; `row` is new or locked (`_locked`), so no other writer takes its number.

        The number follows the counter and the newest event alike: during a rolling upgrade a
        replica of the code before the counter may still add events without advancing it.
        """
        written = session.scalar(select(func.max(JobEventRow.sequence)).where(JobEventRow.job_id == row.id))
        row.last_event_sequence = max(row.last_event_sequence, written or 0) + 1
        session.add(
            JobEventRow(
                job_id=row.id,
                sequence=row.last_event_sequence,
                created_at=utcnow(),
                type=type_,
                level=level,
                message=message,
                state=state,
                step=step,
                metrics_json=json.dumps(metrics or {}),
            )
        )
        return row.last_event_sequence

    def create(self, tenant: str, spec: JobSpecInput, idempotency_key: str = "") -> JobInfo:
        """Persists a validated job as QUEUED (with its VALIDATING_FILES and QUEUED events)."""
        check_idempotency_key(idempotency_key)
        spec_json = json.dumps(spec.model_dump(), sort_keys=True)
        request_hash = hashlib.sha256(spec_json.encode()).hexdigest()

        def insert(session: Any) -> JobInfo:
            active = session.scalar(
                select(func.count()).select_from(JobRow).where(JobRow.tenant == tenant, JobRow.state.in_(ACTIVE))
            )
            if active >= self.max_active_per_tenant:
                raise ResourceExhausted(
                    f"{active} jobs are already queued or running for this tenant (limit "
                    f"{self.max_active_per_tenant}); wait for one to finish or cancel one"
                )
            now = utcnow()
            row = JobRow(
                id=new_id("job"),
                tenant=tenant,
                state=QUEUED,
                spec_json=spec_json,
                error_code="",
                error_message="",
                step=0,
                total_steps=0,
                metrics_json="{}",
                adapter_version="",
                runner_id="",
                cancel_requested=False,
                last_event_sequence=0,
                idempotency_key=idempotency_key or None,
                request_hash=request_hash,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            self._append(
                session, row, "state_changed", "spec, dataset version and base model checked", state=VALIDATING
            )
            self._append(session, row, "state_changed", "queued for the cluster", state=QUEUED)
            return _info(row)

        return create_idempotent(self.metadata, JobRow, tenant, idempotency_key, request_hash, "job", insert, _info)

    def _row(self, session: Any, tenant: str, job_id: str) -> JobRow:
        return tenant_row(session, JobRow, tenant, job_id, "job_id", "job", "job")

    def get(self, tenant: str, job_id: str) -> JobInfo:
        with self.metadata.session() as session:
            return _info(self._row(session, tenant, job_id))

    def list(
        self, tenant: str, states: list[str] | None = None, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[JobInfo], str]:
        query = select(JobRow).where(JobRow.tenant == tenant)
        if states:
            query = query.where(JobRow.state.in_(states))
        with self.metadata.session() as session:
            rows, token = newest_first_page(session, query, JobRow, page_size, page_token)
            return [_info(r) for r in rows], token

    def _move(
        self,
        session: Any,
        row: JobRow,
        state: str,
        message: str,
        *,
        error_code: str = "",
        adapter_version: str = "",
    ) -> None:
        if state not in TRANSITIONS.get(row.state, set()):
            raise FailedPrecondition(f"job {row.id} is {row.state}; it cannot become {state}")
        now = utcnow()
        row.state, row.updated_at = state, now
        if state == RUNNING and row.started_at is None:
            row.started_at = now
        if state in FINAL:
            row.ended_at = now
        if state == FAILED:
            row.error_code, row.error_message = error_code or "failed", message
        if adapter_version:
            row.adapter_version = adapter_version
        self._append(
            session,
            row,
            "state_changed",
            message,
            state=state,
            level="error" if state == FAILED else "info",
            step=row.step,
        )

    def _locked(self, session: Any, job_id: str) -> JobRow:
        """The job's row, locked until the transaction ends: its writers (the runner, cancel) take turns.

        PostgreSQL locks the row (SELECT ... FOR UPDATE). SQLite ignores FOR UPDATE and lets one writer
        at a time, so there a first write takes that lock before the row is read: a row read before
        could be stale by the time it is written, and two writers would take one event number.
        """
        if session.get_bind().dialect.name == "sqlite":
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id)
                .values(last_event_sequence=JobRow.last_event_sequence)
                .execution_options(synchronize_session=False)
            )
        row = session.get(JobRow, job_id, with_for_update=True, populate_existing=True)
        if row is None:
            raise NotFound("job", job_id)
        return row

    def transition(
        self,
        job_id: str,
        state: str,
        message: str,
        *,
        error_code: str = "",
        runner_id: str | None = None,
        adapter_version: str = "",
    ) -> JobInfo:
        """Moves a job to `state` and records the event; FAILED_PRECONDITION for a move the machine forbids."""
        with self.metadata.session() as session:
            row = self._locked(session, job_id)
            self._move(session, row, state, message, error_code=error_code, adapter_version=adapter_version)
            if runner_id is not None:
                row.runner_id = runner_id
            return _info(row)

    def mark_submitted(self, job_id: str, runner_id: str, message: str) -> JobInfo | None:
        """Records a submission to Ray (the job stays QUEUED until its workers start); None if it ended meanwhile."""
        with self.metadata.session() as session:
            row = self._locked(session, job_id)
            if row.state in FINAL:
                return None
            row.runner_id, row.attempt, row.updated_at = runner_id, row.attempt + 1, utcnow()
            self._append(session, row, "log", message, step=row.step)
            return _info(row)

    def apply_log(self, job_id: str, records: list[dict[str, Any]], offset: int) -> JobInfo:
        """Turns records of the job's metrics log into events, and moves `log_offset` past them, atomically.

        Records: `{"event": "started", "step", "world_size"}` when the workers start (QUEUED → RUNNING,
        or a LOG event when they restart after a failure), and `{"event": "step", "step", "total_steps",
        "loss", …, "validation_loss"?, "checkpoint"?}` per optimizer step.
        """
        with self.metadata.session() as session:
            row = self._locked(session, job_id)
            if row.state in FINAL:
                return _info(row)
            for record in records:
                kind = record.get("event", "step")
                step = int(record.get("step", 0))
                if kind == "started":
                    if row.state == QUEUED:
                        self._move(session, row, RUNNING, f"{record.get('world_size', 1)} worker(s) training")
                    else:
                        self._append(
                            session,
                            row,
                            "log",
                            f"workers restarted after a failure; resuming from step {step}",
                            level="warning",
                            step=step,
                        )
                elif kind == "step":
                    self._record(session, row, record)
            row.log_offset = offset
            return _info(row)

    def _record(self, session: Any, row: JobRow, record: dict[str, Any]) -> None:
        step = int(record["step"])
        if step <= row.step:
            # workers resumed from an older checkpoint (a restart, a resubmission) replay the steps
            # after it: each step is reported once, so a reader's curve never doubles back
            return
        numbers = {k: float(v) for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        row.step = max(row.step, step)
        row.total_steps = int(numbers.get("total_steps", row.total_steps))
        latest = {k: v for k, v in numbers.items() if k not in ("step", "total_steps")}
        row.metrics_json = json.dumps({**json.loads(row.metrics_json), **latest})
        row.updated_at = utcnow()
        training = {k: numbers[k] for k in ("loss", "learning_rate", "tokens_per_second") if k in numbers}
        loss = f"loss {training['loss']:.4f}" if "loss" in training else ""
        self._append(
            session, row, "metrics", f"step {step}/{row.total_steps} {loss}".strip(), step=step, metrics=training
        )
        if "validation_loss" in numbers:
            self._append(
                session,
                row,
                "evaluation",
                f"validation loss {numbers['validation_loss']:.4f}",
                step=step,
                metrics={"validation_loss": numbers["validation_loss"]},
            )
        if record.get("checkpoint"):
            self._append(
                session,
                row,
                "checkpoint_saved",
                f"checkpoint saved at step {step}",
                step=step,
                metrics={k: v for k, v in latest.items() if k in ("loss", "validation_loss")},
            )

    def events(self, tenant: str, job_id: str, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        """Events with a sequence above `after`, in order."""
        with self.metadata.session() as session:
            self._row(session, tenant, job_id)
            rows = session.scalars(
                select(JobEventRow)
                .where(JobEventRow.job_id == job_id, JobEventRow.sequence > after)
                .order_by(JobEventRow.sequence)
                .limit(limit)
            )
            return [_event(r) for r in rows]

    def cancel(self, tenant: str, job_id: str) -> JobInfo:
        """QUEUED jobs are cancelled at once; RUNNING ones are flagged for the runner to stop."""
        with self.metadata.session() as session:
            self._row(session, tenant, job_id)  # NOT_FOUND for another tenant's job
            row = self._locked(session, job_id)
            if row.state in FINAL:
                raise FailedPrecondition(f"job {job_id} already {row.state}")
            if row.state == RUNNING:
                if not row.cancel_requested:
                    row.cancel_requested, row.updated_at = True, utcnow()
                    self._append(session, row, "log", "cancellation requested; stopping the workers", step=row.step)
                return _info(row)
            self._move(session, row, CANCELLED, "cancelled by request")
            return _info(row)

    def unfinished(self) -> list[JobInfo]:
        """Jobs a (re)starting service must reconcile with the cluster: queued or running."""
        with self.metadata.session() as session:
            return [_info(r) for r in session.scalars(select(JobRow).where(JobRow.state.in_([QUEUED, RUNNING])))]
