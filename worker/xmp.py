"""The XMP location reader: GPS fix and capture time from one XMP packet, any container.

XMP writes the EXIF GPS values as text (``exif:GPSLatitude="40,42.768N"``), either as attributes
of ``rdf:Description`` or as child elements; IPTC Extension writes the same properties inside an
``Iptc4xmpExt:LocationCreated`` structure. ``LocationShown`` is where the *subject* is, not where
the camera was, and is never read.

The packet is untrusted XML: a DOCTYPE (and so any entity) is refused before parsing, the size is
capped, and any parser failure is a note, never an exception.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from worker.exif import iso_datetime
from worker.location import Found, found_from

if TYPE_CHECKING:   # the parser itself is imported by parse_packet: most files carry no XMP
    import xml.etree.ElementTree as ET

MAX_XMP_BYTES = 4 * 1024 * 1024

NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
NS_EXIF = "http://ns.adobe.com/exif/1.0/"
NS_XMP = "http://ns.adobe.com/xap/1.0/"
NS_PHOTOSHOP = "http://ns.adobe.com/photoshop/1.0/"
NS_IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"

_DESCRIPTION = f"{{{NS_RDF}}}Description"
_LOCATION_CREATED = f"{{{NS_IPTC_EXT}}}LocationCreated"
_GPS_NAMES = ("GPSLatitude", "GPSLatitudeRef", "GPSLongitude", "GPSLongitudeRef", "GPSAltitude",
              "GPSAltitudeRef", "GPSHPositioningError")
_TIME_PROPERTIES = ((NS_EXIF, "DateTimeOriginal"), (NS_PHOTOSHOP, "DateCreated"), (NS_XMP, "CreateDate"),
                    (NS_EXIF, "DateTimeDigitized"))

# "40,42.768N", "40,42,46.08N", "40.7128N", "-74.006", "40.7128" (ref given separately)
# pattern text, compiled (and cached) by re on first use rather than at import (#10, start time)
_COORDINATE = r"(?i)^\s*([+-]?\d+(?:\.\d+)?)(?:\s*,\s*(\d+(?:\.\d+)?))?(?:\s*,\s*(\d+(?:\.\d+)?))?\s*([NSEW])?\s*$"
_RATIONAL = r"^\s*([+-]?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?\s*$"
_XMP_DATE = (r"^\s*(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?"
             r"(Z|[+-]\d{2}:?\d{2})?)?)?)?\s*$")


class _Junk(ValueError):
    pass


def coordinate(text: str | None, ref: str | None = None) -> float | None:
    """Signed degrees from an XMP GPSCoordinate (or decimal) text; None when absent or unreadable."""
    if text is None:
        return None
    m = re.match(_COORDINATE, text)
    if not m:
        raise _Junk(f"unreadable coordinate {text[:40]!r}")
    whole, minutes, seconds, hemisphere = m.groups()
    value = abs(float(whole)) + float(minutes or 0) / 60 + float(seconds or 0) / 3600
    if (minutes and float(minutes) >= 60) or (seconds and float(seconds) >= 60):
        raise _Junk(f"minutes or seconds out of range in {text[:40]!r}")
    negative = whole.strip().startswith("-")
    letter = (hemisphere or (ref or "").strip()[:1]).upper()
    if letter in ("S", "W"):
        negative = True
    return -value if negative else value


def rational(text: str | None) -> float | None:
    """A number from "123/10" or "12.3"; None when absent, junk or a zero denominator."""
    m = re.match(_RATIONAL, text or "")
    if not m:
        return None
    numerator, denominator = float(m.group(1)), float(m.group(2) or 1)
    return numerator / denominator if denominator else None


def xmp_datetime(text: str | None) -> str | None:
    """ISO 8601 from an XMP date ("2019-05-21T10:45:52+02:00", with or without seconds/offset)."""
    if not text:
        return None
    m = re.match(_XMP_DATE, text)
    if not m:
        return iso_datetime(text)   # some writers put the EXIF form "2019:05:21 10:45:52" in XMP
    year, month, day, hour, minute, second, offset = m.groups()
    if hour is None:
        return None   # a date alone is not a capture time
    stamp = iso_datetime(f"{year}:{month}:{day} {hour}:{minute}:{second or '00'}")
    if stamp and offset:
        if offset == "Z":
            stamp += "+00:00"
        else:
            digits = offset.replace(":", "")
            stamp += f"{digits[:3]}:{digits[3:]}"
    return stamp


def _xml_of(packet: bytes) -> bytes:
    """The XML document inside a packet: from <x:xmpmeta> (or <rdf:RDF>) to its end tag."""
    for start_tag, end_tag in ((b"<x:xmpmeta", b"</x:xmpmeta>"), (b"<rdf:RDF", b"</rdf:RDF>")):
        start = packet.find(start_tag)
        end = packet.rfind(end_tag)
        if start >= 0 and end > start:
            return packet[start:end + len(end_tag)]
    raise _Junk("no x:xmpmeta or rdf:RDF element")


def parse_packet(packet: bytes) -> ET.Element:
    """The root element of a packet; raises ValueError for anything unsafe or unreadable."""
    if len(packet) > MAX_XMP_BYTES:
        raise _Junk(f"{len(packet)} bytes of XMP is over the limit")
    upper = packet.upper()
    if b"<!DOCTYPE" in upper or b"<!ENTITY" in upper:
        raise _Junk("DOCTYPE or ENTITY declaration refused")
    import xml.etree.ElementTree as ET

    try:
        return ET.fromstring(_xml_of(packet))
    except ET.ParseError as e:
        raise _Junk(f"not well-formed XML ({e})") from None


def _simple_properties(node: ET.Element, namespace: str) -> dict[str, str]:
    """Properties of one namespace held by ``node``: its attributes and its childrens' texts."""
    values: dict[str, str] = {}
    prefix = f"{{{namespace}}}"
    for key, value in node.attrib.items():
        if key.startswith(prefix):
            values.setdefault(key[len(prefix):], value)
    for child in node:
        if child.tag.startswith(prefix) and len(child) == 0 and child.text and child.text.strip():
            values.setdefault(child.tag[len(prefix):], child.text.strip())
    return values


def _fix_from(props: dict[str, str], source: str, captured_at: str | None) -> Found | None:
    if "GPSLatitude" not in props and "GPSLongitude" not in props:
        return None
    try:
        lat = coordinate(props.get("GPSLatitude"), props.get("GPSLatitudeRef"))
        lon = coordinate(props.get("GPSLongitude"), props.get("GPSLongitudeRef"))
    except _Junk as e:
        return Found(captured_at=captured_at, notes=(f"{source}: {e}",))
    alt = rational(props.get("GPSAltitude"))
    if alt and (props.get("GPSAltitudeRef") or "").strip() == "1":
        alt = -alt
    accuracy = rational(props.get("GPSHPositioningError"))
    return found_from(lat, lon, alt=alt, accuracy=accuracy, source=source, captured_at=captured_at)


def _location_created(root: ET.Element) -> dict[str, str]:
    """exif:GPS* inside the first Iptc4xmpExt:LocationCreated structure that has any."""
    for created in root.iter(_LOCATION_CREATED):
        for node in created.iter():
            props = _simple_properties(node, NS_EXIF)
            if "GPSLatitude" in props or "GPSLongitude" in props:
                return props
    return {}


def locate_in_xmp(packet: bytes) -> Found:
    """The GPS fix and capture time in one XMP packet. Never raises: junk gives a note."""
    source = "xmp"
    try:
        root = parse_packet(packet)
    except _Junk as e:
        return Found(notes=(f"{source}: {e}",))
    except Exception as e:  # noqa: BLE001 - expat can fail in ways ParseError does not cover
        return Found(notes=(f"{source}: unreadable ({type(e).__name__})",))
    gps: dict[str, str] = {}
    times: dict[tuple[str, str], str] = {}
    for description in root.iter(_DESCRIPTION):
        for name, value in _simple_properties(description, NS_EXIF).items():
            if name in _GPS_NAMES:
                gps.setdefault(name, value)
        for namespace, name in _TIME_PROPERTIES:
            value = _simple_properties(description, namespace).get(name)
            if value:
                times.setdefault((namespace, name), value)
    captured_at = None
    for key in _TIME_PROPERTIES:
        captured_at = xmp_datetime(times.get(key))
        if captured_at:
            break
    readings = [r for r in (_fix_from(gps, source, captured_at),
                            _fix_from(_location_created(root), source, captured_at)) if r]
    for reading in readings:
        if reading.fix:
            notes = tuple(n for r in readings for n in r.notes)
            return Found(fix=reading.fix, captured_at=captured_at, notes=notes)
    return Found(captured_at=captured_at, notes=tuple(n for r in readings for n in r.notes))


__all__ = ["locate_in_xmp", "parse_packet", "coordinate", "rational", "xmp_datetime"]
