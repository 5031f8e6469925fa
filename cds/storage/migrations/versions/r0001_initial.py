"""Initial schema: issued cards, feedback, audit records, shared markers.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "issued_card",
        sa.Column("uuid", sa.String(64), nullable=False),
        sa.Column("service_id", sa.String(128), nullable=False),
        sa.Column("rule_id", sa.String(128), nullable=False),
        sa.Column("rule_version", sa.String(64), nullable=False),
        sa.Column("hook_instance", sa.String(128), nullable=False),
        sa.Column("patient_hash", sa.String(64), nullable=False),
        sa.Column("encounter_hash", sa.String(64), nullable=True),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uuid", name="pk_issued_card"),
    )
    op.create_index("ix_issued_card_rule_id", "issued_card", ["rule_id"])
    op.create_index("ix_issued_card_patient_hash", "issued_card", ["patient_hash"])
    op.create_index("ix_issued_card_issued_at", "issued_card", ["issued_at"])

    op.create_table(
        "card_feedback",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("dedupe_key", sa.String(64), nullable=False),
        sa.Column("card_uuid", sa.Text(), nullable=False),
        sa.Column("service_id", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("override_system", sa.Text(), nullable=True),
        sa.Column("override_code", sa.Text(), nullable=True),
        sa.Column("override_display", sa.Text(), nullable=True),
        sa.Column("user_comment", sa.Text(), nullable=True),
        sa.Column("accepted_suggestions", sa.JSON(), nullable=False),
        sa.Column("outcome_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("known_card", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_card_feedback"),
        sa.UniqueConstraint("dedupe_key", name="uq_card_feedback_dedupe_key"),
    )
    op.create_index("ix_card_feedback_card_uuid", "card_feedback", ["card_uuid"])
    op.create_index("ix_card_feedback_received_at", "card_feedback", ["received_at"])

    op.create_table(
        "audit_record",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hook_instance", sa.Text(), nullable=False),
        sa.Column("service_id", sa.Text(), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=True),
        sa.Column("jti", sa.Text(), nullable=True),
        sa.Column("patient_hash", sa.String(64), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("outcome", sa.Integer(), nullable=False),
        sa.Column("rule_ids", sa.JSON(), nullable=False),
        sa.Column("card_uuids", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_record"),
    )
    op.create_index("ix_audit_record_at", "audit_record", ["at"])
    op.create_index("ix_audit_record_patient_hash", "audit_record", ["patient_hash"])

    op.create_table(
        "shared_marker",
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("marker", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "marker", name="pk_shared_marker"),
    )
    op.create_index("ix_shared_marker_expires_at", "shared_marker", ["expires_at"])


def downgrade() -> None:
    op.drop_table("shared_marker")
    op.drop_table("audit_record")
    op.drop_table("card_feedback")
    op.drop_table("issued_card")
