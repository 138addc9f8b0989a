"""FLAC (native "fLaC" streams): keep STREAMINFO, SEEKTABLE and the frames; drop every other block.

A FLAC file is "fLaC", a chain of metadata blocks (each a 1-byte type with a last-block flag and a
24-bit length), then audio frames to the end. Tags live in VORBIS_COMMENT, cover art (which may
carry its own EXIF GPS) in PICTURE, anything else in APPLICATION and CUESHEET blocks; some taggers
also put an ID3v2 tag in front and ID3v1 or APEv2 behind. The copy is rebuilt block by block: the
frames are copied byte for byte, and SEEKTABLE offsets stay right because they count from the
first frame. FLAC has no standard place for a location, so ``locate`` finds nothing.
"""
from __future__ import annotations

import struct
from pathlib import Path

from worker.errors import SanitizeError, corrupt, too_large, truncated, unsupported
from worker.formats.av.audio_inspect import inspect_copy, mapped_file
from worker.formats.base import Format, Limits, Rebuilt
from worker.formats.av.mp3 import id3v2_size, peel_trailing_tags
from worker.location import Found

MAGIC = b"fLaC"
STREAMINFO, PADDING, APPLICATION, SEEKTABLE, VORBIS_COMMENT, CUESHEET, PICTURE = range(7)
BLOCK_NAMES = {STREAMINFO: "STREAMINFO", PADDING: "PADDING", APPLICATION: "APPLICATION", SEEKTABLE: "SEEKTABLE",
               VORBIS_COMMENT: "VORBIS_COMMENT", CUESHEET: "CUESHEET", PICTURE: "PICTURE"}
KEPT_BLOCKS = (STREAMINFO, SEEKTABLE)
STREAMINFO_SIZE = 34
SEEKPOINT_SIZE = 18
LAST_BLOCK = 0x80
# a frame header starts with the 14-bit sync 0b11111111111110, a reserved 0 bit and the blocking bit
FRAME_SYNCS = (b"\xff\xf8", b"\xff\xf9")


def _skip_id3(data) -> int:
    pos = 0
    while (size := id3v2_size(data, pos)) is not None:
        pos += size
    return pos


def accept(head: bytes) -> bool:
    if head.startswith(MAGIC):
        return True
    pos = _skip_id3(head)
    return 0 < pos and head[pos:pos + 4] == MAGIC


def read_blocks(data, pos: int) -> tuple[list[tuple[int, int, int]], int]:
    """The metadata blocks after "fLaC" at ``pos``: [(type, payload start, payload length)], frames start."""
    if data[pos:pos + 4] != MAGIC:
        raise unsupported("no fLaC marker where the FLAC stream should start")
    pos += 4
    blocks: list[tuple[int, int, int]] = []
    while True:
        if pos + 4 > len(data):
            raise truncated("the file ends inside the FLAC metadata blocks")
        flags = data[pos]
        block_type, length = flags & 0x7F, int.from_bytes(data[pos + 1:pos + 4], "big")
        if block_type == 127:
            raise corrupt("FLAC metadata block of the invalid type 127")
        if pos + 4 + length > len(data):
            raise truncated(f"FLAC {BLOCK_NAMES.get(block_type, block_type)} block runs past the end of the file")
        blocks.append((block_type, pos + 4, length))
        pos += 4 + length
        if flags & LAST_BLOCK:
            return blocks, pos


def _check_streaminfo(data, blocks, limits: Limits) -> None:
    if not blocks or blocks[0][0] != STREAMINFO or blocks[0][2] != STREAMINFO_SIZE:
        raise corrupt("the first FLAC metadata block is not a 34-byte STREAMINFO")
    start = blocks[0][1]
    (packed,) = struct.unpack(">Q", bytes(data[start + 10:start + 18]))
    sample_rate, total_samples = packed >> 44, packed & (2**36 - 1)
    if sample_rate == 0:
        raise corrupt("FLAC STREAMINFO gives a sample rate of 0")
    if total_samples / sample_rate > limits.max_duration_s:
        raise too_large(f"{total_samples / sample_rate:.0f} s of audio is over the limit of {limits.max_duration_s:.0f} s")


def _block_header(block_type: int, length: int, last: bool) -> bytes:
    return bytes([block_type | (LAST_BLOCK if last else 0)]) + length.to_bytes(3, "big")


def locate(path: Path, limits: Limits) -> Found:
    return Found()


def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
    removed: list[str] = []
    with mapped_file(src, limits) as data:
        start = _skip_id3(data)
        if start:
            removed.append("ID3v2 (before fLaC)")
        blocks, frames_start = read_blocks(data, start)
        _check_streaminfo(data, blocks, limits)
        frames_end = peel_trailing_tags(data, len(data), removed)
        if frames_end <= frames_start:
            raise truncated("the FLAC file has no audio frames")
        if data[frames_start:frames_start + 2] not in FRAME_SYNCS:
            raise corrupt("the FLAC metadata is not followed by an audio frame")
        kept = [b for b in blocks if b[0] in KEPT_BLOCKS]
        if [b[0] for b in kept].count(STREAMINFO) != 1 or [b[0] for b in kept].count(SEEKTABLE) > 1:
            raise corrupt("FLAC metadata holds a repeated STREAMINFO or SEEKTABLE block")
        if any(b[0] == SEEKTABLE and b[2] % SEEKPOINT_SIZE for b in kept):
            raise corrupt("FLAC SEEKTABLE length is not a whole number of seek points")
        for block_type, _, length in blocks:
            if block_type not in KEPT_BLOCKS:
                removed.append(f"{BLOCK_NAMES.get(block_type, f'block type {block_type}')} ({length} bytes)")
        with open(dst, "wb") as out:
            out.write(MAGIC)
            for index, (block_type, payload, length) in enumerate(kept):
                out.write(_block_header(block_type, length, last=index == len(kept) - 1))
                out.write(data[payload:payload + length])
            out.write(data[frames_start:frames_end])
    return Rebuilt(format="flac", media_type="audio/flac", extension=".flac", removed=tuple(removed))


def structure_findings(data) -> list[str]:
    """Only STREAMINFO and SEEKTABLE, "fLaC" at byte 0, frames right after, no tag at either end."""
    findings: list[str] = []
    try:
        blocks, frames_start = read_blocks(data, 0)
    except SanitizeError as e:
        return [f"the copy's FLAC metadata cannot be walked: {e.message}"]
    for block_type, _, _ in blocks:
        if block_type not in KEPT_BLOCKS:
            findings.append(f"FLAC {BLOCK_NAMES.get(block_type, f'block type {block_type}')} block")
    if data[frames_start:frames_start + 2] not in FRAME_SYNCS:
        findings.append("the metadata is not followed by an audio frame")
    trailing: list[str] = []
    try:
        peel_trailing_tags(data, len(data), trailing)
    except SanitizeError as e:
        trailing.append(f"a damaged tag ({e.message})")
    findings += [f"{name} at the end" for name in trailing]
    return findings


def inspect(path: Path) -> list[str]:
    import mutagen.flac

    return inspect_copy(path, structure_findings, mutagen.flac.FLAC)


FORMATS = [
    Format(name="flac", kind="audio", media_type="audio/flac", accept=accept, locate=locate, rebuild=rebuild,
           inspect=inspect, extensions=(".flac",)),
]
