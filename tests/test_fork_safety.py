"""A prefork worker's processes never share a database connection, and a quiet run never retries.

Each process must open its own connections after fork (worker.services, worker.app's
worker_process_init). Two processes on one PostgreSQL socket interleave their protocol messages:
prepared-statement clashes, COMMITs answered for someone else, results read by the wrong process.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import func, select, text

from fixtures.jpeg import picture
from tests.workerproc import running_deployment
from worker import records
from worker.intake import enqueue_file

pytestmark = pytest.mark.services

UPLOADS = 100
POSTGRES_PORT = 5432


def postgres_socket_inodes(pid: int) -> set[int]:
    """Inodes of this process's open TCP sockets whose far end is port 5432 (from /proc)."""
    to_postgres = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == POSTGRES_PORT:
                    to_postgres.add(int(fields[9]))
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:   # closed while we looked
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match and int(match.group(1)) in to_postgres:
            held.add(int(match.group(1)))
    return held


def small_jpeg(path: Path, n: int) -> None:
    picture((16 + n % 7, 12)).save(path, "JPEG", quality=80)


def test_pool_children_never_share_a_database_backend_and_a_quiet_run_never_retries(tmp_path):
    with running_deployment("redis+postgresql", tmp_path, concurrency=2) as (env, services, worker):
        upload_ids = []
        for n in range(UPLOADS):
            path = tmp_path / f"photo-{n}.jpg"
            small_jpeg(path, n)
            upload_ids.append(enqueue_file(path, services=services, complaint_id=f"311-{n}", agency="DSNY"))

        # about 15 s on a quiet machine; the bound is generous because this machine is shared
        deadline = time.monotonic() + 240
        while True:
            with services.sessions() as session:
                final = session.scalar(select(func.count()).select_from(records.Job)
                                       .where(records.Job.state.in_(records.FINAL_STATES)))
            if final == UPLOADS:
                break
            assert worker.proc.poll() is None, f"the worker exited with {worker.proc.returncode}:\n{worker.log()}"
            assert time.monotonic() < deadline, f"{final}/{UPLOADS} final after 240 s\n{worker.log()}"
            time.sleep(0.25)

        # the worker's processes, while the children still hold their pooled connections
        main = psutil.Process(worker.proc.pid)
        children = main.children(recursive=True)
        assert len(children) == 2, [c.cmdline() for c in children]
        held = {p.pid: postgres_socket_inodes(p.pid) for p in [main, *children]}
        assert held[main.pid] == set(), f"the parent holds database sockets after forking: {held}"
        for child in children:
            assert held[child.pid], f"pool child {child.pid} has no database socket of its own: {held}"
        for a in held:
            for b in held:
                if a < b:
                    assert not held[a] & held[b], f"processes {a} and {b} share a socket to PostgreSQL: {held}"

        # the server's view: each child's connections are tagged with its pid, none with the parent's
        with services.engine.connect() as conn:
            rows = conn.execute(text("SELECT pid, application_name FROM pg_stat_activity "
                                     "WHERE application_name LIKE 'mediasan:%'")).all()
        backends_of: dict[int, set[int]] = {}
        for backend, name in rows:
            backends_of.setdefault(int(name.split(":", 1)[1]), set()).add(backend)
        assert main.pid not in backends_of, rows
        for child in children:
            assert backends_of.get(child.pid), f"no backend tagged with pool child {child.pid}: {rows}"
        assert not backends_of[children[0].pid] & backends_of[children[1].pid]

        with services.sessions() as session:
            jobs = session.scalars(select(records.Job).where(records.Job.upload_id.in_(upload_ids))).all()
        assert len(jobs) == UPLOADS
        not_clean = [(j.upload_id, j.state, j.attempts, j.error_code) for j in jobs
                     if j.state != "done" or j.attempts != 1]
        assert not not_clean, f"{len(not_clean)} jobs not done on their first attempt: {not_clean[:10]}"
        log = worker.log_path.read_text(errors="replace")
        assert not re.search(r"retry|lost the claim|DuplicatePreparedStatement|Traceback", log, re.I), \
            log[-4000:]
