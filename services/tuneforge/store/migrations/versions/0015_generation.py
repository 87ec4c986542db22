"""Self-Instruct generation: runs, their candidates and reviews, and the lineage of the files built from them.

Revision ID: 0015_generation
Revises: 0014_exports
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_generation"
down_revision = "0014_exports"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generation_runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("resolved_model", sa.String(512), nullable=False),
        sa.Column("seeds_json", sa.Text(), nullable=False),
        sa.Column("seeds_per_prompt", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("sampling_json", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_generation_runs"),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_generation_runs_tenant_idempotency_key"),
    )
    op.create_index("ix_generation_runs_tenant_created", "generation_runs", ["tenant", "created_at", "id"])
    op.create_table(
        "generation_candidates",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("original_instruction", sa.Text(), nullable=False),
        sa.Column("original_answer", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("filter_reason", sa.String(64), nullable=False),
        sa.Column("seeds_json", sa.Text(), nullable=False),
        sa.Column("model", sa.String(512), nullable=False),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("edited", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_generation_candidates"),
    )
    op.create_index("ix_generation_candidates_run", "generation_candidates", ["run_id", "index"])
    op.create_table(
        "generation_export_lines",
        sa.Column("file_id", sa.String(64), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("candidate_id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(512), nullable=False),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("file_id", "line", name="pk_generation_export_lines"),
    )


def downgrade() -> None:
    op.drop_table("generation_export_lines")
    op.drop_index("ix_generation_candidates_run", table_name="generation_candidates")
    op.drop_table("generation_candidates")
    op.drop_index("ix_generation_runs_tenant_created", table_name="generation_runs")
    op.drop_table("generation_runs")
