"""Why a database, Redis or upstream connection failed, in one line and without secrets.

It lives with the store because most of it is the database's: the connect
timeout, the errors reaching and migrating one can raise, its masked URL
(gateway/store/engine.py) and the SQLAlchemy wrapping it unwraps. Redis and an
upstream (`gateway models list`, test_connection.py) reach it only through the
plain socket errors.
"""

from __future__ import annotations

import errno
import socket

DB_CONNECT_TIMEOUT = 10.0  # seconds to reach the database before saying so


def describe_connection_error(exc: BaseException) -> str:
    """Why a database, Redis or upstream connection failed, in one line without secrets."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig  # the driver's words, without SQLAlchemy's statement and help link
    cause = exc.__cause__ or exc.__context__
    if not isinstance(exc, OSError) and isinstance(cause, OSError):
        exc = cause  # redis wraps the socket error in its own words; the socket's are plainer
    if isinstance(exc, ImportError):
        return f"no driver installed for this URL ({exc.name or exc})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def masked_url(url: str) -> str:
    """`url` with its password masked; never the raw text of a URL that does not parse."""
    from sqlalchemy.exc import ArgumentError

    from gateway.store.engine import safe_url

    try:
        return safe_url(url)
    except ArgumentError:
        return "(a URL that does not parse)"


def database_errors() -> tuple[type[BaseException], ...]:
    """What reaching and migrating a database can raise, to report in one line."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    # OSError covers refused and unreachable hosts (asyncpg raises them bare);
    # CommandError is Alembic meeting a revision it does not know; ImportError
    # a URL naming a driver that is not installed.
    return (OSError, SQLAlchemyError, CommandError, ImportError)
