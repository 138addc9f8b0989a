"""WebP (lossy, lossless, alpha, animated): locate in the EXIF and XMP chunks; rebuild by chunk allow-list.

The agency copy is a new RIFF of the original's own VP8X, ICCP, ANIM, ANMF, ALPH, VP8 and VP8L
chunks, payloads copied byte for byte, so every frame decodes bit-identically. Inside each ANMF
frame only ALPH, VP8 and VP8L are kept. EXIF, XMP and unknown chunks, and anything past the RIFF
size, are dropped; the VP8X flags are recomputed from what is kept and the RIFF size is exact.
ICCP is rebuilt by ``worker.icc``; ANIM is cut to its 6 defined bytes; frames must lie inside the
canvas and frames x canvas pixels are budgeted; the bitstreams are decoded once from the input
(within ``reencode.DECODE_CHECK_PIXELS``) because the copy carries them byte for byte.

Orientation: WebP has none of its own, only EXIF's. When the original displays rotated (its EXIF,
or failing that its XMP, says so, as Pillow reads it), the copy keeps a minimal Orientation-only
EXIF chunk, with the VP8X EXIF flag, so it displays as the original does. A simple (non-VP8X) file
cannot carry EXIF or XMP, so it never needs one.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from worker import icc
from worker.errors import SanitizeError, corrupt, too_large, truncated
from worker.exif import describe_exif, locate_in_exif, orientation_only_exif, orientation_only_findings
from worker.formats.base import Format, Limits, Rebuilt
from worker.formats.photo import animation_pixel_budget, file_bytes, once_per_file, reencode, release_read
from worker.formats.walkers.iff import Chunk, chunk, iter_chunks
from worker.formats.photo.png import display_orientation
from worker.location import Found, choose
from worker.xmp import locate_in_xmp

RIFF_HEADER = 12                 # "RIFF", size, "WEBP"
ANMF_HEADER = 16                 # frame position, size, duration, flags before the frame's chunks

FLAG_ICC, FLAG_ALPHA, FLAG_EXIF, FLAG_XMP, FLAG_ANIMATION = 0x20, 0x10, 0x08, 0x04, 0x02
BITSTREAMS = (b"VP8 ", b"VP8L")
TOP_LEVEL = frozenset({b"VP8X", b"ICCP", b"ANIM", b"ANMF", b"ALPH", b"VP8 ", b"VP8L"})
FRAME_CHUNKS = frozenset({b"ALPH", b"VP8 ", b"VP8L"})
EXIF_PREFIX = b"Exif\x00\x00"
ANIM_PAYLOAD = 6                 # background colour and loop count: all ANIM defines
MAX_CHUNKS = 100_000


@dataclass(frozen=True)
class Walk:
    data: bytes
    chunks: tuple[Chunk, ...]
    trailer: int                 # bytes after the RIFF's declared end

    def payload(self, c: Chunk) -> bytes:
        return self.data[c.data_offset:c.data_offset + c.size]


def accept(head: bytes) -> bool:
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def walk(data: bytes) -> Walk:
    if len(data) < RIFF_HEADER or not accept(data):
        raise corrupt("not a WebP: no RIFF WEBP header")
    (riff_size,) = struct.unpack("<I", data[4:8])
    end = 8 + riff_size
    if end > len(data):
        raise truncated(f"the WebP declares {riff_size} bytes of RIFF, only {len(data) - 8} are present")
    if riff_size < 4:
        raise corrupt(f"the WebP RIFF size {riff_size} is too small")
    chunks = []
    for c in iter_chunks(data, RIFF_HEADER, end):
        chunks.append(c)
        if len(chunks) > MAX_CHUNKS:
            raise too_large(f"over {MAX_CHUNKS} WebP chunks")
    chunks = tuple(chunks)
    if not chunks:
        raise corrupt("the WebP holds no chunks")
    return Walk(data, chunks, len(data) - end)


def _vp8x(w: Walk) -> Chunk | None:
    first = w.chunks[0]
    if first.id != b"VP8X":
        return None
    if first.size < 10:
        raise corrupt("the WebP VP8X chunk is shorter than 10 bytes")
    return first


def canvas_size(w: Walk) -> tuple[int, int]:
    """(width, height) from VP8X, or the VP8/VP8L bitstream header of a simple file."""
    vp8x = _vp8x(w)
    if vp8x is not None:
        p = w.payload(vp8x)
        return int.from_bytes(p[4:7], "little") + 1, int.from_bytes(p[7:10], "little") + 1
    first = w.chunks[0]
    p = w.payload(first)
    if first.id == b"VP8 " and len(p) >= 10 and p[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", p[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if first.id == b"VP8L" and len(p) >= 5 and p[0] == 0x2F:
        bits = int.from_bytes(p[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise corrupt(f"the WebP starts with {first.id!r}, not a VP8X, VP8 or VP8L chunk with a valid header")


def _check(w: Walk, limits: Limits) -> None:
    width, height = canvas_size(w)
    if width * height > limits.max_pixels:
        raise too_large(f"{width}x{height} pixels is over the limit of {limits.max_pixels}")
    frames = sum(1 for c in w.chunks if c.id == b"ANMF")
    if frames > limits.max_frames:
        raise too_large(f"{frames} frames is over the limit of {limits.max_frames}")
    if frames * width * height > animation_pixel_budget(limits):
        raise too_large(f"{frames} frames of {width}x{height} is over the animation budget of "
                        f"{animation_pixel_budget(limits)} pixels")
    for c in w.chunks:
        if c.id == b"ANIM" and c.size < ANIM_PAYLOAD:
            raise corrupt(f"the WebP ANIM chunk is {c.size} bytes")
        if c.id == b"ANMF":
            p = w.payload(c)[:ANMF_HEADER]
            if len(p) < ANMF_HEADER:
                raise corrupt("a WebP ANMF chunk is shorter than its header")
            x, y = 2 * int.from_bytes(p[0:3], "little"), 2 * int.from_bytes(p[3:6], "little")
            fw, fh = int.from_bytes(p[6:9], "little") + 1, int.from_bytes(p[9:12], "little") + 1
            if x + fw > width or y + fh > height:
                raise corrupt(f"a WebP frame of {fw}x{fh} at {x},{y} lies outside the {width}x{height} canvas")
    if not frames and not any(c.id in BITSTREAMS for c in w.chunks):
        raise corrupt("the WebP has no image data (VP8, VP8L or ANMF)")


def _read(path: Path, limits: Limits) -> Walk:
    """The checked walk (holding the file), once per file: locate and rebuild share it."""
    def read(p: Path) -> Walk:
        w = walk(file_bytes(p))
        _check(w, limits)
        return w
    read.__qualname__ = f"webp.read:{limits!r}"
    return once_per_file(path, read)


def locate(path: Path, limits: Limits) -> Found:
    try:
        w = _read(path, limits)
    except SanitizeError as e:
        if e.code == "too_large":
            raise
        return Found(notes=(f"webp: damaged file, metadata not read ({e.message})",))
    readings = [locate_in_exif(w.payload(c)) for c in w.chunks if c.id == b"EXIF"]
    readings += [locate_in_xmp(w.payload(c)) for c in w.chunks if c.id == b"XMP "]
    return choose(readings)


def _frame(w: Walk, c: Chunk, removed: list[str]) -> bytes:
    """An ANMF payload with only its header and image chunks."""
    p = w.payload(c)
    if len(p) < ANMF_HEADER:
        raise corrupt("a WebP ANMF chunk is shorter than its header")
    kept = [p[:ANMF_HEADER]]
    for inner in iter_chunks(w.data, c.data_offset + ANMF_HEADER, c.data_offset + c.size):
        if inner.id in FRAME_CHUNKS:
            kept.append(chunk(inner.id, w.payload(inner)))
        else:
            removed.append(f"{inner.id.decode('latin-1').strip()} chunk in an animation frame")
    return b"".join(kept)


def describe(w: Walk, c: Chunk) -> str:
    name = c.id.decode("latin-1").strip()
    if c.id == b"EXIF":
        blob = w.payload(c)
        return f"EXIF ({describe_exif(blob[len(EXIF_PREFIX):] if blob.startswith(EXIF_PREFIX) else blob)})"
    if c.id == b"XMP ":
        return "XMP"
    return f"unknown chunk {name}"


def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
    try:
        w = _read(src, limits)
        width, height = canvas_size(w)
        release_read()
        frames = max(1, sum(1 for c in w.chunks if c.id == b"ANMF"))
        reencode.check_decodes(src, frames, width, height, "WebP")   # a copy is byte-identical: it must be sound
    except SanitizeError as e:
        return reencode.salvage(src, dst, limits, e)
    vp8x = _vp8x(w)
    exif = next((w.payload(c) for c in w.chunks if c.id == b"EXIF"), None)
    xmp = next((w.payload(c) for c in w.chunks if c.id == b"XMP "), None)
    orientation = display_orientation(exif, xmp) if vp8x is not None else 1
    body, removed = [], []
    has_icc = False
    for c in w.chunks:
        if c.id == b"VP8X":
            if c is not vp8x:
                raise corrupt("the WebP has a second VP8X chunk")
            continue   # rewritten below, once what is kept is known
        if c.id == b"ANMF":
            body.append(chunk(b"ANMF", _frame(w, c, removed)))
        elif c.id == b"ICCP":
            profile = icc.clean(w.payload(c)) if not has_icc else None
            if profile is None:
                removed.append("ICCP (profile repeated, unreadable or not reproducible without its text)")
            else:
                body.append(chunk(b"ICCP", profile))
                has_icc = True
        elif c.id == b"ANIM":
            body.append(chunk(b"ANIM", w.payload(c)[:ANIM_PAYLOAD]))
            if c.size > ANIM_PAYLOAD:
                removed.append(f"ANIM slack ({c.size - ANIM_PAYLOAD} bytes)")
        elif c.id in TOP_LEVEL:
            body.append(chunk(c.id, w.payload(c)))
        else:
            removed.append(describe(w, c))
    if orientation != 1:
        body.append(chunk(b"EXIF", orientation_only_exif(orientation)))
    if vp8x is not None:
        p = w.payload(vp8x)
        flags = p[0] & (FLAG_ALPHA | FLAG_ANIMATION)
        if has_icc:
            flags |= FLAG_ICC
        if orientation != 1:
            flags |= FLAG_EXIF
        # reserved bits and bytes are zeroed: nothing may hide there
        body.insert(0, chunk(b"VP8X", bytes([flags, 0, 0, 0]) + p[4:10]))
    if w.trailer:
        removed.append(f"data after the RIFF end ({w.trailer} bytes)")
    payload = b"WEBP" + b"".join(body)
    with open(dst, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(payload)) + payload)
    return Rebuilt(format="webp", media_type="image/webp", extension=".webp", removed=tuple(dict.fromkeys(removed)))


def inspect(path: Path) -> list[str]:
    """Findings in a copy: chunks off the allow-list (top level and inside frames), an EXIF that is
    more than Orientation, VP8X flags that disagree with the chunks, a RIFF size not the file's."""
    data = file_bytes(path)   # the bytes the verifier's proof reads too: one read of the copy
    if len(data) < RIFF_HEADER or not accept(data):
        return ["no RIFF WEBP header"]
    findings: list[str] = []
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size != len(data) - 8:
        findings.append(f"RIFF size {riff_size} is not the file size - 8 ({len(data) - 8})")
    try:
        chunks = list(iter_chunks(data, RIFF_HEADER, min(len(data), 8 + riff_size)))
        ids = [c.id for c in chunks]
        for c in chunks:
            payload = data[c.data_offset:c.data_offset + c.size]
            if c.id not in TOP_LEVEL | {b"EXIF"}:
                findings.append(f"chunk {c.id!r} is not on the allow-list")
            elif c.id == b"EXIF":
                findings += orientation_only_findings(payload)
            elif c.id == b"ICCP":
                findings += icc.findings(payload)
            elif c.id == b"ANIM" and c.size != ANIM_PAYLOAD:
                findings.append(f"ANIM chunk of {c.size} bytes")
            elif c.id == b"ANMF":
                inner = iter_chunks(data, c.data_offset + ANMF_HEADER, c.data_offset + c.size)
                findings += [f"chunk {i.id!r} inside an animation frame" for i in inner if i.id not in FRAME_CHUNKS]
    except SanitizeError as e:
        return findings + [f"the chunk walk fails: {e.message}"]
    if ids.count(b"EXIF") > 1:
        findings.append(f"{ids.count(b'EXIF')} EXIF chunks")
    if b"VP8X" in ids:
        if ids[0] != b"VP8X" or ids.count(b"VP8X") > 1:
            findings.append("VP8X is not the one first chunk")
        vp8x = chunks[ids.index(b"VP8X")]
        flags = data[vp8x.data_offset] if vp8x.size else 0
        for flag, name, present in ((FLAG_ICC, "ICC", b"ICCP" in ids), (FLAG_EXIF, "EXIF", b"EXIF" in ids),
                                    (FLAG_XMP, "XMP", False), (FLAG_ANIMATION, "animation", b"ANIM" in ids)):
            if bool(flags & flag) != present:
                findings.append(f"VP8X {name} flag is {'set' if flags & flag else 'clear'} "
                                f"but the chunk is {'present' if present else 'absent'}")
        if flags & 0xC1 or data[vp8x.data_offset + 1:vp8x.data_offset + 4].strip(b"\x00"):
            findings.append("VP8X reserved bits are set")
    elif any(i in ids for i in (b"EXIF", b"ICCP", b"ANIM", b"ANMF", b"ALPH")):
        findings.append("extended chunks without a VP8X chunk")
    return findings


FORMATS = [Format(name="webp", kind="photo", media_type="image/webp", accept=accept, locate=locate,
                  rebuild=rebuild, inspect=inspect, extensions=(".webp",))]
