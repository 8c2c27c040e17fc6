"""audit and report rows carry their request's journal id

Revision ID: 0003
Revises: 0002

Adds the nullable `journal_id` column to audit_logs and report_logs, each with
a unique index (`ux_audit_logs_journal_id`, `ux_report_logs_journal_id`). The
gateway inserts rows with ON CONFLICT (journal_id) DO NOTHING, so replaying an
audit journal after a crash (gateway/audit/journal.py) never stores a row twice.
Existing rows keep NULL, which a unique index allows any number of times.

On PostgreSQL the index build blocks writes to the table while it runs: upgrade
a large audit table in a quiet hour (inserts that time out meanwhile are spooled
by the gateway and replayed afterwards).
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
        op.create_index(f"ux_{table}_journal_id", table, ["journal_id"], unique=True)


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_index(f"ux_{table}_journal_id", table_name=table)
        with op.batch_alter_table(table) as batch_op:  # SQLite rebuilds the table
            batch_op.drop_column("journal_id")
