"""usernames unique regardless of case

Revision ID: 0002
Revises: 0001

Adds the unique index `ux_users_username_lower` on lower(username), so
`DEV-ADMIN` cannot exist beside `dev-admin`; the stored name keeps the case
its owner chose. Lookups compare lower(username) and use this index.

Existing rows whose names differ only in case are renamed first, the same
way on every database: in each group of names equal under the database's
own lower(), the oldest account (smallest created_at, then smallest id)
keeps its name and every other one becomes NAME-<first 8 chars of its id>
(NAME cut so the result fits in 64 characters; if even that is taken, more
of the id is used). Renamed users sign in with their new name; an admin can
rename them afterwards. The downgrade drops the index and renames nobody back.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

INDEX = "ux_users_username_lower"
NAME_LENGTH = 64  # users.username is VARCHAR(64)


def _renamed(name: str, user_id: str, taken: set[str]) -> str:
    """NAME-<id prefix>: the shortest prefix (8 chars at least) not already taken."""
    for width in range(8, len(user_id) + 1):
        suffix = f"-{user_id[:width]}"
        candidate = name[: NAME_LENGTH - len(suffix)] + suffix
        if candidate.lower() not in taken:
            return candidate
    # ids are unique, so the whole id as the name is free once nothing else fits
    return user_id


def _merge_case_variants(connection: sa.engine.Connection) -> None:
    users = sa.table(
        "users",
        sa.column("id", sa.String),
        sa.column("username", sa.String),
        sa.column("created_at", sa.DateTime),
    )
    folded = sa.func.lower(users.c.username)
    rows = connection.execute(
        sa.select(users.c.id, users.c.username, folded.label("folded")).order_by(
            users.c.created_at, users.c.id
        )
    ).all()
    taken = {row.folded for row in rows}
    owners: set[str] = set()
    for row in rows:  # oldest first: the first of each folded name keeps it
        if row.folded not in owners:
            owners.add(row.folded)
            continue
        new_name = _renamed(row.username, row.id, taken)
        taken.add(new_name.lower())
        connection.execute(sa.update(users).where(users.c.id == row.id).values(username=new_name))


def upgrade() -> None:
    _merge_case_variants(op.get_bind())
    op.create_index(INDEX, "users", [sa.text("lower(username)")], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="users")
