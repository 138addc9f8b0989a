"""A real `mediasan worker` process for tests, on whatever broker, database and store the env names."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from worker import records
from worker.intake import job_status

REQUIRE_SERVICES = os.environ.get("MEDIASAN_REQUIRE_SERVICES") == "1"
REDIS_URL = os.environ.get("MEDIASAN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("MEDIASAN_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def require(url: str, default_port: int, what: str) -> None:
    """Skip when a service is missing on a developer's machine; fail in CI, where it must be there."""
    if reachable(url, default_port):
        return
    message = f"{what} is not reachable at {url}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " and MEDIASAN_REQUIRE_SERVICES=1 makes it required")
    pytest.skip(message)


def fresh_postgres_schema(url: str, *, migrate: bool = True) -> str:
    """A database URL whose search_path is a new schema: each test run gets its own tables.

    Migrated to head as an operator's `mediasan doctor --migrate` would (nothing on PostgreSQL
    migrates by itself); ``migrate=False`` leaves it empty."""
    import sqlalchemy as sa

    schema = f"mediasan_test_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    separator = "&" if "?" in url else "?"
    schema_url = f"{url}{separator}options=-csearch_path%3D{schema}"
    if migrate:
        engine = records.make_engine(schema_url)
        records.migrate(engine)
        engine.dispose()
    return schema_url


def drop_postgres_schema(url: str) -> None:
    import sqlalchemy as sa

    schema = url.rsplit("%3D", 1)[1]
    base = url.split("?options=")[0].split("&options=")[0]
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def flush_redis(url: str) -> None:
    """Empty this test session's queue (left over from an earlier test). Only its own keys: other
    sessions on this machine share the database, and a FLUSHDB would drop their messages in flight."""
    import redis

    queue = os.environ.get("MEDIASAN_QUEUE", "mediasan")
    client = redis.Redis.from_url(url)
    # kombu's Redis transport keeps a queue's messages in a list named after it, and one list a priority
    keys = [queue.encode(), *client.scan_iter(match=f"{queue}\x06\x16*")]
    client.delete(*keys)
    client.close()


def stop_process(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM (a warm shutdown for a worker), then SIGKILL if it is still there after ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class WorkerProcess:
    """`python -m worker.cli worker` in a subprocess with the given MEDIASAN_* environment."""

    def __init__(self, env: dict[str, str], log_path: Path, *, beat: bool = False, concurrency: int = 1,
                 extra_args: tuple[str, ...] = ()):
        self.env = dict(os.environ, **env)
        self.log_path = log_path
        self.beat = beat
        self.concurrency = concurrency
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--concurrency",
                                          str(self.concurrency), "--beat" if self.beat else "--no-beat",
                                          "--loglevel", "INFO", *self.extra_args],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def wait_final(services, upload_id: str, worker: WorkerProcess, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = job_status(services=services, upload_id=upload_id)
        if info and info["state"] in records.FINAL_STATES:
            return info
        if worker.proc and worker.proc.poll() is not None:
            pytest.fail(f"the worker exited with {worker.proc.returncode}:\n{worker.log()}")
        time.sleep(0.25)
    pytest.fail(f"upload {upload_id} not final after {timeout_s} s: {info}\nworker log:\n{worker.log()}")


@contextlib.contextmanager
def running_deployment(kind: str, folder: Path, *, s3_endpoint: str | None = None, beat: bool = False,
                       extra_env: dict[str, str] | None = None, concurrency: int = 1):
    """One deployment's environment, a running worker on it, and the test's own Services.

    kind: "embedded", "redis+postgresql" or "redis+postgresql+s3" (the store on the S3 server at
    ``s3_endpoint``, buckets created first as an operator would). Yields (env, services, worker).
    """
    from worker.services import build_services
    from worker.settings import Settings

    env = {"MEDIASAN_DATA_DIR": str(folder / "data"), **(extra_env or {})}
    cleanup = []
    if kind.endswith("+s3"):
        from tests.moto_s3 import s3_url
        env["MEDIASAN_STORAGE_URL"] = s3_url(s3_endpoint)
    if kind.startswith("redis+postgresql"):
        require(REDIS_URL, 6379, "Redis")
        require(POSTGRES_URL, 5432, "PostgreSQL")
        flush_redis(REDIS_URL)
        database_url = fresh_postgres_schema(POSTGRES_URL)
        cleanup.append(lambda: drop_postgres_schema(database_url))
        env.update(MEDIASAN_BROKER_URL=REDIS_URL, MEDIASAN_DATABASE_URL=database_url)
    settings = Settings(_env_file=None, data_dir=Path(env["MEDIASAN_DATA_DIR"]),
                        broker_url=env.get("MEDIASAN_BROKER_URL"), database_url=env.get("MEDIASAN_DATABASE_URL"),
                        storage_url=env.get("MEDIASAN_STORAGE_URL"))
    services = build_services(settings)
    if kind.endswith("+s3"):   # the bootstrap step, as compose's `bootstrap` service runs it
        from worker.doctor import check_store
        bootstrap = check_store(settings, create_buckets=True)
        assert bootstrap.ok, bootstrap.line()
    worker = WorkerProcess(env, folder / "worker.log", beat=beat, concurrency=concurrency).start()
    try:
        yield env, services, worker
    finally:
        worker.stop()
        services.engine.dispose()
        for step in cleanup:
            step()
