"""A chaos run: real workers on Redis + PostgreSQL + S3, killed, cut off and stalled while they work,
then every promise of DESIGN.md "Reliability" checked from what the database and the store hold.

Used by tests/test_chaos.py (bounded, in the suite) and bench/chaos.py (bigger, reports figures).

What runs, all as real processes on this machine:

* a Redis of the run's own (``redis-server --save '' --appendonly no`` on a free port), so the
  broker can be killed and started again without touching the machine's Redis, and a restart
  loses every queued and unacked message, as a broker without persistence does;
* a fresh PostgreSQL schema (tests/workerproc.py);
* moto's S3 server as a subprocess; the workers reach it through tests/stallproxy.py, which can stop
  forwarding for N seconds (a storage stall), while the uploads go straight to it (the upload API
  is not the one stalled);
* ``mediasan worker`` processes (prefork) and one ``celery beat`` (the sweeper's schedule), as
  compose runs them, with short leases, time limits and sweep intervals so that recovery fits in a
  test; the harness supervises them like ``Restart=on-failure``: a worker that exits non-zero is
  started again, one that exits 0 on its own stays down (and is reported).

The uploads go through the real intake (worker.intake.enqueue_file): unique files of the families
a phone sends (JPEG, PNG, MP4, M4A, MP3) and a few bad files with a known rejection code. Faults
are spread over the upload window: SIGKILL of pool children (the busiest one), SIGKILL of a whole
worker (its process group: parent, pool, ffmpeg) and a new one started, the broker killed and
restarted on the same port, storage stalls.

Then the run settles (every job final, then a grace period for the sweeper), the processes stop,
and tests/chaos_check.py reads everything back: jobs, variants, every object of every bucket, the
work folder and the workers' temp folder. ``Findings`` names each broken invariant with evidence.

The parts: tests/chaos_inputs.py (the uploads and what must become of each), tests/chaos_procs.py
(Redis, moto, supervised workers), tests/stallproxy.py (the stall), tests/chaos_check.py (the
invariants, read back).
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.chaos_check import INVARIANTS, Findings, read_back
from tests.chaos_inputs import Input, build_inputs
from tests.chaos_procs import AWS_ENV, ROOT, Managed, MotoServer, RedisServer, worker_supports_hostname

__all__ = ["INVARIANTS", "ChaosRun", "Findings", "Input", "Plan", "build_inputs"]

QUEUE = "mediasan-chaos"


# --- the plan ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    uploads: int = 40
    child_kills: int = 4
    worker_kills: int = 1
    broker_losses: int = 1
    stalls: int = 1
    stall_s: float = 5.0
    broker_down_s: float = 1.5          # from killing redis-server to starting it again
    worker_down_s: float = 2.0          # from killing a worker to starting its replacement
    upload_window_s: float = 20.0       # uploads are sent evenly over this; 0 sends them all at once
    workers: int = 2
    concurrency: int = 2
    # short so that a killed child's job is taken over within the run; the lease outlasts the hard limit
    lease_s: int = 30
    soft_time_limit_s: int = 18
    time_limit_s: int = 24
    sweep_interval_s: int = 2
    stale_received_s: int = 10
    verify_store: bool = True           # also run `mediasan verify-store` after the run
    verify_copies_again: bool = False   # and have it run the verifier on every copy (the harness does already)
    settle_timeout_s: float = 150.0     # after the last fault: every job must be final by then
    grace_s: float = 12.0               # after every job is final: time for the sweeper to tidy up
    seed: int = 8


# --- the run -----------------------------------------------------------------------------------

class ChaosRun:
    """Start everything, run the plan, settle, stop, check. Use as a context manager; ``run()``
    returns Findings. Every process started is stopped on exit, whatever happened."""

    def __init__(self, folder: Path, plan: Plan, *, database_url: str, log=print):
        self.folder = Path(folder)
        self.plan = plan
        self.base_database_url = database_url
        self.say = log
        self.rng = random.Random(plan.seed)
        self.redis: RedisServer | None = None
        self.moto: MotoServer | None = None
        self.proxy = None
        self.workers: list[Managed] = []
        self.beat: Managed | None = None
        self.services = None
        self.database_url: str | None = None
        self.inputs: list[Input] = []
        self.accepted: dict[str, Input] = {}       # upload id -> input
        self.refused: list[str] = []
        self.send_failures = 0
        self.counts = Counter()
        self.events: list[str] = []
        self._saved_env: dict[str, str | None] = {}
        self.verify_store_problems: list[str] = []
        self.notes_hostname: str | None = None
        self.pgids: list[int] = []
        self.t0 = 0.0

    # lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> "ChaosRun":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        from tests.stallproxy import StallProxy
        from tests.workerproc import fresh_postgres_schema
        from worker.services import build_services
        from worker.settings import Settings

        plan = self.plan
        for name in ("data", "tmp", "inputs", "logs"):
            (self.folder / name).mkdir(parents=True, exist_ok=True)
        self.work_dir = self.folder / "data" / "work"
        self.worker_tmp = self.folder / "tmp"
        for k, v in AWS_ENV.items():
            self._saved_env[k] = os.environ.get(k)
            os.environ[k] = v
        os.environ.pop("AWS_SESSION_TOKEN", None)

        t = time.monotonic()
        self.inputs = build_inputs(self.folder / "inputs", plan.uploads)
        self.say(f"built {len(self.inputs)} inputs in {time.monotonic() - t:.1f} s")

        self.redis = RedisServer(self.folder / "redis").start()
        self.moto = MotoServer(self.folder / "logs").start()
        self.proxy = StallProxy("127.0.0.1", self.moto.port).start()
        self.database_url = fresh_postgres_schema(self.base_database_url)
        prefix = f"chaos{os.getpid()}x{int(time.time()) % 100000}"
        direct_url = f"s3://{prefix}?endpoint_url={self.moto.endpoint}&region=us-east-1"
        stalled_url = f"s3://{prefix}?endpoint_url={self.proxy.endpoint}&region=us-east-1"

        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASAN_")}
        env.update(AWS_ENV)
        env.update({
            "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            "TMPDIR": str(self.worker_tmp),   # the workers' "system temp folder": ours to inspect
            "MEDIASAN_DATA_DIR": str(self.folder / "data"),
            "MEDIASAN_WORK_DIR": str(self.work_dir),
            "MEDIASAN_BROKER_URL": self.redis.url,
            "MEDIASAN_DATABASE_URL": self.database_url,
            "MEDIASAN_STORAGE_URL": stalled_url,
            "MEDIASAN_QUEUE": QUEUE,
            "MEDIASAN_LOG_FORMAT": "json",   # `upload_finished` lines tell whether an upload finished twice
            "MEDIASAN_LEASE_S": str(plan.lease_s),
            "MEDIASAN_TASK_SOFT_TIME_LIMIT_S": str(plan.soft_time_limit_s),
            "MEDIASAN_TASK_TIME_LIMIT_S": str(plan.time_limit_s),
            "MEDIASAN_SWEEP_INTERVAL_S": str(plan.sweep_interval_s),
            "MEDIASAN_STALE_RECEIVED_S": str(plan.stale_received_s),
        })
        self.env = env
        # the operator's one-time work, as compose's bootstrap service does it: schema and buckets
        bootstrap = subprocess.run([sys.executable, "-m", "worker.cli", "doctor", "--migrate", "--create-buckets"],
                                   env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        (self.folder / "logs" / "doctor.log").write_text(bootstrap.stdout + bootstrap.stderr)
        if bootstrap.returncode != 0:
            raise RuntimeError(f"mediasan doctor --migrate --create-buckets failed ({bootstrap.returncode}):\n"
                               f"{bootstrap.stdout}{bootstrap.stderr}")
        # the upload API's side: the intake writes straight to S3 (not through the stalling proxy)
        settings = Settings(_env_file=None, data_dir=self.folder / "data", broker_url=self.redis.url,
                            database_url=self.database_url, storage_url=direct_url, queue=QUEUE,
                            work_dir=self.folder / "intake-work")
        self.services = build_services(settings)
        named = worker_supports_hostname()
        if not named:
            self.notes_hostname = "mediasan worker has no -n/--hostname: both workers are celery@host"
        for i in range(plan.workers):
            name = f"chaos{i + 1}"
            argv = [sys.executable, "-m", "worker.cli", "worker", "--concurrency", str(plan.concurrency),
                    "--no-beat", "--loglevel", "INFO"]
            if named:
                argv += ["--hostname", f"{name}@%h"]
            self.workers.append(Managed(name, argv, env, self.folder / "logs" / f"{name}.log"))
        self.beat = Managed("beat", [sys.executable, "-m", "celery", "-A", "worker.app", "beat", "--loglevel", "INFO",
                                     "--schedule", str(self.folder / "data" / "beat-schedule")],
                            env, self.folder / "logs" / "beat.log")
        t = time.monotonic()
        for w in self.workers:
            w.start()
            self.pgids.append(w.proc.pid)
        self.beat.start()
        self.pgids.append(self.beat.proc.pid)
        deadline = time.monotonic() + 90
        while not all(w.ready() for w in self.workers):
            for w in self.workers + [self.beat]:
                if not w.alive:
                    raise RuntimeError(f"{w.name} exited with {w.proc.returncode} while starting:\n{w.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError("workers not ready after 90 s:\n" + "\n".join(w.log_tail() for w in self.workers))
            time.sleep(0.2)
        self.say(f"{plan.workers} workers ready in {time.monotonic() - t:.1f} s")

    def close(self) -> None:
        for proc in self.workers + ([self.beat] if self.beat else []):
            with contextlib.suppress(Exception):
                proc.stop(timeout_s=5)
        for pgid in self.pgids:   # replacements of killed workers are in groups of their own too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        if self.proxy:
            self.proxy.close()
        if self.moto:
            self.moto.stop()
        if self.redis:
            self.redis.stop()
        if self.services is not None:
            self.services.engine.dispose()
        if self.database_url:
            from tests.workerproc import drop_postgres_schema
            with contextlib.suppress(Exception):
                drop_postgres_schema(self.database_url)
            self.database_url = None
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = {}

    # the run ----------------------------------------------------------------------------------

    def run(self) -> Findings:
        plan = self.plan
        schedule = self._schedule()
        self.t0 = time.monotonic()
        sender = threading.Thread(target=self._send_uploads, name="uploads", daemon=True)
        sender.start()
        pending = sorted(schedule, key=lambda e: e[0])
        while pending or sender.is_alive():
            now = time.monotonic() - self.t0
            while pending and pending[0][0] <= now:
                _, action, arg = pending.pop(0)
                follow_up = action(arg)
                if follow_up:
                    pending.append(follow_up)
                    pending.sort(key=lambda e: e[0])
            self._supervise()
            time.sleep(0.05)
        faults_over = time.monotonic()
        self._log_event("every upload sent and every fault over; settling")
        all_final_at = self._settle(faults_over + plan.settle_timeout_s)
        wall = (all_final_at or time.monotonic()) - self.t0
        self._tidy_wait(time.monotonic() + plan.grace_s)
        self._log_event("tidy; stopping the workers and beat (warm shutdown)")
        self._supervise()
        supervised = self.workers + [self.beat]
        for proc in supervised:
            proc.terminate()        # all at once: each finishes its running task
        for proc in supervised:
            proc.stop()
        if plan.verify_store:
            self._log_event("mediasan verify-store")
            self._run_verify_store()
        self._log_event("reading back every record and object")
        findings = read_back(self)
        self._log_event("read back")
        findings.figures["wall time (s)"] = round(wall, 1)
        findings.figures["uploads/s"] = round(len(self.accepted) / wall, 2) if wall else 0
        findings.timeline = list(self.events)
        if all_final_at is None:
            findings.notes.append(f"not every job was final {plan.settle_timeout_s:.0f} s after the last fault")
        return findings

    def _schedule(self) -> list[tuple[float, object, object]]:
        """Faults at random times in the middle 80% of the upload window (at least 10 s of it)."""
        plan = self.plan
        window = max(plan.upload_window_s, 10.0)
        lo, hi = 0.1 * window, 0.9 * window
        events = [(self.rng.uniform(lo, hi), self._kill_child, None) for _ in range(plan.child_kills)]

        def spread(count: int, action) -> None:
            """One in each of ``count`` equal slices, at a random point of its middle half: two of a
            kind never overlap (a broker is not lost again before it is back)."""
            width = (hi - lo) / max(count, 1)
            events.extend((lo + (k + self.rng.uniform(0.25, 0.75)) * width, action, None) for k in range(count))

        spread(plan.worker_kills, self._kill_worker)
        spread(plan.broker_losses, self._lose_broker)
        spread(plan.stalls, self._stall)
        return events

    def _at(self) -> float:
        return time.monotonic() - self.t0

    def _log_event(self, text: str) -> None:
        line = f"t={self._at():6.1f}s {text}"
        self.events.append(line)
        self.say(line)

    def _send_uploads(self) -> None:
        from worker import records
        from worker.intake import enqueue_file

        plan = self.plan
        gap = plan.upload_window_s / max(len(self.inputs) - 1, 1) if plan.upload_window_s else 0
        for n, item in enumerate(self.inputs):
            wait = self.t0 + n * gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            upload_id = records.new_upload_id()
            try:
                enqueue_file(item.path, services=self.services, complaint_id=f"chaos-{n % 7}",
                             agency=("DSNY", "DOT", "NYPD", None)[n % 4], upload_id=upload_id,
                             content_type="image/jpeg" if item.path.suffix == ".jpg" else None)
                self.accepted[upload_id] = item
            except Exception as e:  # noqa: BLE001 - the broker may be down: the job row decides
                with self.services.sessions() as session:
                    if session.get(records.Job, upload_id) is not None:
                        self.accepted[upload_id] = item
                        self.send_failures += 1
                        self._log_event(f"intake: message for {upload_id} not sent ({type(e).__name__}); "
                                        "the job row stands, the sweeper must republish it")
                    else:
                        self.refused.append(f"{item.path.name}: {type(e).__name__}: {e}")

    # faults -----------------------------------------------------------------------------------

    def _live_workers(self) -> list[Managed]:
        return [w for w in self.workers if w.alive]

    def _kill_child(self, _arg):
        import psutil
        # only workers that are up: a child killed while Celery starts its pool makes the worker exit 1
        # ("Could not start worker processes"), which tests Celery's start-up, not our recovery
        candidates = [(w, c) for w in self._live_workers() if w.ready() for c in w.pool_children()]
        if not candidates:
            return (self._at() + 0.5, self._kill_child, None)   # a worker is restarting: try again soon
        before = {}
        for w, c in candidates:
            with contextlib.suppress(psutil.Error):
                before[c.pid] = sum(c.cpu_times()[:2]) + sum(ch.cpu_times().user for ch in c.children())
        time.sleep(0.2)
        busiest, most = candidates[0], -1.0
        for w, c in candidates:
            with contextlib.suppress(psutil.Error):
                used = sum(c.cpu_times()[:2]) + sum(ch.cpu_times().user for ch in c.children()) - before.get(c.pid, 0)
                if used > most or (used == most and self.rng.random() < 0.5):
                    busiest, most = (w, c), used
        w, c = busiest
        with contextlib.suppress(psutil.Error):
            c.send_signal(signal.SIGKILL)
        self.counts["child kills"] += 1
        self.counts["busy child kills"] += most > 0
        self._log_event(f"SIGKILL pool child {c.pid} of {w.name} ({'busy' if most > 0 else 'idle'})")
        return None

    def _kill_worker(self, _arg):
        live = self._live_workers()
        if not live:
            return (self._at() + 0.5, self._kill_worker, None)
        w = self.rng.choice(live)
        w.kill_group()
        self.counts["worker kills"] += 1
        self._log_event(f"SIGKILL worker {w.name} (pid {w.proc.pid} and its process group)")
        return (self._at() + self.plan.worker_down_s, self._restart_worker, w)

    def _restart_worker(self, w: Managed):
        w.start()
        self.pgids.append(w.proc.pid)
        self._log_event(f"started {w.name} again (pid {w.proc.pid})")
        return None

    def _lose_broker(self, _arg):
        self.redis.kill()
        self.counts["broker losses"] += 1
        self._log_event(f"SIGKILL redis-server (port {self.redis.port}): every queued and unacked message is gone")
        return (self._at() + self.plan.broker_down_s, self._restart_broker, None)

    def _restart_broker(self, _arg):
        self.redis.start()
        self._log_event(f"redis-server started again on port {self.redis.port}, empty")
        return None

    def _stall(self, _arg):
        self.proxy.stall()
        self.counts["stalls"] += 1
        self._log_event(f"storage stall: the proxy to S3 holds everything for {self.plan.stall_s:.0f} s")
        return (self._at() + self.plan.stall_s, self._resume, None)

    def _resume(self, _arg):
        self.proxy.resume()
        self._log_event("storage flows again")
        return None

    def _supervise(self) -> None:
        """Restart=on-failure: a process that exited non-zero on its own is started again; one that
        exited 0 on its own is left down (as a supervisor would) and reported."""
        for proc in self.workers + [self.beat]:
            status = proc.exited_by_itself()
            if status is None or proc.proc is None:
                continue
            proc.unexpected_exits.append(f"{proc.name} (pid {proc.proc.pid}) exited by itself with status {status} "
                                         f"at t={self._at():.1f}s; its last errors:\n{proc.last_errors()}")
            self._log_event(f"{proc.name} exited by itself with status {status}")
            if status != 0:
                proc.start()
                self.pgids.append(proc.proc.pid)
                self._log_event(f"started {proc.name} again after its failure")
            else:
                proc.killed_by_us = True   # report once; stays down

    # settling ---------------------------------------------------------------------------------

    def _job_states(self) -> dict[str, str]:
        from sqlalchemy import select

        from worker import records
        with self.services.sessions() as session:
            return dict(session.execute(select(records.Job.upload_id, records.Job.state)).all())

    def _describe_job(self, upload_id: str) -> str:
        from worker import records
        with self.services.sessions() as session:
            job = session.get(records.Job, upload_id)
            if job is None:
                return f"{upload_id}: no job row"
            return (f"{upload_id} {job.state}, attempts {job.attempts}, lease until "
                    f"{job.lease_until:%H:%M:%S}" if job.lease_until else f"{upload_id} {job.state}, attempts {job.attempts}") \
                + (f", error {job.error_code}: {(job.error_message or '')[:120]}" if job.error_code else "")

    def _settle(self, deadline: float) -> float | None:
        from worker import records
        last_report = 0.0
        while time.monotonic() < deadline:
            self._supervise()
            states = self._job_states()
            open_jobs = [u for u in self.accepted if states.get(u) not in records.FINAL_STATES]
            if not open_jobs:
                self._log_event("every job final")
                return time.monotonic()
            if time.monotonic() - last_report > 10:
                self.say(f"t={self._at():.0f}s settling: {len(open_jobs)} open: "
                         f"{dict(Counter(states.get(u, 'no row') for u in open_jobs))}"
                         + ("; " + "; ".join(self._describe_job(u) for u in open_jobs) if len(open_jobs) <= 3 else ""))
                last_report = time.monotonic()
            time.sleep(0.5)
        return None

    def _tidy_wait(self, deadline: float) -> None:
        """After every job is final: give the sweeper until the deadline to remove what a crash left."""
        while time.monotonic() < deadline:
            self._supervise()
            if not self._incoming_left() and not [p for p in self.work_folders_left() if not _owner_alive(p)]:
                return
            time.sleep(0.5)

    # reading back -----------------------------------------------------------------------------

    def _run_verify_store(self) -> None:
        """`mediasan verify-store --json` as an operator would run it once the workers are stopped."""
        import json
        argv = [sys.executable, "-m", "worker.cli", "verify-store", "--json"]
        if not self.plan.verify_copies_again:
            argv.append("--no-verify")
        done = subprocess.run(argv, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        (self.folder / "logs" / "verify-store.log").write_text(done.stdout + done.stderr)
        problems = []
        for line in done.stdout.splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if "summary" not in entry:
                    problems.append(f"{entry.get('kind')} {entry.get('key')}: {entry.get('detail')}")
        if done.returncode != 0 and not problems:
            problems.append(f"exit status {done.returncode}: {(done.stdout + done.stderr)[-800:]}")
        self.verify_store_problems = problems

    def list_bucket(self, area: str) -> list[str]:
        store = self.services.store
        keys = []
        paginator = store.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=store.bucket(area)):
            keys += [f"{area}/{o['Key']}" for o in page.get("Contents", [])]
        return keys

    def _incoming_left(self) -> list[str]:
        return self.list_bucket("incoming")

    def work_folders_left(self) -> list[str]:
        left = []
        if self.work_dir.exists():
            left += [str(p) for p in self.work_dir.iterdir()]
        left += [str(p) for p in self.worker_tmp.iterdir() if p.name.startswith("mediasan")]
        return left


def _owner_alive(path: str) -> bool:
    """Whether a work folder named ``{host}-{pid}-{start}`` belongs to a running process: a live
    worker keeps its folder until it stops, so only the others count while waiting for the sweeper."""
    import psutil
    match = re.search(r"-(\d+)-\d+$", Path(path).name)
    return bool(match) and psutil.pid_exists(int(match[1]))
