"""AMR and AMR-WB storage files (RFC 4867 section 5): voice notes. The format has no metadata.

The file is a magic line ("#!AMR\\n" or "#!AMR-WB\\n") and speech frames, each a 1-byte table of
contents (frame type, quality bit) and a payload whose length the frame type fixes. There is
nowhere to put a tag, so the copy is the same magic and the same frames, validated one by one;
whatever follows the last whole frame (a cut-off frame, bytes appended by another program) is
dropped. Multichannel AMR ("#!AMR_MC1.0") is not supported. ``locate`` finds nothing.

AMR has no sync code and no checksum: almost any byte can start a valid frame, so text appended to
a voice note (an HTML page, an XML sidecar) would read as frames of speech. The walk therefore also
ends at the first frame that is all printable text (speech payloads never are: 31 coded bytes all
in 0x20..0x7E happen about once in 10^13 frames), and at a tag signature (ID3, TAG, APETAGEX);
everything from there on is dropped.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from worker.errors import SanitizeError, too_large, truncated
from worker.formats.av.audio_inspect import check_frames_decode, mapped_file, reader_findings, write_range
from worker.formats.base import Format, Limits, Rebuilt
from worker.location import Found

FRAME_SECONDS = 0.02


class Variant(NamedTuple):
    magic: bytes
    # frame type -> bytes of the whole frame (TOC included); types missing are reserved
    frame_bytes: dict[int, int]


NARROWBAND = Variant(b"#!AMR\n", {0: 13, 1: 14, 2: 16, 3: 18, 4: 20, 5: 21, 6: 27, 7: 32, 8: 6, 15: 1})
WIDEBAND = Variant(b"#!AMR-WB\n", {0: 18, 1: 24, 2: 33, 3: 37, 4: 41, 5: 47, 6: 51, 7: 59, 8: 61, 9: 6,
                                   14: 1, 15: 1})


def variant_of(head: bytes) -> Variant | None:
    return next((v for v in (NARROWBAND, WIDEBAND) if head.startswith(v.magic)), None)


def accept(head: bytes) -> bool:
    return variant_of(head) is not None


def locate(path: Path, limits: Limits) -> Found:
    return Found()


TEXT = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
TAG_SIGNATURES = (b"ID3", b"TAG", b"APETAGEX")


def _looks_appended(data, pos: int, size: int) -> bool:
    """Whether the frame at ``pos`` is really the start of something appended: text or a tag."""
    frame = bytes(data[pos:pos + size])
    return (size >= 6 and set(frame) <= TEXT) or frame.startswith(TAG_SIGNATURES)


def frames_end(data, variant: Variant) -> tuple[int, int]:
    """(offset just past the last valid whole frame, number of frames)."""
    pos, count = len(variant.magic), 0
    while pos < len(data):
        toc = data[pos]
        size = variant.frame_bytes.get((toc >> 3) & 0x0F)
        # the TOC's first and last two bits are padding and must be zero
        if toc & 0x83 or size is None or pos + size > len(data):
            break
        if _looks_appended(data, pos, size):
            break
        pos, count = pos + size, count + 1
    return pos, count


def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
    with mapped_file(src, limits) as data:
        variant = variant_of(bytes(data[:16]))
        if variant is None:
            raise SanitizeError("unsupported_format", "not a single-channel AMR or AMR-WB file")
        end, count = frames_end(data, variant)
        if count == 0:
            raise truncated("the AMR file holds no whole speech frame")
        if count * FRAME_SECONDS > limits.max_duration_s:
            raise too_large(f"{count * FRAME_SECONDS:.0f} s of audio is over the limit of "
                            f"{limits.max_duration_s:.0f} s")
        removed = (f"data after the last whole frame ({len(data) - end} bytes)",) if end < len(data) else ()
        with open(dst, "wb") as out:
            write_range(out, data, 0, end)
    check_frames_decode(dst, limits, count * FRAME_SECONDS)
    return Rebuilt(format="amr", media_type="audio/amr", extension=".amr", removed=removed)


def inspect(path: Path) -> list[str]:
    try:
        with mapped_file(path) as data:
            variant = variant_of(bytes(data[:16]))
            if variant is None:
                return ["the copy does not start with the AMR magic"]
            end, count = frames_end(data, variant)
            findings = [f"{len(data) - end} bytes after the last whole AMR frame"] if end != len(data) else []
            if count == 0:
                findings.append("the copy holds no AMR frame")
    except SanitizeError as e:
        return [f"the copy cannot be read: {e.message}"]
    # mutagen has no AMR reader (and the format has no tags): ffmpeg's decode sample is the independent one
    return findings + reader_findings(path, None, count * FRAME_SECONDS)


FORMATS = [
    Format(name="amr", kind="audio", media_type="audio/amr", accept=accept, locate=locate, rebuild=rebuild,
           inspect=inspect, extensions=(".amr",)),
]
