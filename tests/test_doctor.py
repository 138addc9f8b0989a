"""`mediasan doctor`: one line a check, non-zero when one fails; the one-time bootstrap, safe to race.

Real processes on this machine's PostgreSQL and Redis, the S3 store on moto's server over HTTP.
"""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest
from sqlalchemy import text

from tests.moto_s3 import moto_endpoint, s3_url  # noqa: F401  (fixture)
from tests.workerproc import (POSTGRES_URL, REDIS_URL, drop_postgres_schema, fresh_postgres_schema, require)
from worker import records


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=timeout)


def lines_of(output: str) -> dict[str, str]:
    """check name -> its line, from doctor's output."""
    return {line.split()[1]: line for line in output.splitlines() if line.split()[:1] in (["ok"], ["FAIL"])}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # nothing listens once the socket is closed


@pytest.fixture
def empty_schema():
    require(POSTGRES_URL, 5432, "PostgreSQL")
    url = fresh_postgres_schema(POSTGRES_URL, migrate=False)
    yield url
    drop_postgres_schema(url)


def test_doctor_passes_on_the_embedded_default_once_migrated(tmp_path):
    env = {"MEDIASAN_DATA_DIR": str(tmp_path / "data")}
    before = run_cli(env, "doctor")
    assert before.returncode == 1, before.stdout + before.stderr
    checks = lines_of(before.stdout)
    assert list(checks) == ["ffmpeg", "ffprobe", "database", "store", "broker"], before.stdout
    assert checks["database"].startswith("FAIL") and "doctor --migrate" in checks["database"]
    assert all(checks[name].startswith("ok") for name in ("ffmpeg", "ffprobe", "store", "broker")), before.stdout

    after = run_cli(env, "doctor", "--migrate")
    assert after.returncode == 0, after.stdout + after.stderr
    assert all(line.startswith("ok") for line in lines_of(after.stdout).values()), after.stdout
    assert "ffmpeg version" in lines_of(after.stdout)["ffmpeg"]


def test_two_doctors_migrating_a_fresh_schema_at_once_both_succeed(tmp_path, empty_schema):
    require(REDIS_URL, 6379, "Redis")
    env = {"MEDIASAN_DATA_DIR": str(tmp_path / "data"), "MEDIASAN_DATABASE_URL": empty_schema,
           "MEDIASAN_BROKER_URL": REDIS_URL}
    full_env = dict(os.environ, **env)
    # started together: without the advisory lock the second CREATE TABLE fails (pg_type's unique index)
    procs = [subprocess.Popen([sys.executable, "-m", "worker.cli", "doctor", "--migrate"], env=full_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=90)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n---\n".join(outputs)
    migrated = [o for o in outputs if "migrated from empty" in lines_of(o)["database"]]
    assert len(migrated) == 1, outputs   # exactly one did the work; the others found it done

    engine = records.make_engine(empty_schema)
    try:
        assert records.current_revision(engine) == records.head_revision()
        with engine.connect() as conn:
            tables = set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"))
                         .scalars())
        assert {"jobs", "locations", "variants", "audit_events", "alembic_version"} <= tables
    finally:
        engine.dispose()


def test_a_worker_refuses_a_schema_that_is_not_at_head(tmp_path, empty_schema):
    require(REDIS_URL, 6379, "Redis")
    env = {"MEDIASAN_DATA_DIR": str(tmp_path / "data"), "MEDIASAN_DATABASE_URL": empty_schema,
           "MEDIASAN_BROKER_URL": REDIS_URL}
    result = run_cli(env, "worker", "--no-beat", "--concurrency", "1")
    assert result.returncode != 0
    assert "doctor --migrate" in result.stderr, result.stderr
    engine = records.make_engine(empty_schema)
    try:
        assert records.current_revision(engine) is None   # and it did not migrate by itself
    finally:
        engine.dispose()


def test_doctor_names_the_database_when_its_port_is_closed(tmp_path):
    env = {"MEDIASAN_DATA_DIR": str(tmp_path / "data"),
           "MEDIASAN_DATABASE_URL": f"postgresql+psycopg://postgres:s3cret@127.0.0.1:{closed_port()}/test"}
    result = run_cli(env, "doctor")
    assert result.returncode == 1
    checks = lines_of(result.stdout)
    assert checks["database"].startswith("FAIL") and "127.0.0.1" in checks["database"], result.stdout
    assert "s3cret" not in result.stdout + result.stderr
    assert [name for name, line in checks.items() if line.startswith("FAIL")] == ["database"], result.stdout


def test_doctor_names_the_broker_when_it_is_down(tmp_path):
    env = {"MEDIASAN_DATA_DIR": str(tmp_path / "data"), "MEDIASAN_BROKER_URL": f"redis://127.0.0.1:{closed_port()}/0"}
    result = run_cli(env, "doctor", "--migrate")
    assert result.returncode == 1
    checks = lines_of(result.stdout)
    assert [name for name, line in checks.items() if line.startswith("FAIL")] == ["broker"], result.stdout


def test_doctor_creates_the_s3_buckets_once_and_then_finds_them(tmp_path, moto_endpoint):
    env = {"MEDIASAN_DATA_DIR": str(tmp_path / "data"), "MEDIASAN_STORAGE_URL": s3_url(moto_endpoint)}
    missing = run_cli(env, "doctor", "--migrate")
    assert missing.returncode == 1
    assert lines_of(missing.stdout)["store"].startswith("FAIL"), missing.stdout
    assert "--create-buckets" in lines_of(missing.stdout)["store"]

    created = run_cli(env, "doctor", "--create-buckets")
    assert created.returncode == 0, created.stdout + created.stderr
    assert "created" in lines_of(created.stdout)["store"] and "-restricted" in lines_of(created.stdout)["store"]

    again = run_cli(env, "doctor", "--create-buckets")   # idempotent
    assert again.returncode == 0, again.stdout + again.stderr
    assert "created" not in lines_of(again.stdout)["store"]


def test_the_sqlite_file_and_its_wal_and_shm_are_private_from_the_first_byte(tmp_path):
    from worker.services import build_services
    from worker.settings import Settings

    data = tmp_path / "fresh"
    previous = os.umask(0o022)   # a usual umask: files would be created 0644
    try:
        services = build_services(Settings(_env_file=None, data_dir=data))
        with services.engine.begin() as conn:   # an open connection that wrote: -wal and -shm exist
            conn.execute(text("SELECT count(*) FROM jobs"))
            conn.execute(text("DELETE FROM jobs WHERE upload_id = 'none'"))
            files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir() if p.name.startswith("mediasan")}
    finally:
        os.umask(previous)
        services.engine.dispose()
    assert files == {"mediasan.sqlite3": 0o600, "mediasan.sqlite3-wal": 0o600, "mediasan.sqlite3-shm": 0o600}
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
