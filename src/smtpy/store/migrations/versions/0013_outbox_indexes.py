"""fewer index writes per webhook event: an event is found by its id only, and the lease
index holds only leased deliveries

An event and its delivery were written into nine B-trees; now six. Pruning and removing
an endpoint delete the events their deleted deliveries leave behind, by key
(`smtpy.events.deliveries.delete`), so neither `created_at` nor `organization_id` of
`webhook_events` needs an index. With one endpoint subscribed to every event, what
`smtpy serve` writes to storage per message went from 152 to 136 KB (102 KB without
webhooks; bench/bench_webhooks.py).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

LEASED = sa.text("lease_owner IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_webhook_events_created_at", table_name="webhook_events")
    op.drop_index("ix_webhook_events_organization_id", table_name="webhook_events")
    op.drop_index("ix_webhook_deliveries_lease", table_name="webhook_deliveries")
    op.create_index(
        "ix_webhook_deliveries_lease",
        "webhook_deliveries",
        ["lease_owner"],
        sqlite_where=LEASED,
        postgresql_where=LEASED,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_lease", table_name="webhook_deliveries")
    op.create_index("ix_webhook_deliveries_lease", "webhook_deliveries", ["lease_owner"])
    op.create_index("ix_webhook_events_organization_id", "webhook_events", ["organization_id"])
    op.create_index("ix_webhook_events_created_at", "webhook_events", ["created_at"])
