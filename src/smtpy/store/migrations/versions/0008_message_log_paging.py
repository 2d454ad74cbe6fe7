"""message log rollup: counts per closed hour and domain, by event, for the API's stats

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_log_hourly",
        sa.Column("hour", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("received", sa.Integer(), nullable=False),
        sa.Column("delivered", sa.Integer(), nullable=False),
        sa.Column("deferred", sa.Integer(), nullable=False),
        sa.Column("bounced", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("discarded", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "domain"),
    )
    op.create_table(
        "message_log_rollup",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("sealed_until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("message_log_rollup")
    op.drop_table("message_log_hourly")
