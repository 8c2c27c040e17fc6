"""report rows name the models that failed and fell back

Revision ID: 0004
Revises: 0003

Adds the nullable `failed_models` column to report_logs: the models whose
calls failed (connect error, timeout before the head, a 429 or 5xx head) and
handed the request to a fallback, comma-separated in the order tried, the
requested model first. `/admin/usage` counts them per model as
`failed_attempts` and `fell_back`, so a primary that fell back is visible,
not only the model that answered. Existing rows keep NULL (no fallback
recorded).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("report_logs", sa.Column("failed_models", sa.String(length=1300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("report_logs") as batch_op:  # SQLite rebuilds the table
        batch_op.drop_column("failed_models")
