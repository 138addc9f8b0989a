"""`mediasan verify-store`: residue planted as crashes and faults leave it, found and fixed, on the local
store and on S3 (moto's server over HTTP)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.jpeg import android_phone_jpeg
from fixtures.lossless import png_with_text_and_exif
from tests.moto_s3 import moto_endpoint, s3_url  # noqa: F401 - fixture
from worker import records, store_audit, workdir
from worker.intake import enqueue_file, incoming_key, message_for, send_upload
from worker.messages import UploadMessage
from worker.pipeline import process_upload
from worker.services import build_services
from worker.settings import Settings
from worker.storage import S3Store

ROOT = Path(__file__).resolve().parent.parent


def verify_store(env: dict, *args: str) -> tuple[int, list[dict]]:
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "verify-store", "--json", *args],
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **env), cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines and "summary" in lines[-1], proc.stderr
    return proc.returncode, lines[:-1]


def sanitized(services, path: Path, complaint: str) -> str:
    upload_id = enqueue_file(path, services=services, complaint_id=complaint, agency="DSNY")
    with services.sessions() as session:
        msg = message_for(session.get(records.Job, upload_id))
    assert process_upload(msg, services).state == "done"
    return upload_id


def keys_of(services, upload_id: str) -> dict[str, str]:
    with services.sessions() as session:
        return {v.variant: v.key for v in records.variants_of(session, upload_id)}


@pytest.fixture(params=["local", "s3"])
def deployment(request, tmp_path):
    env = {"MEDIASAN_DATA_DIR": str(tmp_path / "data"),
           "MEDIASAN_STALE_RECEIVED_S": "0"}       # everything counts as older than the sweep window
    if request.param == "s3":
        env["MEDIASAN_STORAGE_URL"] = s3_url(request.getfixturevalue("moto_endpoint"))
    services = build_services(Settings(_env_file=None, data_dir=tmp_path / "data",
                                       storage_url=env.get("MEDIASAN_STORAGE_URL")))
    if isinstance(services.store, S3Store):
        services.store.ensure_buckets()
    with workdir.process_scope(services.settings.resolved_work_dir()):   # the in-process pipeline's work folder
        yield env, services
    services.engine.dispose()


def test_verify_store_finds_and_fixes_what_crashes_leave(deployment, tmp_path):
    env, services = deployment
    store = services.store
    photo, screenshot = tmp_path / "PXL_1.jpg", tmp_path / "Screenshot_1.png"
    android_phone_jpeg(photo)
    png_with_text_and_exif(screenshot)
    a = sanitized(services, photo, "311-9001")
    b = sanitized(services, screenshot, "311-9002")
    c = sanitized(services, photo, "311-9003")
    assert store_audit.audit(services) == []    # a clean store: nothing to say

    tags = {"variant": "x", "access": "restricted", "complaint": "311-9001"}
    # a worker killed between finishing and cleaning up: the incoming object of a done job
    store.put_file(incoming_key(a), photo, content_type="image/jpeg", tags=tags)
    # an original of an upload no record knows
    store.put_file("restricted/ghost1/original.jpg", photo, content_type="image/jpeg", tags=tags)
    # an earlier run's agency copy under another key, no longer recorded
    store.put_file(f"agency/{b}/media.jpg", photo, content_type="image/jpeg", tags=tags)
    # a recorded agency copy that is no longer what was verified: the original, GPS and all
    store.put_file(keys_of(services, c)["sanitized"], photo, content_type="image/jpeg", tags=tags, replace=True)
    # an upload whose producer sent the message and left the job row to the worker: waiting, not residue
    store.put_file(incoming_key("queued1"), photo, content_type="image/jpeg", tags=tags)
    send_upload(services, UploadMessage(upload_id="queued1", complaint_id="311-9004", channel="mobile_app",
                                        source_key=incoming_key("queued1"), received_at=records.utcnow()))
    # an incoming object with neither a job row nor a message: nothing will ever take it
    store.put_file(incoming_key("norow1"), photo, content_type="image/jpeg", tags=tags)
    expected = {(incoming_key(a), "incoming_of_finished"), ("restricted/ghost1/original.jpg", "unrecorded"),
                (incoming_key("norow1"), "unrecorded"),
                (f"agency/{b}/media.jpg", "unrecorded"), (keys_of(services, c)["sanitized"], "unverified")}
    if isinstance(store, S3Store):   # a multipart upload a killed worker never completed
        started = store.client.create_multipart_upload(Bucket=store.bucket("restricted"), Key="zz/original.mp4")
        expected.add((f"s3://{store.bucket('restricted')}/zz/original.mp4?uploadId={started['UploadId']}", "debris"))
    else:                            # a partial write of the local store
        partial = store.root / "restricted" / a / ".abc.tmp"
        partial.write_bytes(b"half an original")
        expected.add((str(partial), "debris"))
    sleeper = subprocess.Popen(["sleep", "30"])
    sleeper.kill()
    sleeper.wait()
    dead = services.settings.resolved_work_dir() / f"{workdir._host()}-{sleeper.pid}-1"
    dead.mkdir()
    (dead / "upload").write_bytes(b"an original with its GPS")
    expected.add((str(dead), "dead_work_folder"))

    code, findings = verify_store(env)
    assert code == 1
    assert {(f["key"], f["kind"]) for f in findings} == expected
    assert not any(f["fixed"] for f in findings)

    code, fixed = verify_store(env, "--fix")
    assert code == 1 and all(f["fixed"] for f in fixed)
    assert verify_store(env) == (0, [])
    # what the records name is untouched; the unverified copy is unpublished, row and object
    for upload_id in (a, b, c):
        assert store.head(keys_of(services, upload_id)["original"]) is not None
    assert store.head(keys_of(services, b)["sanitized"]) is not None
    assert "sanitized" not in keys_of(services, c) and store.head(f"agency/{c}/media.jpg") is None
    assert not dead.exists()
    assert store.head(incoming_key("queued1")) is not None


def test_judge_explains_objects_by_the_records_of_their_upload():
    """The pure rules the chaos test reuses: an object and its upload's records in, a finding out."""
    from datetime import timedelta

    from worker.store_audit import ListedObject, UploadFacts, judge

    now = records.utcnow()
    window = timedelta(minutes=10)
    old, young = now - timedelta(hours=1), now - timedelta(seconds=5)
    done = UploadFacts(state="done", error_code=None, source_key="incoming/u1/upload",
                       variants={"restricted/u1/original.jpg": "original", "agency/u1/media.jpg": "sanitized"})
    gave_up = UploadFacts(state="failed", error_code="retries_exhausted", source_key="incoming/u1/upload")
    waiting = UploadFacts(state="received", error_code=None, source_key="incoming/u1/upload")

    def kind(key, facts, modified=old):
        finding = judge(ListedObject(key, 1, modified), facts, now=now, window=window)
        return finding and (finding.kind, finding.fixable)

    assert kind("restricted/u1/original.jpg", done) is None
    assert kind("agency/u1/media.jpg", done) is None
    assert kind("agency/u1/media.png", done) == ("unrecorded", True)            # an earlier run's copy
    assert kind("incoming/u1/upload", done) == ("incoming_of_finished", True)
    assert kind("incoming/u1/upload", gave_up) is None                          # the only copy: retention's
    assert kind("incoming/u1/upload", waiting) == ("incoming_stale", False)     # stuck, never deleted
    assert kind("incoming/u1/upload", waiting, young) is None
    assert kind("agency/u1/media.png", waiting) is None                         # a worker stores, then records
    assert kind("restricted/u9/original.jpg", None) == ("unrecorded", True)
    assert kind("incoming/u9/upload", None, young) is None                      # written just before its job row
