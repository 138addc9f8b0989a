"""The one EXIF (TIFF IFD) reader: GPS fix, capture time and orientation from an EXIF blob.

Every photo container carries EXIF the same way (JPEG APP1, HEIC/AVIF Exif item, PNG eXIf, WebP
EXIF chunk, TIFF itself), so every format module hands its blob here. One pass of the shared
bounded walker (``formats.walkers.tiff_ifd``) reads IFD0, the Exif and GPS IFDs and whether IFD1
is there, and only the values DESIGN.md asks for are decoded: a fifth of the CPU of Pillow's
``Image.Exif`` on a camera JPEG (#10), with the values and the notes Pillow's reading gave. What
we add is the reading of the GPS IFD by DESIGN.md's rules and a refusal to raise: a broken EXIF
is ``Found()`` with a note.

``orientation_only_exif`` writes the one EXIF an agency copy may carry, and
``orientation_only_findings`` is the verifier's strict, independent check of such a blob.
"""
from __future__ import annotations

import functools
import math
import re
import struct
from typing import NamedTuple

from worker.formats.walkers import tiff_ifd
from worker.location import Found, found_from

EXIF_PREFIX = b"Exif\x00\x00"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
MAX_EXIF_BYTES = 16 * 1024 * 1024   # an APP1 is at most 64 KiB; HEIC/PNG carriers are bounded here

# IFD0 / Exif IFD / GPS IFD tags we read
TAG_ORIENTATION = 0x0112
TAG_DATETIME = 0x0132
TAG_EXIF_IFD = 0x8769
TAG_GPS_IFD = 0x8825
TAG_DATETIME_ORIGINAL = 0x9003
TAG_DATETIME_DIGITIZED = 0x9004
TAG_OFFSET_TIME = 0x9010
TAG_OFFSET_TIME_ORIGINAL = 0x9011
TAG_OFFSET_TIME_DIGITIZED = 0x9012
TAG_MAKER_NOTE = 0x927C
GPS_LATITUDE_REF, GPS_LATITUDE = 0x0001, 0x0002
GPS_LONGITUDE_REF, GPS_LONGITUDE = 0x0003, 0x0004
GPS_ALTITUDE_REF, GPS_ALTITUDE = 0x0005, 0x0006
GPS_H_POSITIONING_ERROR = 0x001F

# pattern text, compiled (and cached) by re on first use rather than at import (#10, start time)
_EXIF_DATETIME = r"^\s*(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})"
_OFFSET = r"^\s*([+-])(\d{2}):?(\d{2})\s*$"


def tiff_body(blob: bytes) -> bytes | None:
    """The TIFF-header EXIF inside ``blob`` (an optional "Exif\\0\\0" prefix removed), or None."""
    if blob.startswith(EXIF_PREFIX):
        blob = blob[len(EXIF_PREFIX):]
    return blob if blob[:4] in TIFF_MAGICS else None


class _Reading(NamedTuple):
    """One pass over an EXIF blob: what locate, describe and orientation read from it (#10)."""

    body: bytes
    order: str
    ifd0: tiff_ifd.Directory
    sub: tiff_ifd.Directory | None     # the Exif IFD, None when IFD0 points to none
    gps: tiff_ifd.Directory | None
    gps_error: str | None              # why the GPS pointer could not be followed (the exception Pillow raised)
    thumbnail: bool                    # IFD1 is there and holds entries

    def get(self, directory: tiff_ifd.Directory | None, tag: int, one: bool = False, at_most: int | None = None):
        entry = directory.entries.get(tag) if directory is not None else None
        return None if entry is None else tiff_ifd.value(self.body, entry, self.order, one, at_most)


def _follow(body: bytes, order: str, ifd0: tiff_ifd.Directory,
            tag: int) -> tuple[tiff_ifd.Directory | None, str | None]:
    """The sub-IFD an IFD0 pointer names. Pillow's reading of the pointer: a number (its first one) is
    an offset; any other value is no IFD; a negative or a 64-bit one is an error, named as Pillow's was."""
    entry = ifd0.entries.get(tag)
    if entry is None:
        return None, None
    offset = tiff_ifd.value(body, entry, order, one=True)
    if not isinstance(offset, int):
        return None, None
    if offset < 0:
        return None, "ValueError"
    if offset >= 1 << 63:
        return None, "OverflowError"
    return tiff_ifd.directory(body, offset, order), None


@functools.lru_cache(maxsize=8)   # locate, describe and orientation read the same blob: walk it once
def _load(blob: bytes) -> _Reading:
    """IFD0, the Exif and GPS IFDs and whether IFD1 holds anything; ValueError when not a TIFF-header EXIF."""
    if blob.startswith(EXIF_PREFIX * 2):
        blob = blob[len(EXIF_PREFIX):]   # some writers double the prefix; Pillow's reading took both off too
    body = tiff_body(blob)
    if body is None:
        raise ValueError("no TIFF header")
    if len(body) > MAX_EXIF_BYTES:
        raise ValueError(f"{len(body)} bytes of EXIF is over the limit")
    order, first = tiff_ifd.header(body)
    ifd0 = tiff_ifd.directory(body, first, order)
    sub, _unreadable = _follow(body, order, ifd0, TAG_EXIF_IFD)   # a broken Exif IFD only costs the capture time
    gps, gps_error = _follow(body, order, ifd0, TAG_GPS_IFD)
    # an IFD0 cut short has no next-IFD offset: no thumbnail is claimed (Pillow re-read IFD0 as IFD1 and claimed one)
    thumbnail = bool(ifd0.next) and bool(tiff_ifd.directory(body, ifd0.next, order).entries)
    return _Reading(body, order, ifd0, sub, gps, gps_error, thumbnail)


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.split(b"\x00", 1)[0].decode("ascii", "replace")
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    return str(value).strip("\x00 ") if value is not None else None


def _number(value) -> float | None:
    """A float from one rational/int; None for zero denominators, NaN or anything else."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    try:
        if getattr(value, "denominator", 1) == 0:
            return None
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _angle(value, ref) -> float | None:
    """Degrees from one, two or three rationals (D, M, S) and a N/S/E/W ref; None when junk."""
    parts = value if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(parts) <= 3:
        return None
    numbers = [_number(p) for p in parts]
    if any(n is None or n < 0 for n in numbers):
        return None
    numbers += [0.0] * (3 - len(numbers))
    degrees = numbers[0] + numbers[1] / 60 + numbers[2] / 3600
    ref_text = (_text(ref) or "").upper()[:1]
    return -degrees if ref_text in ("S", "W") else degrees


def iso_datetime(value, offset=None) -> str | None:
    """ISO 8601 from an EXIF "YYYY:MM:DD HH:MM:SS" (and "+HH:MM" offset); None for blanks and zeros."""
    text = _text(value)
    m = re.match(_EXIF_DATETIME, text or "")
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups())
    if year == 0 or not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    stamp = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    o = re.match(_OFFSET, _text(offset) or "")
    if o and int(o.group(2)) <= 14 and int(o.group(3)) < 60:
        stamp += f"{o.group(1)}{o.group(2)}:{o.group(3)}"
    return stamp


def _captured_at(exif: _Reading) -> str | None:
    sub = exif.sub
    for when, offset in ((exif.get(sub, TAG_DATETIME_ORIGINAL), exif.get(sub, TAG_OFFSET_TIME_ORIGINAL)),
                         (exif.get(sub, TAG_DATETIME_DIGITIZED), exif.get(sub, TAG_OFFSET_TIME_DIGITIZED)),
                         (exif.get(exif.ifd0, TAG_DATETIME, one=True), exif.get(sub, TAG_OFFSET_TIME))):
        stamp = iso_datetime(when, offset)
        if stamp:
            return stamp
    return None


def locate_in_exif(blob: bytes, source: str = "exif") -> Found:
    """The GPS fix and capture time in one EXIF blob. Never raises: junk gives notes, not a fix."""
    try:
        exif = _load(blob)
    except Exception as e:  # noqa: BLE001 - any parser failure is a note, never an error
        return Found(notes=(f"{source}: unreadable EXIF ({type(e).__name__}: {e})",))
    try:
        captured_at = _captured_at(exif)
    except Exception:  # noqa: BLE001 - odd capture-time values only cost the capture time
        captured_at = None
    if exif.gps_error:
        return Found(captured_at=captured_at, notes=(f"{source}: unreadable GPS IFD ({exif.gps_error})",))
    if exif.gps is None or not exif.gps.entries:
        return Found(captured_at=captured_at)
    try:
        return _found_in_gps(exif, source, captured_at)
    except Exception as e:  # noqa: BLE001 - odd value types in a GPS IFD are junk, not a crash
        return Found(captured_at=captured_at, notes=(f"{source}: unreadable GPS values ({type(e).__name__})",))


def _found_in_gps(exif: _Reading, source: str, captured_at: str | None) -> Found:
    gps = exif.gps
    if GPS_LATITUDE not in gps.entries or GPS_LONGITUDE not in gps.entries:
        return Found(captured_at=captured_at, notes=(f"{source}: GPS IFD without latitude and longitude",))
    # over three numbers is junk to _angle (None is too): they are not decoded
    lat = _angle(exif.get(gps, GPS_LATITUDE, at_most=3), exif.get(gps, GPS_LATITUDE_REF))
    lon = _angle(exif.get(gps, GPS_LONGITUDE, at_most=3), exif.get(gps, GPS_LONGITUDE_REF))
    if lat is None or lon is None:
        return Found(captured_at=captured_at, notes=(f"{source}: GPS latitude or longitude is a junk rational",))
    # altitude, its ref and the error are defined as one value: only the first of several counts
    alt = _number(exif.get(gps, GPS_ALTITUDE, one=True)) if GPS_ALTITUDE in gps.entries else None
    ref = exif.get(gps, GPS_ALTITUDE_REF, one=True)
    if isinstance(ref, bytes):   # a BYTE value is its bytes
        ref = ref[0] if ref else None
    if alt and _number(ref) == 1:
        alt = -alt   # ref 1: below sea level
    accuracy = (_number(exif.get(gps, GPS_H_POSITIONING_ERROR, one=True))
                if GPS_H_POSITIONING_ERROR in gps.entries else None)
    return found_from(lat, lon, alt=alt, accuracy=accuracy, source=source, captured_at=captured_at)


def describe_exif(blob: bytes) -> str:
    """What an EXIF blob holds, for the ``removed`` list: "GPS, 42 tags, maker note, thumbnail"."""
    try:
        exif = _load(blob)
    except Exception:  # noqa: BLE001
        return "unreadable"
    sub = exif.sub.entries if exif.sub is not None else {}
    gps = exif.gps.entries if exif.gps is not None else {}
    tags = len([t for t in exif.ifd0.entries if t not in (TAG_EXIF_IFD, TAG_GPS_IFD)]) + len(sub) + len(gps)
    parts = (["GPS"] if gps else []) + [f"{tags} tags"] + (["maker note"] if TAG_MAKER_NOTE in sub else []) \
        + (["thumbnail"] if exif.thumbnail else [])
    return ", ".join(parts)


def orientation_of(blob: bytes) -> int:
    """IFD0 Orientation (1..8); 1 when absent, unreadable or out of range."""
    try:
        exif = _load(blob)
        value = int(exif.get(exif.ifd0, TAG_ORIENTATION, one=True))
    except Exception:  # noqa: BLE001
        return 1
    return value if 1 <= value <= 8 else 1


def has_orientation(blob: bytes) -> bool:
    """Whether IFD0 holds an Orientation entry at all (``orientation_of`` cannot tell "1" from "absent")."""
    try:
        return TAG_ORIENTATION in _load(blob).ifd0.entries
    except Exception:  # noqa: BLE001 - an unreadable EXIF holds no orientation a viewer would use
        return False


def orientation_only_exif(orientation: int) -> bytes:
    """A TIFF-header EXIF holding only IFD0 Orientation: no other tag, no sub-IFD, no IFD1."""
    if not 1 <= orientation <= 8:
        raise ValueError(f"orientation {orientation} is not in 1..8")
    # big-endian header, IFD0 at 8: one entry (tag, SHORT, count 1, value left-justified), next IFD 0
    return b"MM\x00*" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", TAG_ORIENTATION, 3, 1, orientation, 0) \
        + struct.pack(">I", 0)


def orientation_only_findings(blob: bytes) -> list[str]:
    """The verifier's strict check: what makes ``blob`` more than a minimal Orientation-only EXIF.

    Read by its own strict loop, not by the walker that located the fix, so it is independent of it. Bytes
    past the one IFD are a finding too: nothing may hide in slack space.
    """
    body = tiff_body(blob)
    if body is None:
        return ["EXIF without a TIFF header"]
    order = "<" if body[:2] == b"II" else ">"
    if len(body) < 8:
        return ["EXIF shorter than its header"]
    (ifd0,) = struct.unpack(order + "I", body[4:8])
    if ifd0 < 8 or ifd0 + 2 > len(body):
        return [f"EXIF IFD0 offset {ifd0} outside the blob"]
    (count,) = struct.unpack(order + "H", body[ifd0:ifd0 + 2])
    end = ifd0 + 2 + 12 * count + 4
    if end > len(body):
        return [f"EXIF IFD0 of {count} entries runs past the blob"]
    findings = []
    for index in range(count):
        at = ifd0 + 2 + 12 * index
        tag, kind, n = struct.unpack(order + "HHI", body[at:at + 8])
        if tag != TAG_ORIENTATION:
            findings.append(f"EXIF IFD0 tag {tag:#06x}")
        elif kind != 3 or n != 1:
            findings.append("EXIF Orientation is not one SHORT")
    (next_ifd,) = struct.unpack(order + "I", body[end - 4:end])
    if next_ifd:
        findings.append("EXIF IFD1 (thumbnail) present")
    if count != 1:
        findings.append(f"EXIF IFD0 has {count} entries, not 1")
    if len(body) != end or ifd0 != 8:
        findings.append(f"EXIF holds {len(body) - (end - ifd0 + 8)} bytes outside IFD0")
    return findings


__all__ = ["locate_in_exif", "describe_exif", "orientation_of", "has_orientation", "orientation_only_exif",
           "orientation_only_findings", "iso_datetime", "tiff_body"]
