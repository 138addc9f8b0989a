"""Where an ISO-BMFF / QuickTime file keeps its place and time, read with the bounded box walker.

Sources, each recorded on the Fix:
- ``quicktime``: the ``©xyz`` atom (ISO 6709 text behind a 2-byte length and a 2-byte language)
  in ``udta``, or the same key as an iTunes-style ``ilst`` item;
- ``mdta``: Apple's ``moov/meta`` with ``keys`` + ``ilst``: ``com.apple.quicktime.location.ISO6709``,
  ``...location.accuracy.horizontal`` and ``...creationdate``;
- ``3gpp``: the ``loci`` box (16.16 fixed-point longitude, latitude, altitude);
- ``xmp``: an XMP packet in a ``uuid`` box (Adobe's UUID), as editing tools write it; it outranks
  the container boxes, as DESIGN.md's preference says;
- ``gpmf``: GoPro's telemetry track (sample entry ``gpmd``): the first GPS fix of its first samples
  (``gpmf``), read here because the copy drops the track.
``locate_mp4`` reads an MP4 given as bytes or a path: the photo family calls it for the video
inside a motion photo.
Capture time: Apple's creationdate (it carries the local offset), else ``mvhd`` creation_time.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO

from worker.formats.base import Limits
from worker.formats.av.gpmf import first_fix
from worker.formats.walkers.boxes import (Box, chunk_ranges, counted_entries, file_size, header_times, mac_epoch_iso,
                                          media_extent, read_payload, sample_entry_types, walk)
from worker.location import Found, NoFix, choose, found_from, parse_iso6709
from worker.xmp import locate_in_xmp

MAX_META_BOX = 1 << 20          # metadata boxes are small; a huge one is not read
XYZ = b"\xa9xyz"
KEY_LOCATION = "com.apple.quicktime.location.ISO6709"
KEY_ACCURACY = "com.apple.quicktime.location.accuracy.horizontal"
KEY_CREATION = "com.apple.quicktime.creationdate"
XMP_UUID = bytes.fromhex("BE7ACFCB97A942E89C71999491E3AFAC")
MAX_XMP_BOX = 4 << 20
MAX_GPMF_BYTES = 1 << 20        # the first samples of a telemetry track: a fix comes in the first seconds
GPMF_ENTRY = b"gpmd"


def udta_xyz_text(payload: bytes) -> str:
    """The string of a QuickTime international text atom: u16 length, u16 language, text."""
    if len(payload) < 4:
        raise NoFix("quicktime: ©xyz shorter than its header")
    length = struct.unpack(">H", payload[:2])[0]
    if length > len(payload) - 4:
        raise NoFix("quicktime: ©xyz text length runs past the atom")
    return payload[4:4 + length].decode("utf-8", "replace")


def data_atom_value(payload: bytes):
    """The value of an ilst ``data`` atom: text, a big-endian number, or raw bytes."""
    if len(payload) < 8:
        return None
    type_code = int.from_bytes(payload[1:4], "big")
    body = payload[8:]
    if type_code in (1, 4, 5):         # UTF-8, UTF-8 sort, UTF-16
        return body.decode("utf-16-be" if type_code == 5 else "utf-8", "replace").rstrip("\0")
    if type_code == 23 and len(body) == 4:
        return struct.unpack(">f", body)[0]
    if type_code == 24 and len(body) == 8:
        return struct.unpack(">d", body)[0]
    if type_code in (21, 22) and 0 < len(body) <= 8:
        return int.from_bytes(body, "big", signed=type_code == 21)
    return body


def parse_keys(payload: bytes) -> list[str]:
    """Names of Apple's ``keys`` box, in order (an ilst item's type is a 1-based index into them)."""
    return [payload[pos + 8:pos + size].decode("utf-8", "replace")
            for pos, size in counted_entries(payload, what="keys", min_size=8)]


def _cstring(data: bytes, pos: int) -> int:
    """Position just past a NUL-terminated string (UTF-8, or UTF-16 with a BOM) starting at ``pos``."""
    if data[pos:pos + 2] in (b"\xfe\xff", b"\xff\xfe"):
        i = pos + 2
        while i + 1 < len(data):
            if data[i:i + 2] == b"\0\0":
                return i + 2
            i += 2
        raise NoFix("3gpp: loci name not terminated")
    end = data.find(b"\0", pos)
    if end < 0:
        raise NoFix("3gpp: loci name not terminated")
    return end + 1


def parse_loci(payload: bytes) -> tuple[float, float, float]:
    """(lat, lon, alt) of a 3GPP ``loci`` box: version/flags, language, name, role, lon, lat, alt."""
    if len(payload) < 6:
        raise NoFix("3gpp: loci shorter than its header")
    pos = _cstring(payload, 6) + 1                  # name, then the one-byte role
    if len(payload) - pos < 12:
        raise NoFix("3gpp: loci ends before its coordinates")
    lon, lat, alt = struct.unpack_from(">iii", payload, pos)
    return lat / 65536.0, lon / 65536.0, alt / 65536.0


def _iso6709_found(text: str, source: str, accuracy=None) -> Found:
    try:
        lat, lon, alt = parse_iso6709(text)
    except NoFix as e:
        return Found(notes=(f"{source}: {e}",))
    return found_from(lat, lon, alt=alt, accuracy=accuracy, source=source)


def _number(value) -> float | None:
    try:
        return float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, AttributeError):
        return None


def _normalise_apple_date(text: str) -> str | None:
    """Apple writes ``2023-09-22T18:34:05+0200``; keep it as ISO 8601 with a colon in the offset."""
    import datetime as dt

    text = (text or "").strip()
    for pattern in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S"):
        try:
            return dt.datetime.strptime(text, pattern).isoformat()
        except ValueError:
            continue
    return None


def _apple_mdta(f: BinaryIO, meta_boxes: dict[bytes, Box]) -> tuple[dict[str, object], list[str]]:
    """Apple's keyed metadata of one ``meta`` box: {key name: value}."""
    keys = parse_keys(read_payload(f, meta_boxes[b"keys"], MAX_META_BOX))
    values: dict[str, object] = {}
    notes: list[str] = []
    for index, data_box in meta_boxes.get("items", []):
        if not 1 <= index <= len(keys):
            notes.append(f"mdta: ilst item {index} has no key")
            continue
        values.setdefault(keys[index - 1], data_atom_value(read_payload(f, data_box, MAX_META_BOX)))
    return values, notes


def read_location(f: BinaryIO) -> Found:
    """Every fix and capture time in an open ISO-BMFF file, chosen by source preference."""
    size = media_extent(f, file_size(f))
    readings: list[Found] = []
    notes: list[str] = []
    mvhd_time: str | None = None
    apple_time: str | None = None
    metas: dict[int, dict] = {}      # meta box start -> {"keys": Box, "items": [(index, data Box)]}
    current_meta: int | None = None
    telemetry: list[Box] = []        # the stbl of each GPMF track
    stbl: Box | None = None
    for path, box in walk(f, 0, size):
        parent = path[-1] if path else b""
        if box.type == b"stbl":
            stbl = box
        elif box.type == b"stsd" and stbl is not None and GPMF_ENTRY in sample_entry_types(f, box):
            telemetry.append(stbl)
        if box.type == b"meta":
            current_meta = box.start
            metas[box.start] = {"items": []}
        elif box.type == b"keys" and parent == b"meta" and current_meta is not None:
            metas[current_meta][b"keys"] = box
        elif box.type == b"data" and len(path) >= 2 and path[-2] == b"ilst":
            item = path[-1]
            if item == XYZ:
                value = data_atom_value(read_payload(f, box, MAX_META_BOX))
                if isinstance(value, str):
                    readings.append(_iso6709_found(value, "quicktime"))
            elif b"meta" in path and current_meta is not None:
                metas[current_meta]["items"].append((int.from_bytes(item, "big"), box))
        elif box.type == XYZ and parent == b"udta":
            try:
                readings.append(_iso6709_found(udta_xyz_text(read_payload(f, box, MAX_META_BOX)), "quicktime"))
            except NoFix as e:
                notes.append(str(e))
        elif box.type == b"loci":
            try:
                lat, lon, alt = parse_loci(read_payload(f, box, MAX_META_BOX))
                readings.append(found_from(lat, lon, alt=alt, source="3gpp"))
            except NoFix as e:
                notes.append(str(e))
        elif box.type == b"uuid":
            f.seek(box.payload_start - 16)   # the extended type is the header's last 16 bytes
            if f.read(16) == XMP_UUID:
                readings.append(locate_in_xmp(read_payload(f, box, MAX_XMP_BOX)))
        elif box.type == b"mvhd" and parent == b"moov":
            created, _ = header_times(read_payload(f, box, 4096))
            mvhd_time = mac_epoch_iso(created)
    keyed: list[Found] = []
    for meta in metas.values():
        if b"keys" not in meta:
            continue
        values, more = _apple_mdta(f, meta)
        notes += more
        text = values.get(KEY_LOCATION)
        if isinstance(text, str):
            keyed.append(_iso6709_found(text, "mdta", accuracy=_number(values.get(KEY_ACCURACY))))
        created = values.get(KEY_CREATION)
        if isinstance(created, str) and apple_time is None:
            apple_time = _normalise_apple_date(created)
    readings += [_gpmf_found(f, track, size) for track in telemetry]
    # same rank: the first wins, and Apple's keyed entry carries accuracy and altitude
    result = choose(keyed + readings)
    return Found(fix=result.fix, captured_at=apple_time or mvhd_time, notes=tuple(notes) + result.notes)


def _gpmf_found(f: BinaryIO, stbl: Box, size: int) -> Found:
    """The first GPS fix of a GPMF track, from its first chunks (at most MAX_GPMF_BYTES)."""
    data = bytearray()
    for start, end in chunk_ranges(f, stbl, size):
        f.seek(start)
        data += f.read(min(end - start, MAX_GPMF_BYTES - len(data)))
        if len(data) >= MAX_GPMF_BYTES:
            break
    fix = first_fix(bytes(data))
    if fix is None:
        return Found(notes=("gpmf: no GPS fix in the first telemetry samples",))
    return found_from(fix[0], fix[1], alt=fix[2], source="gpmf")


def locate(path: Path, limits: Limits) -> Found:
    with open(path, "rb") as f:
        return read_location(f)


def locate_mp4(source: bytes | Path) -> Found:
    """Every fix and capture time of an MP4/MOV given as its bytes (the video inside a motion
    photo) or as a path. Raises SanitizeError (``truncated``, ``corrupt``, ``too_large``) when its
    boxes do not hold together."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return read_location(io.BytesIO(bytes(source)))
    with open(source, "rb") as f:
        return read_location(f)
