"""The gateway's database tables as SQLAlchemy 2 typed models (shared with the DB team).

Users, refresh tokens (rotated in families), audit rows and model report rows.
Schema changes go through Alembic (`gateway db upgrade`); the migrations in
gateway/store/migrations must match these classes (a test compares them).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class User(Base):
    """A person or service that signs in; `role` names a role of policies/."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # uuid4 hex
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    display_name: Mapped[str | None] = mapped_column(String(128), default=None)
    email: Mapped[str | None] = mapped_column(String(254), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    __table_args__ = (
        # the last-active-admin check and the admin list filter by these
        Index("ix_users_role_active", "role", "active"),
        # usernames are unique regardless of case (migration 0002); lookups use it
        Index("ux_users_username_lower", func.lower(username), unique=True),
    )


class RefreshToken(Base):
    """One refresh token of a rotation family; only its SHA-256 is stored.

    Refreshing spends the token (a conditional UPDATE: exactly one concurrent
    refresh wins) and issues the next one in the same family; presenting a
    spent token revokes the whole family.
    """

    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[str] = mapped_column(String(36))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    spent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # the jti of the access token issued with this refresh token, revoked at logout
    access_jti: Mapped[str | None] = mapped_column(String(36), default=None)
    access_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), default=None
    )

    __table_args__ = (
        Index("ix_refresh_tokens_family", "family_id"),
        Index("ix_refresh_tokens_user", "user_id"),
        Index("ix_refresh_tokens_access_jti", "access_jti"),
    )


class AuditLog(Base):
    """One row per request, allowed or denied; no secrets (README "Audit log, reports and
    metrics")."""

    __tablename__ = "audit_logs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request_id: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str | None] = mapped_column(String(36), default=None)
    username: Mapped[str | None] = mapped_column(String(64), default=None)
    role: Mapped[str | None] = mapped_column(String(64), default=None)
    method: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(2048))
    route: Mapped[str | None] = mapped_column(String(512), default=None)
    upstream: Mapped[str | None] = mapped_column(String(128), default=None)
    status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column()
    client_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    reason: Mapped[str | None] = mapped_column(String(128), default=None)  # deny reason code
    # unique per request across gateway processes (migration 0003): a replayed
    # audit journal or spool inserts only rows not stored yet (looked up by ts)
    journal_id: Mapped[str | None] = mapped_column(String(40), default=None)

    __table_args__ = (
        # newest first with a stable (ts, id) cursor, optionally per user or status
        Index("ix_audit_logs_ts_id", "ts", "id"),
        Index("ix_audit_logs_username_ts", "username", "ts"),
        Index("ix_audit_logs_status_ts", "status", "ts"),
    )


class ReportLog(Base):
    """One row per call to a model upstream: who, which model, how it went, how much."""

    __tablename__ = "report_logs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str | None] = mapped_column(String(36), default=None)
    username: Mapped[str | None] = mapped_column(String(64), default=None)
    route: Mapped[str | None] = mapped_column(String(512), default=None)
    status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column()
    ttfb_ms: Mapped[float | None] = mapped_column(default=None)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, default=None)  # None: unknown
    completion_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    total_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    journal_id: Mapped[str | None] = mapped_column(String(40), default=None)  # its request's
    # the models whose calls failed before `model` answered, comma-separated in the order
    # tried (the requested model first; at most 9 names of 128); NULL: none (migration 0004)
    failed_models: Mapped[str | None] = mapped_column(String(1300), default=None)

    __table_args__ = (
        Index("ix_report_logs_model_ts", "model", "ts"),
        Index("ix_report_logs_ts", "ts"),
        Index("ix_report_logs_username_ts", "username", "ts"),
    )
