"""Evaluation suites uploaded by tenants.

Revision ID: 0006_eval_suites
Revises: 0005_job_runs
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_eval_suites"
down_revision = "0005_job_runs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_suites",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("num_items", sa.Integer(), nullable=False),
        sa.Column("category_counts_json", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("artifact_key", sa.String(1024), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_eval_suites"),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_eval_suites_tenant_idempotency_key"),
    )
    op.create_index("ix_eval_suites_tenant_created", "eval_suites", ["tenant", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_eval_suites_tenant_created", table_name="eval_suites")
    op.drop_table("eval_suites")
