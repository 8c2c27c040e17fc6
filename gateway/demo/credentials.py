"""`.dev-credentials.json`: the development users seed_data.py made, per database.

The file sits beside routes.yaml (mode 0600, gitignored) and maps each
database's URL, its password masked, to the users seeded there:

    {"databases": {"sqlite+aiosqlite:///…/gateway.db":
        {"dev-user": {"password": "…", "role": "user"}, …}}}

so seeding a second database (another GATEWAY_DATABASE_URL) adds its users
beside the first one's instead of replacing them. A file in the earlier flat
form (`{"dev-user": {"password": …, "role": …}, …}`, no database named) is
still read: its users are kept, under UNKNOWN_DATABASE, and offered for any
database that has no entry of its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CREDENTIALS_FILE = ".dev-credentials.json"
UNKNOWN_DATABASE = "(saved before this file named databases)"

# username → {"password": …, "role": …}
Accounts = dict[str, dict[str, str]]


def _accounts(value: Any) -> Accounts:
    """The well-formed entries of one database's map; anything else is skipped."""
    if not isinstance(value, dict):
        return {}
    return {
        name: {"password": entry["password"], "role": entry["role"]}
        for name, entry in value.items()
        if isinstance(name, str)
        and isinstance(entry, dict)
        and isinstance(entry.get("password"), str)
        and isinstance(entry.get("role"), str)
    }


def read_all(path: Path) -> dict[str, Accounts]:
    """Database (masked URL) → its accounts; {} when the file is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    databases = data.get("databases")
    if isinstance(databases, dict):
        found = {url: _accounts(users) for url, users in databases.items()}
        return {url: users for url, users in found.items() if users}
    flat = _accounts(data)  # the earlier form: one database, not named
    return {UNKNOWN_DATABASE: flat} if flat else {}


def accounts_for(path: Path, database: str) -> Accounts:
    """The accounts seeded in `database` (a masked URL); those of a flat, older file
    when it names none."""
    saved = read_all(path)
    return saved.get(database) or saved.get(UNKNOWN_DATABASE, {})


def save(path: Path, database: str, accounts: Mapping[str, Mapping[str, str]]) -> None:
    """Set `database`'s accounts, keeping every other database's; owner-only (0600),
    replaced atomically."""
    saved = read_all(path)
    saved[database] = {name: dict(entry) for name, entry in accounts.items()}
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)  # a left-over file keeps its old mode otherwise
        json.dump({"databases": dict(sorted(saved.items()))}, handle, indent=2)
        handle.write("\n")
    os.replace(temporary, path)
