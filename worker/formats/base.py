"""The one interface every container family implements.

A format module (``worker/formats/photo/<family>.py`` or ``worker/formats/av/<family>.py``) exposes one or more ``Format`` values. Each is
declarations plus four functions, all pure except for reading the input and writing a *new* file:

- ``accept(head)``: does this content (the first ``HEAD_BYTES`` of the file) belong to us?
- ``locate(path, limits)``: every GPS fix and capture time the container holds (``location.Found``)
- ``rebuild(src, dst, limits)``: write the agency copy to ``dst`` by allow-list; say what was dropped
- ``inspect(path)``: the verifier's own structure walk of a copy; returns findings, empty when clean
- optionally ``inspect_copy_of(path, source)``: ``inspect`` for a copy made of the input's own coded
  data, which may prove the media by bytes against ``source`` instead of decoding the copy

Errors are always ``worker.errors.SanitizeError`` with a stable code; nothing else may escape a
format function for input the module accepted (the pipeline turns anything else into ``internal``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from worker.location import Found

HEAD_BYTES = 64 * 1024


# NamedTuples, not dataclasses: immutable values all the same, without importing dataclasses (and
# inspect), a twentieth of a one-file run's start (#10)
class Limits(NamedTuple):
    """Bounds checked before and while decoding. Passed in, never process-wide."""

    max_bytes: int = 2 * 1024**3
    max_pixels: int = 120_000_000
    max_frames: int = 2_000
    max_duration_s: float = 3 * 3600.0
    max_streams: int = 16
    timeout_s: float = 300.0          # wall clock for one external tool run (ffmpeg, ffprobe)
    memory_bytes: int = 2 * 1024**3   # address-space limit for external tools
    file_timeout_s: float = 120.0     # wall clock for one whole file inside the process (worker/budget.py)


class Rebuilt(NamedTuple):
    """What ``rebuild`` wrote: the copy's own format (not necessarily the input's) and what it dropped."""

    format: str                 # the Format.name of the *copy*, e.g. "jpeg" for a HEIC input
    media_type: str             # e.g. "image/jpeg"
    extension: str              # e.g. ".jpg"
    removed: tuple[str, ...] = ()   # human-readable names of what was taken out, e.g. "APP1 Exif", "ID3v2"
    # set when the copy was re-encoded from the decoded pixels of an input whose container is
    # damaged (worker/formats/photo/reencode.py's salvage): why the container was refused
    salvage_reason: str | None = None


class Format(NamedTuple):
    """One family: how it is recognised, located, rebuilt and inspected."""

    name: str                   # stable id, e.g. "jpeg", "png", "heic", "mp4", "mp3"
    kind: str                   # "photo" | "video" | "audio"
    media_type: str             # of the input, by content
    accept: Callable[[bytes], bool]
    locate: Callable[[Path, Limits], Found]
    rebuild: Callable[[Path, Path, Limits], Rebuilt]
    inspect: Callable[[Path], list[str]]
    extensions: tuple[str, ...] = ()   # conventional, for naming stored objects only
    # the verifier's look given the input too (a stream copy proved by bytes); None: ``inspect``
    inspect_copy_of: Callable[[Path, Path], list[str]] | None = None
