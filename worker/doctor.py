"""`mediasan doctor`: is this machine ready to run mediasan, and the one-time work that makes it so.

Each check gives one line: `ok` or `FAIL`, its name, a detail. The one-time work, asked for
explicitly: `migrate` brings the database to head (on PostgreSQL under an advisory lock, so two
doctors or a doctor and a migrating embedded process at once are safe), `create_buckets` creates
the S3 store's three buckets (idempotent). Workers never migrate PostgreSQL themselves: they refuse
to start on a schema that is not at head, which is what `doctor --migrate` fixes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from worker.settings import Settings

TOOL_TIMEOUT_S = 20.0
BROKER_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':<4}  {self.name:<8}  {self.detail}"


def run_checks(settings: Settings, *, migrate: bool = False, create_buckets: bool = False) -> list[Check]:
    """Every check, in the order a worker needs them; never raises for a failing one."""
    return [check_tool("ffmpeg"), check_tool("ffprobe"),
            _guarded("database", lambda: check_database(settings, migrate=migrate)),
            _guarded("store", lambda: check_store(settings, create_buckets=create_buckets)),
            _guarded("broker", lambda: check_broker(settings))]


def _guarded(name: str, check) -> Check:
    try:
        return check()
    except Exception as e:   # a check reports; it never stops the others
        return Check(name, False, _one_line(e))


def check_tool(name: str) -> Check:
    """The tool is on PATH, runs, and says which version it is."""
    path = shutil.which(name)
    if path is None:
        return Check(name, False, "not found on PATH")
    try:
        proc = subprocess.run([path, "-version"], capture_output=True, timeout=TOOL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check(name, False, f"{path} did not run: {_one_line(e)}")
    first_line = proc.stdout.decode(errors="replace").splitlines()[:1]
    if proc.returncode != 0 or not first_line:
        return Check(name, False, f"{path} -version exited {proc.returncode}")
    return Check(name, True, first_line[0].strip()[:120])


def check_database(settings: Settings, *, migrate: bool = False) -> Check:
    """Reachable and at this code's head revision (migrated first when asked)."""
    from worker import records
    from worker.services import private_sqlite_file

    engine = records.make_engine(settings.resolved_database_url())
    where = engine.url.render_as_string(hide_password=True)
    try:
        if engine.url.get_backend_name() == "sqlite" and engine.url.database:
            private_sqlite_file(_sqlite_path(engine.url.database))
        done = ""
        if migrate:
            found = records.migrate(engine)   # read under the migration lock
            done = "" if found == records.head_revision() else f", migrated from {found or 'empty'}"
        current, head = records.current_revision(engine), records.head_revision()
    except Exception as e:
        return Check("database", False, f"{where}: {_one_line(e)}")
    finally:
        engine.dispose()
    if current != head:
        return Check("database", False, f"{where}: at revision {current or 'none (empty)'}, head is {head}; "
                                        "run `mediasan doctor --migrate`")
    return Check("database", True, f"{where}: at head {head}{done}")


def _sqlite_path(database: str):
    from pathlib import Path

    path = Path(database)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def check_store(settings: Settings, *, create_buckets: bool = False) -> Check:
    """The store answers; on S3 the three area buckets exist (created first when asked)."""
    from worker.storage import open_store

    store = open_store(settings.storage_url, settings.resolved_data_dir())
    missing_buckets = getattr(store, "missing_buckets", None)
    if missing_buckets is None:   # a local folder: it must exist (or be creatable) and be writable
        root = store.root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(root, os.W_OK | os.X_OK):
            return Check("store", False, f"{root}: not writable by this user")
        return Check("store", True, f"local folder {root}")
    created = ""
    if create_buckets:
        before = missing_buckets()
        store.ensure_buckets()
        created = f", created {', '.join(before)}" if before else ""
    missing = missing_buckets()
    if missing:
        return Check("store", False, f"{store!r}: missing bucket(s) {', '.join(missing)}; "
                                     "run `mediasan doctor --create-buckets`")
    return Check("store", True, f"{store!r}: buckets present{created}")


def check_broker(settings: Settings) -> Check:
    """A connection to the broker opens (one attempt, bounded in time)."""
    from kombu import Connection

    url = settings.resolved_broker_url()
    if url.startswith("filesystem"):
        from worker.app import filesystem_transport_options
        options = filesystem_transport_options(settings)
    else:
        options = {}
    with Connection(url, connect_timeout=BROKER_TIMEOUT_S, transport_options=options) as conn:
        shown = conn.as_uri()   # the password masked
        try:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_S)
        except Exception as e:
            return Check("broker", False, f"{shown}: {_one_line(e)}")
    return Check("broker", True, shown)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text[:300]}"
