"""message log and nodes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("queue_id", sa.String(length=32), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("sender", sa.String(length=600), nullable=True),
        sa.Column("alias", sa.String(length=600), nullable=True),
        sa.Column("recipient", sa.String(length=600), nullable=True),
        sa.Column("domain", sa.String(length=253), nullable=True),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("code", sa.Integer(), nullable=True),
        sa.Column("reply", sa.String(length=1000), nullable=True),
        sa.Column("remote_host", sa.String(length=300), nullable=True),
        sa.Column("delay", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("message_log", schema=None) as batch_op:
        batch_op.create_index("ix_message_log_at", ["at"], unique=False)
        batch_op.create_index(
            "ix_message_log_event", ["event", "at", "reason", "delay"], unique=False
        )
        batch_op.create_index(
            "ix_message_log_domain", ["domain", "at", "event", "reason", "delay"], unique=False
        )
        batch_op.create_index("ix_message_log_alias", ["alias", "at"], unique=False)
        batch_op.create_index("ix_message_log_queue_id", ["queue_id"], unique=False)

    op.create_table(
        "nodes",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.Column("stopped_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("nodes")
    with op.batch_alter_table("message_log", schema=None) as batch_op:
        batch_op.drop_index("ix_message_log_queue_id")
        batch_op.drop_index("ix_message_log_alias")
        batch_op.drop_index("ix_message_log_domain")
        batch_op.drop_index("ix_message_log_event")
        batch_op.drop_index("ix_message_log_at")
    op.drop_table("message_log")
