"""The process's connections, built once from Settings: the database and the store."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

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


def build_services(settings: Settings) -> Services:
    settings.resolved_data_dir().mkdir(parents=True, exist_ok=True)
    engine = records.make_engine(settings.resolved_database_url())
    records.migrate(engine)
    store = open_store(settings.storage_url, settings.resolved_data_dir())
    return Services(settings=settings, engine=engine, sessions=records.session_factory(engine), store=store)


@lru_cache(maxsize=1)
def get_services() -> Services:
    return build_services(get_settings())
