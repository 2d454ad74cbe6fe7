"""billing: organizations' plans, limit overrides and Stripe customers; subscriptions;
processed Stripe events; message usage per organization and month

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("plan", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("limit_overrides", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("stripe_customer_id", sa.String(length=100), nullable=True))
        batch_op.create_index(
            "ix_organizations_stripe_customer_id", ["stripe_customer_id"], unique=False
        )

    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("plan", sa.String(length=40), nullable=True),
        sa.Column("price", sa.String(length=200), nullable=True),
        sa.Column("current_period_end", sa.Float(), nullable=True),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("past_due_since", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_subscriptions_organization_id", "subscriptions", ["organization_id"])
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "usage_months",
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("notified_80", sa.Boolean(), nullable=False),
        sa.Column("notified_100", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"]),
        sa.PrimaryKeyConstraint("organization_id", "month"),
    )


def downgrade() -> None:
    op.drop_table("usage_months")
    op.drop_table("stripe_events")
    op.drop_index("ix_subscriptions_organization_id", table_name="subscriptions")
    op.drop_table("subscriptions")
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_index("ix_organizations_stripe_customer_id")
        batch_op.drop_column("stripe_customer_id")
        batch_op.drop_column("limit_overrides")
        batch_op.drop_column("plan")
