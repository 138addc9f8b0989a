"""The process's connections, built once from Settings: the database, the store and the broker."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
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


def build_services(settings: Settings) -> Services:
    data_dir = settings.resolved_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)   # the embedded default keeps originals and locations here: policy 5
    engine = records.make_engine(settings.resolved_database_url())
    records.migrate(engine)
    if engine.url.get_backend_name() == "sqlite" and engine.url.database:
        # the locations table lives in this file; SQLite gives its -wal and -shm files the same mode
        Path(engine.url.database).chmod(0o600)
    store = open_store(settings.storage_url, settings.resolved_data_dir())
    from worker.app import create_app
    return Services(settings=settings, engine=engine, sessions=records.session_factory(engine), store=store,
                    broker=create_app(settings))


@lru_cache(maxsize=1)
def get_services() -> Services:
    return build_services(get_settings())
