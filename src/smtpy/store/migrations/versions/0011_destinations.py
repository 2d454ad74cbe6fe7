"""destinations: the addresses and https URLs an organization forwards to, confirmed or not;
ordered fallback destinations of an alias

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "destinations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("address", sa.String(length=2000), nullable=False),
        sa.Column("address_key", sa.String(length=2000), nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=True),
        sa.Column("confirmed_at", sa.Float(), nullable=True),
        sa.Column("confirmation_sent_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("organization_id", "address_key"),
    )
    with op.batch_alter_table("aliases") as batch:
        batch.add_column(sa.Column("fallbacks", sa.String(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("aliases") as batch:
        batch.drop_column("fallbacks")
    op.drop_table("destinations")
