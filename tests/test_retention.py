"""Retention: `purge` deletes exactly the expired originals and locations, audits each once, and repeats harmlessly.

Rows and stored objects are built directly with worker.records and the real local store, on SQLite
and (when reachable) PostgreSQL; the voice-note window is checked end to end with a real worker.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from fixtures.audio import amr_voice_note
from fixtures.jpeg import android_phone_jpeg
from tests.workerproc import (POSTGRES_URL, WorkerProcess, drop_postgres_schema, fresh_postgres_schema, require,
                              wait_final)
from worker import records
from worker.intake import enqueue_file
from worker.retention import purge
from worker.services import build_services
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgresql"])
def services(request, tmp_path):
    database_url = None
    if request.param == "postgresql":
        require(POSTGRES_URL, 5432, "PostgreSQL")
        database_url = fresh_postgres_schema(POSTGRES_URL)
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", database_url=database_url)
    services = build_services(settings)
    yield services
    services.engine.dispose()
    if database_url:
        drop_postgres_schema(database_url)


def make_upload(services, tmp_path, upload_id: str, *, original_until, location_until, state="done",
                complaint_id="311-5000") -> dict:
    """A finished upload as the pipeline leaves it: job row, original + agency copy stored, location row."""
    now = records.utcnow()
    src = tmp_path / f"{upload_id}.bin"
    src.write_bytes(b"original bytes of " + upload_id.encode())
    copy = tmp_path / f"{upload_id}.copy"
    copy.write_bytes(b"agency copy of " + upload_id.encode())
    original = services.store.put_file(f"restricted/{upload_id}/original.jpg", src, content_type="image/jpeg",
                                       tags={"variant": "original", "access": "restricted", "complaint": complaint_id})
    agency = services.store.put_file(f"agency/{upload_id}/media.jpg", copy, content_type="image/jpeg",
                                     tags={"variant": "sanitized", "access": "agency", "complaint": complaint_id})
    with services.sessions() as session:
        records.insert_job(session, upload_id=upload_id, complaint_id=complaint_id, channel="mobile_app",
                           agency="DSNY", source_key=f"incoming/{upload_id}/upload", filename="IMG.jpg",
                           content_type="image/jpeg", received_at=now - timedelta(days=400))
        job = session.get(records.Job, upload_id)
        job.state, job.attempts = state, 1
        for stored, variant, until in ((original, "original", original_until), (agency, "sanitized", None)):
            records.upsert_variant(session, upload_id=upload_id, variant=variant, key=stored.key, sha256=stored.sha256,
                                   size=stored.bytes, media_type="image/jpeg", tags=stored.tags,
                                   sanitizer_version="test", retain_until=until)
        if location_until is not None:
            records.upsert_location(session, upload_id=upload_id, complaint_id=complaint_id,
                                    values={"lat": 40.712776, "lon": -74.005974, "source": "exif"},
                                    retain_until=location_until)
        session.commit()
    return {"original": original.key, "agency": agency.key}


def snapshot(services) -> dict:
    """Everything a purge may touch: rows of each table (as comparable tuples) and the store's keys."""
    with services.sessions() as session:
        return {
            "jobs": sorted((j.upload_id, j.state, j.attempts) for j in session.scalars(select(records.Job))),
            "variants": sorted((v.upload_id, v.variant, v.key) for v in session.scalars(select(records.Variant))),
            "locations": sorted(loc.upload_id for loc in session.scalars(select(records.Location))),
            "audit": sorted((a.action, a.upload_id, a.detail) for a in session.scalars(select(records.AuditEvent))),
        }


def audit_rows(services) -> list[records.AuditEvent]:
    with services.sessions() as session:
        return list(session.scalars(select(records.AuditEvent).order_by(records.AuditEvent.id)))


@pytest.fixture
def estate(services, tmp_path):
    now = records.utcnow()
    past, future = now - timedelta(days=1), now + timedelta(days=30)
    keys = {
        "both_expired": make_upload(services, tmp_path, "both_expired", original_until=past, location_until=past),
        "both_kept": make_upload(services, tmp_path, "both_kept", original_until=future, location_until=future),
        "original_expired": make_upload(services, tmp_path, "original_expired", original_until=past,
                                        location_until=future),
        "location_expired": make_upload(services, tmp_path, "location_expired", original_until=future,
                                        location_until=past),
        "rejected_expired": make_upload(services, tmp_path, "rejected_expired", original_until=past,
                                        location_until=None, state="rejected"),
        # being processed (e.g. reprocessed) right now: left for the next run
        "in_flight": make_upload(services, tmp_path, "in_flight", original_until=past, location_until=past,
                                 state="processing"),
    }
    return services, keys


EXPECTED = {("both_expired", "original"), ("both_expired", "location"), ("original_expired", "original"),
            ("location_expired", "location"), ("rejected_expired", "original")}


def test_purge_deletes_exactly_the_expired_originals_and_locations(estate):
    services, keys = estate
    before = snapshot(services)

    purged = purge(services=services, actor="retention-test")

    assert {(p.upload_id, p.what) for p in purged} == EXPECTED
    assert len(purged) == len(EXPECTED)
    for upload_id, k in keys.items():
        original_gone = (upload_id, "original") in EXPECTED
        assert (services.store.head(k["original"]) is None) == original_gone, upload_id
        assert services.store.head(k["agency"]) is not None, upload_id        # agency copies are not purged
    after = snapshot(services)
    assert after["jobs"] == before["jobs"]                                      # job rows stay, states unchanged
    assert after["variants"] == sorted(v for v in before["variants"] if (v[0], v[1]) not in EXPECTED)
    assert after["locations"] == sorted(u for u in before["locations"] if (u, "location") not in EXPECTED)

    audits = audit_rows(services)
    assert sorted((a.upload_id, a.detail.split()[0]) for a in audits) == sorted(EXPECTED)   # one row each
    for a in audits:
        assert (a.action, a.outcome, a.actor, a.role) == ("purge", "done", "retention-test", "service")
        assert a.complaint_id == "311-5000"
        if a.detail.startswith("original"):
            assert keys[a.upload_id]["original"] in a.detail
        # the audit never holds the location (a short "40.7" would match a timestamp's seconds)
        assert "40.712776" not in a.detail and "74.005974" not in a.detail


def test_dry_run_lists_the_same_and_changes_nothing(estate):
    services, keys = estate
    before = snapshot(services)

    listed = purge(services=services, dry_run=True)

    assert {(p.upload_id, p.what) for p in listed} == EXPECTED
    assert snapshot(services) == before
    assert all(services.store.head(k["original"]) is not None for k in keys.values())
    assert audit_rows(services) == []


def test_a_second_purge_does_nothing(estate):
    services, keys = estate
    assert len(purge(services=services)) == len(EXPECTED)
    after_first = snapshot(services)

    assert purge(services=services) == []
    assert snapshot(services) == after_first
    assert len(audit_rows(services)) == len(EXPECTED)


def test_purge_finishes_what_a_crash_left_half_done(services, tmp_path):
    """The object went but the process died before the row did: the next run deletes the row, audits once."""
    keys = make_upload(services, tmp_path, "half", original_until=records.utcnow() - timedelta(hours=1),
                       location_until=None)
    services.store.delete(keys["original"])

    purged = purge(services=services)

    assert [(p.upload_id, p.what) for p in purged] == [("half", "original")]
    with services.sessions() as session:
        assert [v.variant for v in records.variants_of(session, "half")] == ["sanitized"]
    assert [(a.upload_id, a.action) for a in audit_rows(services)] == [("half", "purge")]


def test_the_incoming_object_of_a_job_that_failed_without_an_original_goes_after_its_window(services, tmp_path):
    """Infrastructure failed every attempt before the original was stored: the incoming object is the only
    copy. It stays for the original's window (from arrival), then retention deletes it, audited once."""
    src = tmp_path / "upload.jpg"
    android_phone_jpeg(src)
    arrived = records.utcnow() - timedelta(days=400)
    for upload_id, state in (("gaveup", "failed"), ("waiting", "received")):
        services.store.put_file(f"incoming/{upload_id}/upload", src, content_type="application/octet-stream",
                                tags={"variant": "incoming", "access": "restricted", "complaint": "311-5000"})
        with services.sessions() as session:
            records.insert_job(session, upload_id=upload_id, complaint_id="311-5000", channel="mobile_app",
                               agency=None, source_key=f"incoming/{upload_id}/upload", filename=None,
                               content_type=None, received_at=arrived)
            session.get(records.Job, upload_id).state = state
            session.commit()
    assert purge(services=services, now=arrived + timedelta(days=300)) == []      # inside the year
    purged = purge(services=services)
    assert [(p.upload_id, p.what, p.key) for p in purged] == [("gaveup", "incoming", "incoming/gaveup/upload")]
    assert services.store.head("incoming/gaveup/upload") is None
    assert services.store.head("incoming/waiting/upload") is not None             # a job still waiting: never
    assert [(a.upload_id, a.action) for a in audit_rows(services)] == [("gaveup", "purge")]
    assert purge(services=services) == []


def test_now_decides_what_is_expired(services, tmp_path):
    now = records.utcnow()
    make_upload(services, tmp_path, "soon", original_until=now + timedelta(days=10),
                location_until=now + timedelta(days=20))
    assert purge(services=services, now=now + timedelta(days=5)) == []
    assert [p.what for p in purge(services=services, now=now + timedelta(days=15))] == ["original"]
    assert [p.what for p in purge(services=services, now=now + timedelta(days=25))] == ["location"]


def run_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    """The batch commands in a real process, registered on a Typer app exactly as worker.cli does."""
    script = ("import typer; from worker.cli_batch import register\n"
              "app = typer.Typer(); register(app); app()")
    return subprocess.run([sys.executable, "-c", script, *args], env=dict(os.environ, **env), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_purge_command_dry_run_then_for_real(tmp_path):
    data = tmp_path / "data"
    services = build_services(Settings(_env_file=None, data_dir=data))
    try:
        keys = make_upload(services, tmp_path, "old", original_until=records.utcnow() - timedelta(days=2),
                           location_until=records.utcnow() - timedelta(days=2))
        env = {"MEDIASAN_DATA_DIR": str(data)}

        dry = run_cli(env, "purge", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        lines = [json.loads(line) for line in dry.stdout.splitlines()]
        assert sorted((d["upload_id"], d["what"], d["dry_run"]) for d in lines) == [
            ("old", "location", True), ("old", "original", True)]
        assert services.store.head(keys["original"]) is not None and audit_rows(services) == []

        real = run_cli(env, "purge", "--json")
        assert real.returncode == 0, real.stderr
        assert sorted(json.loads(line)["what"] for line in real.stdout.splitlines()) == ["location", "original"]
        assert services.store.head(keys["original"]) is None
        audits = audit_rows(services)
        assert len(audits) == 2 and all(a.actor.startswith("cli:") for a in audits)

        again = run_cli(env, "purge")
        assert again.returncode == 0 and "purged 0 originals, 0 locations and 0 incoming objects" in again.stderr
    finally:
        services.engine.dispose()


def test_voice_notes_keep_their_original_14_days_photos_a_year(tmp_path):
    """End to end with a real worker: the pipeline sets the windows, the purge applies them."""
    data = tmp_path / "data"
    services = build_services(Settings(_env_file=None, data_dir=data))
    worker = WorkerProcess({"MEDIASAN_DATA_DIR": str(data)}, tmp_path / "worker.log").start()
    try:
        voice, photo = tmp_path / "note.amr", tmp_path / "PXL.jpg"
        amr_voice_note(voice)
        android_phone_jpeg(photo)
        voice_id = enqueue_file(voice, services=services, complaint_id="311-5100")
        photo_id = enqueue_file(photo, services=services, complaint_id="311-5100")
        assert wait_final(services, voice_id, worker)["state"] == "done"
        assert wait_final(services, photo_id, worker)["state"] == "done"
    finally:
        worker.stop()
    try:
        now = records.utcnow()
        assert purge(services=services, now=now + timedelta(days=13)) == []
        at_15_days = purge(services=services, now=now + timedelta(days=15))
        assert [(p.upload_id, p.what) for p in at_15_days] == [(voice_id, "original")]
        with services.sessions() as session:
            assert [v.variant for v in records.variants_of(session, voice_id)] == ["sanitized"]
            assert {v.variant for v in records.variants_of(session, photo_id)} == {"original", "sanitized"}
            assert session.get(records.Location, photo_id) is not None   # the photo's location: 365 days
        at_a_year = purge(services=services, now=now + timedelta(days=366))
        assert {(p.upload_id, p.what) for p in at_a_year} == {(photo_id, "original"), (photo_id, "location")}
    finally:
        services.engine.dispose()


def test_the_purge_task_runs_in_a_real_worker(tmp_path):
    data = tmp_path / "data"
    services = build_services(Settings(_env_file=None, data_dir=data))
    past = records.utcnow() - timedelta(days=1)
    keys = make_upload(services, tmp_path, "expired", original_until=past, location_until=past)
    worker = WorkerProcess({"MEDIASAN_DATA_DIR": str(data)}, tmp_path / "worker.log").start()
    try:
        services.broker.send_task("tasks.purge")
        deadline = time.monotonic() + 60
        while len(audit_rows(services)) < 2 and time.monotonic() < deadline:
            assert worker.proc.poll() is None, worker.log()
            time.sleep(0.25)
    finally:
        worker.stop()
        services.engine.dispose()
    assert services.store.head(keys["original"]) is None
    assert sorted((a.action, a.actor, a.detail.split()[0]) for a in audit_rows(services)) == [
        ("purge", "retention", "location"), ("purge", "retention", "original")]
