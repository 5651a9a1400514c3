"""Audit trail (calls, orders, cards), card feedback, JWT replay cache.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Written out in full (no import of cds_service.store.tables): a migration must keep creating
the schema of its own time after the models move on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_call",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("called_at", sa.DateTime(), nullable=False),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("hook_instance", sa.String(128), nullable=True),
        sa.Column("patient_hmac", sa.String(64), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("issue_code", sa.String(32), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("knowledge_version", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_call"),
    )
    op.create_index("ix_audit_call_called_at", "audit_call", ["called_at"])
    op.create_index("ix_audit_call_hook_instance", "audit_call", ["hook_instance"])

    op.create_table(
        "audit_order",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("call_id", BIG_ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("code_system", sa.String(128), nullable=True),
        sa.Column("code", sa.String(64), nullable=True),
        sa.Column("procedure", sa.String(64), nullable=True),
        sa.Column("variant", sa.String(32), nullable=True),
        sa.Column("scenario", sa.String(16), nullable=True),
        sa.Column("acr_category", sa.String(8), nullable=True),
        sa.Column("provenance", sa.String(16), nullable=True),
        sa.Column("pama_rating", sa.String(24), nullable=True),
        sa.Column("consult_id", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(["call_id"], ["audit_call.id"], name="fk_audit_order_call_id_audit_call",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_audit_order"),
    )
    op.create_index("ix_audit_order_call_id", "audit_order", ["call_id"])

    op.create_table(
        "audit_card",
        sa.Column("uuid", sa.String(64), nullable=False),
        sa.Column("call_id", BIG_ID, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("indicator", sa.String(8), nullable=False),
        sa.Column("summary", sa.String(160), nullable=False),
        sa.Column("suggestions", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["call_id"], ["audit_call.id"], name="fk_audit_card_call_id_audit_call",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("uuid", name="pk_audit_card"),
    )
    op.create_index("ix_audit_card_call_id", "audit_card", ["call_id"])

    op.create_table(
        "feedback",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("dedup_key", sa.String(64), nullable=False),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("card_uuid", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON(), nullable=False),
        sa.Column("override_system", sa.String(512), nullable=True),
        sa.Column("override_code", sa.String(256), nullable=True),
        sa.Column("override_display", sa.String(512), nullable=True),
        sa.Column("user_comment", sa.Text(), nullable=True),
        sa.Column("outcome_at", sa.DateTime(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("flag", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        sa.UniqueConstraint("dedup_key", name="uq_feedback_dedup_key"),
    )
    op.create_index("ix_feedback_card_uuid", "feedback", ["card_uuid"])
    op.create_index("ix_feedback_received_at", "feedback", ["received_at"])

    op.create_table(
        "jwt_replay",
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", name="pk_jwt_replay"),
    )
    op.create_index("ix_jwt_replay_expires_at", "jwt_replay", ["expires_at"])


def downgrade() -> None:
    for table in ("jwt_replay", "feedback", "audit_card", "audit_order", "audit_call"):
        op.drop_table(table)
