"""Jobs count their events on their own row: sequence numbers are taken under the row's lock.

Revision ID: 0010_job_event_counter
Revises: 0009_leases
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_job_event_counter"
down_revision = "0009_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("last_event_sequence", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE jobs SET last_event_sequence = "
        "(SELECT COALESCE(MAX(sequence), 0) FROM job_events WHERE job_events.job_id = jobs.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("last_event_sequence")
