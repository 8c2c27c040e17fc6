"""audit and report rows carry their request's journal id

Revision ID: 0003
Revises: 0002

Adds the nullable `journal_id` column to audit_logs and report_logs. A replay
of an audit journal after a crash (gateway/audit/journal.py), or of the spool,
skips the rows whose journal id is stored already, looking among recent rows
through the ts index (AuditStore.stored): no index on the column, so live
inserts pay nothing for it. Existing rows keep NULL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = ("audit_logs", "report_logs")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("journal_id", sa.String(length=40), nullable=True))


def downgrade() -> None:
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch_op:  # SQLite rebuilds the table
            batch_op.drop_column("journal_id")
