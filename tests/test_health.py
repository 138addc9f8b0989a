"""`mediasan serve`'s probes and metrics, on a real server process: PostgreSQL, and S3 through moto's server."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.moto_s3 import moto_endpoint, s3_url  # noqa: F401  (fixture)
from tests.ops_deployment import free_port, http_get, wait_http
from tests.workerproc import POSTGRES_URL, drop_postgres_schema, fresh_postgres_schema, require
from worker import records


@contextlib.contextmanager
def serving(folder: Path, env: dict[str, str]):
    """A `mediasan serve` process; yields its base URL."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve", "--port", str(port)],
                            env=dict(os.environ, MEDIASAN_DATA_DIR=str(folder / "data"), **env),
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def database_url():
    require(POSTGRES_URL, 5432, "PostgreSQL")
    url = fresh_postgres_schema(POSTGRES_URL)
    yield url
    drop_postgres_schema(url)


def readiness(base: str, settled, timeout_s: float = 30) -> tuple[int, dict]:
    """Poll /readyz (as a load balancer does) until ``settled(status, body)``: the first probe builds
    the API's services and may outlast its 3 s deadline on a busy machine."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = http_get(f"{base}/readyz")
        answer = (status, json.loads(body))
        if settled(*answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def closed_port_url() -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"


@pytest.mark.services
def test_starts_and_says_which_dependency_is_down(tmp_path, moto_endpoint):
    """~8 s: the database URL names a closed port; then the store's buckets do not exist."""
    from worker.storage import open_store
    storage_url = s3_url(moto_endpoint)
    open_store(storage_url, tmp_path).ensure_buckets()
    with serving(tmp_path / "a", {"MEDIASAN_DATABASE_URL": closed_port_url(), "MEDIASAN_STORAGE_URL": storage_url}) as base:
        assert http_get(f"{base}/healthz")[0] == 200
        status, body = http_get(f"{base}/readyz")
        assert status == 503
        checks = json.loads(body)["checks"]
        # "failed: OperationalError", or "no answer within 3 s" on a machine too busy to try in time
        assert checks["store"] == "ok" and checks["database"] != "ok"
        # a scrape still answers, saying the jobs could not be counted
        status, exposition = http_get(f"{base}/metrics")
        assert status == 200 and "mediasan_database_up 0.0" in exposition

    require(POSTGRES_URL, 5432, "PostgreSQL")
    with serving(tmp_path / "b", {"MEDIASAN_DATABASE_URL": POSTGRES_URL,
                                  "MEDIASAN_STORAGE_URL": s3_url(moto_endpoint)}) as base:   # no buckets made
        status, body = readiness(base, lambda status, body: body["checks"]["database"] == "ok")
        assert status == 503
        assert body["checks"] == {"database": "ok", "store": "failed: ClientError"}


@pytest.mark.services
def test_ready_and_metrics_on_a_working_deployment(tmp_path, database_url, moto_endpoint):
    """~6 s: two received jobs, one done; requests to a route with an id, to no route, to the probes."""
    from sqlalchemy import create_engine

    from worker.storage import open_store
    storage_url = s3_url(moto_endpoint)
    open_store(storage_url, tmp_path).ensure_buckets()
    from sqlalchemy.orm import sessionmaker
    engine = create_engine(database_url)
    records.migrate(engine)
    with sessionmaker(engine)() as session:
        for n in range(3):
            records.insert_job(session, upload_id=f"up{n}", complaint_id="311-1", channel="mobile_app", agency=None,
                               source_key=f"incoming/up{n}/upload", filename=None, content_type=None,
                               received_at=records.utcnow())
        session.commit()
        records.claim_job(session, "up2", records.timedelta(minutes=5))
        records.finish_job(session, "up2", 1, state="done")
        session.commit()
    engine.dispose()

    with serving(tmp_path, {"MEDIASAN_DATABASE_URL": database_url, "MEDIASAN_STORAGE_URL": storage_url}) as base:
        assert http_get(f"{base}/healthz") == (200, '{"status":"ok"}')
        status, body = readiness(base, lambda status, body: status == 200)
        assert (status, body) == (200, {"status": "ready", "checks": {"database": "ok", "store": "ok"}})
        assert http_get(f"{base}/uploads/5e1f0c0ffee/media")[0] == 401
        assert http_get(f"{base}/uploads/another-id/media")[0] == 401
        assert http_get(f"{base}/no/such/route/7d3a")[0] == 404
        status, exposition = http_get(f"{base}/metrics")
    assert status == 200
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(exposition) for s in family.samples}
    assert found[("mediasan_jobs", (("state", "received"),))] == 2
    assert found[("mediasan_jobs", (("state", "done"),))] == 1
    assert found[("mediasan_jobs", (("state", "failed"),))] == 0
    assert found[("mediasan_database_up", ())] == 1
    assert found[("mediasan_job_oldest_received_seconds", ())] > 0
    requests = {dict(labels)["route"]: value for (name, labels), value in found.items()
                if name == "mediasan_api_requests_total" and dict(labels)["status"] in ("401", "404")}
    assert requests == {"/uploads/{upload_id}/media": 2, "unmatched": 1}
    assert found[("mediasan_api_requests_total", (("route", "/healthz"), ("status", "200")))] >= 1
    assert "5e1f0c0ffee" not in exposition and "another-id" not in exposition and "7d3a" not in exposition


def test_a_fresh_embedded_deployment_is_ready_before_its_first_request(tmp_path):
    """~3 s: nothing exists yet under the data folder; the probe itself opens (and creates) the
    database, so a load balancer waiting for 200 does not wait for ever."""
    with serving(tmp_path, {}) as base:
        status, body = readiness(base, lambda status, body: status == 200)
        assert status == 200, body
    assert (tmp_path / "data" / "mediasan.sqlite3").exists()
