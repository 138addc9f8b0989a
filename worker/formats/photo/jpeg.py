"""JPEG (JFIF, Exif, MPO, motion photos): locate by EXIF then XMP, rebuild losslessly by allow-list.

The agency copy is the original's own frame and scan headers and entropy-coded data, copied byte
for byte, with SOI, APP0 JFIF (rewritten without its thumbnail), APP2 ICC_PROFILE (the profile
rebuilt by ``worker.icc`` and split again), APP14 Adobe (its 12 defined bytes), DRI (its 2 bytes),
the quantisation and Huffman tables a frame or scan uses (rewritten without unused tables or
slack), EOI. Scans are never decoded, so pixels are bit-identical. When the original is rotated
by EXIF Orientation, a minimal Orientation-only EXIF goes in after APP0 so the copy displays as
the original does. Everything else, and anything after EOI, is dropped.

Before anything is copied the walk checks what libjpeg would refuse (table and frame headers,
progressive parameters): a broken input is ``corrupt`` or ``truncated``, not a broken copy. A
photo whose structure is damaged but which Pillow still shows (stray bytes, a bad marker in the
scan, no EOI) is salvaged: re-encoded from its pixels (``reencode.salvage``) and reported so.
``locate`` reads the segments before the first scan even then, the MPO's second image and a
motion photo's video too.

``inspect`` is the verifier's walk: a separate, stricter loop that reports anything a clean copy
cannot contain.
"""
from __future__ import annotations

import functools
import io
import re
import struct
from pathlib import Path
from typing import NamedTuple

from worker import icc
from worker.errors import SanitizeError, corrupt, too_large, truncated
from worker.exif import describe_exif, locate_in_exif, orientation_of, orientation_only_exif, orientation_only_findings
from worker.formats.base import Format, Limits, Rebuilt
from worker.formats.photo import file_bytes, once_per_file, release_read
from worker.location import Found, choose
from worker.xmp import MAX_XMP_BYTES, locate_in_xmp

SOI, EOI, SOS, COM = 0xD8, 0xD9, 0xDA, 0xFE
APP0, APP1, APP2, APP13, APP14 = 0xE0, 0xE1, 0xE2, 0xED, 0xEE
DQT, DHT, DRI, DAC = 0xDB, 0xC4, 0xDD, 0xCC
SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
TABLE_MARKERS = frozenset({DQT, DHT, DRI, DAC})
STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})   # TEM, RST0..7: no length field
LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF})   # predictive coding: no quantisation tables
PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# 0xFF not followed by stuffing (00), a restart marker (D0-D7) or fill (FF): the end of a scan
SCAN_END = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")
MAX_SEGMENTS = 20_000          # a camera JPEG has tens; budget set before the walk
MAX_COMPONENTS = 4
MAX_EXTENDED_XMP_BYTES = 16 * 1024 * 1024
ICC_CHUNK = 65519 - 2 - 14     # APP2 payload bytes left for profile data after the ICC header

EXIF_ID = b"Exif\x00\x00"
XMP_ID = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_EXTENSION_ID = b"http://ns.adobe.com/xmp/extension/\x00"
ICC_ID = b"ICC_PROFILE\x00"
JFIF_ID = b"JFIF\x00"
ADOBE_ID = b"Adobe"
JFIF_PAYLOAD = 14      # identifier, version, units, densities, a 0x0 thumbnail
ADOBE_PAYLOAD = 12     # identifier, version, flags0, flags1, transform


class Segment(NamedTuple):   # a tuple, not a dataclass: a walk makes tens of them a file (#10)
    """One marker segment of the walk: where it sits and what it holds."""

    marker: int
    start: int          # offset of the 0xFF of the marker
    end: int            # offset after the segment (after the entropy-coded data for SOS)
    payload: bytes      # the bytes after the length field (empty for standalone markers)


class Walk(NamedTuple):
    """A whole file's walk: its segments in order and whatever follows EOI."""

    segments: tuple[Segment, ...]
    trailer: bytes      # everything after EOI


def accept(head: bytes) -> bool:
    return head[:3] == b"\xff\xd8\xff"


def entropy_end(data: bytes, pos: int) -> int:
    """Offset of the marker that ends the entropy-coded data starting at ``pos``.

    Inside a scan 0xFF is followed by 0x00 (stuffing) or an RST marker; 0xFF 0xFF is fill before a
    marker. Any other 0xFF xx is the next segment: one C-speed regex search, not a Python loop.
    """
    match = SCAN_END.search(data, pos)
    if match is None:
        raise truncated("the JPEG ends inside its image data (no EOI)")
    return match.start()


def walk(data: bytes) -> Walk:
    """Every top-level segment up to EOI, bounded by the data; SanitizeError when it cannot be walked."""
    if data[:2] != b"\xff\xd8":
        raise corrupt("not a JPEG: no SOI marker")
    segments = [Segment(SOI, 0, 2, b"")]
    pos = 2
    while True:
        if len(segments) > MAX_SEGMENTS:
            raise too_large(f"over {MAX_SEGMENTS} JPEG segments")
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


def metadata_segments(data: bytes) -> tuple[Segment, ...]:
    """The segments before the first scan, read tolerantly: stray bytes are skipped to the next
    marker and the walk stops where the file stops. Locating must work on a damaged photo too
    (its fix still goes to the restricted record), and metadata always precedes the image data."""
    segments, pos = [], 2
    while len(segments) < MAX_SEGMENTS and pos + 4 <= len(data):
        if data[pos] != 0xFF or data[pos + 1] in (0x00, 0xFF) or data[pos + 1] < 0xC0:
            nxt = data.find(b"\xff", pos + 1)
            if nxt < 0:
                break
            pos = nxt
            continue
        marker = data[pos + 1]
        if marker in (SOS, EOI):
            break
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(data):
            break
        segments.append(Segment(marker, pos, end, data[pos + 4:end]))
        pos = end
    return tuple(segments)


def _quant_tables(payload: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """([(table id, definition)], slack bytes) of a DQT payload; corrupt on an impossible header."""
    tables, i = [], 0
    while len(payload) - i >= 65:
        precision, table_id = payload[i] >> 4, payload[i] & 0x0F
        if precision > 1 or table_id > 3:
            raise corrupt(f"a JPEG quantisation table declares precision {precision}, id {table_id}")
        size = 1 + 64 * (1 + precision)
        if i + size > len(payload):
            break
        tables.append((table_id, payload[i:i + size]))
        i += size
    return tables, len(payload) - i


@functools.lru_cache(maxsize=64)   # the checked walk, the tables in use and the rebuild each read every DHT
def _huffman_tables(payload: bytes) -> tuple[tuple[tuple[tuple[int, int], bytes], ...], int]:
    """(((class, id), definition)..., slack bytes) of a DHT payload; corrupt on an impossible table."""
    tables, i = [], 0
    while len(payload) - i >= 17:
        table_class, table_id = payload[i] >> 4, payload[i] & 0x0F
        if table_class > 1 or table_id > 3:
            raise corrupt(f"a JPEG Huffman table declares class {table_class}, id {table_id}")
        lengths = payload[i + 1:i + 17]
        count = sum(lengths)
        if count > 256:
            raise corrupt(f"a JPEG Huffman table declares {count} codes")
        if i + 17 + count > len(payload):
            break
        code = 0
        for bits, n in enumerate(lengths, 1):   # libjpeg's canonical-code check: every code must fit
            code += n
            if n and code >= 1 << bits:
                raise corrupt(f"a JPEG Huffman table declares more {bits}-bit codes than fit")
            code <<= 1
        if table_class == 0 and any(symbol > 15 for symbol in payload[i + 17:i + 17 + count]):
            raise corrupt("a JPEG DC Huffman table holds a symbol over 15")
        tables.append(((table_class, table_id), payload[i:i + 17 + count]))
        i += 17 + count
    return tuple(tables), len(payload) - i


def frame_components(payload: bytes) -> dict[int, int]:
    """{component id: quantisation table id} of a frame header; corrupt when it is inconsistent."""
    if len(payload) < 6:
        raise corrupt("the JPEG frame header is too short")
    count = payload[5]
    if not 1 <= count <= MAX_COMPONENTS or len(payload) != 6 + 3 * count or not 2 <= payload[0] <= 16:
        raise corrupt(f"the JPEG frame header is inconsistent ({count} components, {len(payload)} bytes)")
    components = {}
    for i in range(count):
        cid, sampling, table_id = payload[6 + 3 * i:9 + 3 * i]
        if not (1 <= sampling >> 4 <= 4 and 1 <= sampling & 0x0F <= 4) or table_id > 3:
            raise corrupt(f"the JPEG frame header declares sampling {sampling:#04x}, table {table_id}")
        components[cid] = table_id
    return components


def scan_components(payload: bytes, frame: dict[int, int]) -> list[tuple[int, int, int]]:
    """[(component id, DC table, AC table)] of a scan header; corrupt when it does not fit the frame."""
    count = payload[0] if payload else 0
    if not 1 <= count <= 4 or len(payload) != 4 + 2 * count:
        raise corrupt(f"the JPEG scan header is inconsistent ({count} components, {len(payload)} bytes)")
    result = []
    for i in range(count):
        cid, tables = payload[1 + 2 * i:3 + 2 * i]
        if cid not in frame or tables >> 4 > 3 or tables & 0x0F > 3:
            raise corrupt(f"a JPEG scan names component {cid} or tables {tables:#04x} the frame does not have")
        result.append((cid, tables >> 4, tables & 0x0F))
    return result


def check_progression(payload: bytes) -> None:
    """libjpeg's own refusal of a progressive scan's spectral and approximation parameters."""
    start, end, approximation = payload[-3], payload[-2], payload[-1]
    high, low = approximation >> 4, approximation & 0x0F
    bad = (end != 0) if start == 0 else (start > end or end > 63 or payload[0] != 1)
    if bad or (high and low != high - 1) or low > 13:
        raise corrupt(f"a progressive JPEG scan declares spectral {start}-{end}, approximation {high}/{low}")


def scan_uses(payload: bytes) -> tuple[bool, bool]:
    """(uses DC tables, uses AC tables) of a scan: a DC-only progressive scan needs no AC table."""
    start, end = payload[-3], payload[-2]
    return start == 0, end > 0


def _checked_walk(data: bytes, limits: Limits) -> Walk:
    result = walk(data)
    width, height = frame_size(result.segments)
    if width * height > limits.max_pixels:
        raise too_large(f"{width}x{height} pixels is over the limit of {limits.max_pixels}")
    frame: dict[int, int] = {}
    quant: set[int] = set()
    lossless, frame_marker = False, 0
    for s in result.segments:
        if s.marker in SOF_MARKERS:
            frame = frame_components(s.payload)
            lossless = s.marker in LOSSLESS_SOF
            frame_marker = s.marker
            if s.marker in (0xC0, 0xC1, 0xC2) and s.payload[0] != 8 and not (s.marker != 0xC0 and s.payload[0] == 12):
                raise corrupt(f"a JPEG frame declares {s.payload[0]}-bit samples")
        elif s.marker == DQT:
            quant.update(table_id for table_id, _ in _quant_tables(s.payload)[0])
        elif s.marker == DHT:
            _huffman_tables(s.payload)
        elif s.marker == SOS:
            scan_components(s.payload, frame)
            if frame_marker in PROGRESSIVE_SOF:
                check_progression(s.payload)
            missing = {table for table in frame.values() if table not in quant}
            if missing and not lossless:
                raise corrupt(f"the JPEG scan uses quantisation tables {sorted(missing)} that are never defined")
    return result


def _read(path: Path, limits: Limits) -> tuple[bytes, Walk]:
    """The file and its checked walk, once per file: locate and rebuild share them."""
    def read(p: Path) -> tuple[bytes, Walk]:
        data = file_bytes(p)
        return data, _checked_walk(data, limits)
    read.__qualname__ = f"jpeg.read:{limits!r}"
    return once_per_file(path, read)


def _extended_xmp(segments: tuple[Segment, ...]) -> list[bytes]:
    """Extended XMP documents reassembled from their chunks (GUID, full length, offset, data).

    Only bytes the file holds are assembled: a document whose chunks do not cover it from 0 to its
    declared length is skipped, so declared sizes cost nothing (3000 GUIDs declaring 4 MiB each
    allocate nothing); the total read is capped at ``MAX_EXTENDED_XMP_BYTES``.
    """
    parts: dict[bytes, tuple[int, dict[int, bytes]]] = {}
    budget = MAX_EXTENDED_XMP_BYTES
    for s in segments:
        if s.marker != APP1 or not s.payload.startswith(XMP_EXTENSION_ID):
            continue
        body = s.payload[len(XMP_EXTENSION_ID):]
        if len(body) < 40:
            continue
        guid, (full, offset) = body[:32], struct.unpack(">II", body[32:40])
        if full > MAX_XMP_BYTES or offset + len(body) - 40 > full:
            continue
        budget -= len(body) - 40
        if budget < 0:
            break
        parts.setdefault(guid, (full, {}))[1][offset] = body[40:]
    documents = []
    for full, chunks in parts.values():
        pieces, at = [], 0
        for offset in sorted(chunks):
            if offset != at:
                break
            pieces.append(chunks[offset])
            at += len(chunks[offset])
        if at == full:
            documents.append(b"".join(pieces))
    return documents


def _found_in_segments(segments) -> list[Found]:
    readings = []
    exif = next((s.payload for s in segments if s.marker == APP1 and s.payload.startswith(EXIF_ID)), None)
    if exif is not None:
        readings.append(locate_in_exif(exif))
    for s in segments:
        if s.marker == APP1 and s.payload.startswith(XMP_ID):
            readings.append(locate_in_xmp(s.payload[len(XMP_ID):]))
    readings += [locate_in_xmp(doc) for doc in _extended_xmp(tuple(segments))]
    return readings


def _found_in_trailer(trailer: bytes) -> list[Found]:
    """Fixes in what follows EOI: the second image of an MPO (its own EXIF) and a motion photo's video."""
    readings = []
    at = trailer.find(b"\xff\xd8\xff")
    if at >= 0:
        readings += _found_in_segments(metadata_segments(trailer[at:]))
    box = trailer.find(b"ftyp")
    if box >= 4:
        from worker.formats.av.mp4_location import read_location

        try:
            readings.append(read_location(io.BytesIO(trailer[box - 4:])))
        except Exception as e:  # noqa: BLE001 - an unreadable embedded video costs its fix, noted
            readings.append(Found(notes=(f"motion photo video: unreadable ({type(e).__name__})",)))
    return readings


def locate(path: Path, limits: Limits) -> Found:
    """Main image first (it wins a tie), then the MPO's second image and a motion photo's video.

    A JPEG the strict walk refuses is still read up to its first scan: a damaged photo may be
    salvaged, and its fix must reach the restricted record all the same.
    """
    try:
        _data, result = _read(path, limits)
    except SanitizeError as e:
        if e.code == "too_large":
            raise
        return choose(_found_in_segments(metadata_segments(file_bytes(path))))
    return choose(_found_in_segments(result.segments) + _found_in_trailer(result.trailer))


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
        return f"APP1 Exif ({describe_exif(payload)})"
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


def _icc_segments(result: Walk, removed: list[str]) -> list[bytes]:
    """The APP2 ICC_PROFILE chunks, reassembled in sequence order, rebuilt by ``worker.icc`` and split again."""
    chunks = sorted((s.payload[len(ICC_ID)], s.payload[len(ICC_ID) + 2:]) for s in result.segments
                    if s.marker == APP2 and s.payload.startswith(ICC_ID) and len(s.payload) > len(ICC_ID) + 2)
    if not chunks:
        return []
    profile = icc.clean(b"".join(data for _seq, data in chunks))
    if profile is None:
        removed.append("APP2 ICC profile (unreadable or not reproducible without its text)")
        return []
    parts = [profile[i:i + ICC_CHUNK] for i in range(0, len(profile), ICC_CHUNK)]
    return [_segment_bytes(APP2, ICC_ID + bytes((n, len(parts))) + part) for n, part in enumerate(parts, 1)]


def _tables_in_use(segments: tuple[Segment, ...]) -> tuple[set[int], set[tuple[int, int]]]:
    """Which table definitions a decoder uses: (DQT ids named by a frame, (DHT segment index, class, id))
    of each Huffman definition some later scan reads before it is redefined."""
    quant = {table for s in segments if s.marker in SOF_MARKERS for table in frame_components(s.payload).values()}
    current: dict[tuple[int, int], int] = {}
    used: set[tuple[int, int]] = set()
    frame: dict[int, int] = {}
    for index, s in enumerate(segments):
        if s.marker in SOF_MARKERS:
            frame = frame_components(s.payload)
        elif s.marker == DHT:
            for key, _definition in _huffman_tables(s.payload)[0]:
                current[key] = index
        elif s.marker == SOS:
            dc, ac = scan_uses(s.payload)
            for _cid, dc_table, ac_table in scan_components(s.payload, frame):
                for wanted, key in ((dc, (0, dc_table)), (ac, (1, ac_table))):
                    if wanted and key in current:
                        used.add((current[key], *key))
    return quant, used


def _table_segment(marker: int, tables: list[bytes]) -> bytes | None:
    return _segment_bytes(marker, b"".join(tables)) if tables else None


def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
    try:
        data, result = _read(src, limits)
        release_read()
    except SanitizeError as e:
        from worker.formats.photo import reencode   # only a refused photo pays for the re-encoder
        return reencode.salvage(src, dst, limits, e, truncated_ok=True)
    exif = next((s.payload for s in result.segments if s.marker == APP1 and s.payload.startswith(EXIF_ID)), None)
    orientation = orientation_of(exif) if exif is not None else 1   # the payload locate read: one EXIF walk
    view = memoryview(data)
    head, body, removed = [data[:2]], [], []
    quant_used, huffman_used = _tables_in_use(result.segments)
    jfif_written = icc_written = False
    for index, s in enumerate(result.segments[1:], 1):
        payload = s.payload
        if s.marker == APP0 and payload.startswith(JFIF_ID) and not jfif_written:
            head.append(_segment_bytes(APP0, _jfif(payload)))
            jfif_written = True
            if len(payload) > JFIF_PAYLOAD:
                removed.append("APP0 JFIF thumbnail")
        elif s.marker == APP2 and payload.startswith(ICC_ID):
            if not icc_written:
                body += _icc_segments(result, removed)
                icc_written = True
        elif s.marker == APP14 and payload.startswith(ADOBE_ID) and len(payload) >= ADOBE_PAYLOAD:
            body.append(_segment_bytes(APP14, payload[:ADOBE_PAYLOAD]))
        elif s.marker == DQT:
            tables, slack = _quant_tables(payload)
            kept = [t for table_id, t in tables if table_id in quant_used]
            if len(kept) < len(tables) or slack:
                removed.append("unused quantisation tables or slack")
            body.append(_table_segment(DQT, kept) or b"")
        elif s.marker == DHT:
            tables, slack = _huffman_tables(payload)
            kept = [t for key, t in tables if (index, *key) in huffman_used]
            if len(kept) < len(tables) or slack:
                removed.append("unused Huffman tables or slack")
            body.append(_table_segment(DHT, kept) or b"")
        elif s.marker == DRI:
            if len(payload) < 2:
                raise corrupt("the JPEG restart interval segment is shorter than 2 bytes")
            body.append(_segment_bytes(DRI, payload[:2]))   # its 2 defined bytes, no slack
        elif s.marker in TABLE_MARKERS or s.marker in SOF_MARKERS or s.marker == SOS or s.marker == EOI:
            body.append(view[s.start:s.end])   # the scans, tables and frames as they are, not copied
        else:
            removed.append(describe(s))
    if orientation != 1:
        head.append(_segment_bytes(APP1, EXIF_ID + orientation_only_exif(orientation)))
    if result.trailer:
        removed.append(f"trailer after EOI ({_size(len(result.trailer))}: {_trailer_kind(result.trailer)})")
    with open(dst, "wb") as f:
        f.writelines(head + body)
    return Rebuilt(format="jpeg", media_type="image/jpeg", extension=".jpg", removed=tuple(dict.fromkeys(removed)))


def inspect(path: Path) -> list[str]:
    """Findings in a copy: any marker off the allow-list, any APP1 but a minimal Orientation EXIF,
    an APP2 that is not ICC, JFIF or Adobe segments with more than their defined bytes, data after EOI.
    """
    data = file_bytes(path)   # the bytes the verifier's proof reads too: one read of the copy
    if data[:2] != b"\xff\xd8":
        return ["no SOI marker"]
    findings: list[str] = []
    pos, seen_sos, app1_count = 2, False, 0
    icc_chunks: list[bytes] = []
    quant_ids: list[int] = []
    frame_tables: set[int] = set()
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
            else:
                icc_chunks.append(payload[len(ICC_ID):])
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
        elif marker == DQT:
            i = 0
            while i < len(payload):
                quant_ids.append(payload[i] & 0x0F)
                i += 65 if payload[i] >> 4 == 0 else 129
            if i != len(payload):
                findings.append("DQT segment with slack after its tables")
        elif marker == DRI and len(payload) != 2:
            findings.append("DRI segment with more than its 2 bytes")
        elif marker in SOF_MARKERS:
            frame_tables |= {payload[8 + 3 * i] for i in range(payload[5] if len(payload) > 5 else 0)
                             if 8 + 3 * i < len(payload)}
        elif marker not in TABLE_MARKERS:
            findings.append(f"segment {describe(Segment(marker, pos, end, payload))} is not on the allow-list")
        pos = end
    if app1_count > 1:
        findings.append(f"{app1_count} APP1 segments")
    if icc_chunks:
        findings += icc.findings(b"".join(chunk[2:] for chunk in sorted(icc_chunks)))
    unused = set(quant_ids) - frame_tables
    if unused:
        findings.append(f"quantisation tables {sorted(unused)} that no frame uses")
    if not seen_sos:
        findings.append("no image data (SOS)")
    return findings


FORMATS = [Format(name="jpeg", kind="photo", media_type="image/jpeg", accept=accept, locate=locate,
                  rebuild=rebuild, inspect=inspect, extensions=(".jpg", ".jpeg"))]
