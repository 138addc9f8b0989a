"""The process's connections, built once a process from Settings: the database, the store and the broker.

Sockets never cross a fork. `get_services()` builds a process's own Services the first time that
process asks (a prefork child builds them in `worker_process_init`, see worker.app); what a child
inherited from its parent is dropped with `engine.dispose(close=False)`, which leaves the parent's
sockets alone (SQLAlchemy's pooling guide, "Using Connection Pools with Multiprocessing or os.fork()").
A parent that is about to fork calls `close_services()` first, so it holds no database socket.

On PostgreSQL nothing here migrates or even connects: `mediasan doctor --migrate` does the one-time
work, and a worker checks the schema is at head before it starts. The embedded default (SQLite, one
machine) migrates itself, so `mediasan enqueue` and `./dev demo` need no extra step.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from worker import records
from worker.settings import Settings, get_settings
from worker.storage import Store, open_store


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: Store
    broker: Celery     # a producer-side app on the configured broker; tasks are sent by name
    pid: int           # the process these connections belong to


def build_services(settings: Settings) -> Services:
    data_dir = settings.resolved_data_dir()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.chmod(0o700)   # the embedded default keeps originals and locations here: policy 5
    engine = records.make_engine(settings.resolved_database_url())
    if engine.url.get_backend_name() == "sqlite":
        if engine.url.database and engine.url.database != ":memory:":
            private_sqlite_file(Path(engine.url.database))
        records.migrate(engine)   # one machine, one file: nothing to race
    store = open_store(settings.storage_url, settings.resolved_data_dir())
    from worker.app import create_app
    return Services(settings=settings, engine=engine, sessions=records.session_factory(engine), store=store,
                    broker=create_app(settings), pid=os.getpid())


def private_sqlite_file(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite opens it: the locations table lives in it, and SQLite
    gives the -wal and -shm files it creates the database file's mode (an empty file is an empty
    database). An existing file and its companions are brought back to 0600."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.fchmod(fd, 0o600)   # O_CREAT's mode only applies to a new file
    finally:
        os.close(fd)
    for companion in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if companion.exists():
            companion.chmod(0o600)


_lock = threading.Lock()
_current: Services | None = None


def get_services() -> Services:
    """This process's Services, built on first use; a forked child never uses its parent's."""
    global _current
    services = _current
    if services is not None and services.pid == os.getpid():
        return services
    with _lock:
        if _current is not None and _current.pid != os.getpid():
            _drop_inherited(_current)
            _current = None
        if _current is None:
            _current = build_services(get_settings())
        return _current


def reset_after_fork() -> None:
    """In a forked child: forget the parent's Services without touching its sockets."""
    global _current
    with _lock:
        if _current is not None and _current.pid != os.getpid():
            _drop_inherited(_current)
            _current = None


def close_services() -> None:
    """Close this process's connections (before forking workers, or at exit); the next use rebuilds."""
    global _current
    with _lock:
        services, _current = _current, None
    if services is None:
        return
    if services.pid == os.getpid():
        services.engine.dispose()
        services.broker.close()
    else:
        _drop_inherited(services)


def _drop_inherited(services: Services) -> None:
    # close=False: the pooled connections are the parent's; closing them here would end its sessions.
    # (psycopg itself never finishes a connection from a process other than the one that opened it.)
    services.engine.dispose(close=False)


def _cache_clear() -> None:
    close_services()


# tests reset cached settings and services together; the old lru_cache offered this name
get_services.cache_clear = _cache_clear  # type: ignore[attr-defined]
