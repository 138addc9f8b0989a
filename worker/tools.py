"""Run an external decoder (ffmpeg, ffprobe) as an argument list under a timeout and a memory cap.

Every way such a tool can go wrong maps to a SanitizeError code, so a hung or crashing ffmpeg ends
one job and never the worker.
"""
from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
from pathlib import Path

from worker.errors import SanitizeError
from worker.formats.base import Limits


def _cap_memory(limit: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        # core dumps of a crashing decoder would land in the worker's folder
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return preexec


def run_tool(args: list[str], limits: Limits, *, what: str) -> subprocess.CompletedProcess:
    """Run ``args`` (never a shell string). Returns the completed process when it exited 0.

    Raises SanitizeError: ``timeout`` past limits.timeout_s; ``tool_failed`` when the tool is missing,
    cannot start under the memory cap, or is killed by a signal (a crash); ``too_large`` when the
    input needs more memory than the cap; ``corrupt`` when it exits non-zero otherwise, since ffmpeg
    does that for input it cannot read.
    """
    exe = shutil.which(args[0])
    if exe is None:
        raise SanitizeError("tool_failed", f"{args[0]} is not installed")
    try:
        proc = subprocess.run([exe, *args[1:]], capture_output=True, timeout=limits.timeout_s,
                              preexec_fn=_cap_memory(limits.memory_bytes), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SanitizeError("timeout", f"{what}: {args[0]} ran past {limits.timeout_s:.0f} s") from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise SanitizeError("tool_failed", f"{what}: {args[0]} was killed by {name}")
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace")
        tail = (stderr.strip().splitlines()[-1:] or ["no message"])[0][:300]
        cap = f"{limits.memory_bytes // (1 << 20)} MiB"
        if "error while loading shared libraries" in stderr:
            # the tool could not even start under the cap: a setting of ours, not the upload's fault
            raise SanitizeError("tool_failed", f"{what}: {args[0]} cannot start under its {cap} memory cap: {tail}")
        if "Cannot allocate memory" in stderr:
            raise SanitizeError("too_large", f"{what}: the input needs more than the {cap} memory cap")
        raise SanitizeError("corrupt", f"{what}: {args[0]} could not read the input: {tail}")
    return proc


def ffprobe(path: Path, limits: Limits) -> dict:
    """ffprobe's JSON of format, streams and chapters."""
    proc = run_tool(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                     "-show_chapters", str(path)], limits, what="probing")
    try:
        return json.loads(proc.stdout or b"{}")
    except json.JSONDecodeError:
        raise SanitizeError("corrupt", "ffprobe gave no readable description of the input") from None
