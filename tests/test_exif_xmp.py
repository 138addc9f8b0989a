"""The EXIF and XMP location readers on blobs written by piexif and by hand, including junk."""
from __future__ import annotations

import piexif
import pytest
from PIL import Image

from fixtures.jpeg import gps_ifd, picture, thumbnail_of, xmp_packet
from worker.exif import (describe_exif, locate_in_exif, orientation_of, orientation_only_exif,
                         orientation_only_findings)
from worker.xmp import MAX_XMP_BYTES, locate_in_xmp


def exif_blob(gps: dict | None = None, zeroth: dict | None = None, exif: dict | None = None) -> bytes:
    return piexif.dump({"0th": zeroth or {}, "Exif": exif or {}, "GPS": gps or {}})


def test_exif_fix_altitude_accuracy_and_time_with_offset():
    blob = exif_blob(gps_ifd(40.712776, -74.005974, alt=-3.5, accuracy=8.0),
                     exif={piexif.ExifIFD.DateTimeOriginal: b"2019:05:21 10:45:52",
                           piexif.ExifIFD.OffsetTimeOriginal: b"+02:00"})
    found = locate_in_exif(blob)
    assert found.fix.lat == pytest.approx(40.712776, abs=1e-6)
    assert found.fix.lon == pytest.approx(-74.005974, abs=1e-6)
    assert found.fix.alt == pytest.approx(-3.5)          # altitude ref 1: below sea level
    assert found.fix.accuracy == pytest.approx(8.0)
    assert found.fix.source == "exif"
    assert found.captured_at == "2019-05-21T10:45:52+02:00"


def test_exif_with_and_without_the_app1_prefix():
    blob = exif_blob(gps_ifd(-33.8688, 151.2093))
    assert blob.startswith(b"Exif\x00\x00")
    for variant in (blob, blob[6:]):
        fix = locate_in_exif(variant).fix
        assert (fix.lat, fix.lon) == pytest.approx((-33.8688, 151.2093), abs=1e-6)


def test_capture_time_falls_back_to_digitized_then_datetime():
    digitized = exif_blob(exif={piexif.ExifIFD.DateTimeDigitized: b"2020:01:02 03:04:05"})
    assert locate_in_exif(digitized).captured_at == "2020-01-02T03:04:05"
    plain = exif_blob(zeroth={piexif.ImageIFD.DateTime: b"2021:06:07 08:09:10"})
    assert locate_in_exif(plain).captured_at == "2021-06-07T08:09:10"
    zeros = exif_blob(exif={piexif.ExifIFD.DateTimeOriginal: b"0000:00:00 00:00:00"})
    assert locate_in_exif(zeros).captured_at is None


def _gps(lat, lon=None, lat_ref=b"N", lon_ref=b"E") -> dict:
    ifd = {piexif.GPSIFD.GPSLatitudeRef: lat_ref, piexif.GPSIFD.GPSLatitude: lat}
    if lon is not None:
        ifd.update({piexif.GPSIFD.GPSLongitudeRef: lon_ref, piexif.GPSIFD.GPSLongitude: lon})
    return ifd


@pytest.mark.parametrize("gps, reason", [
    (_gps(((40, 0), (42, 1), (0, 1)), ((74, 1), (0, 1), (0, 1))), "junk rational"),
    (_gps(((4294967295, 1), (0, 1), (0, 1)), ((74, 1), (0, 1), (0, 1))), "out of range"),
    (_gps(((4294967295, 1), (0, 1), (0, 1))), "without latitude and longitude"),
    (_gps(((40, 1), (0, 1), (0, 1)), ((200, 1), (0, 1), (0, 1))), "out of range"),
    (_gps(((0, 1), (0, 1), (0, 1)), ((0, 1), (0, 1), (0, 1))), "0,0"),
])
def test_exif_junk_gives_no_fix_and_says_why(gps, reason):
    found = locate_in_exif(exif_blob(gps))
    assert found.fix is None
    assert any(reason in note for note in found.notes), found.notes


def test_exif_southern_western_refs_are_negative():
    fix = locate_in_exif(exif_blob(_gps(((33, 1), (30, 1), (0, 1)), ((70, 1), (15, 1), (0, 1)), b"S", b"W"))).fix
    assert (fix.lat, fix.lon) == pytest.approx((-33.5, -70.25))


@pytest.mark.parametrize("blob", [b"", b"Exif\x00\x00", b"II*\x00\xff\xff\xff\xff", b"MM\x00*\x00\x00\x00\x08\xff\xff",
                                  b"garbage that is not exif at all", b"\x00" * 100])
def test_exif_garbage_never_raises(blob):
    found = locate_in_exif(blob)
    assert found.fix is None
    assert orientation_of(blob) == 1


def test_exif_every_truncation_of_a_real_blob_is_handled():
    blob = exif_blob(gps_ifd(40.7, -74.0, alt=5), zeroth={piexif.ImageIFD.Make: b"Google"},
                     exif={piexif.ExifIFD.DateTimeOriginal: b"2024:05:17 10:05:09"})
    for cut in range(0, len(blob), 3):
        found = locate_in_exif(blob[:cut])
        assert found.fix is None or found.fix.lat == pytest.approx(40.7, abs=1e-6)


def test_orientation_of():
    assert orientation_of(exif_blob(zeroth={piexif.ImageIFD.Orientation: 6})) == 6
    assert orientation_of(exif_blob(zeroth={piexif.ImageIFD.Make: b"x"})) == 1
    assert orientation_of(exif_blob(zeroth={piexif.ImageIFD.Orientation: 9})) == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_only_exif_holds_only_orientation(orientation):
    blob = orientation_only_exif(orientation)
    assert orientation_of(blob) == orientation
    assert orientation_only_findings(blob) == []
    exif = Image.Exif()
    exif.load(blob)
    assert dict(exif) == {0x0112: orientation}
    assert locate_in_exif(blob).fix is None


def test_orientation_only_exif_refuses_nonsense():
    with pytest.raises(ValueError):
        orientation_only_exif(0)


def test_orientation_only_findings_catch_more_than_orientation():
    full = exif_blob(gps_ifd(40.7, -74.0), zeroth={piexif.ImageIFD.Orientation: 6})
    assert any("0x8825" in f for f in orientation_only_findings(full))
    assert orientation_only_findings(orientation_only_exif(6) + b"hidden") != []
    with_ifd1 = bytearray(orientation_only_exif(6))
    with_ifd1[-4:] = (8).to_bytes(4, "big")
    assert any("IFD1" in f for f in orientation_only_findings(bytes(with_ifd1)))
    assert orientation_only_findings(b"not exif") != []


def test_describe_exif_names_gps_and_thumbnail():
    blob = piexif.dump({"0th": {piexif.ImageIFD.Make: b"Google"}, "GPS": gps_ifd(40.7, -74.0),
                        "1st": {piexif.ImageIFD.Compression: 6}, "thumbnail": thumbnail_of(picture())})
    text = describe_exif(blob)
    assert "GPS" in text and "thumbnail" in text


# --- XMP -----------------------------------------------------------------------------------------

def xmp_attrs(attrs: str) -> bytes:
    return xmp_packet(attrs + "/>")


@pytest.mark.parametrize("lat, lon, expected", [
    ('"40,42.768N"', '"74,0.36W"', (40.7128, -74.006)),
    ('"40,42,46.08N"', '"74,0,21.6W"', (40.7128, -74.006)),
    ('"40.7128" exif:GPSLatitudeRef="N"', '"74.006" exif:GPSLongitudeRef="W"', (40.7128, -74.006)),
    ('"-33.8688"', '"151.2093"', (-33.8688, 151.2093)),
    ('"33,52.128S"', '"151,12.558E"', (-33.8688, 151.2093)),
])
def test_xmp_coordinate_forms(lat, lon, expected):
    found = locate_in_xmp(xmp_attrs(f"exif:GPSLatitude={lat} exif:GPSLongitude={lon}"))
    assert (found.fix.lat, found.fix.lon) == pytest.approx(expected, abs=1e-6)
    assert found.fix.source == "xmp"


def test_xmp_elements_altitude_and_time():
    packet = xmp_packet(">\n<exif:GPSLatitude>40,42.768N</exif:GPSLatitude>"
                        "<exif:GPSLongitude>74,0.36W</exif:GPSLongitude>"
                        "<exif:GPSAltitude>123/10</exif:GPSAltitude><exif:GPSAltitudeRef>1</exif:GPSAltitudeRef>"
                        "<xmp:CreateDate>2019-05-21T10:45</xmp:CreateDate>"
                        "<exif:DateTimeOriginal>2019-05-21T10:45:52.25+02:00</exif:DateTimeOriginal>"
                        "</rdf:Description>")
    found = locate_in_xmp(packet)
    assert (found.fix.lat, found.fix.lon) == pytest.approx((40.7128, -74.006), abs=1e-6)
    assert found.fix.alt == pytest.approx(-12.3)
    assert found.captured_at == "2019-05-21T10:45:52+02:00"


def test_xmp_time_from_photoshop_or_createdate():
    assert locate_in_xmp(xmp_attrs('photoshop:DateCreated="2018-10-27T13:27:23Z"')).captured_at \
        == "2018-10-27T13:27:23+00:00"
    assert locate_in_xmp(xmp_attrs('xmp:CreateDate="2018-10-27T13:27"')).captured_at == "2018-10-27T13:27:00"
    assert locate_in_xmp(xmp_attrs('xmp:CreateDate="2018-10-27"')).captured_at is None


IPTC_EXT = 'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'


def test_xmp_location_created_is_read_and_location_shown_is_not():
    shown_only = xmp_packet(">\n<Iptc4xmpExt:LocationShown><rdf:Bag><rdf:li rdf:parseType='Resource'>"
                            "<exif:GPSLatitude>48,8.82N</exif:GPSLatitude><exif:GPSLongitude>17,5.88E</exif:GPSLongitude>"
                            "</rdf:li></rdf:Bag></Iptc4xmpExt:LocationShown></rdf:Description>", IPTC_EXT)
    assert locate_in_xmp(shown_only).fix is None
    created = shown_only.replace(b"LocationShown", b"LocationCreated")
    fix = locate_in_xmp(created).fix
    assert (fix.lat, fix.lon) == pytest.approx((48.147, 17.098), abs=1e-6)


@pytest.mark.parametrize("packet, reason", [
    (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY lat "40,42.768N">]>'
     b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
     b'<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="&lat;" '
     b'exif:GPSLongitude="74,0.36W"/></rdf:RDF></x:xmpmeta>', "DOCTYPE"),
    (b"not xml at all", "no x:xmpmeta"),
    (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF></x:xmpmeta>', "well-formed"),
    (b"<x:xmpmeta " + b" " * MAX_XMP_BYTES + b"/></x:xmpmeta>", "over the limit"),
])
def test_xmp_unsafe_or_broken_packets_give_a_note(packet, reason):
    found = locate_in_xmp(packet)
    assert found.fix is None
    assert any(reason in note for note in found.notes), found.notes


@pytest.mark.parametrize("lat, lon, reason", [
    ("abc", "74,0.36W", "unreadable coordinate"),
    ("40,75.5N", "74,0.36W", "out of range"),
    ("95.0", "74.0", "out of range"),
    ("0.0", "0.0", "0,0"),
])
def test_xmp_junk_coordinates(lat, lon, reason):
    found = locate_in_xmp(xmp_attrs(f'exif:GPSLatitude="{lat}" exif:GPSLongitude="{lon}"'))
    assert found.fix is None
    assert any(reason in note for note in found.notes), found.notes
