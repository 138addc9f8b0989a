"""Nothing left behind: real worker processes SIGKILLed at chosen steps of the pipeline, then the
invariants read back from the database, the store and the work folder.

The pipeline's test hook (``MEDIASAN_TEST_PAUSE_AT``, worker/pipeline.py ``pause_for_test``) makes the
first attempt of a job sleep at a named step after leaving a marker in its work folder; the test
finds the marker, reads the pool child's pid from the folder's name and kills that process.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest

from fixtures.jpeg import android_phone_jpeg
from tests.workerproc import WorkerProcess, running_deployment, wait_final
from worker import records, store_audit, workdir
from worker.intake import enqueue_file, incoming_key

ROOT = Path(__file__).resolve().parent.parent

# a short lease so a killed attempt is taken over in seconds; beat sweeps every second
FAST = {"MEDIASAN_LEASE_S": "4", "MEDIASAN_SWEEP_INTERVAL_S": "1", "MEDIASAN_STALE_RECEIVED_S": "1"}


def paused_pid(work_root: Path, upload_id: str, step: str, worker: WorkerProcess, timeout_s: float = 60) -> int:
    """The pid of the process paused at ``step`` on this upload (from its work folder's name)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for marker in work_root.glob(f"*/job-{upload_id}/paused-at-{step}"):
            return int(marker.parent.parent.name.rsplit("-", 2)[1])
        if worker.proc.poll() is not None:
            pytest.fail(f"the worker exited with {worker.proc.returncode}:\n{worker.log()}")
        time.sleep(0.1)
    pytest.fail(f"no process paused at {step} for {upload_id}:\n{worker.log()}")


def wait_until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"not within {timeout_s} s: {what}")


def assert_nothing_left(services, upload_id: str, original: bytes, tmp_path: Path, *, dead_pid: int) -> None:
    """The invariants of issue 8, read back from the records, the store and the work folder."""
    with services.sessions() as session:
        job = session.get(records.Job, upload_id)
        variants = {v.variant: v for v in records.variants_of(session, upload_id)}
    assert job.state == "done", (job.state, job.error_code, job.error_message)
    assert set(variants) == {"original", "sanitized"}
    assert services.store.head(incoming_key(upload_id)) is None          # no incoming object of a finished job
    back = tmp_path / "original-read-back"
    services.store.get_file(variants["original"].key, back)
    assert back.read_bytes() == original                                  # the original, byte-equal
    assert variants["original"].sha256 == hashlib.sha256(original).hexdigest()
    work_root = services.settings.resolved_work_dir()
    assert not [f for f in workdir.folders(work_root) if f.pid == dead_pid]   # the killed process's folder
    assert store_audit.audit(services) == []                              # nothing anywhere the records miss


def staged_photo(tmp_path: Path) -> tuple[Path, bytes]:
    photo = tmp_path / "PXL_kill.jpg"
    android_phone_jpeg(photo)
    return photo, photo.read_bytes()


@pytest.mark.parametrize("step", ["fetched", "stored", "finished"])
def test_a_pool_child_killed_at_each_step_leaves_nothing(step, tmp_path):
    """Redis + PostgreSQL: the pool child dies at ``step``; the same worker (new child) and the sweeper
    finish the job and remove the dead child's work folder."""
    env = {**FAST, "MEDIASAN_TEST_PAUSE_AT": step}
    with running_deployment("redis+postgresql", tmp_path, beat=True, extra_env=env) as (env, services, worker):
        photo, original = staged_photo(tmp_path)
        upload_id = enqueue_file(photo, services=services, complaint_id="311-8001", agency="DSNY")
        pid = paused_pid(services.settings.resolved_work_dir(), upload_id, step, worker)
        assert pid != worker.proc.pid    # a pool child, not the worker itself
        os.kill(pid, signal.SIGKILL)
        info = wait_final(services, upload_id, worker, timeout_s=90)
        assert info["state"] == "done" and info["attempts"] >= (1 if step == "finished" else 2)
        # the sweeper (every second) removes the dead child's folder
        wait_until(lambda: not [f for f in workdir.folders(services.settings.resolved_work_dir()) if f.pid == pid],
                   30, "the killed child's work folder removed")
        wait_until(lambda: services.store.head(incoming_key(upload_id)) is None, 30, "the incoming object removed")
        assert_nothing_left(services, upload_id, original, tmp_path, dead_pid=pid)


def test_a_whole_worker_killed_after_finishing_is_cleaned_up_by_a_new_worker_and_the_sweeper(tmp_path):
    """Redis + PostgreSQL: the job is committed done, then the worker and its child die before the
    incoming object is deleted. Its message stays unacked in Redis (restored only after the
    visibility timeout): a new worker removes the dead folders at start and the sweeper the object."""
    env = {**FAST, "MEDIASAN_TEST_PAUSE_AT": "finished"}
    with running_deployment("redis+postgresql", tmp_path, beat=True, extra_env=env) as (env, services, worker):
        photo, original = staged_photo(tmp_path)
        upload_id = enqueue_file(photo, services=services, complaint_id="311-8002")
        work_root = services.settings.resolved_work_dir()
        pid = paused_pid(work_root, upload_id, "finished", worker)
        with services.sessions() as session:
            assert session.get(records.Job, upload_id).state == "done"
        assert services.store.head(incoming_key(upload_id)) is not None   # the residue issue 8 saw
        # the whole worker dies, as with its container: the main process, the paused pool child and
        # the embedded beat (which would otherwise live on, orphaned, after this test)
        import psutil
        family = psutil.Process(worker.proc.pid).children(recursive=True)
        os.kill(worker.proc.pid, signal.SIGKILL)
        for process in family:
            process.kill()
        assert pid in {process.pid for process in family}
        worker.proc.wait()
        dead = {f.pid for f in workdir.folders(work_root)}
        assert pid in dead

        fresh = WorkerProcess({k: v for k, v in env.items() if k != "MEDIASAN_TEST_PAUSE_AT"},
                              tmp_path / "worker2.log", beat=True).start()
        try:
            wait_until(lambda: not {f.pid for f in workdir.folders(work_root)} & dead, 90,
                       "the dead processes' work folders removed by the new worker")
            wait_until(lambda: services.store.head(incoming_key(upload_id)) is None, 90,
                       f"the sweeper removes the incoming object:\n{fresh.log()}")
            assert_nothing_left(services, upload_id, original, tmp_path, dead_pid=pid)
        finally:
            fresh.stop()


def test_embedded_default_a_child_killed_after_storing_still_ends_done(tmp_path):
    """Filesystem broker + SQLite + local store: the child dies with both objects stored, unrecorded."""
    env = {**FAST, "MEDIASAN_TEST_PAUSE_AT": "stored"}
    with running_deployment("embedded", tmp_path, beat=True, extra_env=env) as (env, services, worker):
        photo, original = staged_photo(tmp_path)
        upload_id = enqueue_file(photo, services=services, complaint_id="311-8003")
        pid = paused_pid(services.settings.resolved_work_dir(), upload_id, "stored", worker)
        # both objects are in the store, the records do not know them yet; verify-store leaves them be
        assert [o.key for o in store_audit.list_objects(services.store, "agency", f"{upload_id}/")]
        assert store_audit.audit(services, verify=False) == []
        os.kill(pid, signal.SIGKILL)
        info = wait_final(services, upload_id, worker, timeout_s=90)
        assert info["state"] == "done"
        wait_until(lambda: not [f for f in workdir.folders(services.settings.resolved_work_dir()) if f.pid == pid],
                   30, "the killed child's work folder removed")
        # the worker deletes the incoming object just after committing `done`
        wait_until(lambda: services.store.head(incoming_key(upload_id)) is None, 30, "the incoming object removed")
        assert_nothing_left(services, upload_id, original, tmp_path, dead_pid=pid)


def test_lease_waits_do_not_count_as_retries_and_giving_up_unpublishes_the_old_copy(tmp_path):
    """MEDIASAN_TASK_MAX_RETRIES=1: a job held by another worker's lease waits without spending its
    retry; then the stored original is gone (an infrastructure error on every attempt): two attempts,
    `failed` with retries_exhausted, and the agency copy of the earlier run is taken down."""
    env = {"MEDIASAN_TASK_MAX_RETRIES": "1"}
    with running_deployment("redis+postgresql", tmp_path, extra_env=env) as (env, services, worker):
        photo, _ = staged_photo(tmp_path)
        upload_id = enqueue_file(photo, services=services, complaint_id="311-8004", agency="DSNY")
        first = wait_final(services, upload_id, worker)
        assert first["state"] == "done" and first["attempts"] == 1
        keys = {v["variant"]: v["key"] for v in first["variants"]}
        services.store.delete(keys["original"])      # the store lost it: every attempt will fail
        with services.sessions() as session:
            job = session.get(records.Job, upload_id)
            job.state = "received"                    # a reprocess reopened it ...
            session.commit()
            assert records.claim_job(session, upload_id, timedelta(seconds=3)) == 2   # ... and another worker holds it
        from worker.intake import message_for, send_upload
        with services.sessions() as session:
            send_upload(services, message_for(session.get(records.Job, upload_id)))
        info = wait_final(services, upload_id, worker, timeout_s=90)
        assert info["state"] == "failed" and info["error"]["code"] == "retries_exhausted"
        # attempts: 1 (first run) + 1 (the other holder) + 2 of ours + the give-up's claim. Had the lease
        # wait counted as a retry, the first failure would have given up: 4.
        assert info["attempts"] == 5, worker.log()
        assert info["variants"] == [v for v in info["variants"] if v["variant"] == "original"]
        # the row went with the final state; the object goes just after the commit
        wait_until(lambda: services.store.head(keys["sanitized"]) is None, 30, "the old agency copy removed")
        assert [f.kind for f in store_audit.audit(services)] == []


def test_a_killed_process_work_folder_is_removed_and_a_live_one_kept(tmp_path):
    root = tmp_path / "work"
    script = ("import sys, time; from pathlib import Path; from worker import workdir\n"
              "f = workdir.process_folder(Path(sys.argv[1])); (f / 'tmp' / 'upload').write_bytes(b'GPS');"
              "print(f, flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", script, str(root)], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    theirs = Path(child.stdout.readline().strip())
    ours = workdir.process_folder(root)
    try:
        assert theirs.is_dir() and theirs != ours and oct(root.stat().st_mode & 0o777) == "0o700"
        assert workdir.remove_dead(root, stale_s=3600) == []     # both alive
        child.kill()
        child.wait()
        assert workdir.remove_dead(root, stale_s=3600) == [theirs]
        assert not theirs.exists() and ours.is_dir()
        assert Path(tempfile.gettempdir()) == ours / "tmp" and os.environ["TMPDIR"] == str(ours / "tmp")
    finally:
        child.kill()
        workdir.remove_own(root)
        tempfile.tempdir = None
        os.environ.pop("TMPDIR", None)


def test_mediasan_sanitize_leaves_no_work_folder(tmp_path):
    photo, _ = staged_photo(tmp_path)
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    data = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "sanitize", str(photo), "--out", str(tmp_path / "out")],
                          env=dict(os.environ, PYTHONPATH=str(ROOT), MEDIASAN_DATA_DIR=str(data), TMPDIR=str(system_tmp)),
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["PXL_kill.jpg"]
    assert not data.exists() and list(system_tmp.iterdir()) == []


def test_a_rerun_removes_what_an_earlier_run_left_under_other_names_and_keeps_what_it_records(tmp_path):
    """In-process, embedded default: an earlier run's copy under another extension and its original
    under another name (the input identified differently before an upgrade) go when the job finishes
    again; objects the records name stay, and so does an object written after the finish."""
    from worker.pipeline import clean_after_finish, process_upload
    from worker.reprocess import reopen_job
    from worker.services import build_services
    from worker.settings import Settings

    services = build_services(Settings(_env_file=None, data_dir=tmp_path / "data"))
    try:
        with workdir.process_scope(services.settings.resolved_work_dir()):
            photo, original = staged_photo(tmp_path)
            upload_id = enqueue_file(photo, services=services, complaint_id="311-8005")
            with services.sessions() as session:
                from worker.intake import message_for
                msg = message_for(session.get(records.Job, upload_id))
            assert process_upload(msg, services).state == "done"
            tags = {"variant": "x", "access": "restricted", "complaint": "311-8005"}
            stale = [f"restricted/{upload_id}/original.bin", f"agency/{upload_id}/media.png"]
            for key in stale:
                services.store.put_file(key, photo, content_type="application/octet-stream", tags=tags)
            with services.sessions() as session:
                assert reopen_job(session, upload_id)
                session.commit()
            assert process_upload(msg, services).state == "done"
            assert [services.store.head(k) for k in stale] == [None, None]
            with services.sessions() as session:
                kept = [v.key for v in records.variants_of(session, upload_id)]
            assert all(services.store.head(k) is not None for k in kept) and len(kept) == 2
            # written after the job finished: a later run's, not ours to remove
            time.sleep(0.05)
            services.store.put_file(stale[1], photo, content_type="application/octet-stream", tags=tags)
            assert clean_after_finish(services, upload_id) == []
    finally:
        services.engine.dispose()
