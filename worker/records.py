"""The tables: jobs, restricted locations, stored variants, audit events; and their conditional updates.

The job row, not the broker message, is the record that an upload exists. Every state change is a
conditional UPDATE (``WHERE state = …``), so a redelivered message or a second worker changes nothing.
"""
from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, Text, TypeDecorator,
                        UniqueConstraint, create_engine, event, exc, select, text, update)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

JOB_STATES = ("received", "processing", "done", "rejected", "failed")
FINAL_STATES = frozenset({"done", "rejected", "failed"})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_upload_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC timestamps on PostgreSQL and SQLite alike (SQLite drops the zone on the way in)."""
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc) if value is not None and dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    upload_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    complaint_id: Mapped[str] = mapped_column(String(64), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    agency: Mapped[str | None] = mapped_column(String(32), index=True)
    source_key: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str | None] = mapped_column(String(255))       # as the client sent it: untrusted
    content_type: Mapped[str | None] = mapped_column(String(127))   # as the client sent it: untrusted
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(16), default="received", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    kind: Mapped[str | None] = mapped_column(String(16))
    format: Mapped[str | None] = mapped_column(String(16))
    removed: Mapped[list | None] = mapped_column(JSON)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Location(Base):
    """The restricted record: where and when the media was made. Read only through worker.access."""
    __tablename__ = "locations"

    upload_id: Mapped[str] = mapped_column(ForeignKey("jobs.upload_id"), primary_key=True)
    complaint_id: Mapped[str] = mapped_column(String(64), index=True)
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    alt: Mapped[float | None] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)
    captured_at: Mapped[str | None] = mapped_column(String(40))   # ISO 8601 as the device wrote it
    source: Mapped[str | None] = mapped_column(String(32))
    retain_until: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Variant(Base):
    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("upload_id", "variant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("jobs.upload_id"), index=True)
    variant: Mapped[str] = mapped_column(String(16))     # original | sanitized
    key: Mapped[str] = mapped_column(String(200), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str | None] = mapped_column(String(127))
    tags: Mapped[dict] = mapped_column(JSON)
    sanitizer_version: Mapped[str] = mapped_column(String(32))
    retain_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEvent(Base):
    """Who looked at what restricted thing, or was refused, or purged it: policy principle 1."""
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))      # read_original | read_location | read_media | purge | …
    upload_id: Mapped[str | None] = mapped_column(String(64), index=True)
    complaint_id: Mapped[str | None] = mapped_column(String(64))
    purpose: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))     # allowed | denied | done
    detail: Mapped[str | None] = mapped_column(Text)


# --- engine and migrations ---------------------------------------------------------------------

# pg_advisory_lock's key for migrations: one number the whole database agrees on ("mediasan" in ASCII)
MIGRATION_LOCK_KEY = 0x6D6564696173616E


class SchemaNotAtHead(RuntimeError):
    """The database is not migrated to this code's newest revision: run `mediasan doctor --migrate`."""


def make_engine(url: str) -> Engine:
    """An engine for this process. Its connections are tagged with the pid that opened them and
    refused in any other process: a pooled connection inherited across fork is never used."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # several worker processes share one file
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
        if engine.url.get_backend_name() == "postgresql":
            @event.listens_for(engine, "do_connect")
            def _tag_connection(_dialect, _conn_rec, _cargs, cparams):
                # pg_stat_activity then tells each process's connections apart
                cparams.setdefault("application_name", f"mediasan:{os.getpid()}")

    @event.listens_for(engine, "connect")
    def _remember_pid(_dbapi_conn, record):
        record.info["pid"] = os.getpid()

    @event.listens_for(engine, "checkout")
    def _refuse_other_process(_dbapi_conn, record, proxy):
        # SQLAlchemy's pooling guide ("Using Connection Pools with Multiprocessing or os.fork()"):
        # a connection opened by another process is dropped here, never sent a byte
        pid = os.getpid()
        if record.info.get("pid") != pid:
            record.dbapi_connection = proxy.dbapi_connection = None
            raise exc.DisconnectionError(f"connection opened in process {record.info.get('pid')}, now in {pid}")
    return engine


def _alembic_config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated). Connects, so it raises when unreachable."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def require_head(engine: Engine) -> None:
    """Raise SchemaNotAtHead unless the database is at this code's newest revision."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaNotAtHead(f"the database is at revision {current or 'none (empty)'}, this code needs {head}; "
                              "run `mediasan doctor --migrate` once before starting workers")


def migrate(engine: Engine) -> str | None:
    """Bring the schema to the newest migration (alembic, run in-process). Returns the revision it
    found (None: an empty database), read after taking the lock: equal to head_revision() when
    someone else had already done the work.

    On PostgreSQL the upgrade runs holding a transaction-level advisory lock, so two processes
    migrating at once take turns: the second finds the schema at head and does nothing.
    """
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    cfg = _alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        found = MigrationContext.configure(conn).get_current_revision()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return found


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


# --- jobs: conditional state changes -----------------------------------------------------------

def insert_job(session: Session, *, upload_id: str, complaint_id: str, channel: str, agency: str | None,
               source_key: str, filename: str | None, content_type: str | None, received_at: datetime) -> bool:
    """Write the job row unless it exists. Returns True when this call created it."""
    if session.get(Job, upload_id) is not None:
        return False
    session.add(Job(upload_id=upload_id, complaint_id=complaint_id, channel=channel, agency=agency,
                    source_key=source_key, filename=filename, content_type=content_type,
                    received_at=received_at, state="received"))
    try:
        session.flush()
    except Exception:  # a concurrent insert of the same id won: that is the idempotent outcome
        session.rollback()
        return False
    return True


def claim_job(session: Session, upload_id: str, lease: timedelta) -> int | None:
    """Take the job for processing: received, or processing with an expired lease (a worker died).

    Returns the attempt number this claim owns, or None when someone else holds it or it is final.
    """
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.upload_id == upload_id)
        .where((Job.state == "received") | ((Job.state == "processing") & (Job.lease_until < now)))
        .values(state="processing", attempts=Job.attempts + 1, lease_until=now + lease, updated_at=now)
    )
    if result.rowcount != 1:
        session.rollback()
        return None
    attempt = session.execute(select(Job.attempts).where(Job.upload_id == upload_id)).scalar_one()
    session.commit()
    return attempt


def finish_job(session: Session, upload_id: str, attempt: int, *, state: str, kind: str | None = None,
               fmt: str | None = None, removed: list[str] | None = None, error_code: str | None = None,
               error_message: str | None = None) -> bool:
    """Move a job we hold (same attempt, still processing) to a final state. False when we lost it."""
    assert state in FINAL_STATES
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.upload_id == upload_id, Job.state == "processing", Job.attempts == attempt)
        .values(state=state, kind=kind, format=fmt, removed=removed, error_code=error_code,
                error_message=error_message, lease_until=None, finished_at=now, updated_at=now)
    )
    return result.rowcount == 1


def release_job(session: Session, upload_id: str, attempt: int, *, error_code: str, error_message: str) -> bool:
    """Hand a job back after an infrastructure error so the retry can claim it again."""
    result = session.execute(
        update(Job)
        .where(Job.upload_id == upload_id, Job.state == "processing", Job.attempts == attempt)
        .values(state="received", lease_until=None, error_code=error_code, error_message=error_message,
                updated_at=utcnow())
    )
    session.commit()
    return result.rowcount == 1


def stale_jobs(session: Session, *, received_before: datetime, limit: int = 500) -> list[Job]:
    """Jobs whose message may be lost: processing with an expired lease, or received and untouched."""
    now = utcnow()
    return list(session.scalars(
        select(Job)
        .where(((Job.state == "processing") & (Job.lease_until < now))
               | ((Job.state == "received") & (Job.updated_at < received_before)))
        .order_by(Job.received_at).limit(limit)
    ))


# --- locations and variants: upserts keyed by upload ---------------------------------------------

def upsert_location(session: Session, *, upload_id: str, complaint_id: str, values: dict[str, Any],
                    retain_until: datetime) -> None:
    row = session.get(Location, upload_id)
    if row is None:
        row = Location(upload_id=upload_id, complaint_id=complaint_id, retain_until=retain_until)
        session.add(row)
    for name, value in values.items():
        setattr(row, name, value)
    row.retain_until = retain_until


def upsert_variant(session: Session, *, upload_id: str, variant: str, key: str, sha256: str, size: int,
                   media_type: str | None, tags: dict[str, str], sanitizer_version: str,
                   retain_until: datetime | None) -> None:
    row = session.scalars(select(Variant).where(Variant.upload_id == upload_id,
                                                Variant.variant == variant)).one_or_none()
    if row is None:
        row = Variant(upload_id=upload_id, variant=variant)
        session.add(row)
    row.key, row.sha256, row.bytes, row.media_type = key, sha256, size, media_type
    row.tags, row.sanitizer_version, row.retain_until = tags, sanitizer_version, retain_until


def variants_of(session: Session, upload_id: str) -> list[Variant]:
    return list(session.scalars(select(Variant).where(Variant.upload_id == upload_id).order_by(Variant.variant)))


# --- audit: one row for every restricted read, every denial, every purge ------------------------

def record_audit(session: Session, *, actor: str, role: str, action: str, outcome: str,
                 upload_id: str | None = None, complaint_id: str | None = None, purpose: str | None = None,
                 detail: str | None = None) -> AuditEvent:
    """Add one audit row to the caller's transaction (it commits with the action it records)."""
    row = AuditEvent(at=utcnow(), actor=actor, role=role, action=action, outcome=outcome, upload_id=upload_id,
                     complaint_id=complaint_id, purpose=purpose, detail=detail)
    session.add(row)
    return row
