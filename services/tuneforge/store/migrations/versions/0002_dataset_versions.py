"""Dataset versions.

Revision ID: 0002_dataset_versions
Revises: 0001_files
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_dataset_versions"
down_revision = "0001_files"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataset_versions",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("dataset", sa.String(63), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("base_model", sa.String(512), nullable=False),
        sa.Column("data_format", sa.String(16), nullable=False),
        sa.Column("inputs_json", sa.Text(), nullable=False),
        sa.Column("options_json", sa.Text(), nullable=False),
        sa.Column("counts_json", sa.Text(), nullable=False),
        sa.Column("template_hash", sa.String(64), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), nullable=False),
        sa.Column("bytes_processed", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id", name="pk_dataset_versions"),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_dataset_versions_tenant_idempotency_key"),
    )
    op.create_index("ix_dataset_versions_tenant_created", "dataset_versions", ["tenant", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_dataset_versions_tenant_created", table_name="dataset_versions")
    op.drop_table("dataset_versions")
