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
and ``check`` reads everything back: jobs, variants, locations, every object of every bucket, the
work folder and the workers' temp folder. ``Findings`` names each broken invariant with evidence.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
QUEUE = "mediasan-chaos"

# Worker log lines worth counting: each names a known way things go wrong under faults.
LOG_SIGNALS = {
    "traceback": re.compile(r"^Traceback \(most recent call last\)", re.M),
    "shared connection": re.compile(r"DuplicatePreparedStatement|can't change 'autocommit' now|EMPTY_QUERY|"
                                    r"NotImplementedError"),
    "lost the claim": re.compile(r"lost the claim before finishing"),
    "worker lost (child killed)": re.compile(r"WorkerLostError"),
    "unrecoverable error": re.compile(r"Unrecoverable error"),
    "retrying": re.compile(r"retrying|Retry in \d"),
    "broker connection lost": re.compile(r"[Cc]onnection to broker lost|Cannot connect to redis"),
}


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

    @property
    def faults(self) -> int:
        return self.child_kills + self.worker_kills + self.broker_losses + self.stalls


# --- the uploads -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Input:
    """One file to upload and what must become of it."""
    path: Path
    label: str
    sha256: str
    size: int
    state: str                 # done | rejected
    format: str | None = None  # the agency copy's format when done
    code: str | None = None    # the error code when rejected


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _mark_jpeg(base: Path, dest: Path, mark: str) -> None:
    import piexif
    shutil.copyfile(base, dest)
    exif = piexif.load(str(dest))
    exif["0th"][piexif.ImageIFD.ImageDescription] = mark.encode()
    piexif.insert(piexif.dump(exif), str(dest))


def _mark_png(base: Path, dest: Path, mark: str) -> None:
    from fixtures.lossless import insert_png_chunks, png_chunk
    shutil.copyfile(base, dest)
    insert_png_chunks(dest, png_chunk(b"tEXt", b"Comment\0" + mark.encode()))


def _mark_isobmff(base: Path, dest: Path, mark: str) -> None:
    from fixtures.video import box
    dest.write_bytes(base.read_bytes() + box(b"free", mark.encode()))


def _mark_mp3(base: Path, dest: Path, mark: str) -> None:
    from mutagen.id3 import ID3, TXXX
    shutil.copyfile(base, dest)
    tags = ID3(dest)
    tags.add(TXXX(encoding=3, desc="upload", text=mark))
    tags.save(dest, v2_version=4, v1=1)


# (label, base builder, how one upload is made unique from the base, state, copy format, code)
GOOD_KINDS = {
    "android-jpeg": ("fixtures.jpeg:android_phone_jpeg", ".jpg", _mark_jpeg, "jpeg"),
    "iphone-jpeg": ("fixtures.jpeg:iphone_like_jpeg", ".jpg", _mark_jpeg, "jpeg"),
    "png": ("fixtures.lossless:png_with_text_and_exif", ".png", _mark_png, "png"),
    "mp4": ("fixtures.video:android_like_mp4", ".mp4", _mark_isobmff, "mp4"),
    "m4a": ("fixtures.video:voice_memo_m4a", ".m4a", _mark_isobmff, "m4a"),
    "mp3": ("fixtures.audio:mp3_with_all_tags", ".mp3", _mark_mp3, "mp3"),
}
BAD_KINDS = ("html", "truncated-jpeg", "empty")
# the order uploads cycle through: mostly what phones send, two bad files in every twelve
ROTATION = ("android-jpeg", "mp4", "png", "iphone-jpeg", "m4a", "BAD",
            "mp3", "android-jpeg", "png", "mp4", "iphone-jpeg", "BAD")


def _builder(spec: str):
    import importlib
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def build_inputs(folder: Path, count: int) -> list[Input]:
    """``count`` distinct files: every one has its own bytes, so an original stored under the wrong
    upload shows as a sha256 mismatch."""
    folder.mkdir(parents=True, exist_ok=True)
    bases: dict[str, Path] = {}
    inputs: list[Input] = []
    bad = 0
    for n in range(count):
        label = ROTATION[n % len(ROTATION)]
        mark = f"chaos-upload-{n:05d}"
        if label == "BAD":
            label = BAD_KINDS[bad % len(BAD_KINDS)]
            bad += 1
            path = folder / f"{n:05d}-{label}.jpg"      # every bad file claims to be a JPEG by its name
            if label == "html":
                path.write_bytes(f"<html><body>not a photo: {mark}</body></html>".encode())
                code = "unsupported_format"
            elif label == "truncated-jpeg":
                if "iphone-jpeg" not in bases:
                    bases["iphone-jpeg"] = folder / "base-iphone-jpeg.jpg"
                    _builder(GOOD_KINDS["iphone-jpeg"][0])(bases["iphone-jpeg"])
                whole = bases["iphone-jpeg"].read_bytes()
                path.write_bytes(whole[:40 + (n % 900)])   # cut inside the headers: nothing decodes
                code = "truncated"
            else:
                path.write_bytes(b"")
                code = "empty"
            inputs.append(Input(path, label, _sha256(path), path.stat().st_size, "rejected", code=code))
            continue
        spec, ext, marker, copy_format = GOOD_KINDS[label]
        if label not in bases:
            bases[label] = folder / f"base-{label}{ext}"
            _builder(spec)(bases[label])
        path = folder / f"{n:05d}-{label}{ext}"
        marker(bases[label], path, mark)
        inputs.append(Input(path, label, _sha256(path), path.stat().st_size, "done", format=copy_format))
    return inputs


# --- the services the run owns ------------------------------------------------------------------

def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    import socket
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not listening on 127.0.0.1:{port} after {timeout_s} s")


def _stop(proc: subprocess.Popen | None, timeout_s: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class RedisServer:
    """The run's own broker: no persistence, so a restart loses every message, as a crash would."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder = folder
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        log = open(self.folder / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        _wait_port(self.port, 10, "redis-server", self.proc)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        _stop(self.proc)


class MotoServer:
    """moto's S3 server in its own process (its threads do not compete with the harness's)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MotoServer":
        log = open(self.folder / "moto.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     env=dict(os.environ, **AWS_ENV), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        _wait_port(self.port, 30, "moto's S3 server", self.proc)
        return self

    def stop(self) -> None:
        _stop(self.proc)


def worker_supports_hostname() -> bool:
    """Whether `mediasan worker` takes -n/--hostname (two workers are then told apart in logs)."""
    from worker import cli
    return "hostname" in inspect.signature(cli.worker).parameters


class Managed:
    """One supervised process of the deployment (a worker or beat), in its own process group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_offset = 0
        self.killed_by_us = False
        self._ready = False
        self.unexpected_exits: list[str] = []

    def start(self) -> None:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        log.write(f"\n===== chaos: start #{self.starts + 1} of {self.name} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        self.starts += 1
        self.killed_by_us = False
        self._ready = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        """Celery prints 'ready.' once the worker consumes; beat has nothing to wait for."""
        if not self.alive:
            return False
        if not self._ready:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                self._ready = b" ready." in f.read()
        return self._ready

    def pool_children(self):
        import psutil
        if not self.alive:
            return []
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def kill_group(self) -> None:
        """SIGKILL the whole process group: the parent, its pool, any ffmpeg: a machine or container loss."""
        if self.proc is None:
            return
        self.killed_by_us = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout_s: float = 30) -> None:
        """Warm shutdown (SIGTERM: finish the running tasks), then SIGKILL of the group if it hangs."""
        if self.proc is None:
            return
        self.killed_by_us = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)   # whatever of the group is left (orphans)
        self.proc.wait()

    def exited_by_itself(self) -> int | None:
        """The exit status when the process ended without us killing it, else None."""
        if self.proc is None or self.killed_by_us or self.proc.poll() is None:
            return None
        return self.proc.returncode

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


# --- what a run reports ------------------------------------------------------------------------

INVARIANTS = {
    "accepted": "every upload was accepted by the intake (job row and incoming object written)",
    "lost": "no upload lost: every job is final",
    "outcome": "every job ended as its input requires (done with the copy's format, or rejected with the code)",
    "duplicated": "none finished twice: one original and at most one agency copy per upload, in records and store",
    "attempts": "attempts are sane (at least 1, at most the retries plus the faults that can cost one)",
    "originals": "every original is byte-equal to its input (sha256 of the stored object) and to its record",
    "copies": "every agency copy is present, matches its record and passes the verifier again",
    "unexplained objects": "no object in any bucket that no record explains",
    "incoming left": "no incoming object of a finished job",
    "work folders": "no work folder left (the work dir, and mediasan-* in the workers' temp folder)",
    "processes": "no worker or beat stopped by itself, and no process of the run is left",
    "verify-store": "the operator's `mediasan verify-store` agrees: no finding, exit status 0",
}


@dataclass
class Findings:
    violations: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name in INVARIANTS})
    figures: dict[str, object] = field(default_factory=dict)
    log_signals: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)

    def add(self, invariant: str, problem: str) -> None:
        self.violations[invariant].append(problem)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def explain(self, invariant: str, limit: int = 12) -> str:
        problems = self.violations[invariant]
        lines = [f"{INVARIANTS[invariant]}: {len(problems)} violation(s)"]
        lines += [f"  - {p}" for p in problems[:limit]]
        if len(problems) > limit:
            lines.append(f"  … and {len(problems) - limit} more")
        return "\n".join(lines) + "\n\n" + self.report()

    def report(self) -> str:
        width = max(len(k) for k in self.figures) if self.figures else 10
        lines = ["chaos run figures:"]
        lines += [f"  {k:<{width}}  {v}" for k, v in self.figures.items()]
        if self.log_signals:
            lines.append("  worker log signals: " + ", ".join(f"{k} {v}" for k, v in self.log_signals.items() if v))
        broken = [name for name, problems in self.violations.items() if problems]
        lines.append("  invariants broken: " + (", ".join(f"{n} ({len(self.violations[n])})" for n in broken)
                                                 if broken else "none"))
        lines += [f"  note: {n}" for n in self.notes]
        if self.timeline:
            lines.append("  timeline:")
            lines += [f"    {e}" for e in self.timeline]
        return "\n".join(lines)


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
        self._pgids: list[int] = []
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
            self._pgids.append(w.proc.pid)
        self.beat.start()
        self._pgids.append(self.beat.proc.pid)
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
        for pgid in self._pgids:   # replacements of killed workers are in groups of their own too
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
        for proc in self.workers + [self.beat]:
            self._supervise()
            proc.stop()
        if plan.verify_store:
            self._run_verify_store()
        findings = self.check()
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
        events = []
        events += [(self.rng.uniform(lo, hi), self._kill_child, None) for _ in range(plan.child_kills)]
        events += [(self.rng.uniform(lo, hi), self._kill_worker, None) for _ in range(plan.worker_kills)]
        events += [(self.rng.uniform(lo, hi), self._lose_broker, None) for _ in range(plan.broker_losses)]
        # stalls evenly spaced so that two never overlap
        for k in range(plan.stalls):
            events.append((lo + (k + 0.5) * (hi - lo) / max(plan.stalls, 1), self._stall, None))
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
        self._pgids.append(w.proc.pid)
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
                                         f"at t={self._at():.1f}s; log tail:\n{proc.log_tail(1500)}")
            self._log_event(f"{proc.name} exited by itself with status {status}")
            if status != 0:
                proc.start()
                self._pgids.append(proc.proc.pid)
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
            if not self._incoming_left() and not self._work_folders_left():
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

    def _list_bucket(self, area: str) -> list[str]:
        store = self.services.store
        keys = []
        paginator = store.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=store.bucket(area)):
            keys += [f"{area}/{o['Key']}" for o in page.get("Contents", [])]
        return keys

    def _incoming_left(self) -> list[str]:
        return self._list_bucket("incoming")

    def _work_folders_left(self) -> list[str]:
        left = []
        if self.work_dir.exists():
            left += [str(p) for p in self.work_dir.iterdir()]
        left += [str(p) for p in self.worker_tmp.iterdir() if p.name.startswith("mediasan")]
        return left

    def check(self) -> Findings:
        from sqlalchemy import select

        from worker import records
        from worker.formats.base import Rebuilt
        from worker.verify import verify_copy

        plan, f = self.plan, Findings()
        store = self.services.store
        with self.services.sessions() as session:
            jobs = {j.upload_id: j for j in session.scalars(select(records.Job))}
            variants: dict[str, list] = {}
            for v in session.scalars(select(records.Variant)):
                variants.setdefault(v.upload_id, []).append(v)
        objects = {area: self._list_bucket(area) for area in ("incoming", "restricted", "agency")}
        by_upload: dict[str, dict[str, list[str]]] = {}
        for area, keys in objects.items():
            for key in keys:
                parts = key.split("/")
                by_upload.setdefault(parts[1] if len(parts) == 3 else key, {}).setdefault(area, []).append(key)

        for problem in self.refused:
            f.add("accepted", problem)
        kills = self.counts["child kills"] + self.counts["worker kills"] * plan.concurrency
        max_attempts = 1 + self.services.settings.task_max_retries + kills + self.counts["broker losses"] * 4 \
            + self.counts["stalls"] * 4
        scratch = self.folder / "readback"
        scratch.mkdir(exist_ok=True)
        lost = duplicated = mismatched = wrong = recovered = retries = 0
        for upload_id, item in self.accepted.items():
            job = jobs.get(upload_id)
            what = f"{upload_id} ({item.path.name})"
            if job is None:
                f.add("lost", f"{what}: no job row")
                lost += 1
                continue
            retries += max(job.attempts - 1, 0)
            if job.state not in records.FINAL_STATES:
                f.add("lost", f"{what}: still {job.state} after {job.attempts} attempt(s), "
                              f"lease until {job.lease_until}, last error {job.error_code}: {job.error_message}")
                lost += 1
                continue
            expected = (item.state, item.format if item.state == "done" else item.code)
            got = (job.state, job.format if job.state == "done" else job.error_code)
            if got != expected:
                wrong += 1
                f.add("outcome", f"{what}: ended {got}, expected {expected} "
                                 f"(attempts {job.attempts}, error {job.error_code}: {job.error_message})")
            elif job.attempts > 1:
                recovered += 1
            if not 1 <= job.attempts <= max_attempts:
                f.add("attempts", f"{what}: {job.attempts} attempts (sane: 1..{max_attempts})")

            rows = variants.get(upload_id, [])
            originals = [v for v in rows if v.variant == "original"]
            copies = [v for v in rows if v.variant == "sanitized"]
            stored = by_upload.get(upload_id, {})
            dup = []
            if len(originals) != 1:
                dup.append(f"{len(originals)} original records")
            if len(copies) != (1 if job.state == "done" else 0):
                dup.append(f"{len(copies)} agency-copy records for a {job.state} job")
            if len(stored.get("restricted", [])) > 1:
                dup.append(f"restricted objects {stored['restricted']}")
            if len(stored.get("agency", [])) > 1:
                dup.append(f"agency objects {stored['agency']}")
            for v in rows:
                if f"/{upload_id}/" not in v.key:
                    dup.append(f"its {v.variant} record names another upload's object {v.key}")
            if dup:
                duplicated += 1
                f.add("duplicated", f"{what}: " + "; ".join(dup))

            for v in originals:
                local = scratch / f"{upload_id}.original"
                try:
                    store.get_file(v.key, local)
                except Exception as e:  # noqa: BLE001
                    mismatched += 1
                    f.add("originals", f"{what}: original {v.key} unreadable: {type(e).__name__}: {e}")
                    continue
                actual = _sha256(local)
                if actual != item.sha256 or v.sha256 != item.sha256 or v.bytes != item.size:
                    mismatched += 1
                    f.add("originals", f"{what}: stored original sha256 {actual[:12]}…, record {v.sha256[:12]}… "
                                       f"({v.bytes} bytes), input {item.sha256[:12]}… ({item.size} bytes)")
                local.unlink()
            for v in copies:
                local = scratch / f"{upload_id}.copy"
                try:
                    store.get_file(v.key, local)
                except Exception as e:  # noqa: BLE001
                    mismatched += 1
                    f.add("copies", f"{what}: agency copy {v.key} unreadable: {type(e).__name__}: {e}")
                    continue
                problems = []
                if _sha256(local) != v.sha256:
                    problems.append("bytes differ from the record's sha256")
                head = store.head(v.key)
                if head is not None and head.tags != v.tags:
                    problems.append(f"object tags {head.tags} differ from the record's {v.tags}")
                try:
                    verify_copy(local, Rebuilt(format=job.format, media_type=v.media_type or "", extension=""))
                except Exception as e:  # noqa: BLE001 - SanitizeError(verify_failed) or anything else
                    problems.append(f"fails the verifier: {getattr(e, 'message', e)}")
                if problems:
                    mismatched += 1
                    f.add("copies", f"{what}: {v.key}: " + "; ".join(problems))
                local.unlink()

        explained = {v.key for rows in variants.values() for v in rows}
        finished = {u for u, j in jobs.items() if j.state in records.FINAL_STATES}
        unexplained = [k for area in ("restricted", "agency") for k in objects[area] if k not in explained]
        unexplained += [k for k in objects["incoming"] if k.split("/")[1] not in jobs]
        incoming_left = [k for k in objects["incoming"] if k.split("/")[1] in finished]
        for key in unexplained:
            f.add("unexplained objects", key)
        for key in incoming_left:
            job = jobs[key.split("/")[1]]
            f.add("incoming left", f"{key} (job {job.state}, finished {job.finished_at})")
        work_left = self._work_folders_left()
        for path in work_left:
            f.add("work folders", f"{path}: {_describe_folder(Path(path))}")

        for proc in self.workers + [self.beat]:
            for exit_text in proc.unexpected_exits:
                f.add("processes", exit_text)
        leftover = _processes_in_groups(self._pgids)
        for text in leftover:
            f.add("processes", f"still running after the run: {text}")

        for problem in getattr(self, "verify_store_problems", []):
            f.add("verify-store", problem)
        for area in ("incoming", "restricted", "agency"):
            listing = store.client.list_multipart_uploads(Bucket=store.bucket(area))
            for part in listing.get("Uploads", []):
                f.add("unexplained objects", f"{area}/{part['Key']}: a multipart upload never completed")

        f.figures.update({
            "uploads": len(self.inputs),
            "accepted": len(self.accepted),
            "done / rejected / failed": "{} / {} / {}".format(*(sum(j.state == s for j in jobs.values())
                                                              for s in ("done", "rejected", "failed"))),
            "child kills (busy)": f"{self.counts['child kills']} ({self.counts['busy child kills']})",
            "worker kills": self.counts["worker kills"],
            "broker losses": self.counts["broker losses"],
            "storage stalls (s)": f"{self.counts['stalls']} ({self.proxy.stalled_s:.0f})",
            "intake sends failed": self.send_failures,
            "recovered (attempts > 1)": recovered,
            "retries (attempts - 1)": retries,
            "lost": lost,
            "duplicated": duplicated,
            "mismatched": mismatched,
            "wrong outcome": wrong,
            "objects left": len(unexplained) + len(incoming_left),
            "work folders left": len(work_left),
            "unexpected exits": sum(len(p.unexpected_exits) for p in self.workers + [self.beat]),
        })
        f.log_signals = self._log_signals()
        if getattr(self, "notes_hostname", None):
            f.notes.append(self.notes_hostname)
        return f

    def _log_signals(self) -> dict[str, int]:
        text = "".join(w.log_path.read_text(errors="replace") for w in self.workers if w.log_path.exists())
        return {name: len(pattern.findall(text)) for name, pattern in LOG_SIGNALS.items()}


def _describe_folder(path: Path) -> str:
    try:
        if path.is_dir():
            names = sorted(p.name for p in path.iterdir())
            return f"folder holding {names[:6]}"
        return f"file of {path.stat().st_size} bytes"
    except OSError as e:
        return f"({e})"


def _processes_in_groups(pgids: list[int]) -> list[str]:
    import psutil
    left = []
    groups = set(pgids)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) in groups and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"pid {proc.pid}: {' '.join(proc.info['cmdline'] or [])[:120]}")
    return left
