"""Reprocessing from the stored originals, with a real worker on the embedded default and on Redis+PostgreSQL."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fixtures.jpeg import android_phone_jpeg
from tests.workerproc import running_deployment, wait_final
from worker import records
from worker.intake import enqueue_file, job_status
from worker.reprocess import Filters, reopen_job, reprocess
from worker.retention import purge
from worker.services import build_services
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["embedded", "redis+postgresql"])
def deployment(request, tmp_path):
    """(env, services, worker) of one deployment."""
    with running_deployment(request.param, tmp_path) as running:
        yield running


def variants(info: dict) -> dict:
    return {v["variant"]: v for v in info["variants"]}


def stored_sha256(services, key: str, tmp_path: Path) -> str:
    dest = tmp_path / "read-back"
    services.store.get_file(key, dest)
    return hashlib.sha256(dest.read_bytes()).hexdigest()


def audits(services, action: str) -> list[records.AuditEvent]:
    with services.sessions() as session:
        return list(session.scalars(select(records.AuditEvent).where(records.AuditEvent.action == action)))


def run_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    """The batch commands in a real process, registered on a Typer app exactly as worker.cli does."""
    script = ("import typer; from worker.cli_batch import register\n"
              "app = typer.Typer(); register(app); app()")
    return subprocess.run([sys.executable, "-c", script, *args], env=dict(os.environ, **env), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_reprocess_rebuilds_the_agency_copy_from_the_original(deployment, tmp_path):
    env, services, worker = deployment
    photo = tmp_path / "PXL_20261201.jpg"
    android_phone_jpeg(photo)
    upload_id = enqueue_file(photo, services=services, complaint_id="311-6001", agency="DSNY")
    first = wait_final(services, upload_id, worker)
    assert first["state"] == "done" and first["attempts"] == 1
    copy = variants(first)["sanitized"]
    # the agency copy is lost: the rebuild must bring it back, from the original alone
    services.store.delete(copy["key"])
    assert services.store.head(f"incoming/{upload_id}/upload") is None

    summary = reprocess(services=services, filters=Filters(upload_ids=(upload_id,)), actor="test-operator",
                        purpose="sanitizer upgrade")
    assert (summary.matched, summary.requeued, summary.skipped) == (1, 1, 0)

    again = wait_final(services, upload_id, worker)
    assert again["state"] == "done" and again["error"] is None
    assert again["attempts"] == 2
    assert variants(again)["sanitized"]["sha256"] == copy["sha256"]          # the rebuild is deterministic
    assert stored_sha256(services, copy["key"], tmp_path) == copy["sha256"]  # and the object is back in the store
    assert variants(again)["original"] == variants(first)["original"]       # the original untouched
    with services.sessions() as session:
        assert session.scalar(select(func.count()).select_from(records.Location)
                              .where(records.Location.upload_id == upload_id)) == 1
    [audit] = audits(services, "reprocess")
    assert (audit.upload_id, audit.actor, audit.role, audit.purpose) == (
        upload_id, "test-operator", "service", "sanitizer upgrade")


def test_reprocess_does_not_extend_retention(deployment, tmp_path):
    env, services, worker = deployment
    photo = tmp_path / "IMG_2.jpg"
    android_phone_jpeg(photo)
    upload_id = enqueue_file(photo, services=services, complaint_id="311-6002")
    assert wait_final(services, upload_id, worker)["state"] == "done"

    def windows():
        with services.sessions() as session:
            original = [v for v in records.variants_of(session, upload_id) if v.variant == "original"][0]
            return original.retain_until, session.get(records.Location, upload_id).retain_until

    before = windows()
    reprocess(services=services, filters=Filters(upload_ids=(upload_id,)))
    assert wait_final(services, upload_id, worker)["attempts"] == 2
    assert windows() == before


def test_a_reprocess_that_now_rejects_takes_the_old_agency_copy_down(deployment, tmp_path):
    """As after a stricter sanitizer: the stored original no longer passes, so no agency copy may remain."""
    env, services, worker = deployment
    photo = tmp_path / "IMG_4.jpg"
    android_phone_jpeg(photo)
    upload_id = enqueue_file(photo, services=services, complaint_id="311-6006")
    first = wait_final(services, upload_id, worker)
    assert first["state"] == "done"
    original, copy = variants(first)["original"], variants(first)["sanitized"]
    # stand-in for the upgrade: the same stored original now fails the sanitizer (cut short)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photo.read_bytes()[:200])
    services.store.put_file(original["key"], cut, content_type="image/jpeg", tags=original["tags"], replace=True)

    reprocess(services=services, filters=Filters(upload_ids=(upload_id,)))
    again = wait_final(services, upload_id, worker)

    assert again["state"] == "rejected" and again["attempts"] == 2
    assert list(variants(again)) == ["original"]
    assert services.store.head(copy["key"]) is None


def test_rejected_stays_rejected_and_a_job_in_processing_is_skipped(deployment, tmp_path):
    env, services, worker = deployment
    bad = tmp_path / "IMG_404.jpg"
    bad.write_bytes(b"<html><body>not a photo</body></html>")
    rejected_id = enqueue_file(bad, services=services, complaint_id="311-6003", content_type="image/jpeg")
    first = wait_final(services, rejected_id, worker)
    assert first["state"] == "rejected" and first["error"]["code"] == "unsupported_format"

    # another worker holds this one right now (a long lease); reprocess must leave it alone
    busy_id = "busy_upload"
    with services.sessions() as session:
        records.insert_job(session, upload_id=busy_id, complaint_id="311-6003", channel="mobile_app", agency=None,
                           source_key=f"incoming/{busy_id}/upload", filename=None, content_type=None,
                           received_at=records.utcnow())
        session.commit()
        assert records.claim_job(session, busy_id, timedelta(hours=1)) == 1

    # through the command, as an operator would run it
    result = run_cli(env, "reprocess", "--complaint", "311-6003", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_id = {line["upload_id"]: line for line in lines if "upload_id" in line}
    assert by_id[rejected_id]["outcome"] == "requeued" and by_id[rejected_id]["state"] == "rejected"
    assert by_id[busy_id]["outcome"] == "skipped" and by_id[busy_id]["state"] == "processing"
    assert lines[-1]["summary"] == {"matched": 2, "requeued": 1, "skipped": 1, "dry_run": False}

    again = wait_final(services, rejected_id, worker)
    assert again["state"] == "rejected" and again["error"]["code"] == "unsupported_format"
    assert again["attempts"] == 2
    assert list(variants(again)) == ["original"]                  # still no agency copy
    busy = job_status(services=services, upload_id=busy_id)
    assert (busy["state"], busy["attempts"]) == ("processing", 1)
    assert [a.upload_id for a in audits(services, "reprocess")] == [rejected_id]


def test_nothing_is_requeued_without_an_original_or_in_a_dry_run(deployment, tmp_path):
    env, services, worker = deployment
    photo = tmp_path / "IMG_3.jpg"
    android_phone_jpeg(photo)
    kept_id = enqueue_file(photo, services=services, complaint_id="311-6004")
    purged_id = enqueue_file(photo, services=services, complaint_id="311-6005")
    kept, done = wait_final(services, kept_id, worker), wait_final(services, purged_id, worker)
    assert kept["state"] == done["state"] == "done"

    # purge only the second one's original (its retain_until moved into the past)
    with services.sessions() as session:
        original = [v for v in records.variants_of(session, purged_id) if v.variant == "original"][0]
        original.retain_until = records.utcnow() - timedelta(days=1)
        session.commit()
    assert [(p.upload_id, p.what) for p in purge(services=services)] == [(purged_id, "original")]

    dry = reprocess(services=services, filters=Filters(states=("done",)), dry_run=True)
    assert {(i.upload_id, i.outcome) for i in dry.items} == {(kept_id, "requeued"), (purged_id, "skipped")}
    assert "no stored original" in {i.upload_id: i for i in dry.items}[purged_id].reason
    assert job_status(services=services, upload_id=kept_id) == kept   # the dry run changed nothing
    assert audits(services, "reprocess") == []

    real = reprocess(services=services, filters=Filters(upload_ids=(purged_id,)))
    assert (real.matched, real.requeued, real.skipped) == (1, 0, 1)
    assert job_status(services=services, upload_id=purged_id) == variants_dropped(done, "original")


def variants_dropped(info: dict, variant: str) -> dict:
    return {**info, "variants": [v for v in info["variants"] if v["variant"] != variant]}


# --- matching, without a worker -------------------------------------------------------------------

@pytest.fixture
def local_services(tmp_path):
    services = build_services(Settings(_env_file=None, data_dir=tmp_path / "data"))
    yield services
    services.engine.dispose()


def add_job(services, upload_id: str, *, state: str, complaint_id: str = "311-7000", fmt: str | None = None,
            error_code: str | None = None, received_days_ago: int = 0, original_media_type: str | None = None):
    with services.sessions() as session:
        records.insert_job(session, upload_id=upload_id, complaint_id=complaint_id, channel="mobile_app", agency=None,
                           source_key=f"incoming/{upload_id}/upload", filename=None, content_type=None,
                           received_at=records.utcnow() - timedelta(days=received_days_ago))
        job = session.get(records.Job, upload_id)
        job.state, job.format, job.error_code = state, fmt, error_code
        if original_media_type:
            records.upsert_variant(session, upload_id=upload_id, variant="original",
                                   key=f"restricted/{upload_id}/original.x", sha256="0" * 64, size=1,
                                   media_type=original_media_type, tags={}, sanitizer_version="test",
                                   retain_until=None)
        session.commit()


def matched(services, **filters) -> set[str]:
    summary = reprocess(services=services, filters=Filters(**filters), dry_run=True)
    return {i.upload_id for i in summary.items}


def test_filters_select_the_right_jobs(local_services):
    s = local_services
    add_job(s, "heic_done", state="done", fmt="jpeg", original_media_type="image/heic", received_days_ago=30)
    add_job(s, "jpeg_done", state="done", fmt="jpeg", original_media_type="image/jpeg", complaint_id="311-7001")
    add_job(s, "unsupported", state="rejected", error_code="unsupported_format", received_days_ago=10)
    add_job(s, "failed_one", state="failed", error_code="retries_exhausted", received_days_ago=2)
    add_job(s, "waiting", state="received")

    assert matched(s, upload_ids=("jpeg_done", "waiting")) == {"jpeg_done", "waiting"}
    assert matched(s, complaint_id="311-7001") == {"jpeg_done"}
    assert matched(s, states=("rejected", "failed")) == {"unsupported", "failed_one"}
    assert matched(s, format="heic") == {"heic_done"}                 # by the identified input format
    assert matched(s, format="jpeg") == {"heic_done", "jpeg_done"}   # or by the agency copy's format
    assert matched(s, error_code="unsupported_format") == {"unsupported"}
    assert matched(s, since=records.utcnow() - timedelta(days=5)) == {"jpeg_done", "failed_one", "waiting"}
    assert matched(s, states=("done",), since=records.utcnow() - timedelta(days=5)) == {"jpeg_done"}
    with pytest.raises(ValueError):
        Filters(states=("processing",))
    with pytest.raises(ValueError):
        matched(s, format="bmp")


def test_reopen_job_only_from_a_final_state(local_services):
    s = local_services
    for state in records.JOB_STATES:
        add_job(s, f"job_{state}", state=state)
    with s.sessions() as session:
        reopened = {state for state in records.JOB_STATES if reopen_job(session, f"job_{state}")}
        session.commit()
        assert reopened == set(records.FINAL_STATES)
        assert {j.state for j in session.scalars(select(records.Job))} == {"received", "processing"}
        assert reopen_job(session, "job_done") is False   # already reopened: a repeat changes nothing


def test_reprocess_command_wants_a_filter(local_services, tmp_path):
    env = {"MEDIASAN_DATA_DIR": str(tmp_path / "data")}
    result = run_cli(env, "reprocess")
    assert result.returncode != 0 and "--all" in result.stderr
    add_job(local_services, "one", state="received")
    result = run_cli(env, "reprocess", "--all", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["summary"] == {
        "matched": 1, "requeued": 0, "skipped": 1, "dry_run": True}
