"""JPEG (JFIF, Exif, MPO, motion photos): locate by EXIF then XMP, rebuild losslessly by allow-list.

The agency copy is the original's own segments, copied byte for byte where they are on DESIGN.md's
allow-list: SOI, APP0 JFIF (rewritten without its thumbnail), APP2 ICC_PROFILE (every chunk, in
order), APP14 Adobe (rewritten to its 12 defined bytes), the tables, frame and scan headers with
their entropy-coded data, EOI. Scans are never decoded, so pixels are bit-identical. When the
original is rotated by EXIF Orientation, a minimal Orientation-only EXIF goes in after APP0 so the
copy displays as the original does. Everything else, and anything after EOI, is dropped.

``inspect`` is the verifier's walk: a separate, stricter loop that reports anything a clean copy
cannot contain.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from worker.errors import corrupt, too_large, truncated
from worker.exif import describe_exif, locate_in_exif, orientation_of, orientation_only_exif, orientation_only_findings
from worker.formats.base import Format, Limits, Rebuilt
from worker.location import Found, choose
from worker.xmp import MAX_XMP_BYTES, locate_in_xmp

SOI, EOI, SOS, COM = 0xD8, 0xD9, 0xDA, 0xFE
APP0, APP1, APP2, APP13, APP14 = 0xE0, 0xE1, 0xE2, 0xED, 0xEE
DQT, DHT, DRI, DAC = 0xDB, 0xC4, 0xDD, 0xCC
SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
TABLE_MARKERS = frozenset({DQT, DHT, DRI, DAC})
STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})   # TEM, RST0..7: no length field

EXIF_ID = b"Exif\x00\x00"
XMP_ID = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_EXTENSION_ID = b"http://ns.adobe.com/xmp/extension/\x00"
ICC_ID = b"ICC_PROFILE\x00"
JFIF_ID = b"JFIF\x00"
ADOBE_ID = b"Adobe"
JFIF_PAYLOAD = 14      # identifier, version, units, densities, a 0x0 thumbnail
ADOBE_PAYLOAD = 12     # identifier, version, flags0, flags1, transform


@dataclass(frozen=True)
class Segment:
    marker: int
    start: int          # offset of the 0xFF of the marker
    end: int            # offset after the segment (after the entropy-coded data for SOS)
    payload: bytes      # the bytes after the length field (empty for standalone markers)


@dataclass(frozen=True)
class Walk:
    segments: tuple[Segment, ...]
    trailer: bytes      # everything after EOI


def accept(head: bytes) -> bool:
    return head[:3] == b"\xff\xd8\xff"


def entropy_end(data: bytes, pos: int) -> int:
    """Offset of the marker that ends the entropy-coded data starting at ``pos``.

    Inside a scan 0xFF is followed by 0x00 (stuffing) or an RST marker; 0xFF 0xFF is fill before a
    marker. Any other 0xFF xx is the next segment.
    """
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            raise truncated("the JPEG ends inside its image data (no EOI)")
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            pos += 2
        elif following == 0xFF:
            pos += 1
        else:
            return pos


def walk(data: bytes) -> Walk:
    """Every top-level segment up to EOI, bounded by the data; SanitizeError when it cannot be walked."""
    if data[:2] != b"\xff\xd8":
        raise corrupt("not a JPEG: no SOI marker")
    segments = [Segment(SOI, 0, 2, b"")]
    pos = 2
    while True:
        if pos >= len(data):
            raise truncated("the JPEG ends before its EOI marker")
        if data[pos] != 0xFF:
            raise corrupt(f"expected a JPEG marker at offset {pos}, found byte {data[pos]:#04x}")
        while pos + 1 < len(data) and data[pos + 1] == 0xFF:   # fill bytes before a marker
            pos += 1
        if pos + 1 >= len(data):
            raise truncated("the JPEG ends inside a marker")
        marker = data[pos + 1]
        if marker == EOI:
            segments.append(Segment(EOI, pos, pos + 2, b""))
            return Walk(tuple(segments), data[pos + 2:])
        if marker in STANDALONE:
            segments.append(Segment(marker, pos, pos + 2, b""))
            pos += 2
            continue
        if marker < 0xC0 or marker == SOI:   # 0x02..0xBF are reserved: a lying or damaged file
            raise corrupt(f"invalid JPEG marker FF{marker:02X} at offset {pos}")
        if pos + 4 > len(data):
            raise truncated("the JPEG ends inside a segment header")
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2:
            raise corrupt(f"JPEG segment FF{marker:02X} at offset {pos} declares length {length}")
        end = pos + 2 + length
        if end > len(data):
            raise truncated(f"JPEG segment FF{marker:02X} at offset {pos} runs past the end of the file")
        payload = data[pos + 4:end]
        if marker == SOS:
            end = entropy_end(data, end)
        segments.append(Segment(marker, pos, end, payload))
        pos = end


def frame_size(segments: tuple[Segment, ...]) -> tuple[int, int]:
    """(width, height) of the first frame header; SanitizeError when there is none or it is broken."""
    frame = next((s for s in segments if s.marker in SOF_MARKERS), None)
    if frame is None or not any(s.marker == SOS for s in segments):
        raise corrupt("the JPEG has no frame header or no image data")
    if len(frame.payload) < 6:
        raise corrupt("the JPEG frame header is too short")
    height, width = struct.unpack(">HH", frame.payload[1:5])
    if not width or not height:
        raise corrupt(f"the JPEG frame declares {width}x{height} pixels")
    if frame.start > next(s.start for s in segments if s.marker == SOS):
        raise corrupt("the JPEG image data comes before its frame header")
    return width, height


def _checked_walk(data: bytes, limits: Limits) -> Walk:
    result = walk(data)
    width, height = frame_size(result.segments)
    if width * height > limits.max_pixels:
        raise too_large(f"{width}x{height} pixels is over the limit of {limits.max_pixels}")
    return result


def _extended_xmp(segments: tuple[Segment, ...]) -> list[bytes]:
    """Extended XMP documents reassembled from their chunks (GUID, full length, offset, data)."""
    parts: dict[bytes, tuple[int, dict[int, bytes]]] = {}
    for s in segments:
        if s.marker != APP1 or not s.payload.startswith(XMP_EXTENSION_ID):
            continue
        body = s.payload[len(XMP_EXTENSION_ID):]
        if len(body) < 40:
            continue
        guid, (full, offset) = body[:32], struct.unpack(">II", body[32:40])
        if full > MAX_XMP_BYTES or offset + len(body) - 40 > full:
            continue
        parts.setdefault(guid, (full, {}))[1][offset] = body[40:]
    documents = []
    for full, chunks in parts.values():
        document = bytearray(full)
        for offset, chunk in chunks.items():
            document[offset:offset + len(chunk)] = chunk
        documents.append(bytes(document))
    return documents


def locate(path: Path, limits: Limits) -> Found:
    segments = _checked_walk(path.read_bytes(), limits).segments
    readings = []
    exif = next((s.payload for s in segments if s.marker == APP1 and s.payload.startswith(EXIF_ID)), None)
    if exif is not None:
        readings.append(locate_in_exif(exif))
    for s in segments:
        if s.marker == APP1 and s.payload.startswith(XMP_ID):
            readings.append(locate_in_xmp(s.payload[len(XMP_ID):]))
    readings += [locate_in_xmp(doc) for doc in _extended_xmp(segments)]
    return choose(readings)


def _size(n: int) -> str:
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _trailer_kind(trailer: bytes) -> str:
    if b"ftyp" in trailer[:64] or b"ftypmp4" in trailer or b"ftypisom" in trailer:
        return "motion photo video"
    if b"\xff\xd8\xff" in trailer[:1024]:
        return "second image (MPO, depth map or preview)"
    if b"SEFH" in trailer[-64:] or b"SEFT" in trailer[-64:]:
        return "Samsung trailer"
    if not trailer.strip(b"\x00"):
        return "zero padding"
    return "unknown data"


def describe(segment: Segment) -> str:
    """A human name for a dropped segment."""
    payload, marker = segment.payload, segment.marker
    if marker == APP1 and payload.startswith(EXIF_ID):
        return f"APP1 Exif ({describe_exif(payload[len(EXIF_ID):])})"
    if marker == APP1 and payload.startswith(XMP_ID):
        return "APP1 XMP"
    if marker == APP1 and payload.startswith(XMP_EXTENSION_ID):
        return "APP1 extended XMP"
    if marker == APP0 and payload.startswith(b"JFXX\x00"):
        return "APP0 JFXX thumbnail"
    if marker == APP2 and payload.startswith(b"MPF\x00"):
        return "APP2 MPF (multi-picture index)"
    if marker == APP2 and payload.startswith(b"FPXR"):
        return "APP2 FlashPix"
    if marker == APP13:
        return "APP13 Photoshop/IPTC"
    if marker == COM:
        return "COM"
    if 0xE0 <= marker <= 0xEF:
        name = payload[:16].split(b"\x00", 1)[0].decode("ascii", "replace").strip()
        return f"APP{marker - 0xE0} {name}".rstrip()
    return f"segment FF{marker:02X}"


def _jfif(payload: bytes) -> bytes:
    """APP0 JFIF without its thumbnail: version, units and densities kept, thumbnail 0x0."""
    if len(payload) < JFIF_PAYLOAD - 2:
        raise corrupt("the APP0 JFIF segment is too short")
    return payload[:12] + b"\x00\x00"


def _segment_bytes(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
    data = src.read_bytes()
    result = _checked_walk(data, limits)
    exif = next((s.payload for s in result.segments if s.marker == APP1 and s.payload.startswith(EXIF_ID)), None)
    orientation = orientation_of(exif[len(EXIF_ID):]) if exif is not None else 1
    head, body, removed = [data[:2]], [], []
    jfif_written = False
    for s in result.segments[1:]:
        payload = s.payload
        if s.marker == APP0 and payload.startswith(JFIF_ID) and not jfif_written:
            head.append(_segment_bytes(APP0, _jfif(payload)))
            jfif_written = True
            if len(payload) > JFIF_PAYLOAD:
                removed.append("APP0 JFIF thumbnail")
        elif s.marker == APP2 and payload.startswith(ICC_ID):
            body.append(data[s.start:s.end])
        elif s.marker == APP14 and payload.startswith(ADOBE_ID) and len(payload) >= ADOBE_PAYLOAD:
            body.append(_segment_bytes(APP14, payload[:ADOBE_PAYLOAD]))
        elif s.marker in TABLE_MARKERS or s.marker in SOF_MARKERS or s.marker == SOS or s.marker == EOI:
            body.append(data[s.start:s.end])
        else:
            removed.append(describe(s))
    if orientation != 1:
        head.append(_segment_bytes(APP1, EXIF_ID + orientation_only_exif(orientation)))
    if result.trailer:
        removed.append(f"trailer after EOI ({_size(len(result.trailer))}: {_trailer_kind(result.trailer)})")
    with open(dst, "wb") as f:
        f.write(b"".join(head + body))
    return Rebuilt(format="jpeg", media_type="image/jpeg", extension=".jpg", removed=tuple(dict.fromkeys(removed)))


def inspect(path: Path) -> list[str]:
    """Findings in a copy: any marker off the allow-list, any APP1 but a minimal Orientation EXIF,
    an APP2 that is not ICC, JFIF or Adobe segments with more than their defined bytes, data after EOI.
    """
    data = path.read_bytes()
    if data[:2] != b"\xff\xd8":
        return ["no SOI marker"]
    findings: list[str] = []
    pos, seen_sos, app1_count = 2, False, 0
    while True:
        if pos + 2 > len(data) or data[pos] != 0xFF:
            findings.append(f"no EOI: the segment walk stops at offset {pos}")
            break
        marker = data[pos + 1]
        if marker == EOI:
            if pos + 2 != len(data):
                findings.append(f"{len(data) - pos - 2} bytes after EOI")
            break
        if marker == 0xFF or marker in STANDALONE or pos + 4 > len(data):
            findings.append(f"unexpected byte or marker FF{marker:02X} at offset {pos}")
            break
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(data):
            findings.append(f"segment FF{marker:02X} at offset {pos} runs past the end")
            break
        payload = data[pos + 4:end]
        if marker == APP0:
            if not payload.startswith(JFIF_ID) or len(payload) != JFIF_PAYLOAD:
                findings.append("APP0 that is not a thumbnail-less JFIF header")
        elif marker == APP1:
            app1_count += 1
            if not payload.startswith(EXIF_ID):
                findings.append("APP1 that is not EXIF (XMP or other)")
            else:
                findings += orientation_only_findings(payload[len(EXIF_ID):])
        elif marker == APP2:
            if not payload.startswith(ICC_ID):
                findings.append(f"APP2 that is not ICC_PROFILE ({payload[:8]!r})")
        elif marker == APP14:
            if not payload.startswith(ADOBE_ID) or len(payload) != ADOBE_PAYLOAD:
                findings.append("APP14 that is not a 12-byte Adobe header")
        elif marker == SOS:
            seen_sos = True
            try:
                end = entropy_end(data, end)
            except Exception:  # noqa: BLE001 - the walk's own error is a finding here
                findings.append("image data runs to the end of the file (no EOI)")
                break
        elif marker not in TABLE_MARKERS and marker not in SOF_MARKERS:
            findings.append(f"segment {describe(Segment(marker, pos, end, payload))} is not on the allow-list")
        pos = end
    if app1_count > 1:
        findings.append(f"{app1_count} APP1 segments")
    if not seen_sos:
        findings.append("no image data (SOS)")
    return findings


FORMATS = [Format(name="jpeg", kind="photo", media_type="image/jpeg", accept=accept, locate=locate,
                  rebuild=rebuild, inspect=inspect, extensions=(".jpg", ".jpeg"))]
