"""Work folders: every file a process makes while sanitizing lives under one configured folder.

Layout under ``MEDIASAN_WORK_DIR`` (default ``{data_dir}/work``, mode 0700)::

    {host}-{pid}-{start}/          one folder a process; start = the process's start time in clock
        tmp/                       ticks since boot (/proc/PID/stat), so a reused pid cannot pass for
        job-{upload_id}/           a dead process; tmp/ is tempfile.tempdir and TMPDIR (ffmpeg) of
                                   the process, job-… the fetched upload and its copy while one job runs

Nothing goes to the system temp folder: a SIGKILLed worker there leaves an original (GPS and all)
where retention never looks. Here a folder whose process is gone is removed by the next worker at
start and by the sweeper (``remove_dead``). Liveness is decided from /proc for folders of this host;
a folder of another host (a shared volume) is removed only once nothing in it changed for
``stale_s`` seconds (a job never runs longer than its lease).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterator, NamedTuple

log = logging.getLogger(__name__)

# compiled on first use (the sweeper's): a one-file `mediasan sanitize` never lists folders
_FOLDER_PATTERN = r"^(?P<host>[A-Za-z0-9_.-]+)-(?P<pid>\d+)-(?P<start>\d+)$"
_current: tuple[int, Path] | None = None     # (pid, process folder) once this process made its folder


def _host() -> str:
    # os.uname().nodename is what socket.gethostname() returns on Linux (glibc's gethostname reads
    # uname), without importing socket and selectors into every short-lived command
    return re.sub(r"[^A-Za-z0-9_.]", "_", os.uname().nodename)[:64] or "host"


def process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat); None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its closing one
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def folder_name(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    start = process_start(pid)
    # without /proc (not Linux) the name still differs per process; liveness falls back to age
    return f"{_host()}-{pid}-{start if start is not None else int(time.time())}"


def ensure_root(root: Path) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)   # it holds originals while they are processed: policy 5
    return root


def process_folder(root: Path) -> Path:
    """This process's folder (made on first use, again after fork), and route tempfile and TMPDIR to it."""
    global _current
    pid = os.getpid()
    if _current is not None and _current[0] == pid and _current[1].parent == Path(root):
        folder = _current[1]
    else:
        folder = Path(root) / folder_name(pid)
        _current = (pid, folder)
    tmp = folder / "tmp"
    if not tmp.is_dir():   # also after a sweeper on another host took an idle folder away
        ensure_root(root)
        folder.mkdir(mode=0o700, exist_ok=True)
        tmp.mkdir(mode=0o700, exist_ok=True)
    # anything that asks tempfile (a library) or TMPDIR (ffmpeg, a child tool) writes here
    _set_tempdir(str(tmp))
    os.environ["TMPDIR"] = str(tmp)
    return folder


def _remove_tree(path: Path) -> None:
    # a process folder as a `mediasan sanitize` leaves it (an empty tmp/) goes without shutil, whose
    # import loads bz2 and lzma, a fiftieth of a one-file run's start (#10); anything else with it
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                os.rmdir(entry.path)   # an empty folder; anything else raises
        os.rmdir(path)
        return
    except OSError:
        pass
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _tempdir() -> str | None:
    tempfile = sys.modules.get("tempfile")
    return tempfile.tempdir if tempfile is not None else None


def _set_tempdir(value: str | None) -> None:
    """tempfile.tempdir = value, without importing tempfile for a command that never uses it.

    A tempfile imported later finds TMPDIR (set beside this) first: the same folder.
    """
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile.tempdir = value


@contextlib.contextmanager
def job_folder(root: Path, upload_id: str) -> Iterator[Path]:
    """A fresh folder for one job inside this process's folder; removed when the job leaves it."""
    folder = process_folder(root) / f"job-{upload_id}"
    if folder.exists():   # an earlier attempt in this same process was interrupted
        _remove_tree(folder)
    folder.mkdir(mode=0o700)
    try:
        yield folder
    finally:
        _remove_tree(folder)


def remove_own(root: Path) -> None:
    """At a clean exit: this process's folder goes (a killed one is left to remove_dead)."""
    global _current
    if _current is not None and _current[0] == os.getpid():
        _remove_tree(_current[1])
        _current = None


@contextlib.contextmanager
def process_scope(root: Path) -> Iterator[Path]:
    """For a short-lived command (``mediasan sanitize``): a process folder that is gone at exit, and
    the work root and its parent too when this call made them and they are empty again."""
    root = Path(root)
    if _current is not None and _current[0] == os.getpid() and _current[1].parent == root:
        yield process_folder(root)   # inside another scope (or a worker): the folder is that one's to remove
        return
    made = [p for p in (root.parent, root) if not p.exists()]
    saved_tempdir, saved_env = _tempdir(), os.environ.get("TMPDIR")
    try:
        yield process_folder(root)
    finally:
        remove_own(root)
        _set_tempdir(saved_tempdir)   # also when tempfile was first imported inside the scope
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        for p in reversed(made):
            with contextlib.suppress(OSError):
                p.rmdir()


class Folder(NamedTuple):   # not a dataclass: importing dataclasses costs a one-file run (#10)
    """A process's work folder and the owner its name records."""

    path: Path
    host: str
    pid: int
    start: int


def folders(root: Path) -> list[Folder]:
    out = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(Path(root).iterdir()):
            m = re.match(_FOLDER_PATTERN, entry.name)
            if m and entry.is_dir():
                out.append(Folder(entry, m["host"], int(m["pid"]), int(m["start"])))
    return out


def _newest_change(path: Path) -> float:
    newest = path.stat().st_mtime
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
    return newest


def is_dead(folder: Folder, *, stale_s: float, now: float | None = None) -> bool:
    """Whether the process that owns ``folder`` is gone."""
    if folder.host == _host() and Path("/proc/self/stat").exists():
        return process_start(folder.pid) != folder.start
    try:
        return (now or time.time()) - _newest_change(folder.path) > stale_s
    except FileNotFoundError:
        return False   # already gone


def dead_folders(root: Path, *, stale_s: float) -> list[Path]:
    """Work folders under ``root`` whose process is gone (pure apart from reading /proc and the folder)."""
    return [f.path for f in folders(root) if is_dead(f, stale_s=stale_s)]


def remove_dead(root: Path, *, stale_s: float) -> list[Path]:
    """Remove the folders of processes that are gone; returns what was removed."""
    removed = []
    for path in dead_folders(root, stale_s=stale_s):
        _remove_tree(path)
        if not path.exists():
            removed.append(path)
    if removed:
        log.info("removed %d work folders of processes that are gone", len(removed))
    return removed
