"""The processes a chaos run owns: its Redis, moto's S3 server, and supervised worker and beat processes,
each in a process group of its own so that a whole worker (parent, pool, ffmpeg) dies at once."""
from __future__ import annotations

import contextlib
import inspect
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.workerproc import stop_process

ROOT = Path(__file__).resolve().parent.parent
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


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
    if proc is not None:
        stop_process(proc, timeout_s)


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
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"redis-server on port {self.port} is running already")
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
        """The live pool processes (a killed child stays a zombie until Celery reaps it: not a target)."""
        import psutil
        if not self.alive:
            return []
        live = []
        try:
            for child in psutil.Process(self.proc.pid).children():
                with contextlib.suppress(psutil.Error):
                    if child.status() != psutil.STATUS_ZOMBIE:
                        live.append(child)
        except psutil.NoSuchProcess:
            pass
        return live

    def kill_group(self) -> None:
        """SIGKILL the whole process group: the parent, its pool, any ffmpeg: a machine or container loss."""
        if self.proc is None:
            return
        self.killed_by_us = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> None:
        """Ask for a warm shutdown without waiting (``stop`` waits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.killed_by_us = True
            self.proc.terminate()

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

    def last_errors(self, count: int = 3, chars: int = 700) -> str:
        """The last error or critical lines since this process started (text or JSON logs), each cut
        to ``chars``, the exception's last line kept: what made it stop."""
        import json
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            lines = f.read().decode(errors="replace").splitlines()
        picked = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                if re.search(r"\b(ERROR|CRITICAL)\b|Unrecoverable", line):
                    picked.append(" ".join(line.split())[:chars])
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
                last = (entry.get("exception") or "").strip().splitlines()[-1:]
                message = " ".join(str(entry.get("message", "")).split())   # one line, however Celery wrapped it
                picked.append(message[:chars] + (f" [{last[0][:300]}]" if last else ""))
        return "\n".join(f"  | {line}" for line in picked[-count:]) or self.log_tail(chars)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""
