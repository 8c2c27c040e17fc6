"""routes.yaml's database and audit sections: how long database calls may take, where rows go."""

from __future__ import annotations

from pathlib import Path

from gateway.config.schema.fields import config_dataclass, doc


@config_dataclass
class AuditConfig:
    """audit: how the per-request rows reach the database (read once, at start-up).

    Rows wait in a bounded in-memory queue and are written in batches by one
    background task; a request never waits on the database. While the database
    does not answer, batches are appended to `spool` and replayed, in order,
    once it does. Every answered request's row is also appended to a journal in
    `journal` before or as its response ends, so a killed process loses none of
    them: the next start replays it (gateway/audit/journal.py).
    Rule: batch_size <= queue_size.
    """

    queue_size: int = doc(
        "rows waiting in memory; beyond it rows are dropped, and counted",
        default=100_000,
        minimum=1,
    )
    # Small batches keep each write's time on the event loop short (~1 ms for 200
    # rows), so no request waits long
    batch_size: int = doc(
        "rows per INSERT; a full batch is written at once", default=200, minimum=1
    )
    flush_interval: float = doc("how long a partial batch may wait", default=0.1, above=0)
    # relative paths resolve beside routes.yaml: the loader makes this absolute
    spool: Path = doc(
        "JSON-lines file rows go to while the database is down (beside routes.yaml)",
        default=Path("audit.spool"),
    )
    # the folder is made mode 0700, its files 0600; relative paths resolve beside routes.yaml
    journal: Path | None = doc(
        "folder of the write-ahead journal files; absent: audit.journal beside the spool",
        default=None,
    )


DEFAULT_AUDIT = AuditConfig()


@config_dataclass
class DatabaseConfig:
    """database: how long the gateway waits on its database (read once, at start-up).

    The database itself is GATEWAY_DATABASE_URL (default: gateway.db beside
    routes.yaml). A call that cannot reach it in time answers 503 database_down.
    """

    timeout: float = doc(
        "one database call, connecting and pool wait included, or 503 database_down",
        default=5.0,
        minimum=0.1,
        maximum=60.0,
    )


DEFAULT_DATABASE = DatabaseConfig()
