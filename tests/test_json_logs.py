"""MEDIASAN_LOG_FORMAT=json: real worker and server processes write one JSON object a line, name the
upload wherever there is one, and never write a coordinate, a token or an Authorization header."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from fixtures.jpeg import NEW_YORK, android_phone_jpeg
from tests.ops_deployment import Worker, free_port, http_get, redis_postgres_env, wait_all_final, wait_http
from worker import logs
from worker.intake import enqueue_file

LAT, LON = NEW_YORK
TOKEN = "Xq3vT9kLmN2pR7sW4yZ8bC1dF6gH0jKq5uE3iO9aS2w"   # shaped like `mediasan api-token`'s


def coordinate_spellings(lat: float, lon: float) -> list[str]:
    """How a coordinate could show up in text: decimal degrees at any useful precision, and the
    degrees-minutes split EXIF uses."""
    spellings = []
    for value in (lat, lon):
        for places in (3, 4, 5, 6):
            spellings.append(f"{value:.{places}f}")
            spellings.append(f"{abs(value):.{places}f}")
        degrees = int(abs(value))
        minutes = (abs(value) - degrees) * 60
        spellings.append(f"{degrees} deg {int(minutes)}'")
        spellings.append(f"(({degrees}, 1), ({int(minutes)}, 1)")
    return spellings


def assert_nothing_sensitive(text: str) -> None:
    for spelling in coordinate_spellings(LAT, LON):
        assert spelling not in text, f"a coordinate ({spelling}) is in the log"
    assert TOKEN not in text and TOKEN[:20] not in text, "a token is in the log"


def noisy_photo(path) -> None:
    """~5 MB of noise: slow enough (about half a second) to kill its pool process mid-task."""
    from PIL import Image
    Image.frombytes("RGB", (2400, 1800), os.urandom(2400 * 1800 * 3)).save(path, quality=95)


@pytest.mark.services
def test_worker_lines_name_their_upload_and_hold_no_location(tmp_path):
    """~15 s: two GPS photos, then a pool process killed mid-task (its message goes back and is done)."""
    with redis_postgres_env(tmp_path) as (env, services):
        # a short lease: the killed run's claim runs out in seconds, not half an hour
        metrics_port = free_port()
        worker = Worker({**env, "MEDIASAN_LOG_FORMAT": "json", "MEDIASAN_LEASE_S": "3",
                         "MEDIASAN_METRICS_PORT": str(metrics_port)}, tmp_path / "worker.log",
                        "--concurrency", "1", "--loglevel", "INFO")
        try:
            photos = []
            for n in range(2):
                photos.append(tmp_path / f"PXL_{n}.jpg")
                android_phone_jpeg(photos[-1])
            upload_ids = [enqueue_file(p, services=services, complaint_id="311-7", agency="DSNY") for p in photos]
            wait_all_final(services, upload_ids, worker)

            # kill the pool process as soon as it starts an upload; a task that finished first is tried again
            lost, tried = None, []
            for attempt in range(5):
                big = tmp_path / f"big-{attempt}.jpg"
                noisy_photo(big)
                upload_id = enqueue_file(big, services=services, complaint_id="311-8")
                tried.append(upload_id)
                started = worker.wait_for_line(lambda line: line.get("event") == "task_started"
                                               and line.get("upload_id") == upload_id)
                os.kill(started["pid"], signal.SIGKILL)
                wait_all_final(services, [upload_id], worker)
                if any(line.get("event") == "worker_lost" and line.get("upload_id") == upload_id
                       for line in worker.json_lines()):
                    lost = upload_id
                    break
            assert lost is not None, "the pool process never died mid-task in 5 tries"
            exposition = http_get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
        finally:
            worker.stop()

    lines = worker.json_lines()   # every line parses, or this raises
    assert all({"ts", "level", "event", "logger", "message"} <= set(line) for line in lines)
    assert all(line["ts"].endswith("Z") for line in lines)
    by_event = {}
    for line in lines:
        by_event.setdefault(line["event"], []).append(line)
    for upload_id in upload_ids + [lost]:
        for event in ("task_received", "task_started", "upload_finished", "task_succeeded"):
            assert any(line.get("upload_id") == upload_id for line in by_event.get(event, [])), (event, upload_id)
    finished = {line["upload_id"]: line for line in by_event["upload_finished"]}
    assert set(finished) == set(upload_ids + tried), "every upload, the ones that beat the kill too, finished"
    for line in finished.values():
        assert line["state"] == "done" and line["kind"] == "photo" and line["format"] == "jpeg"
        assert line["error_code"] is None and 0 < line["seconds"] < 60
    # the lost run: named in the main process's lines, then started again (after its lease) and finished once
    assert [line["upload_id"] for line in by_event["task_started"]].count(lost) >= 2
    assert [line["upload_id"] for line in by_event["upload_finished"]].count(lost) == 1
    # a handler error names its upload: the lost one, or a try whose kill came as its task was ending
    assert all(line.get("upload_id") in tried for line in by_event.get("task_handler_error", []))
    assert any(line["logger"] == "multiprocessing" and "SIGKILL" in line["message"] for line in lines)
    assert_nothing_sensitive(worker.text())
    # each loss is counted once, as a retry, by the main process; a try whose kill came as its task
    # was ending may be a loss too, so count the losses the log names (its line comes before the count)
    counted = re.search(r'mediasan_task_retries_total\{reason="worker_lost"\} (\d+)\.0', exposition)
    assert counted, exposition
    losses = {line["upload_id"] for line in by_event["worker_lost"]}
    assert lost in losses and 1 <= int(counted.group(1)) <= len(losses) <= len(tried)


def test_server_access_lines_are_json_without_the_token(tmp_path):
    """~4 s: a token sent in the Authorization header and in the query string never reaches the log."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve", "--port", str(port)],
                            env=dict(os.environ, MEDIASAN_DATA_DIR=str(tmp_path / "data"), MEDIASAN_LOG_FORMAT="json"),
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", proc)
        for url in (f"{base}/uploads/u1/media?access_token={TOKEN}", f"{base}/uploads/u1/media?token={TOKEN}"):
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code == 401
        time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    requests = [line for line in lines if line["event"] == "http_request"]
    assert [(r["method"], r["status"], r.get("upload_id")) for r in requests
            if r["path"].startswith("/uploads/")] == [("GET", 401, "u1")] * 2
    assert any(line["event"] == "log" and "Uvicorn running" in line["message"] for line in lines)
    assert_nothing_sensitive(text)


def test_redaction_is_the_last_line_of_defence():
    """In-process: whatever a careless line holds, the JSON line written has it replaced."""
    stream = io.StringIO()
    root, pool = logging.getLogger(), logging.getLogger("multiprocessing")
    saved = root.handlers[:], root.level, pool.handlers[:]
    logs.configure("json", "INFO", stream=stream)
    try:
        log = logging.getLogger("tests.careless")
        log.info("fix %s,%s from %s", LAT, LON, {"GPSLatitude": ((40, 1), (42, 1), (4599, 100))})
        log.warning("headers %r", {"authorization": f"Bearer {TOKEN}", "x-purpose": "FOIL"})
        log.info("connecting to postgresql://svc:%s@db/mediasan", TOKEN)
        log.info("©xyz box: +40.7128-074.0060/ and lat=%s lon=%s", LAT, LON)
        try:
            raise ValueError(f"bad GPS rational at lat {LAT} lon {LON}")
        except ValueError:
            log.exception("parser failed")
        with logs.upload_context("up-1"):
            log.info("inside an upload")
    finally:   # this process's logging as pytest set it up
        root.handlers, pool.handlers = saved[0], saved[2]
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 6
    assert_nothing_sensitive(stream.getvalue())
    assert "[redacted]" in lines[0]["message"] and "FOIL" in lines[1]["message"]
    assert "ValueError" in lines[4]["exception"]
    assert lines[5]["upload_id"] == "up-1" and "upload_id" not in lines[0]


@pytest.mark.parametrize("text, secret", [
    ("©xyz +40.7128-074.0060+010.000/", "40.7128"),
    ("ISO6709 +4042.7680-07400.3585/", "07400.3585"),
    ("GPSLatitude=((40, 1), (42, 1), (4599, 100))", "4599"),
    ("GPS 40 deg 42' 46.00\" N", "42' 46"),
    ("lat: 40.7, lon: -74.0", "74.0"),
    ("at 40.712776, -74.005974 exactly", "74.005974"),
    ("{'Authorization': 'Bearer abc.def-123'}", "abc.def-123"),
    ("redis://:hunter2@broker:6379/0", "hunter2"),
    ("X-Amz-Signature=3f9a7c", "3f9a7c"),
])
def test_redact_removes(text, secret):
    assert secret not in logs.redact(text)


@pytest.mark.parametrize("text", [
    "Task tasks.sanitize_upload[9237e6ea-1234-5678-bb9d-192286e397fc] received",
    "Task tasks.sanitize_upload[9237e6ea-1291-4ddf-bb9d-192286e397fc] succeeded in 0.16021336899996186s: 'done'",
    "upload 3d34a0bd2ea34fad8177f76e59c40f2a done (jpeg)",
    "127.0.0.1:35498 - \"GET /uploads/u1/media HTTP/1.1\" 200",
])
def test_redact_leaves_ordinary_lines_alone(text):
    assert logs.redact(text) == text
