"""The sweeper: an upload whose message was lost, or whose worker died mid-job, still gets done."""
from __future__ import annotations

import contextlib
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from fixtures.jpeg import android_phone_jpeg
from tests.workerproc import (POSTGRES_URL, REDIS_URL, drop_postgres_schema, flush_redis, fresh_postgres_schema,
                              require, running_deployment, wait_final)
from worker import records
from worker.intake import incoming_key, message_for, send_upload
from worker.messages import UploadMessage
from worker.sweeper import _upload_id_of, pending_in_folder, sweep

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


# --- telling a lost message from a backlog (no worker: the broker holds what was sent) ------------

@contextlib.contextmanager
def services_without_worker(kind: str, folder: Path):
    from worker.services import build_services
    from worker.settings import Settings

    cleanup = []
    options = {}
    if kind == "redis+postgresql":
        require(REDIS_URL, 6379, "Redis")
        require(POSTGRES_URL, 5432, "PostgreSQL")
        flush_redis(REDIS_URL)
        database_url = fresh_postgres_schema(POSTGRES_URL)
        cleanup.append(lambda: drop_postgres_schema(database_url))
        options = {"broker_url": REDIS_URL, "database_url": database_url}
    services = build_services(Settings(_env_file=None, data_dir=folder / "data", **options))
    try:
        yield services
    finally:
        services.engine.dispose()
        for step in cleanup:
            step()


def stale_job(services, upload_id: str) -> UploadMessage:
    """A received job untouched for 20 minutes (twice the sweep window)."""
    long_ago = records.utcnow() - timedelta(minutes=20)
    with services.sessions() as session:
        records.insert_job(session, upload_id=upload_id, complaint_id="311-4002", channel="mobile_app", agency=None,
                           source_key=incoming_key(upload_id), filename=None, content_type=None, received_at=long_ago)
        session.flush()
        session.execute(update(records.Job).where(records.Job.upload_id == upload_id).values(updated_at=long_ago))
        session.commit()
        return message_for(session.get(records.Job, upload_id))


def queued_ids(services) -> list[str]:
    import redis
    client = redis.Redis.from_url(REDIS_URL)
    return [_upload_id_of(json.loads(raw)) for raw in client.lrange(services.settings.queue, 0, -1)]


def test_redis_sweep_republishes_only_what_the_broker_no_longer_holds(tmp_path):
    import redis
    with services_without_worker("redis+postgresql", tmp_path) as services:
        client = redis.Redis.from_url(REDIS_URL)
        queue = services.settings.queue
        backlog = [f"backlog{i:03d}" for i in range(100)]
        lost = [f"lost{i:03d}" for i in range(30)]
        held = [f"held{i:03d}" for i in range(10)]            # a live worker holds the message
        orphaned = [f"orphan{i:03d}" for i in range(5)]       # delivered to a worker that is gone
        for upload_id in backlog + held + orphaned:
            send_upload(services, stale_job(services, upload_id))
        for upload_id in lost:
            stale_job(services, upload_id)
        # move the held and orphaned messages from the queue into kombu's unacked hash, as a worker's
        # delivery does (tag -> [payload, exchange, routing_key]; the index scores the delivery time)
        now = time.time()
        for raw in client.lrange(queue, 0, -1):
            upload_id = _upload_id_of(json.loads(raw))
            if upload_id in held or upload_id in orphaned:
                client.lrem(queue, 1, raw)
                tag = f"tag-{upload_id}"
                client.hset("unacked", tag, json.dumps([json.loads(raw), "", queue]))
                delivered = now if upload_id in held else now - 2 * services.settings.lease_s
                client.zadd("unacked_index", {tag: delivered})
        try:
            result = sweep(services)
            # the figure: the time rule alone (the old sweeper) republished every candidate
            assert result.candidates == 145 and result.broker_visible
            assert sorted(result.republished) == sorted(lost + orphaned)
            assert result.still_queued == 110
            assert sorted(queued_ids(services)) == sorted(backlog + lost + orphaned)   # each once
            again = sweep(services)
            assert again.candidates == 0 and again.republished == []   # one republish per stale window
        finally:
            client.hdel("unacked", *[f"tag-{u}" for u in held + orphaned])
            client.zrem("unacked_index", *[f"tag-{u}" for u in held + orphaned])


def test_filesystem_sweep_republishes_only_what_is_not_in_the_queue_folder(tmp_path):
    with services_without_worker("embedded", tmp_path) as services:
        backlog = [f"backlog{i:02d}" for i in range(20)]
        lost = [f"lost{i:02d}" for i in range(10)]
        for upload_id in backlog:
            send_upload(services, stale_job(services, upload_id))
        for upload_id in lost:
            stale_job(services, upload_id)
        result = sweep(services)
        assert (result.candidates, result.still_queued) == (30, 20) and result.broker_visible
        assert sorted(result.republished) == lost
        folder = tmp_path / "data" / "broker" / "queue"
        assert pending_in_folder(folder, services.settings.queue) == set(backlog + lost)
        # the sweep task itself goes to the sweeper's own queue, not behind the backlog
        from tasks.sweep import sweep as sweep_task
        sweep_task.apply_async(connection=services.broker.connection_for_write())
        assert len(list(folder.glob(f"*.{services.settings.queue}.sweep.msg"))) == 1


def test_mediasan_sweep_runs_the_sweeper_in_its_own_process(tmp_path):
    import os
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    with services_without_worker("embedded", tmp_path) as services:
        stale_job(services, "lostincli1")
        proc = subprocess.run([sys.executable, "-m", "worker.cli", "sweep", "--json"], cwd=root, capture_output=True,
                              text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=str(root), MEDIASAN_DATA_DIR=str(tmp_path / "data")))
        assert proc.returncode == 0, proc.stderr
        line = json.loads(proc.stdout)
        assert (line["candidates"], line["republished"], line["still_queued"]) == (1, 1, 0)
        assert pending_in_folder(tmp_path / "data" / "broker" / "queue", services.settings.queue) == {"lostincli1"}
