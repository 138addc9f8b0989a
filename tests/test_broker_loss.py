"""A worker survives its broker going away and coming back; one whose broker stays gone exits non-zero.

Each test runs a redis-server of its own (no persistence, like a broker restarted from nothing), a
real `mediasan worker` on it, and kills that Redis with SIGKILL.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fixtures.jpeg import picture
from tests.workerproc import (POSTGRES_URL, WorkerProcess, drop_postgres_schema, fresh_postgres_schema, require,
                              wait_final)
from worker.intake import enqueue_file

pytestmark = pytest.mark.services


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    """A redis-server on a port of its own, started and SIGKILLed by the test."""

    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "OwnRedis":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not listen on {self.port}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def deployment_on_own_redis(tmp_path: Path, *, worker_args: tuple[str, ...] = (), extra_env: dict | None = None):
    """PostgreSQL (a fresh, migrated schema), a private Redis broker and a worker on them."""
    from worker.services import build_services
    from worker.settings import Settings

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    require(POSTGRES_URL, 5432, "PostgreSQL")
    redis = OwnRedis(free_port(), tmp_path / "redis.log").start()
    database_url = fresh_postgres_schema(POSTGRES_URL)
    env = {"MEDIASAN_DATA_DIR": str(tmp_path / "data"), "MEDIASAN_BROKER_URL": redis.url,
           "MEDIASAN_DATABASE_URL": database_url, **(extra_env or {})}
    services = build_services(Settings(_env_file=None, data_dir=tmp_path / "data", broker_url=redis.url,
                                       database_url=database_url))
    worker = WorkerProcess(env, tmp_path / "worker.log", extra_args=worker_args).start()
    try:
        yield redis, services, worker
    finally:
        worker.stop()
        redis.kill()
        services.engine.dispose()
        drop_postgres_schema(database_url)


def upload(services, folder: Path, n: int) -> str:
    path = folder / f"photo-{n}.jpg"
    picture((24, 16)).save(path, "JPEG")
    return enqueue_file(path, services=services, complaint_id=f"311-{n}", agency="DOT")


def wait_for_log(worker: WorkerProcess, needle: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while needle not in worker.log_path.read_text(errors="replace"):
        assert worker.proc.poll() is None, f"the worker exited with {worker.proc.returncode}:\n{worker.log()}"
        assert time.monotonic() < deadline, f"no {needle!r} in the worker's log after {timeout_s} s:\n{worker.log()}"
        time.sleep(0.2)


def big_upload(services, folder: Path) -> str:
    """A photo that takes the worker a second or more: long enough to lose the broker under it."""
    from PIL import Image

    path = folder / "big.jpg"
    Image.frombytes("RGB", (4000, 3000), os.urandom(4000 * 3000 * 3)).save(path, "JPEG", quality=90)
    return enqueue_file(path, services=services, complaint_id="311-big", agency="DOT")


def wait_for_state(services, upload_id: str, state: str, worker: WorkerProcess, timeout_s: float) -> None:
    from worker.intake import job_status

    deadline = time.monotonic() + timeout_s
    while job_status(services=services, upload_id=upload_id)["state"] != state:
        assert worker.proc.poll() is None, f"the worker exited with {worker.proc.returncode}:\n{worker.log()}"
        assert time.monotonic() < deadline, f"upload {upload_id} never {state}:\n{worker.log()}"
        time.sleep(0.02)


def test_a_worker_reconnects_after_its_broker_is_killed_and_restarted(tmp_path):
    with deployment_on_own_redis(tmp_path, worker_args=("--hostname", "lossy@%h")) as (redis, services, worker):
        before = [upload(services, tmp_path, n) for n in range(3)]
        assert all(wait_final(services, u, worker, timeout_s=60)["state"] == "done" for u in before)

        # the broker dies while a task runs: its message is unacknowledged (late acks), which is what made
        # Celery 5.7 + kombu 5.7 stop with AttributeError("'NoneType' object has no attribute 'hostname'")
        in_flight = big_upload(services, tmp_path)
        wait_for_state(services, in_flight, "processing", worker, timeout_s=60)
        redis.kill()
        wait_for_log(worker, "Cannot connect to redis", timeout_s=30)   # it noticed, and is retrying
        # the running task finishes its work without the broker: the job row is the record
        assert wait_final(services, in_flight, worker, timeout_s=60)["state"] == "done"
        redis.start()   # same port, empty: a broker restarted from nothing

        after = [upload(services, tmp_path, n) for n in range(3, 6)]
        assert all(wait_final(services, u, worker, timeout_s=90)["state"] == "done" for u in after)
        assert worker.proc.poll() is None, "the worker did not survive the broker loss"
        log = worker.log_path.read_text(errors="replace")
        assert "lossy@" in log   # --hostname names the node
        assert "Unrecoverable error" not in log, log[-4000:]


def test_a_channel_of_a_lost_connection_fails_with_a_connection_error_not_an_attribute_error(tmp_path):
    """The state Celery 5.7 leaves after a broker loss with a task running: the connection collected
    (its transport detached), a channel still holding the task's unacknowledged message. Closing the
    channel restores that message, the finished task acknowledges it: both must fail as a lost broker
    does (a connection error, which Celery and kombu handle), never with AttributeError, which stopped
    the whole worker ("Unrecoverable error ... 'NoneType' object has no attribute 'hostname'")."""
    from kombu import Connection, Exchange, Queue

    from worker.app import guard_detached_redis_channels

    guard_detached_redis_channels()
    redis = OwnRedis(free_port(), tmp_path / "redis.log").start()
    try:
        connection = Connection(redis.url)
        connection_errors = connection.connection_errors
        queue = Queue("in-flight", Exchange("in-flight"), "in-flight")
        with connection.Producer() as producer:
            producer.publish({"upload_id": "x"}, exchange=queue.exchange, routing_key="in-flight", declare=[queue])
        message = queue(connection.default_channel).get(no_ack=False)
        assert message is not None
    finally:
        redis.kill()
    connection._do_close_transport()   # what Connection.collect() leaves once the broker is gone

    connection.close()   # closes the channel: restoring the unacked message fails quietly, as a connection error
    with pytest.raises(connection_errors):
        message.ack()    # the task finished: Celery logs "Couldn't ack" for a connection error and goes on


def test_a_worker_whose_broker_stays_gone_exits_non_zero(tmp_path):
    with deployment_on_own_redis(tmp_path, extra_env={"MEDIASAN_BROKER_CONNECTION_MAX_RETRIES": "2"}) as (
            redis, services, worker):
        first = upload(services, tmp_path, 0)
        assert wait_final(services, first, worker, timeout_s=60)["state"] == "done"

        redis.kill()
        try:
            code = worker.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker still runs 60 s after its broker went for good:\n{worker.log()}")
        assert code != 0, f"the worker exited 0 with its broker gone:\n{worker.log()}"
