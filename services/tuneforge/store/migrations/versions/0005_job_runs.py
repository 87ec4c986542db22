"""Where the runner is in a job's metrics log, and how many times the job was submitted.

Revision ID: 0005_job_runs
Revises: 0004_jobs
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_job_runs"
down_revision = "0004_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("log_offset", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("attempt")
        batch.drop_column("log_offset")
