"""The audit_logs table as a test reads it: every row, oldest first, once written."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from gateway.services import SERVICES
from models import AuditLog
from tests.identity import Client


async def audit_rows(client: Client) -> list[dict[str, Any]]:
    """Every audit row of `client`'s gateway, after its writer has written what it holds."""
    services = client.app[SERVICES]
    await services.audit.flush()
    async with services.engine.connect() as connection:
        result = await connection.execute(select(AuditLog).order_by(AuditLog.id))
        return [dict(row) for row in result.mappings()]
