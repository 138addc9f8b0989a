"""Real processes for the operations tests: a `mediasan worker` with chosen options on this machine's
Redis and PostgreSQL (a fresh schema, the session's own queue), read through its JSON log."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.workerproc import (POSTGRES_URL, REDIS_URL, drop_postgres_schema, fresh_postgres_schema, require,
                              stop_process)
from worker import records
from worker.intake import job_status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def own_redis(folder: Path):
    """A redis-server of this test's own on a free port (other test runs on this machine flush the
    shared one's database); the shared Redis when redis-server is not installed."""
    import shutil

    if shutil.which("redis-server") is None:
        require(REDIS_URL, 6379, "Redis")
        yield REDIS_URL
        return
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def redis_postgres_env(folder: Path):
    """(env, services) of a Redis + PostgreSQL deployment with the local store under ``folder``."""
    from worker.services import build_services
    from worker.settings import Settings

    require(POSTGRES_URL, 5432, "PostgreSQL")
    with own_redis(folder) as redis_url:
        database_url = fresh_postgres_schema(POSTGRES_URL)
        env = {"MEDIASAN_DATA_DIR": str(folder / "data"), "MEDIASAN_BROKER_URL": redis_url,
               "MEDIASAN_DATABASE_URL": database_url}
        services = build_services(Settings(_env_file=None, data_dir=folder / "data", broker_url=redis_url,
                                           database_url=database_url))
        try:
            yield env, services
        finally:
            services.engine.dispose()
            drop_postgres_schema(database_url)


class Worker:
    """`python -m worker.cli worker` with its stderr/stdout in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str):
        self.log_path = log_path
        self.proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--no-beat", *args],
                                     env=dict(os.environ, **env), stdout=open(log_path, "ab"),
                                     stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.text().splitlines() if line.strip()]

    def wait_for_line(self, predicate, timeout_s: float = 60) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.json_lines():
                if predicate(line):
                    return line
            if self.proc.poll() is not None:
                pytest.fail(f"the worker exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        pytest.fail(f"no such log line after {timeout_s} s:\n{self.text()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.proc)


def wait_all_final(services, upload_ids, worker: Worker, timeout_s: float = 90) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    final: dict[str, dict] = {}
    while time.monotonic() < deadline:
        for upload_id in upload_ids:
            if upload_id not in final:
                info = job_status(services=services, upload_id=upload_id)
                if info and info["state"] in records.FINAL_STATES:
                    final[upload_id] = info
        if len(final) == len(upload_ids):
            return final
        if worker.proc.poll() is not None:
            pytest.fail(f"the worker exited with {worker.proc.returncode}:\n{worker.text()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"{len(upload_ids) - len(final)} uploads not final after {timeout_s} s:\n{worker.text()[-3000:]}")


def http_get(url: str, timeout_s: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            http_get(url, timeout_s=1)
            return
        if proc.poll() is not None:
            pytest.fail(f"the process exited with {proc.returncode} before serving {url}")
        time.sleep(0.1)
    pytest.fail(f"nothing answered at {url} after {timeout_s} s")
