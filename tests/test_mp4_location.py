"""Locating place and time in ISO-BMFF files: ISO 6709 text, the box walker's bounds, real fixtures
and the real-device corpus."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from fixtures import video
from tests.conftest import CORPUS, corpus_params, expected_fix
from worker.errors import SanitizeError
from worker.formats.base import Limits
from worker.formats.walkers.boxes import iter_boxes, walk
from worker.formats.av.mp4_location import locate, parse_keys, parse_loci, read_location, udta_xyz_text
from worker.location import NoFix, parse_iso6709
from worker.sanitizer import sanitize_file

ISO_BMFF = ("video/mp4", "video/quicktime", "audio/mp4", "audio/x-m4a", "video/3gpp", "video/3gpp2",
            "application/octet-stream")


@pytest.mark.parametrize("text, expected", [
    ("+40.7128-074.0060/", (40.7128, -74.006, None)),
    ("+40.7128-074.0060+010.000/", (40.7128, -74.006, 10.0)),
    ("-33.8568+151.2153-005.5/", (-33.8568, 151.2153, -5.5)),
    ("+52.4597+013.3220+051.178/", (52.4597, 13.322, 51.178)),
    ("+4042.768-07400.360/", (40 + 42.768 / 60, -(74 + 0.36 / 60), None)),                  # DM
    ("+404246.08-0740021.6/", (40 + 42 / 60 + 46.08 / 3600, -(74 + 21.6 / 3600), None)),  # DMS
    ("+404246.08-0740021.6+100/", (40 + 42 / 60 + 46.08 / 3600, -(74 + 21.6 / 3600), 100.0)),
    ("+40-074/", (40.0, -74.0, None)),
    ("+40.7128-074.0060+010.000CRSWGS_84/", (40.7128, -74.006, 10.0)),
    ("+40.7128-074.0060", (40.7128, -74.006, None)),
])
def test_iso6709_forms(text, expected):
    lat, lon, alt = parse_iso6709(text)
    assert lat == pytest.approx(expected[0], abs=1e-9)
    assert lon == pytest.approx(expected[1], abs=1e-9)
    assert alt == (pytest.approx(expected[2]) if expected[2] is not None else None)


@pytest.mark.parametrize("junk", ["", "40.7128,-74.0060", "hello", "+40.7128", "+4.0.7-074/", "++40-074/",
                                  "+4042768-074/"])
def test_iso6709_junk_is_no_fix(junk):
    with pytest.raises(NoFix):
        parse_iso6709(junk)


def test_udta_xyz_text_reads_length_prefixed_string_and_refuses_overrun():
    assert udta_xyz_text(struct.pack(">HH", 5, 0x15c7) + b"+1+2/") == "+1+2/"
    with pytest.raises(NoFix):
        udta_xyz_text(struct.pack(">HH", 50, 0x15c7) + b"+1+2/")


def test_loci_fixed_point_order_is_longitude_first():
    payload = video.loci_box(51.5, -0.125, 35.0, name="Home")[8:]
    lat, lon, alt = parse_loci(payload)
    assert (lat, lon, alt) == (51.5, -0.125, 35.0)
    with pytest.raises(NoFix):
        parse_loci(payload[:14])


def test_keys_box_entries_and_a_lying_count():
    entry = lambda name: struct.pack(">I4s", 8 + len(name), b"mdta") + name  # noqa: E731
    body = entry(b"com.apple.quicktime.make") + entry(b"com.apple.quicktime.location.ISO6709")
    assert parse_keys(struct.pack(">II", 0, 2) + body) == ["com.apple.quicktime.make",
                                                            "com.apple.quicktime.location.ISO6709"]
    with pytest.raises(SanitizeError) as e:
        parse_keys(struct.pack(">II", 0, 3) + body)
    assert e.value.code == "corrupt"


def test_box_walker_checks_sizes_against_what_remains():
    good = video.box(b"free", b"x" * 8)
    assert [b.type for b in iter_boxes(io.BytesIO(good), 0, len(good))] == [b"free"]
    # a size larger than the parent
    with pytest.raises(SanitizeError) as e:
        list(iter_boxes(io.BytesIO(good), 0, len(good) - 1))
    assert e.value.code == "truncated"
    # a 64-bit largesize claiming petabytes
    large = struct.pack(">I4sQ", 1, b"mdat", 1 << 50) + b"\0" * 8
    with pytest.raises(SanitizeError) as e:
        list(iter_boxes(io.BytesIO(large), 0, len(large)))
    assert e.value.code == "truncated"
    # a size smaller than the header
    tiny = struct.pack(">I4s", 4, b"moov") + b"\0" * 8
    with pytest.raises(SanitizeError) as e:
        list(iter_boxes(io.BytesIO(tiny), 0, len(tiny)))
    assert e.value.code == "corrupt"
    # size 0 runs to the end of the parent; a valid largesize is honoured
    to_end = struct.pack(">I4s", 0, b"mdat") + b"abc"
    assert [b.end for b in iter_boxes(io.BytesIO(to_end), 0, len(to_end))] == [len(to_end)]
    exact = struct.pack(">I4sQ", 1, b"mdat", 20) + b"abcd"
    assert [(b.header, b.end) for b in iter_boxes(io.BytesIO(exact), 0, 20)] == [(16, 20)]


def test_walker_refuses_runaway_nesting():
    nested = b""
    for _ in range(40):
        nested = video.box(b"trak", nested)
    with pytest.raises(SanitizeError) as e:
        list(walk(io.BytesIO(nested), 0, len(nested)))
    assert e.value.code == "corrupt"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    folder = tmp_path_factory.mktemp("av")
    out = {}
    for name, builder, ext in [("iphone", video.iphone_like_mov, ".mov"), ("android", video.android_like_mp4, ".mp4"),
                               ("gopro", video.gopro_like_mp4, ".mp4"), ("memo", video.voice_memo_m4a, ".m4a"),
                               ("loci", video.loci_3gp, ".3gp")]:
        path = folder / (name + ext)
        out[name] = (path, builder(path))
    return out


@pytest.mark.parametrize("name, source", [("iphone", "mdta"), ("android", "quicktime"), ("memo", "quicktime"),
                                          ("loci", "3gpp")])
def test_fixture_fix_found_to_a_micro_degree(built, name, source):
    path, (lat, lon) = built[name]
    found = locate(path, Limits())
    assert found.fix is not None
    assert found.fix.lat == pytest.approx(lat, abs=1e-6)
    assert found.fix.lon == pytest.approx(lon, abs=1e-6)
    assert found.fix.source == source


def test_iphone_keys_give_accuracy_altitude_and_local_capture_time(built):
    found = locate(built["iphone"][0], Limits())
    assert found.fix.accuracy == 35.0
    assert found.fix.alt == 10.0
    assert found.captured_at == "2024-05-01T10:20:30-04:00"


def test_mvhd_creation_time_is_the_capture_time_without_apple_keys(built):
    assert locate(built["android"][0], Limits()).captured_at == "2024-06-02T08:00:00Z"


def test_gopro_like_has_no_box_fix(built):
    assert locate(built["gopro"][0], Limits()).fix is None


def test_zero_zero_loci_is_no_fix(tmp_path):
    path = tmp_path / "zero.3gp"
    video.loci_3gp(path)
    data = path.read_bytes()
    at = data.rfind(b"loci")
    patched = bytearray(data)
    # the coordinates sit after version/flags, language, "Home\0" and the role byte
    coords = at + 4 + 4 + 2 + 5 + 1
    patched[coords:coords + 8] = b"\0" * 8
    path.write_bytes(bytes(patched))
    found = locate(path, Limits())
    assert found.fix is None
    assert any("0,0" in n for n in found.notes)


def xmp_uuid_box(lat_text: str, lon_text: str) -> bytes:
    from fixtures.jpeg import xmp_packet
    packet = xmp_packet(f'exif:GPSLatitude="{lat_text}" exif:GPSLongitude="{lon_text}"/>')
    return video.box(b"uuid", bytes.fromhex("BE7ACFCB97A942E89C71999491E3AFAC") + packet)


def test_xmp_in_a_uuid_box_is_read_and_outranks_the_container(built, tmp_path):
    """An editor's XMP packet (Adobe's uuid box, here after mdat) holds a fix: read, and preferred to
    ©xyz as DESIGN.md orders the sources; the agency copy carries neither."""
    from tests.readback import exiftool, sensitive_tags
    from worker.sanitizer import sanitize_file

    path = tmp_path / "edited.mp4"
    path.write_bytes(built["android"][0].read_bytes() + xmp_uuid_box("40,41.4N", "73,57.0W"))
    found = locate(path, Limits())
    assert found.fix.source == "xmp"
    assert (found.fix.lat, found.fix.lon) == (pytest.approx(40.69, abs=1e-6), pytest.approx(-73.95, abs=1e-6))
    report = sanitize_file(path, tmp_path / "copy", Limits())
    assert report.status == "sanitized" and report.found.fix.source == "xmp"
    copy = Path(report.output)
    assert bytes.fromhex("BE7ACFCB97A942E89C71999491E3AFAC") not in copy.read_bytes()
    assert sensitive_tags(exiftool(copy)) == []


def test_a_uuid_box_that_is_not_xmp_is_not_parsed(built, tmp_path):
    path = tmp_path / "other-uuid.mp4"
    path.write_bytes(built["android"][0].read_bytes() + video.box(b"uuid", bytes(16) + b"opaque vendor data"))
    assert locate(path, Limits()).fix.source == "quicktime"


def test_a_truncated_file_raises_truncated(built, tmp_path):
    data = built["android"][0].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(SanitizeError) as e:
        with open(cut, "rb") as f:
            read_location(f)
    assert e.value.code == "truncated"


@pytest.mark.corpus
@pytest.mark.parametrize("row", corpus_params(formats=ISO_BMFF))
def test_corpus_fix_extracted_and_none_invented(row):
    path = CORPUS / row["relative_path"]
    if path.read_bytes()[4:8] not in (b"ftyp", b"free", b"moov", b"mdat", b"wide"):
        pytest.skip("not an ISO-BMFF file")
    found = locate(path, Limits())
    expected = expected_fix(row)
    if expected is None:
        assert found.fix is None
    else:
        assert found.fix is not None
        assert found.fix.lat == pytest.approx(expected[0], abs=1e-6)
        assert found.fix.lon == pytest.approx(expected[1], abs=1e-6)


# --- GoPro GPMF telemetry ------------------------------------------------------------------------

def test_gpmf_first_fix_is_read_and_the_track_dropped(tmp_path):
    from worker.formats.av.mp4_location import locate_mp4

    src = tmp_path / "GX010042.MP4"
    lat, lon = video.gopro_gpmf_mp4(src, 40.712776, -74.005974, 12.5)
    found = locate_mp4(src)
    assert (found.fix.lat, found.fix.lon, found.fix.alt, found.fix.source) == (lat, lon, 12.5, "gpmf")
    assert locate_mp4(src.read_bytes()).fix == found.fix          # the motion-photo entry point: bytes
    report = sanitize_file(src, tmp_path / "copy", Limits())
    assert report.status == "sanitized", report.as_json()
    assert report.found.fix == found.fix and "data stream gpmd" in report.removed
    copy = Path(report.output).read_bytes()
    assert b"gpmd" not in copy and b"GPS5" not in copy


def test_gpmf_without_a_lock_is_no_fix(tmp_path):
    from worker.formats.av.mp4_location import locate_mp4

    src = tmp_path / "nolock.mp4"
    video.gopro_gpmf_mp4(src, 40.7, -74.0, 10.0, locked=False)
    found = locate_mp4(src)
    assert found.fix is None and any("gpmf" in note for note in found.notes)


@pytest.mark.parametrize("payload", [
    b"DEVC\0\1\xff\xff" + b"STRM\0\1\0\x10",                                   # lengths past the data
    (b"DEVC\0\1\0\x08" * 50)[:400],                                           # nesting far too deep
    b"DEVC\0\1\0\x1c" + b"STRM\0\1\0\x14" + b"SCAL\x6c\4\0\1" + bytes(4) + b"GPS5\x6c\x14\0\0",  # zero scale, no record
    b"GPS5\x6c\x14\xff\xff",                                                  # a record count the data lacks
])
def test_crafted_gpmf_gives_no_fix_and_no_error(payload):
    from worker.formats.av.gpmf import first_fix

    assert first_fix(payload) is None
