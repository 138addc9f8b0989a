"""The sweeper: an upload whose message was lost, or whose worker died mid-job, still gets done."""
from __future__ import annotations

from datetime import timedelta

import pytest

from fixtures.jpeg import android_phone_jpeg
from tests.workerproc import running_deployment, wait_final
from worker import records
from worker.intake import incoming_key

# beat sweeps every second; a received job untouched for a second counts as lost
FAST_SWEEP = {"MEDIASAN_SWEEP_INTERVAL_S": "1", "MEDIASAN_STALE_RECEIVED_S": "1"}


@pytest.fixture(params=["embedded", "redis+postgresql"])
def deployment(request, tmp_path):
    with running_deployment(request.param, tmp_path, beat=True, extra_env=FAST_SWEEP) as running:
        yield running


def stage_upload(services, tmp_path, upload_id: str) -> None:
    """What the upload API does before it sends the message: the incoming object and the job row."""
    photo = tmp_path / f"{upload_id}.jpg"
    android_phone_jpeg(photo)
    services.store.put_file(incoming_key(upload_id), photo, content_type="application/octet-stream",
                            tags={"variant": "incoming", "access": "restricted", "complaint": "311-4001"})
    with services.sessions() as session:
        records.insert_job(session, upload_id=upload_id, complaint_id="311-4001", channel="311_online",
                           agency="DOB", source_key=incoming_key(upload_id), filename="x.jpg", content_type=None,
                           received_at=records.utcnow() - timedelta(minutes=5))
        session.commit()


def test_a_lost_message_is_republished(deployment, tmp_path):
    env, services, worker = deployment
    stage_upload(services, tmp_path, "lostmessage1")   # the message itself never reaches the broker
    info = wait_final(services, "lostmessage1", worker, timeout_s=120)
    assert info["state"] == "done" and info["attempts"] == 1
    assert {v["variant"] for v in info["variants"]} == {"original", "sanitized"}


def test_a_job_whose_worker_died_is_taken_over_after_its_lease(deployment, tmp_path):
    env, services, worker = deployment
    stage_upload(services, tmp_path, "deadworker1")
    with services.sessions() as session:
        # a worker claimed it, then died: its lease ran out and its message is gone
        assert records.claim_job(session, "deadworker1", timedelta(seconds=-1)) == 1
    info = wait_final(services, "deadworker1", worker, timeout_s=120)
    assert info["state"] == "done" and info["attempts"] == 2
