"""PNG and APNG: locate in eXIf, "Raw profile" text and XMP; rebuild losslessly by chunk allow-list.

The agency copy is the original's own chunks, copied byte for byte (CRC included) when they are on
DESIGN.md's allow-list: IHDR PLTE tRNS IDAT IEND, the colour chunks, pHYs, bKGD and the APNG
animation chunks, in their original order (so APNG sequence numbers stay valid); iCCP is rebuilt
by ``worker.icc`` under a neutral name. Kept chunks must have their defined length (a longer
bKGD or pHYs is a carrier: dropped). Image data is never decoded, so every frame is bit-identical;
the IDAT stream is inflated once (output discarded) to prove it sound. Text (tEXt, zTXt, iTXt),
eXIf, tIME, private and unknown chunks, and anything after IEND, are dropped.

Budgets set before the work: chunk count, total text inflated (too_large past it), iCCP inflate
size, frames x canvas pixels for APNG.

Orientation: PNG has no orientation field of its own, only EXIF's. When the original displays
rotated (its EXIF, or failing that its XMP, says so, the way Pillow reads it), the copy gets a
minimal Orientation-only eXIf chunk so it displays as the original does. ExifTool then shows only
IFD0:Orientation, which DESIGN.md allows; the verifier checks that eXIf holds nothing more.

``inspect`` is the verifier's walk: a separate, stricter loop that reports anything a clean copy
cannot contain.
"""
from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from worker import icc
from worker.errors import SanitizeError, corrupt, too_large, truncated, unsupported
from worker.exif import MAX_EXIF_BYTES, describe_exif, has_orientation, locate_in_exif, orientation_of, orientation_only_exif, \
    orientation_only_findings, tiff_body
from worker.formats.base import Format, Limits, Rebuilt
from worker.formats.photo import animation_pixel_budget, file_bytes, once_per_file, reencode, release_read
from worker.location import Found, choose
from worker.xmp import MAX_XMP_BYTES, locate_in_xmp

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CHUNK = 2**31 - 1                    # the PNG spec's own bound on a chunk length
MAX_TEXT_BYTES = 16 * 1024 * 1024        # cap on a decompressed text chunk, as Pillow's MAX_TEXT_CHUNK

# Chunks needed to show the picture (a bad CRC in one of these makes the file corrupt).
IMAGE_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"acTL", b"fcTL", b"fdAT"})
# Rendering hints: kept when intact, dropped (and noted) when their CRC is bad.
COLOUR_CHUNKS = frozenset({b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"bKGD"})
ALLOWED = IMAGE_CHUNKS | COLOUR_CHUNKS | {b"eXIf"}   # eXIf only as a minimal Orientation EXIF
TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
MAX_CHUNKS = 200_000                     # budget on the chunk walk, set before it starts
MAX_METADATA_BYTES = 32 * 1024 * 1024    # budget on all text a PNG may make us inflate and read
# fixed lengths of kept chunks (PNG spec); a longer chunk is a carrier, not a hint
FIXED_LENGTHS = {b"IHDR": (13,), b"gAMA": (4,), b"cHRM": (32,), b"sRGB": (1,), b"pHYs": (9,), b"sBIT": (1, 2, 3, 4),
                 b"bKGD": (1, 2, 6), b"acTL": (8,), b"fcTL": (26,)}

XMP_KEYWORD = b"XML:com.adobe.xmp"
RAW_PROFILE_PREFIX = b"Raw profile type "
APP1_EXIF_ID = b"Exif\x00\x00"
APP1_XMP_ID = b"http://ns.adobe.com/xap/1.0/\x00"
ICC_PROFILE_NAME = b"ICC Profile"        # the iCCP name is free text: replaced by a neutral one
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')   # what Pillow's getexif() reads


@dataclass(frozen=True)
class PngChunk:
    type: bytes
    start: int          # offset of the length field
    end: int            # offset after the CRC
    data: bytes
    crc_ok: bool


@dataclass(frozen=True)
class Walk:
    chunks: tuple[PngChunk, ...]
    trailer: bytes      # everything after IEND


def accept(head: bytes) -> bool:
    return head.startswith(SIGNATURE)


def walk(data: bytes) -> Walk:
    """Every chunk up to IEND, each length checked against what remains; SanitizeError otherwise."""
    if not data.startswith(SIGNATURE):
        raise corrupt("not a PNG: no signature")
    chunks: list[PngChunk] = []
    pos = len(SIGNATURE)
    while True:
        if len(chunks) > MAX_CHUNKS:
            raise too_large(f"over {MAX_CHUNKS} PNG chunks")
        if len(data) - pos < 12:
            raise truncated(f"the PNG ends at offset {pos} before its IEND chunk")
        length, chunk_type = struct.unpack(">I4s", data[pos:pos + 8])
        if length > MAX_CHUNK:
            raise corrupt(f"PNG chunk at offset {pos} declares {length} bytes, over the PNG limit")
        if not chunk_type.isalpha():
            raise corrupt(f"PNG chunk at offset {pos} has an invalid type {chunk_type!r}")
        end = pos + 12 + length
        if end > len(data):
            raise truncated(f"PNG chunk {chunk_type.decode('latin-1')} at offset {pos} runs past the end of the file")
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4:end])
        crc_ok = zlib.crc32(chunk_type + body) == crc
        if not crc_ok and chunk_type in IMAGE_CHUNKS:
            raise corrupt(f"PNG chunk {chunk_type.decode('latin-1')} at offset {pos} fails its CRC")
        chunks.append(PngChunk(chunk_type, pos, end, body, crc_ok))
        pos = end
        if chunk_type == b"IEND":
            return Walk(tuple(chunks), data[pos:])


def _check(result: Walk, limits: Limits) -> None:
    """Structure and limits before anything is decoded or copied."""
    first = result.chunks[0]
    if first.type == b"CgBI":
        raise unsupported("Apple's CgBI PNG variant is not a standard PNG")
    if first.type != b"IHDR" or len(first.data) != 13:
        raise corrupt("the PNG does not start with a 13-byte IHDR chunk")
    width, height = struct.unpack(">II", first.data[:8])
    if not width or not height:
        raise corrupt(f"the PNG declares {width}x{height} pixels")
    if width * height > limits.max_pixels:
        raise too_large(f"{width}x{height} pixels is over the limit of {limits.max_pixels}")
    if not any(c.type == b"IDAT" for c in result.chunks):
        raise corrupt("the PNG has no image data (IDAT)")
    actl = next((c for c in result.chunks if c.type == b"acTL"), None)
    if actl is not None:
        if len(actl.data) != 8:
            raise corrupt("the APNG acTL chunk is not 8 bytes")
        (frames,) = struct.unpack(">I", actl.data[:4])
        if frames > limits.max_frames:
            raise too_large(f"{frames} frames is over the limit of {limits.max_frames}")
        if frames * width * height > animation_pixel_budget(limits):
            raise too_large(f"{frames} frames of {width}x{height} is over the animation budget of "
                            f"{animation_pixel_budget(limits)} pixels")
    sequence, frame_has_data = 0, True
    for c in result.chunks:
        if c.type in (b"fcTL", b"fdAT"):   # APNG sequence numbers run 0, 1, 2, ... over both
            if len(c.data) < 4 or struct.unpack(">I", c.data[:4])[0] != sequence:
                raise corrupt(f"the APNG {c.type.decode()} chunk breaks the frame sequence at {sequence}")
            sequence += 1
        if c.type == b"fcTL":
            if not frame_has_data:
                raise corrupt("an APNG frame has no image data")
            frame_has_data = False
        elif c.type in (b"IDAT", b"fdAT"):
            frame_has_data = True
    if not frame_has_data:
        raise corrupt("the last APNG frame has no image data")
    for c in result.chunks:
        lengths = FIXED_LENGTHS.get(c.type)
        if lengths and len(c.data) not in lengths and c.type in IMAGE_CHUNKS:
            raise corrupt(f"the PNG {c.type.decode()} chunk is {len(c.data)} bytes, not {lengths[0]}")
        if c.type == b"fcTL" and len(c.data) == 26:
            w, h, x, y = struct.unpack(">IIII", c.data[4:20])
            if not w or not h or x + w > width or y + h > height:
                raise corrupt(f"an APNG frame of {w}x{h} at {x},{y} lies outside the {width}x{height} canvas")
        if c.type == b"PLTE" and (len(c.data) % 3 or len(c.data) > 768):
            raise corrupt(f"the PNG palette is {len(c.data)} bytes")
        if c.type == b"tRNS":
            colour = first.data[9]
            allowed = {0: 2, 2: 6, 3: 256}.get(colour, -1)
            if (colour == 3 and len(c.data) > allowed) or (colour != 3 and len(c.data) != allowed):
                raise corrupt(f"the PNG tRNS chunk is {len(c.data)} bytes for colour type {colour}")


def _read(path: Path, limits: Limits) -> tuple[bytes, Walk, "Embedded"]:
    """The file, its checked walk and its embedded metadata, once per file: locate and rebuild share them."""
    def read(p: Path) -> tuple[bytes, Walk, Embedded]:
        data = file_bytes(p)
        result = walk(data)
        _check(result, limits)
        return data, result, embedded(result.chunks)
    read.__qualname__ = f"png.read:{limits!r}"
    return once_per_file(path, read)


CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}   # IHDR colour type -> samples per pixel


def check_image_data(result: Walk) -> None:
    """Inflate the IDAT stream (C speed, output discarded in 1 MiB steps) within the size IHDR allows.

    A copy carries IDAT byte for byte, so a stream that does not inflate (valid CRCs around broken
    data) must be refused here, before the rebuild, not published as an identical broken copy.
    """
    width, height, depth, colour = struct.unpack(">IIBB", result.chunks[0].data[:10])
    if colour not in CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise corrupt(f"the PNG declares colour type {colour} at depth {depth}")
    row = 1 + (width * CHANNELS[colour] * depth + 7) // 8
    bound = 2 * height * row + 4096          # Adam7 interlacing adds a filter byte per pass row
    inflater, produced, after_end = zlib.decompressobj(), 0, False
    try:
        for c in result.chunks:
            if c.type != b"IDAT":
                continue
            if inflater.eof:
                after_end = after_end or bool(c.data)
                continue
            pending = c.data
            while pending and not inflater.eof:
                produced += len(inflater.decompress(pending, 1 << 20))
                pending = inflater.unconsumed_tail
                if produced > bound:
                    raise corrupt(f"the PNG image data inflates past the {bound} bytes its header allows")
    except zlib.error as e:
        raise corrupt(f"the PNG image data does not inflate: {e}") from None
    if not inflater.eof:
        raise truncated("the PNG image data stream ends early")
    if inflater.unused_data or after_end:
        raise corrupt("the PNG image data holds bytes after its compressed stream")


def _inflate(compressed: bytes, cap: int) -> bytes | None:
    """Decompress at most ``cap`` bytes; None when the stream is broken or would exceed the cap."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(compressed, cap)
    except zlib.error:
        return None
    return None if inflater.unconsumed_tail else out


def text_of(chunk: PngChunk, cap: int = MAX_TEXT_BYTES) -> tuple[bytes, bytes | None]:
    """(keyword, text bytes) of a tEXt/zTXt/iTXt chunk; text None when unreadable, too_large over ``cap``."""
    keyword, sep, rest = chunk.data.partition(b"\x00")
    if not sep:
        return keyword[:79], None
    if chunk.type == b"tEXt":
        return keyword, rest[:cap]
    if chunk.type == b"zTXt":
        return keyword, _inflate_capped(rest[1:], cap) if rest[:1] == b"\x00" else None
    if len(rest) < 2:
        return keyword, None
    compressed, method, rest = rest[0], rest[1], rest[2:]
    _language, _, rest = rest.partition(b"\x00")
    _translated, _, text = rest.partition(b"\x00")
    if not compressed:
        return keyword, text[:cap]
    return keyword, _inflate_capped(text, cap) if method == 0 else None


def _inflate_capped(compressed: bytes, cap: int) -> bytes | None:
    """Decompress, refusing (too_large) a stream that inflates past ``cap``: a budget, not a cut."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(compressed, cap)
    except zlib.error:
        return None
    if inflater.unconsumed_tail:
        raise too_large(f"a PNG text chunk inflates past {cap} bytes")
    return out


def raw_profile(text: bytes) -> bytes | None:
    """Decode ImageMagick's "Raw profile type X" text: "\\nname\\n   length\\nhex..."; None when junk."""
    lines = text.split(b"\n")
    if len(lines) < 4:
        return None
    try:
        declared = int(lines[2].strip())
        blob = bytes.fromhex(b"".join(lines[3:]).decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    return blob[:declared] if 0 <= declared <= len(blob) else blob


@dataclass(frozen=True)
class Embedded:
    """The EXIF and XMP blobs a PNG carries, wherever they sit."""

    exif: tuple[bytes, ...]     # eXIf first, then raw-profile EXIF (Pillow's order of preference)
    xmp: tuple[bytes, ...]


def embedded(chunks: tuple[PngChunk, ...]) -> Embedded:
    """Every EXIF and XMP blob, within ``MAX_METADATA_BYTES`` read and inflated in all: past that,
    too_large (600 zTXt chunks each inflating to 4 MiB are refused, not read)."""
    exif, raw_exif, xmp = [], [], []
    budget = MAX_METADATA_BYTES
    for c in chunks:
        if c.type == b"eXIf":
            exif.append(c.data[:MAX_EXIF_BYTES])
        if c.type not in TEXT_CHUNKS:
            continue
        keyword, text = text_of(c, min(budget, MAX_TEXT_BYTES))
        if text is None:
            continue
        budget -= max(len(text), len(c.data))
        if budget <= 0:
            raise too_large(f"the PNG's text chunks hold over {MAX_METADATA_BYTES} bytes of metadata")
        if keyword == XMP_KEYWORD:
            xmp.append(text[:MAX_XMP_BYTES])
        elif keyword.startswith(RAW_PROFILE_PREFIX):
            blob = raw_profile(text)
            kind = keyword[len(RAW_PROFILE_PREFIX):].lower()
            if blob is None:
                continue
            if kind in (b"exif", b"app1") and tiff_body(blob) is not None:
                raw_exif.append(blob)
            elif kind == b"app1" and blob.startswith(APP1_XMP_ID):
                xmp.append(blob[len(APP1_XMP_ID):])
            elif kind == b"xmp":
                xmp.append(blob)
        elif keyword.lower() == b"exif" and tiff_body(text) is not None:
            raw_exif.append(text)   # some writers put the EXIF blob itself in a text chunk
    return Embedded(exif=tuple(exif + raw_exif), xmp=tuple(xmp))


def locate(path: Path, limits: Limits) -> Found:
    try:
        _data, _walk, found = _read(path, limits)
    except SanitizeError as e:
        if e.code == "too_large":
            raise
        return Found(notes=(f"png: damaged file, metadata not read ({e.message})",))
    return choose([locate_in_exif(blob) for blob in found.exif] + [locate_in_xmp(packet) for packet in found.xmp])


def _has_orientation_tag(blob: bytes) -> bool:
    """Whether IFD0 holds an Orientation tag at all (orientation_of cannot tell "1" from "absent")."""
    body = tiff_body(blob)
    return body is not None and has_orientation(body[:MAX_EXIF_BYTES])


def display_orientation(exif: bytes | None, xmp: bytes | None) -> int:
    """The orientation the picture is shown with, as Pillow reads it: EXIF's, else XMP tiff:Orientation."""
    if exif is not None and _has_orientation_tag(exif):
        return orientation_of(exif)
    if xmp:
        match = _XMP_ORIENTATION.search(xmp[:MAX_XMP_BYTES])
        if match and 1 <= int(match[2]) <= 8:
            return int(match[2])
    return 1


def _chunk_bytes(chunk_type: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + chunk_type + body + struct.pack(">I", zlib.crc32(chunk_type + body))


def _iccp(chunk: PngChunk) -> bytes | None:
    """iCCP with a neutral name and the profile rebuilt by ``worker.icc``; None when unreadable.

    The declared inflate size is a budget: a profile inflating past ``icc.MAX_PROFILE_BYTES`` is
    refused (too_large) before anything is allocated for it."""
    _name, sep, rest = chunk.data.partition(b"\x00")
    if not sep or len(_name) > 79:
        raise corrupt("the PNG iCCP chunk has no profile name terminator")
    if rest[:1] != b"\x00":
        return None
    inflater = zlib.decompressobj()
    try:
        profile = inflater.decompress(rest[1:], icc.MAX_PROFILE_BYTES)
    except zlib.error:
        return None
    if inflater.unconsumed_tail:
        raise too_large(f"the PNG iCCP profile inflates past {icc.MAX_PROFILE_BYTES} bytes")
    clean = icc.clean(profile)
    if clean is None:
        return None
    return _chunk_bytes(b"iCCP", ICC_PROFILE_NAME + b"\x00\x00" + zlib.compress(clean, 9))


def describe(chunk: PngChunk) -> str:
    """A human name for a dropped chunk."""
    name = chunk.type.decode("latin-1")
    if chunk.type in TEXT_CHUNKS:
        keyword = chunk.data.partition(b"\x00")[0][:79].decode("latin-1", "replace")
        return f"{name} {keyword}"
    if chunk.type == b"eXIf":
        return f"eXIf ({describe_exif(chunk.data)})"
    if chunk.type in COLOUR_CHUNKS:
        return f"{name} (bad CRC)"
    if chunk.type == b"tIME":
        return "tIME"
    return f"{'private' if chunk.type[1:2].islower() else 'unknown'} chunk {name}"


def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
    try:
        data, result, blobs = _read(src, limits)
        release_read()
        check_image_data(result)
    except SanitizeError as e:
        return reencode.salvage(src, dst, limits, e)
    orientation = display_orientation(blobs.exif[0] if blobs.exif else None, blobs.xmp[0] if blobs.xmp else None)
    out, removed = [SIGNATURE], []
    for c in result.chunks:
        if c.type == b"IDAT" and orientation != 1:
            # eXIf must come before the first IDAT
            out.append(_chunk_bytes(b"eXIf", orientation_only_exif(orientation)))
            orientation = 1
        if c.type in IMAGE_CHUNKS:
            out.append(data[c.start:c.end])
        elif c.type == b"iCCP" and c.crc_ok:
            profile = _iccp(c)
            if profile is None:
                removed.append("iCCP (profile unreadable or not reproducible without its text)")
            else:
                out.append(profile)
        elif c.type in COLOUR_CHUNKS and c.crc_ok:
            lengths = FIXED_LENGTHS.get(c.type)
            if lengths and len(c.data) not in lengths:
                removed.append(f"{c.type.decode()} of the wrong length ({len(c.data)} bytes)")
            else:
                out.append(data[c.start:c.end])
        else:
            removed.append(describe(c))
    if result.trailer:
        removed.append(f"data after IEND ({len(result.trailer)} bytes)")
    with open(dst, "wb") as f:
        f.write(b"".join(out))
    return Rebuilt(format="png", media_type="image/png", extension=".png", removed=tuple(dict.fromkeys(removed)))


def inspect(path: Path) -> list[str]:
    """Findings in a copy: chunks off the allow-list, an eXIf with more than Orientation, CRC errors,
    a missing IEND or data after it, an iCCP with a name other than the neutral one."""
    data = file_bytes(path)   # the bytes the verifier's proof reads too: one read of the copy
    if not data.startswith(SIGNATURE):
        return ["no PNG signature"]
    findings: list[str] = []
    pos, seen, first = len(SIGNATURE), [], True
    while True:
        if pos + 12 > len(data):
            findings.append(f"no IEND: the chunk walk stops at offset {pos}")
            break
        length, chunk_type = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            findings.append(f"chunk {chunk_type!r} at offset {pos} runs past the end")
            break
        body = data[pos + 8:end - 4]
        if zlib.crc32(chunk_type + body) != struct.unpack(">I", data[end - 4:end])[0]:
            findings.append(f"chunk {chunk_type!r} at offset {pos} fails its CRC")
        if first and chunk_type != b"IHDR":
            findings.append("the first chunk is not IHDR")
        first = False
        if chunk_type not in ALLOWED:
            findings.append(f"chunk {chunk_type.decode('latin-1', 'replace')} is not on the allow-list")
        elif chunk_type == b"eXIf":
            findings += orientation_only_findings(body)
        elif chunk_type == b"iCCP":
            if not body.startswith(ICC_PROFILE_NAME + b"\x00\x00"):
                findings.append("iCCP with a profile name other than the neutral one")
            else:
                profile = _inflate(body[len(ICC_PROFILE_NAME) + 2:], icc.MAX_PROFILE_BYTES)
                findings += icc.findings(profile) if profile is not None else ["iCCP that does not inflate"]
        elif chunk_type in FIXED_LENGTHS and len(body) not in FIXED_LENGTHS[chunk_type]:
            findings.append(f"chunk {chunk_type.decode('latin-1')} of {len(body)} bytes")
        seen.append(chunk_type)
        pos = end
        if chunk_type == b"IEND":
            if pos != len(data):
                findings.append(f"{len(data) - pos} bytes after IEND")
            break
    if seen.count(b"eXIf") > 1:
        findings.append(f"{seen.count(b'eXIf')} eXIf chunks")
    if b"IDAT" not in seen:
        findings.append("no image data (IDAT)")
    return findings


FORMATS = [Format(name="png", kind="photo", media_type="image/png", accept=accept, locate=locate,
                  rebuild=rebuild, inspect=inspect, extensions=(".png", ".apng"))]
