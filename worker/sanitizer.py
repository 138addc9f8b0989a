"""Sanitize one file: identify, limit, locate, rebuild, verify. Files in, a new file out, no I/O else.

Used by ``mediasan sanitize`` in-process and by the worker's pipeline; neither knows about formats.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from worker import formats
from worker.budget import FileTimeout, memory_exhausted, start_deadline
from worker.errors import SanitizeError
from worker.formats.base import Limits, Rebuilt
from worker.formats.photo import release_file
from worker.location import Found
from worker.verify import verify_copy

log = logging.getLogger(__name__)


class Report:
    """The outcome for one input; ``as_json`` is the CLI contract of DESIGN.md."""

    # a plain class, not a dataclass: importing dataclasses (and inspect) was a twentieth of a
    # one-file run's start (#10)
    __slots__ = ("input", "status", "kind", "format", "input_format", "media_type", "output", "found",
                 "removed", "error", "salvage_reason", "seconds")

    def __init__(self, input: str, status: str = "failed", error: SanitizeError | None = None):
        self.input = input
        self.status = status              # sanitized | rejected | failed
        self.kind: str | None = None
        self.format: str | None = None    # the agency copy's format (the input's when rejected)
        self.input_format: str | None = None
        self.media_type: str | None = None   # the agency copy's
        self.output: str | None = None
        self.found = Found()
        self.removed: tuple[str, ...] = ()
        self.error = error
        self.salvage_reason: str | None = None   # set when the copy was re-encoded from a damaged input's pixels
        self.seconds: float | None = None        # wall time spent on this input, in this process

    def __repr__(self) -> str:
        return f"Report({self.as_json()!r})"

    def as_json(self) -> dict:
        fix = self.found.fix
        return {
            "input": self.input,
            "status": self.status,
            "kind": self.kind,
            "format": self.format,
            "output": self.output,
            "location": ({"lat": fix.lat, "lon": fix.lon, "alt": fix.alt, "source": fix.source} if fix else None),
            "captured_at": self.found.captured_at,
            "removed": list(self.removed),
            "salvaged": self.salvage_reason is not None,
            "salvage_reason": self.salvage_reason,
            "error": self.error.as_dict() if self.error else None,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
        }


def check_size(path: Path, limits: Limits) -> None:
    size = path.stat().st_size
    if size == 0:
        raise SanitizeError("empty", "the file is empty")
    if size > limits.max_bytes:
        raise SanitizeError("too_large", f"{size} bytes is over the limit of {limits.max_bytes}")


def partial_path(dst_stem: Path) -> Path:
    """Where the copy is written before it is verified (and renamed to its final name)."""
    return dst_stem.with_name(dst_stem.name + ".partial")


def sanitize_file(src: Path, dst_stem: Path, limits: Limits) -> Report:
    """Write the verified agency copy of ``src`` to ``dst_stem`` + the copy's extension.

    Never raises for a bad input: the Report carries the error. No copy is left behind unless
    it passed verification.
    """
    report = Report(input=str(src))
    dst: Path | None = None
    started, deadline = time.monotonic(), start_deadline(limits.file_timeout_s)
    try:
        check_size(src, limits)
        fmt = formats.identify(src)
        report.kind, report.input_format, report.format = fmt.kind, fmt.name, fmt.name
        report.found = fmt.locate(src, limits)
        tmp = partial_path(dst_stem)
        rebuilt: Rebuilt = fmt.rebuild(src, tmp, limits)
        dst = dst_stem.with_name(dst_stem.name + rebuilt.extension)
        verify_copy(tmp, rebuilt, src, source_format=fmt.name)
        os.replace(tmp, dst)
        report.status, report.format, report.media_type = "sanitized", rebuilt.format, rebuilt.media_type
        # identify() sees only the head; the copy's format was decided from the whole file
        report.kind = formats.by_name(rebuilt.format).kind
        report.output, report.removed = str(dst), rebuilt.removed
        report.salvage_reason = rebuilt.salvage_reason
    except FileTimeout:
        report.status, report.error = "rejected", deadline.error()
    except SanitizeError as e:
        report.status, report.error = e.status, e
    except MemoryError:
        report.status, report.error = "rejected", memory_exhausted()
    except Exception as e:  # noqa: BLE001 - a bug must not kill the batch or publish anything
        log.exception("internal error sanitizing %s", src)
        report.status, report.error = "failed", SanitizeError("internal", f"{type(e).__name__}: {e}")
    finally:
        deadline.cancel()
        release_file()
        partial = partial_path(dst_stem)
        if partial.exists():
            partial.unlink()
        report.seconds = time.monotonic() - started
    return report
