"""Idempotent record shipping, marker values, and the stored pseudonym key.

* ``audit_record.record_key``: a key minted with each audit record, so a record shipped twice from the
  outbox (a crash between the database commit and the outbox delete) is stored once.
* ``shared_marker.value``: the card a "shown" marker stands for, so order-sign can ask whether the
  clinician answered it.
* ``service_secret``: one row per generated secret; the pseudonym key lives here when
  ``KETAMINE_CDS_AUDIT_HASH_KEY`` is not set, the same for every replica sharing the database.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_record") as batch:
        batch.add_column(sa.Column("record_key", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_audit_record_record_key", ["record_key"])
    with op.batch_alter_table("shared_marker") as batch:
        batch.add_column(sa.Column("value", sa.String(64), nullable=True))
    op.create_table(
        "service_secret",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_service_secret"),
    )


def downgrade() -> None:
    op.drop_table("service_secret")
    with op.batch_alter_table("shared_marker") as batch:
        batch.drop_column("value")
    with op.batch_alter_table("audit_record") as batch:
        batch.drop_constraint("uq_audit_record_record_key", type_="unique")
        batch.drop_column("record_key")
