"""node identity: which start of `smtpy serve` holds a node name, and its heartbeat interval

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("instance", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("process", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_seconds")
        batch_op.drop_column("process")
        batch_op.drop_column("instance")
