"""Evaluation scores on a 1-5 scale: an LLM judge's per answer, and imported human ratings.

Revision ID: 0008_eval_scores
Revises: 0007_eval_runs
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_eval_scores"
down_revision = "0007_eval_runs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("eval_runs") as batch:
        batch.add_column(sa.Column("judge_model", sa.String(200), nullable=False, server_default=""))
    with op.batch_alter_table("eval_results") as batch:
        batch.add_column(sa.Column("judge_score", sa.Float(), nullable=True))
        batch.add_column(sa.Column("judge_reason", sa.Text(), nullable=False, server_default=""))
    op.create_table(
        "eval_human_scores",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("item_id", sa.String(200), nullable=False),
        sa.Column("rater", sa.String(63), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "model", "item_id", "rater", name="pk_eval_human_scores"),
    )


def downgrade() -> None:
    op.drop_table("eval_human_scores")
    with op.batch_alter_table("eval_results") as batch:
        batch.drop_column("judge_reason")
        batch.drop_column("judge_score")
    with op.batch_alter_table("eval_runs") as batch:
        batch.drop_column("judge_model")
