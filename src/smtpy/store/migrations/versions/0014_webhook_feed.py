"""the webhook feed: a message's events are made from the message log after its commits

`webhook_feed` holds the cursor of `smtpy.queue.event_feed`, which reads the message log into
the outbox, so the `message.*` events are no longer written in the commits a message's
SMTP reply and delivery result wait for. It starts at the log's end: rows written before
this revision are not sent. On PostgreSQL each new log row records the transaction that
wrote it (`txid`, by the column's default), so that the feed follows the order of
commits across nodes; existing rows keep it empty and stay out of the feed's index.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

FED = sa.text("txid IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("message_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("txid", sa.BigInteger(), nullable=True))
        batch_op.create_index(
            "ix_message_log_feed", ["txid", "id"], sqlite_where=FED, postgresql_where=FED
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE message_log ALTER COLUMN txid SET DEFAULT"
            " (pg_current_xact_id()::text::bigint)"
        )
    op.create_table(
        "webhook_feed",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("log_id", sa.BigInteger(), nullable=False),
        sa.Column("txid", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute(
        "INSERT INTO webhook_feed (id, log_id, txid, updated_at)"
        " SELECT 1, coalesce(max(id), 0), 0, 0 FROM message_log"
    )


def downgrade() -> None:
    op.drop_table("webhook_feed")
    with op.batch_alter_table("message_log", schema=None) as batch_op:
        batch_op.drop_index("ix_message_log_feed")
        batch_op.drop_column("txid")
