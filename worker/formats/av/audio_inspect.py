"""The verifier's second and third readers for audio copies: mutagen and ffprobe.

Each audio module walks its own structure in ``inspect``; these two checks are the same for every
audio family and come from code that did not write the copy. They return findings (empty when the
copy is clean), never raise for a dirty copy, and report an unreadable copy as a finding too.
"""
from __future__ import annotations

import mmap
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from worker.errors import SanitizeError, too_large
from worker.formats.base import Limits

# ffprobe stream fields that name a codec or its parameters, not a person, place, device or time.
# Tags (``tags`` dicts) are a different matter: none is allowed, not even ``encoder``, which names
# the software that wrote the file.
ALLOWED_FORMAT_TAGS: frozenset[str] = frozenset()
ALLOWED_STREAM_TAGS: frozenset[str] = frozenset()
# what an inspection may spend: a copy is at most what the input was
INSPECT_LIMITS = Limits()


@contextmanager
def mapped_file(path: Path, limits: Limits = INSPECT_LIMITS) -> Iterator[mmap.mmap]:
    """The file as a read-only memory map: the audio walkers index and slice it like bytes without
    reading a long recording into memory. Empty and oversized files are refused before mapping."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            raise SanitizeError("empty", "the file is empty")
        if size > limits.max_bytes:
            raise too_large(f"{size} bytes is over the limit of {limits.max_bytes}")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data


WRITE_BLOCK = 1 << 20


def write_range(out, data, start: int, stop: int) -> None:
    """Copy ``data[start:stop]`` (a mapped file) to ``out`` in bounded blocks: the frames of a long
    recording are one contiguous run, and one slice of it would be a copy of the whole audio in memory."""
    while start < stop:
        end = min(stop, start + WRITE_BLOCK)
        out.write(data[start:end])
        start = end


def mutagen_findings(path: Path, file_type: type) -> list[str]:
    """What mutagen (the tag library most players share) still finds in the copy: tags, pictures.

    ``file_type`` is the mutagen class of the copy's format (e.g. ``mutagen.mp3.MP3``): the copy is
    written under a temporary name, so mutagen's own guess from the file name cannot be relied on.
    """
    try:
        audio = file_type(path)
    except Exception as e:  # noqa: BLE001 - any mutagen failure means the copy is not a clean file of its kind
        return [f"mutagen cannot read the copy: {type(e).__name__}: {e}"]
    findings: list[str] = []
    tags = audio.tags
    if tags is not None:
        keys = list(tags.keys())
        if keys:
            findings.append(f"mutagen finds tags {sorted(map(str, keys))[:10]}")
        vendor = getattr(tags, "vendor", "")
        if vendor:
            findings.append(f"Vorbis comment vendor string {vendor!r}")
    if getattr(audio, "pictures", None):
        findings.append(f"mutagen finds {len(audio.pictures)} embedded picture(s)")
    return findings


def ffprobe_findings(path: Path, *, codec_type: str = "audio") -> list[str]:
    """What ffprobe (ffmpeg's demuxers, a separate code base) still finds: tags, extra streams, chapters.

    Every stream tag is a finding, ``encoder`` included: ffmpeg reports the encoder named in an
    MP3's LAME extension that way, and mp3.py blanks that extension, so a clean copy has none.
    """
    from worker.tools import decode_findings, ffprobe

    try:
        probe = ffprobe(path, INSPECT_LIMITS)
    except SanitizeError as e:
        return [f"ffprobe cannot read the copy: {e.message}"]
    findings: list[str] = []
    fmt_tags = set((probe.get("format") or {}).get("tags") or {}) - ALLOWED_FORMAT_TAGS
    if fmt_tags:
        findings.append(f"ffprobe finds container tags {sorted(fmt_tags)}")
    streams = probe.get("streams") or []
    if len(streams) != 1:
        findings.append(f"ffprobe finds {len(streams)} streams, expected one {codec_type} stream")
    for stream in streams:
        index = stream.get("index")
        if stream.get("codec_type") != codec_type:
            findings.append(f"ffprobe stream {index} is {stream.get('codec_type')}, not {codec_type}")
        if (stream.get("disposition") or {}).get("attached_pic"):
            findings.append(f"ffprobe stream {index} is an attached picture")
        extra = set(stream.get("tags") or {}) - ALLOWED_STREAM_TAGS
        if extra:
            findings.append(f"ffprobe finds tags {sorted(extra)} on stream {index}")
    if probe.get("chapters"):
        findings.append(f"ffprobe finds {len(probe['chapters'])} chapters")
    return findings + decode_findings(path, probe, INSPECT_LIMITS)


def check_frames_decode(copy: Path, limits: Limits, duration: float | None = None) -> None:
    """The rebuild's check of the input: an audio copy holds the upload's frames byte for byte, so
    when a decode sample of the copy fails, the upload's audio is broken (``corrupt``), and the
    verifier's own decode keeps meaning "our rebuild is wrong". Run on the copy, not the input,
    so that junk after the last frame (which the copy no longer holds) cannot fail it. The verifier's
    decode of the copy is the same question about the same bytes: this run answers it too."""
    from worker.tools import decode_sample

    try:
        decode_sample(copy, limits, duration=duration, what="checking the upload's audio", share=True)
    except SanitizeError as e:
        if e.code == "corrupt":
            raise SanitizeError("corrupt", f"the upload's audio frames do not decode: {e.message}") from None
        raise


def reader_findings(path: Path, file_type: type | None) -> list[str]:
    """Both independent readers, as every audio module's ``inspect`` ends (mutagen only where it
    knows the format: it has no AMR reader)."""
    findings = mutagen_findings(path, file_type) if file_type is not None else []
    return findings + ffprobe_findings(path)


def inspect_copy(path: Path, structure_findings, file_type: type | None) -> list[str]:
    """The whole ``inspect`` of a format whose structure walk reads the mapped bytes: that walk,
    then both independent readers. A copy that cannot even be mapped is one finding."""
    try:
        with mapped_file(path) as data:
            findings = structure_findings(data)
    except SanitizeError as e:
        return [f"the copy cannot be read: {e.message}"]
    return findings + reader_findings(path, file_type)
