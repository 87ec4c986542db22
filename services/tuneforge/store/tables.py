"""ORM tables of the metadata store. Every tenant-owned row carries `tenant`; every query filters on it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone; this puts it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Now, in UTC, timezone-aware."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with stable constraint names (so migrations are reproducible)."""

    metadata = MetaData(naming_convention=NAMING)


class FileRow(Base):
    """A raw file uploaded through DatasetService.UploadFile."""

    __tablename__ = "files"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_files_tenant_idempotency_key"),
        Index("ix_files_tenant_created", "tenant", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), nullable=False)
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    data_format: Mapped[str] = mapped_column(String(16), nullable=False)
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    artifact_key: Mapped[str] = mapped_column(String(1024), nullable=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[str] = mapped_column(String(32), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class DatasetVersionRow(Base):
    """A dataset version: content-addressed per tenant, built by the curation pipeline."""

    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_dataset_versions_tenant_idempotency_key"),
        Index("ix_dataset_versions_tenant_created", "tenant", "created_at", "id"),
    )

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(63), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    base_model: Mapped[str] = mapped_column(String(512), nullable=False)
    data_format: Mapped[str] = mapped_column(String(16), nullable=False)
    inputs_json: Mapped[str] = mapped_column(Text, nullable=False)
    options_json: Mapped[str] = mapped_column(Text, nullable=False)
    counts_json: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    template_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    failure_reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    bytes_total: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    bytes_processed: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class AdapterRow(Base):
    """A tenant's named line of registry versions: LoRA adapters, full fine-tunes or merged models."""

    __tablename__ = "adapters"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    base_model: Mapped[str] = mapped_column(String(512), nullable=False)
    #: What every version of the line is: `adapter`, `full_fine_tune` or `merged` (catalog/adapters.py).
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default="adapter", server_default="adapter")
    latest_version: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class AdapterVersionRow(Base):
    """One immutable adapter version with its lineage and file hashes."""

    __tablename__ = "adapter_versions"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    adapter: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    rank: Mapped[int] = mapped_column(nullable=False)
    target_modules_json: Mapped[str] = mapped_column(Text, nullable=False)
    lineage_json: Mapped[str] = mapped_column(Text, nullable=False)
    metrics_json: Mapped[str] = mapped_column(Text, nullable=False)
    files_json: Mapped[str] = mapped_column(Text, nullable=False)
    artifact_key: Mapped[str] = mapped_column(String(1024), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class AdapterAliasRow(Base):
    """A movable name (e.g. `prod`) for one version of an adapter."""

    __tablename__ = "adapter_aliases"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    adapter: Mapped[str] = mapped_column(String(63), primary_key=True)
    alias: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class PromotionGateRow(Base):
    """What a version must show before an alias of an adapter may point to it (a tenant's gate)."""

    __tablename__ = "promotion_gates"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    adapter: Mapped[str] = mapped_column(String(63), primary_key=True)
    alias: Mapped[str] = mapped_column(String(63), primary_key=True)
    gate_json: Mapped[str] = mapped_column(Text, nullable=False)
    updated_by: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class JobRow(Base):
    """A training job and its lifecycle state."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), nullable=False)
    state: Mapped[str] = mapped_column(String(24), nullable=False)
    spec_json: Mapped[str] = mapped_column(Text, nullable=False)
    error_code: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    error_message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    step: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    total_steps: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    metrics_json: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    adapter_version: Mapped[str] = mapped_column(String(160), nullable=False, default="")
    runner_id: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    cancel_requested: Mapped[bool] = mapped_column(nullable=False, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: Bytes of the job's metrics log already turned into events (survives service restarts).
    log_offset: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0, server_default="0")
    #: Times the job was submitted to Ray (a lost submission is resubmitted and resumes from its checkpoint).
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    #: Sequence of the job's newest event: the next one takes this plus one, under the row's lock.
    last_event_sequence: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0, server_default="0")


class JobEventRow(Base):
    """One event of a job; `sequence` counts from 1 per job without gaps."""

    __tablename__ = "job_events"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    type: Mapped[str] = mapped_column(String(24), nullable=False)
    level: Mapped[str] = mapped_column(String(16), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(String(24), nullable=False, default="")
    step: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    metrics_json: Mapped[str] = mapped_column(Text, nullable=False, default="{}")


class EvalSuiteRow(Base):
    """An evaluation suite a tenant uploaded (its JSONL lives in the artifact store)."""

    __tablename__ = "eval_suites"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_eval_suites_tenant_idempotency_key"),
        Index("ix_eval_suites_tenant_created", "tenant", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), nullable=False)
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    num_items: Mapped[int] = mapped_column(Integer, nullable=False)
    category_counts_json: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    artifact_key: Mapped[str] = mapped_column(String(1024), nullable=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class EvalRunRow(Base):
    """An evaluation run: a suite against a reference model and adapters."""

    __tablename__ = "eval_runs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_eval_runs_tenant_idempotency_key"),
        Index("ix_eval_runs_tenant_created", "tenant", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), nullable=False)
    suite_id: Mapped[str] = mapped_column(String(128), nullable=False)
    models_json: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    failure_reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    completed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    sampling_json: Mapped[str] = mapped_column(Text, nullable=False)
    cancel_requested: Mapped[bool] = mapped_column(nullable=False, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    judge_model: Mapped[str] = mapped_column(String(200), nullable=False, default="", server_default="")


class EvalResultRow(Base):
    """One model's answer to one suite item, with every check's verdict."""

    __tablename__ = "eval_results"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    category: Mapped[str] = mapped_column(String(100), nullable=False)
    output: Mapped[str] = mapped_column(Text, nullable=False)
    passed: Mapped[bool] = mapped_column(nullable=False)
    checks_json: Mapped[str] = mapped_column(Text, nullable=False)
    judge_score: Mapped[float | None] = mapped_column(Float)
    judge_reason: Mapped[str] = mapped_column(Text, nullable=False, default="", server_default="")


class EvalHumanScoreRow(Base):
    """A person's 1-5 rating of one model's answer to one suite item."""

    __tablename__ = "eval_human_scores"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    rater: Mapped[str] = mapped_column(String(63), primary_key=True)
    score: Mapped[int] = mapped_column(Integer, nullable=False)
    comment: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class LeaseRow(Base):
    """Who drives one piece of background work (a training job, an evaluation run) and until when.

    Not tenant-owned: the name is `<kind>:<resource id>`, and only the reconcilers read it.
    """

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200), nullable=False)
    acquired_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class ServedResponseRow(Base):
    """An answer the inference front served, kept for `inference.feedback_window_s` so that feedback on it
    is stored with what produced it (the prompt, model and sampling as the server knew them)."""

    __tablename__ = "served_responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), nullable=False)
    #: The exact model that answered (`support-bot:7`, or the base model id).
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    base_model: Mapped[str] = mapped_column(String(512), nullable=False)
    messages_json: Mapped[str] = mapped_column(Text, nullable=False)
    sampling_json: Mapped[str] = mapped_column(Text, nullable=False)
    answer: Mapped[str] = mapped_column(Text, nullable=False)
    finish_reason: Mapped[str] = mapped_column(String(32), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)

    __table_args__ = (Index("ix_served_responses_expires_at", "expires_at"),)


class FeedbackRow(Base):
    """A tenant's rating of one served answer (one item per response; a later submit replaces it)."""

    __tablename__ = "feedback"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), nullable=False)
    response_id: Mapped[str] = mapped_column(String(64), nullable=False)
    #: `up`, `down`, or '' for none.
    rating: Mapped[str] = mapped_column(String(8), nullable=False, default="")
    #: 1-5, or 0 for none.
    score: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    corrected_answer: Mapped[str] = mapped_column(Text, nullable=False, default="")
    comment: Mapped[str] = mapped_column(Text, nullable=False, default="")
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    base_model: Mapped[str] = mapped_column(String(512), nullable=False)
    messages_json: Mapped[str] = mapped_column(Text, nullable=False)
    sampling_json: Mapped[str] = mapped_column(Text, nullable=False)
    answer: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)

    __table_args__ = (
        UniqueConstraint("tenant", "response_id", name="uq_feedback_tenant_response_id"),
        Index("ix_feedback_tenant_created", "tenant", "created_at", "id"),
    )


class FeedbackExportLineRow(Base):
    """Lineage of a file an export of feedback wrote: which feedback item each of its lines came from."""

    __tablename__ = "feedback_export_lines"

    file_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: 1-based line of the file.
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), nullable=False)
    feedback_id: Mapped[str] = mapped_column(String(64), nullable=False)
    #: `instruction` (a corrected or approved answer) or `preference` (a chosen/rejected pair).
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)

    __table_args__ = (Index("ix_feedback_export_lines_tenant_feedback", "tenant", "feedback_id"),)


class ModelExportRow(Base):
    """A merge of an adapter into its base, or an export of a model as safetensors or GGUF (ExportService)."""

    __tablename__ = "model_exports"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_model_exports_tenant_idempotency_key"),
        Index("ix_model_exports_tenant_created", "tenant", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), nullable=False)
    #: `merge` or `export`.
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    #: The version it reads, resolved at creation (`name:version`).
    source: Mapped[str] = mapped_column(String(200), nullable=False)
    #: `safetensors` or `gguf`; `quant` the GGUF tensor type; `dtype` a merge's precision.
    format: Mapped[str] = mapped_column(String(16), nullable=False)
    quant: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    dtype: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    #: The model line a merge registers under.
    model_name: Mapped[str] = mapped_column(String(63), nullable=False, default="")
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    stage: Mapped[str] = mapped_column(Text, nullable=False, default="")
    error: Mapped[str] = mapped_column(Text, nullable=False, default="")
    #: The files written (name, sha256, size_bytes), once it succeeded, under `exports/<id>/` of the tenant.
    files_json: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    #: The model version a merge registered (`name:version`).
    model_version: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    cancel_requested: Mapped[bool] = mapped_column(nullable=False, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class GenerationRunRow(Base):
    """A Self-Instruct generation run (GenerationService): seed tasks in, reviewable candidates out."""

    __tablename__ = "generation_runs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_generation_runs_tenant_idempotency_key"),
        Index("ix_generation_runs_tenant_created", "tenant", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), nullable=False)
    #: As requested (`base` or `adapter[:version|alias]`); `resolved_model` the exact one, once running.
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    resolved_model: Mapped[str] = mapped_column(String(512), nullable=False, default="")
    seeds_json: Mapped[str] = mapped_column(Text, nullable=False)
    seeds_per_prompt: Mapped[int] = mapped_column(Integer, nullable=False)
    count: Mapped[int] = mapped_column(Integer, nullable=False)
    sampling_json: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    failure_reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    cancel_requested: Mapped[bool] = mapped_column(nullable=False, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class GenerationCandidateRow(Base):
    """One proposed instruction and answer of a generation run, and its review."""

    __tablename__ = "generation_candidates"
    __table_args__ = (Index("ix_generation_candidates_run", "run_id", "index"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), nullable=False)
    run_id: Mapped[str] = mapped_column(String(64), nullable=False)
    index: Mapped[int] = mapped_column(Integer, nullable=False)
    instruction: Mapped[str] = mapped_column(Text, nullable=False)
    answer: Mapped[str] = mapped_column(Text, nullable=False)
    original_instruction: Mapped[str] = mapped_column(Text, nullable=False)
    original_answer: Mapped[str] = mapped_column(Text, nullable=False)
    #: `pending`, `accepted`, `rejected` or `filtered` (`filter_reason` says why).
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    filter_reason: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    seeds_json: Mapped[str] = mapped_column(Text, nullable=False)
    model: Mapped[str] = mapped_column(String(512), nullable=False)
    reviewer: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    edited: Mapped[bool] = mapped_column(nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class GenerationExportLineRow(Base):
    """Lineage of a file BuildDatasetFromCandidates wrote: the candidate behind each of its lines."""

    __tablename__ = "generation_export_lines"

    file_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: 1-based line of the file.
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), nullable=False)
    candidate_id: Mapped[str] = mapped_column(String(64), nullable=False)
    run_id: Mapped[str] = mapped_column(String(64), nullable=False)
    model: Mapped[str] = mapped_column(String(512), nullable=False)
    reviewer: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
