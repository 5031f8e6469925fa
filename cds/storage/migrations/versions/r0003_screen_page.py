"""Screen pages: the whole screen behind each response's cards, kept until its link expires.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:50:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "screen_page",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_screen_page")),
    )
    op.create_index(op.f("ix_screen_page_expires_at"), "screen_page", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_screen_page_expires_at"), table_name="screen_page")
    op.drop_table("screen_page")
