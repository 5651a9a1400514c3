"""What the "Why this advice?" page reads: evidence per order, the order a card is about.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21

Both columns are nullable: records written before this revision stay valid, and their
page shows what they hold.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_order", sa.Column("evidence", sa.JSON(), nullable=True))
    op.add_column("audit_card", sa.Column("order_position", sa.Integer(), nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite before 3.35 cannot drop a column in place.
    with op.batch_alter_table("audit_card") as batch:
        batch.drop_column("order_position")
    with op.batch_alter_table("audit_order") as batch:
        batch.drop_column("evidence")
