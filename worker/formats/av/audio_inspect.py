"""The verifier's independent readers for audio copies, and the pieces every audio module shares.

Each audio module walks its own structure in ``inspect`` (``walk_copy``: the container or frames
to the last byte, against the format's allow-list) and counts the copy's duration on the way.
Then two readers from code that did not write the copy: mutagen (the tag library most players
share: tags, Vorbis vendor strings, pictures, the encoder an MP3 header frame names; it has no
AMR reader) and ffmpeg, which decodes a sample of the copy at the walk's duration (2 s at the
start, middle and end). ffprobe is not asked: its tags, streams, attached pictures and chapters
are what the walks refuse to the byte (a copy is frames from its first byte to its last, or an
allow-listed set of chunks or blocks with an empty comment) and mutagen reads again, and the
duration it gave for the decode sample is the walk's. These checks return findings (empty when
the copy is clean), never raise for a dirty copy, and report an unreadable copy as a finding too.
"""
from __future__ import annotations

import mmap
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from worker.errors import SanitizeError, too_large
from worker.formats.base import Limits

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


def release(data, start: int, stop: int) -> None:
    """Let this process drop the pages of a mapped file that lie wholly inside ``[start, stop)``.

    A long recording is read once, front to back: the pages behind a walk or a copy are not needed
    again, and kept mapped they would make the process as large as the file. They stay in the page
    cache; a later read maps them back. Nothing to do for bytes."""
    if not isinstance(data, mmap.mmap):
        return
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last = min(stop, len(data)) // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        data.madvise(mmap.MADV_DONTNEED, first, last - first)


WRITE_BLOCK = 1 << 20


def write_range(out, data, start: int, stop: int) -> None:
    """Copy ``data[start:stop]`` (a mapped file) to ``out`` in bounded blocks: the frames of a long
    recording are one contiguous run, and one slice of it would be a copy of the whole audio in memory.
    The pages copied are released as it goes."""
    while start < stop:
        end = min(stop, start + WRITE_BLOCK)
        out.write(data[start:end])
        release(data, start, end)
        start = end


class CopyWalk(NamedTuple):
    """What a format's walk of a copy says: its findings, and the seconds of audio it counted (None
    when the format does not say), which place the verifier's decode sample."""
    findings: list[str]
    duration: float | None


def mutagen_findings(path: Path, file_type: type) -> list[str]:
    """What mutagen (the tag library most players share) still finds in the copy: tags, Vorbis
    vendor strings, pictures, an MP3 header frame's encoder name.

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
    # an MP3's LAME extension, read from the header frame ("LAME 3.100"); "FhG" is mutagen's own
    # word for any VBRI header, whose kept fields name nothing
    encoder = (getattr(audio.info, "encoder_info", "") or "").strip()
    settings = (getattr(audio.info, "encoder_settings", "") or "").strip()
    if encoder not in ("", "FhG") or settings:
        findings.append(f"mutagen reads the encoder {encoder or settings!r} in the header frame")
    return findings


def sample_decode_findings(path: Path, duration: float | None) -> list[str]:
    """ffmpeg's decode sample of the copy (worker.tools.decode_sample) as findings: empty when it
    decodes. When the rebuild already decoded these very bytes (``check_frames_decode``), that
    passing answer is this one: the same question about the same bytes, asked once."""
    from worker.tools import decode_sample

    try:
        decode_sample(path, INSPECT_LIMITS, duration=duration, what="decoding the copy")
    except SanitizeError as e:
        return [f"the copy does not decode: {e.message}"]
    return []


def check_frames_decode(copy: Path, limits: Limits, duration: float | None = None, *,
                        reader: str | None = None) -> None:
    """The rebuild's check of the input: an audio copy holds the upload's frames byte for byte, so
    when a decode sample of the copy fails, the upload's audio is broken (``corrupt``), and the
    verifier's own decode keeps meaning "our rebuild is wrong". Run on the copy, not the input,
    so that junk after the last frame (which the copy no longer holds) cannot fail it. The verifier's
    decode of the copy is the same question about the same bytes: this run answers it too.
    ``reader``: the module of the verifier's mutagen reader, imported while ffmpeg decodes."""
    import importlib

    from worker.tools import decode_sample

    load_reader = None if reader is None else partial(importlib.import_module, reader)
    try:
        decode_sample(copy, limits, duration=duration, what="checking the upload's audio", share=True,
                      meanwhile=load_reader)
    except SanitizeError as e:
        if e.code == "corrupt":
            raise SanitizeError("corrupt", f"the upload's audio frames do not decode: {e.message}") from None
        raise


def reader_findings(path: Path, file_type: type | None, duration: float | None) -> list[str]:
    """Both independent readers, as every audio module's ``inspect`` ends: mutagen where it knows
    the format (it has no AMR reader), then ffmpeg's decode sample at the walk's ``duration``."""
    findings = mutagen_findings(path, file_type) if file_type is not None else []
    return findings + sample_decode_findings(path, duration)


def inspect_copy(path: Path, walk_copy: Callable[[mmap.mmap], CopyWalk], file_type: type | None) -> list[str]:
    """The whole ``inspect`` of a format whose walk reads the mapped bytes: that walk, then both
    independent readers. A copy that cannot even be mapped is one finding."""
    try:
        with mapped_file(path) as data:
            walked = walk_copy(data)
    except SanitizeError as e:
        return [f"the copy cannot be read: {e.message}"]
    return walked.findings + reader_findings(path, file_type, walked.duration)
