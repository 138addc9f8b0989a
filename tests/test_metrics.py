"""`mediasan worker` with MEDIASAN_METRICS_PORT: one scrape sums what every pool process counted."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fixtures.jpeg import android_phone_jpeg
from tests.ops_deployment import Worker, free_port, http_get, redis_postgres_env, wait_all_final, wait_http
from worker import records
from worker.intake import enqueue_file, incoming_key, send_upload
from worker.messages import UploadMessage

pytestmark = pytest.mark.services


def samples(exposition: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_one_scrape_sums_both_pool_children(tmp_path):
    """~15 s: 8 photos and a bad file through a worker with two children, then one scrape."""
    port = free_port()
    with redis_postgres_env(tmp_path) as (env, services):
        worker = Worker({**env, "MEDIASAN_METRICS_PORT": str(port), "MEDIASAN_LOG_FORMAT": "json"},
                        tmp_path / "worker.log", "--concurrency", "2", "--loglevel", "INFO")
        try:
            wait_http(f"http://127.0.0.1:{port}/metrics", worker.proc)
            before = samples(http_get(f"http://127.0.0.1:{port}/metrics")[1])
            # the series alerts divide by exist before anything happened
            assert before[("mediasan_uploads_finished_total", (("kind", "photo"), ("state", "done")))] == 0
            assert before[("mediasan_rejections_total", (("code", "unsupported_format"),))] == 0
            assert before[("mediasan_sweeper_republished_total", ())] == 0

            upload_ids = []
            for n in range(8):
                photo = tmp_path / f"photo-{n}.jpg"
                android_phone_jpeg(photo)
                upload_ids.append(enqueue_file(photo, services=services, complaint_id=f"311-{n}", agency="DSNY"))
            junk = tmp_path / "notes.jpg"
            junk.write_bytes(b"this is a text file wearing a .jpg name\n" * 20)
            upload_ids.append(enqueue_file(junk, services=services, complaint_id="311-junk"))
            final = wait_all_final(services, upload_ids, worker)
            assert sorted(info["state"] for info in final.values()) == ["done"] * 8 + ["rejected"]

            # a job another worker holds: this worker's attempt is retried later, with reason lease_held
            held = records.new_upload_id()
            held_photo = tmp_path / "held.jpg"
            android_phone_jpeg(held_photo)
            services.store.put_file(incoming_key(held), held_photo, content_type="application/octet-stream",
                                    tags={"variant": "incoming", "access": "restricted", "complaint": "311-held"})
            msg = UploadMessage(upload_id=held, complaint_id="311-held", channel="mobile_app",
                                source_key=incoming_key(held), received_at=records.utcnow())
            with services.sessions() as session:
                records.insert_job(session, upload_id=held, complaint_id="311-held", channel="mobile_app",
                                   agency=None, source_key=msg.source_key, filename=None, content_type=None,
                                   received_at=msg.received_at)
                assert records.claim_job(session, held, timedelta(minutes=30)) == 1
                session.commit()
            send_upload(services, msg)
            worker.wait_for_line(lambda line: line.get("event") == "task_retried" and line.get("upload_id") == held)

            after = samples(http_get(f"http://127.0.0.1:{port}/metrics")[1])
        finally:
            worker.stop()

    # both children did some of the work ...
    finished_by = {}
    for line in worker.json_lines():
        if line.get("event") == "upload_finished":
            finished_by.setdefault(line["pid"], []).append(line["upload_id"])
    assert len(finished_by) == 2, finished_by
    assert sorted(u for ids in finished_by.values() for u in ids) == sorted(upload_ids)
    # ... and one scrape of the main process counts all of it
    assert after[("mediasan_uploads_finished_total", (("kind", "photo"), ("state", "done")))] == 8
    assert after[("mediasan_uploads_finished_total", (("kind", "unknown"), ("state", "rejected")))] == 1
    assert after[("mediasan_rejections_total", (("code", "unsupported_format"),))] == 1
    assert after[("mediasan_rejections_total", (("code", "corrupt"),))] == 0
    assert after[("mediasan_sanitize_seconds_count", (("kind", "photo"),))] == 8
    assert 0 < after[("mediasan_sanitize_seconds_sum", (("kind", "photo"),))] < 8 * 60
    assert after[("mediasan_sanitize_seconds_bucket", (("kind", "photo"), ("le", "+Inf")))] == 8
    assert after[("mediasan_task_retries_total", (("reason", "lease_held"),))] == 1
    assert after[("mediasan_sweeper_republished_total", ())] == 0


DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_prometheus_config_and_alert_rules_hold():
    """~1 s: deploy/ parses, and each alert fires (and stays quiet) on the histories of deploy/alerts.test.yml."""
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts.test.yml"]):
        run = subprocess.run(["promtool", *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr


def test_alerts_read_only_contract_metrics():
    """Every mediasan_* name an alert reads is in the contract, whose names the scrapes of this file
    and of test_health.py check are served (a renamed metric would leave an alert silent for ever)."""
    import re

    contract = {"mediasan_uploads_finished_total", "mediasan_rejections_total", "mediasan_sanitize_seconds_bucket",
              "mediasan_sanitize_seconds_count", "mediasan_sanitize_seconds_sum", "mediasan_task_retries_total",
              "mediasan_sweeper_republished_total", "mediasan_jobs", "mediasan_job_oldest_received_seconds",
              "mediasan_database_up", "mediasan_api_requests_total"}
    used = set(re.findall(r"\bmediasan_[a-z_]+\b", (DEPLOY / "alerts.yml").read_text()))
    assert used and used <= contract, used - contract


def test_a_worker_start_removes_the_metrics_folders_of_runs_that_are_gone(tmp_path):
    from worker import metrics

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = metrics.multiprocess_dir(tmp_path, "celery@host", gone.pid)
    alive = metrics.multiprocess_dir(tmp_path, "celery@host", os.getpid())
    for folder in (dead, alive):
        folder.mkdir(parents=True)
        (folder / "counter_1.db").write_bytes(b"x")
    metrics.remove_dead_runs(tmp_path / "metrics")
    assert not dead.exists() and (alive / "counter_1.db").exists()
