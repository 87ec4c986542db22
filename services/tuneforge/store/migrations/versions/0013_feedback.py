"""Feedback on served answers: the answers kept for a while, the feedback items, and the lineage of the
files their exports wrote.

Revision ID: 0013_feedback
Revises: 0012_model_versions
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_feedback"
down_revision = "0012_model_versions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "served_responses",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("base_model", sa.String(512), nullable=False),
        sa.Column("messages_json", sa.Text(), nullable=False),
        sa.Column("sampling_json", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("finish_reason", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_served_responses"),
    )
    op.create_index("ix_served_responses_expires_at", "served_responses", ["expires_at"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("response_id", sa.String(64), nullable=False),
        sa.Column("rating", sa.String(8), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("corrected_answer", sa.Text(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("base_model", sa.String(512), nullable=False),
        sa.Column("messages_json", sa.Text(), nullable=False),
        sa.Column("sampling_json", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        sa.UniqueConstraint("tenant", "response_id", name="uq_feedback_tenant_response_id"),
    )
    op.create_index("ix_feedback_tenant_created", "feedback", ["tenant", "created_at", "id"])
    op.create_table(
        "feedback_export_lines",
        sa.Column("file_id", sa.String(64), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("feedback_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("file_id", "line", name="pk_feedback_export_lines"),
    )
    op.create_index("ix_feedback_export_lines_tenant_feedback", "feedback_export_lines", ["tenant", "feedback_id"])


def downgrade() -> None:
    op.drop_table("feedback_export_lines")
    op.drop_table("feedback")
    op.drop_table("served_responses")
