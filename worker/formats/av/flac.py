"""FLAC (native "fLaC" streams): keep STREAMINFO, SEEKTABLE and the frames; drop every other block.

A FLAC file is "fLaC", a chain of metadata blocks (each a 1-byte type with a last-block flag and a
24-bit length), then audio frames to the end. Tags live in VORBIS_COMMENT, cover art (which may
carry its own EXIF GPS) in PICTURE, anything else in APPLICATION and CUESHEET blocks; some taggers
also put an ID3v2 tag in front and ID3v1 or APEv2 behind. The copy is rebuilt block by block: the
frames are copied byte for byte, and SEEKTABLE offsets stay right because they count from the
first frame. FLAC has no standard place for a location, so ``locate`` finds nothing.

The frames are walked, not trusted to run to the end of the file: each frame header is found by
its sync code and checked by its CRC-8 and by its frame (or sample) number following the one
before; the walk stops at the last frame (STREAMINFO's sample count, or the last header in
sequence), whose end is where its CRC-16 closes. Every other frame must close with its CRC-16 exactly where the next one starts
(bytes inserted between two frames would otherwise ride along inside the first). Whatever follows goes, whatever it looks like:
an ID3v2 tag appended without a footer, an HTML page, an APE or ID3v1 tag. The verifier walks the
copy's frames the same way and requires the last one to end at the end of the file.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

from worker.errors import SanitizeError, corrupt, too_large, truncated, unsupported
from worker.formats.av.audio_inspect import (CopyWalk, check_frames_decode, inspect_copy, mapped_file, release,
                                             write_range)
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


# --- the frame walk ----------------------------------------------------------------------------

def _crc8_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return table


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
        table.append(crc)
    return table


CRC8, CRC16 = _crc8_table(), _crc16_table()


# FLAC's CRC-16 polynomial x^16 + x^15 + x^2 + 1 is (x + 1)(x^15 + x + 1). A frame closes with its
# CRC-16 (the CRC over the whole frame, its own CRC included, is 0) exactly when the frame, read as
# one polynomial over GF(2), is divisible by both factors: by x + 1 when it has an even number of set
# bits, and by the trinomial as below. Both are a few big-integer operations over the whole frame
# (C speed), where a table step per byte in Python costs seconds on a long recording.
TRINOMIAL_DEGREE = 15


def _mod_trinomial(value: int) -> int:
    """``value`` (a polynomial over GF(2), bit i the coefficient of x^i) modulo x^15 + x + 1.

    Modulo the trinomial x^15 = x + 1, so x^(15 * 2^k) = (x + 1)^(2^k) = x^(2^k) + 1 (squaring is
    linear over GF(2)): the part above bit 15 * 2^k folds down as itself shifted by 2^k, plus
    itself. Each fold at the largest such point below the top roughly halves the length."""
    while (length := value.bit_length()) > TRINOMIAL_DEGREE:
        k = ((length - 1) // TRINOMIAL_DEGREE).bit_length() - 1      # the largest k with 15 * 2^k < length
        shift = TRINOMIAL_DEGREE << k
        high = value >> shift
        value = (high << (1 << k)) ^ high ^ (value & ((1 << shift) - 1))
    return value


def crc16_closes(frame: bytes) -> bool:
    """Whether FLAC's CRC-16 (polynomial 0x8005, initial 0) of ``frame``, its own CRC included, is 0."""
    value = int.from_bytes(frame, "big")
    return value.bit_count() % 2 == 0 and _mod_trinomial(value) == 0


RELEASE_FRAMES = 1024         # frames walked between two releases of the memory behind
MAX_FRAME = 1 << 22          # a frame never exceeds 65535 samples x 8 channels x 32 bits (2 MiB); with room
FIXED_BLOCK_SIZES = {1: 192, 2: 576, 3: 1152, 4: 2304, 5: 4608, **{c: 256 << (c - 8) for c in range(8, 16)}}
TRAILERS = (b"ID3", b"TAG", b"APETAGEX")
# where a frame header can start: the sync code, then a block size code other than 0 and a sample
# rate code other than 15 (frame_header checks the rest, CRC-8 included)
HEADER_START = re.compile(b"\\xff[\\xf8\\xf9][" + b"".join(re.escape(bytes([c])) for c in range(0x10, 0x100)
                                                if c & 15 != 15) + b"]")     # what usually follows the last frame when anything does


def frame_header(data, pos: int) -> tuple[int, int, int] | None:
    """(header length, coded number, block size) of a valid frame header at ``pos``, else None:
    the sync code, no reserved value, a well-formed coded number and a matching CRC-8."""
    head = bytes(data[pos:pos + 16])
    if len(head) < 6 or head[0] != 0xFF or head[1] & 0xFE != 0xF8:
        return None
    size_code, rate_code = head[2] >> 4, head[2] & 15
    channels, sample_size = head[3] >> 4, (head[3] >> 1) & 7
    if size_code == 0 or rate_code == 15 or channels > 10 or sample_size == 3 or head[3] & 1:
        return None
    first, at = head[4], 5
    extra = next((n for n, mask in enumerate((0x80, 0xE0, 0xF0, 0xF8, 0xFC, 0xFE, 0xFF))
                  if first & mask == (mask << 1) & 0xFF), None)
    if extra is None:
        return None
    number = first & (0x7F >> extra) if extra else first
    for _ in range(extra):
        if at >= len(head) or head[at] & 0xC0 != 0x80:
            return None
        number = number << 6 | head[at] & 0x3F
        at += 1
    if size_code in (6, 7):
        width = size_code - 5
        block = int.from_bytes(head[at:at + width], "big") + 1
        at += width
    else:
        block = FIXED_BLOCK_SIZES[size_code]
    at += {12: 1, 13: 2, 14: 2}.get(rate_code, 0)
    if at >= len(head):
        return None
    crc = 0
    for byte in head[:at]:
        crc = CRC8[crc ^ byte]
    if crc != head[at]:
        return None
    return at + 1, number, block


def _next_header(data, pos: int, end: int, expect: tuple[bool, int] | None) -> tuple[int, int, int] | None:
    """(offset, number, block size) of the first valid header in ``[pos, end)`` that follows the
    previous frame's numbering (``expect``: variable blocking, the number it must carry)."""
    while True:
        found = HEADER_START.search(data, pos, end)
        if found is None:
            return None
        pos = found.start()
        header = frame_header(data, pos)
        if header is not None:
            variable = bool(data[pos + 1] & 1)
            if expect is None or (variable, header[1]) == expect:
                return pos, header[1], header[2]
        pos += 1


def _frame_end(data, start: int, header_len: int) -> int | None:
    """Where the frame at ``start`` ends: a point its CRC-16 (over the whole frame, itself included)
    closes. The end of the file or a known trailer is preferred to an earlier chance match."""
    limit = min(len(data), start + MAX_FRAME)
    crc = 0
    first = None
    block = bytes(data[start:limit])
    for i, byte in enumerate(block):
        crc = ((crc << 8) & 0xFFFF) ^ CRC16[(crc >> 8) ^ byte]
        if crc == 0 and i + 1 >= header_len + 2:
            end = start + i + 1
            if end == len(data) or bytes(data[end:end + 8]).startswith(TRAILERS):
                return end
            first = first or end
    return first


def walk_frames(data, start: int, total_samples: int, max_frame: int = MAX_FRAME) -> tuple[int, int]:
    """(end of the last whole frame, number of frames) of the frames from ``start``; ``corrupt``
    when no frame header starts there, a frame other than the last fails its CRC-16, or the only
    frame does not close. A last frame cut off by the end of the file is left out."""
    header = frame_header(data, start)
    if header is None:
        raise corrupt("the FLAC metadata is not followed by a valid frame header")
    pos, (length, number, block) = start, header
    variable = bool(data[start + 1] & 1)
    samples, frames = (number if variable else number * block) + block, 1
    while not total_samples or samples < total_samples:
        expect = (variable, samples if variable else number + 1)
        # a frame is never longer than MAX_FRAME: the search for the next one stops there
        found = _next_header(data, pos + length, min(len(data), pos + max_frame), expect)
        if found is None:
            break
        if not crc16_closes(bytes(data[pos:found[0]])):
            # damage, or bytes inserted between two frames (which would ride along in the copy)
            raise corrupt(f"the FLAC frame at byte {pos} fails its CRC-16 check")
        pos, number, block = found
        if frames % RELEASE_FRAMES == 0:
            release(data, 0, pos)       # the pages behind the walk: a long recording is not held in memory
        length = frame_header(data, pos)[0]
        samples, frames = samples + block, frames + 1
    end = _frame_end(data, pos, length)
    if end is None:
        if frames == 1:
            raise corrupt(f"the only FLAC frame (at byte {pos}) does not close with its CRC-16")
        # the file was cut inside its last frame: the frame before it closed where this one starts
        return pos, frames - 1
    return end, frames


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


def _total_samples(data, blocks) -> int:
    start = blocks[0][1]
    return struct.unpack(">Q", bytes(data[start + 10:start + 18]))[0] & (2**36 - 1)


def _max_frame(data, blocks) -> int:
    """How far to look for the next frame: twice STREAMINFO's largest frame (encoders round it), or
    MAX_FRAME when it is unknown."""
    start = blocks[0][1]
    largest = int.from_bytes(bytes(data[start + 7:start + 10]), "big")
    return min(2 * largest + 64, MAX_FRAME) if largest else MAX_FRAME


def _duration(data, blocks) -> float | None:
    start = blocks[0][1]
    rate = struct.unpack(">Q", bytes(data[start + 10:start + 18]))[0] >> 44
    total = _total_samples(data, blocks)
    return total / rate if total and rate else None


def _trailer_name(data, end: int) -> str:
    trailing: list[str] = []
    try:
        peel_trailing_tags(data, len(data), trailing)
    except SanitizeError:
        pass
    head = bytes(data[end:end + 3])
    names = trailing + (["ID3v2"] if head == b"ID3" else [])
    return f" ({', '.join(names)})" if names else ""


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
        if frames_start >= len(data):
            raise truncated("the FLAC file has no audio frames")
        frames_end, _ = walk_frames(data, frames_start, _total_samples(data, blocks), _max_frame(data, blocks))
        duration = _duration(data, blocks)
        if frames_end < len(data):
            removed.append(f"{len(data) - frames_end} bytes after the last frame{_trailer_name(data, frames_end)}")
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
            write_range(out, data, frames_start, frames_end)
    check_frames_decode(dst, limits, duration, reader="mutagen.flac")
    return Rebuilt(format="flac", media_type="audio/flac", extension=".flac", removed=tuple(removed))


def walk_copy(data) -> CopyWalk:
    """Only STREAMINFO and SEEKTABLE, "fLaC" at byte 0, frames right after, no tag at either end;
    the duration is STREAMINFO's (None when it gives no sample count)."""
    findings: list[str] = []
    try:
        blocks, frames_start = read_blocks(data, 0)
    except SanitizeError as e:
        return CopyWalk([f"the copy's FLAC metadata cannot be walked: {e.message}"], None)
    for block_type, _, _ in blocks:
        if block_type not in KEPT_BLOCKS:
            findings.append(f"FLAC {BLOCK_NAMES.get(block_type, f'block type {block_type}')} block")
    if not blocks or blocks[0][0] != STREAMINFO or blocks[0][2] != STREAMINFO_SIZE:
        return CopyWalk(findings + ["the copy does not start with a STREAMINFO block"], None)
    duration = _duration(data, blocks)
    try:
        end, _ = walk_frames(data, frames_start, _total_samples(data, blocks), _max_frame(data, blocks))
    except SanitizeError as e:
        return CopyWalk(findings + [f"the copy's frames cannot be walked: {e.message}"], duration)
    if end != len(data):
        findings.append(f"{len(data) - end} bytes after the last frame")
    return CopyWalk(findings, duration)


def inspect(path: Path) -> list[str]:
    import mutagen.flac

    return inspect_copy(path, walk_copy, mutagen.flac.FLAC)


FORMATS = [
    Format(name="flac", kind="audio", media_type="audio/flac", accept=accept, locate=locate, rebuild=rebuild,
           inspect=inspect, extensions=(".flac",)),
]
