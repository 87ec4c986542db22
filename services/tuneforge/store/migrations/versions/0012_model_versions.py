"""Model versions in the registry: a registry line holds LoRA adapters, full fine-tunes or merged models.

Revision ID: 0012_model_versions
Revises: 0011_promotion_gates
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_model_versions"
down_revision = "0011_promotion_gates"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # every line registered before held LoRA adapters
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="adapter"))


def downgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.drop_column("kind")
