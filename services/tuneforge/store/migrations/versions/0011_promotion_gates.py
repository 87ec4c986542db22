"""Promotion gates: what a version must show before an alias of an adapter may point to it.

Revision ID: 0011_promotion_gates
Revises: 0010_job_event_counter
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_promotion_gates"
down_revision = "0010_job_event_counter"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "promotion_gates",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("adapter", sa.String(63), nullable=False),
        sa.Column("alias", sa.String(63), nullable=False),
        sa.Column("gate_json", sa.Text(), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "adapter", "alias", name="pk_promotion_gates"),
    )


def downgrade() -> None:
    op.drop_table("promotion_gates")
