"""JPEG end to end: fixtures and the real-device corpus through sanitize_file, read back with
Pillow and ExifTool; the walker's rejections; the verifier catching planted metadata."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from fixtures import jpeg as fx
from tests.conftest import CORPUS, corpus_params, expected_fix
from tests.readback import exiftool, sensitive_tags
from worker import icc
from worker.errors import SanitizeError
from worker.formats.photo import jpeg
from worker.formats.base import Limits, Rebuilt
from worker.sanitizer import sanitize_file
from worker.verify import verify_copy

LIMITS = Limits()
JPEG_ROWS = corpus_params("image", ("image/jpeg",))


def pixels(path: Path) -> tuple[tuple[int, int], bytes]:
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return im.size, im.convert("RGBA").tobytes()


def icc_of(path: Path) -> bytes | None:
    with Image.open(path) as im:
        return im.info.get("icc_profile")


def scans(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [data[s.start:s.end] for s in jpeg.walk(data).segments if s.marker in (jpeg.SOS, *jpeg.SOF_MARKERS)]


def leaks(path: Path) -> list[str]:
    """ExifTool's sensitive tags in the copy; the ICC profile is kept by design, so its
    description and copyright strings are not leaks."""
    return [t for t in sensitive_tags(exiftool(path)) if not t.startswith("ICC")]


def check_clean_copy(src: Path, report) -> None:
    out = Path(report.output)
    assert out.suffix == ".jpg" and report.format == "jpeg"
    assert pixels(src) == pixels(out)
    assert scans(src) == scans(out), "scan data must be copied byte for byte"
    assert leaks(out) == []
    tags = exiftool(out)
    assert [k for k in tags if k.startswith("IFD0:")] in ([], ["IFD0:Orientation"])
    assert not any(k.split(":")[0] in ("ExifIFD", "GPS", "IFD1", "MakerNotes", "IPTC", "Photoshop", "MPF0")
                   or k.startswith("XMP") for k in tags)
    assert out.read_bytes().endswith(b"\xff\xd9"), "nothing may follow EOI"
    if icc_of(src):
        assert icc_of(out) == icc.rebuild(icc_of(src)), "the copy's profile is the rebuilt one"
        assert icc.findings(icc_of(out)) == []
    assert jpeg.inspect(out) == []


def assert_fix(report, expected) -> None:
    fix = report.found.fix
    if expected is None:
        assert fix is None, f"invented a location: {fix}"
    else:
        assert fix is not None, f"missed the location {expected}: {report.found.notes}"
        assert (fix.lat, fix.lon) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name", sorted(fx.BUILDERS))
def test_fixture_is_sanitized_losslessly(name, tmp_path):
    src = tmp_path / f"{name}.jpg"
    expected = fx.BUILDERS[name](src)
    report = sanitize_file(src, tmp_path / f"{name}-copy", LIMITS)
    assert report.status == "sanitized", report.error and report.error.as_dict()
    check_clean_copy(src, report)
    assert_fix(report, expected)


def test_android_motion_photo_reports_what_it_removed(tmp_path):
    src = tmp_path / "pxl.jpg"
    fx.android_phone_jpeg(src)
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    removed = " | ".join(report.removed)
    assert "APP1 Exif (GPS" in removed and "thumbnail" in removed and "maker note" in removed
    assert "APP1 XMP" in removed
    assert "motion photo video" in removed
    assert report.found.captured_at == "2024-05-17T10:05:09-04:00"
    assert report.found.fix.alt == pytest.approx(10.5) and report.found.fix.accuracy == pytest.approx(12.0)


def test_rotated_photo_keeps_only_orientation(tmp_path):
    src = tmp_path / "iphone.jpg"
    fx.iphone_like_jpeg(src, orientation=6)
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "sanitized", report.error and report.error.as_dict()
    tags = exiftool(Path(report.output))
    assert tags["IFD0:Orientation"] == 6
    with Image.open(report.output) as im:
        assert dict(im.getexif()) == {0x0112: 6}
        assert ImageOps.exif_transpose(im).size == (48, 64)


def test_xmp_fix_used_when_exif_has_none(tmp_path):
    src = tmp_path / "xmp.jpg"
    fx.xmp_only_gps_jpeg(src)
    found = jpeg.locate(src, LIMITS)
    assert found.fix.source == "xmp"
    assert found.fix.alt == pytest.approx(12.3)


def test_split_icc_is_kept_whole_and_in_order(tmp_path):
    src = tmp_path / "icc.jpg"
    fx.split_icc_jpeg(src)
    chunks = [s for s in jpeg.walk(src.read_bytes()).segments if s.marker == jpeg.APP2]
    assert len(chunks) >= 3
    copy = tmp_path / "copy.jpg"
    jpeg.rebuild(src, copy, LIMITS)
    copied = [s.payload for s in jpeg.walk(copy.read_bytes()).segments if s.marker == jpeg.APP2]
    assert [p[12:14] for p in copied] == [bytes((n, len(copied))) for n in range(1, len(copied) + 1)]
    assert icc_of(copy) == icc.rebuild(fx.big_icc_profile())


def test_progressive_file_has_several_scans_and_restarts(tmp_path):
    src = tmp_path / "prog.jpg"
    fx.progressive_restart_jpeg(src)
    segments = jpeg.walk(src.read_bytes()).segments
    assert sum(s.marker == jpeg.SOS for s in segments) > 1
    assert any(s.marker == jpeg.DRI for s in segments)


@pytest.mark.parametrize("row", JPEG_ROWS)
def test_corpus_jpeg(row, tmp_path):
    src = CORPUS / row["relative_path"]
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    if report.status != "sanitized":
        assert report.status == "rejected" and report.error.code in ("truncated", "corrupt"), report.as_json()
        return
    check_clean_copy(src, report)
    expected = expected_fix(row)
    if expected and (abs(expected[0]) > 90 or abs(expected[1]) > 180):
        expected = None   # an impossible fix in the manifest (a buggy panorama) is no fix
    assert_fix(report, expected)


# --- rejections ----------------------------------------------------------------------------------

def _report(tmp_path: Path, data: bytes, limits: Limits = LIMITS):
    src = tmp_path / "input.jpg"
    src.write_bytes(data)
    report = sanitize_file(src, tmp_path / "copy", limits)
    if report.status != "sanitized":
        assert not list(tmp_path.glob("copy*")), "no copy may be left behind"
    return report


@pytest.fixture
def clean_jpeg(tmp_path) -> bytes:
    path = tmp_path / "plain.jpg"
    fx.picture().save(path, "JPEG", quality=90)
    return path.read_bytes()


@pytest.mark.parametrize("mangle, code", [
    (lambda d: b"", "empty"),
    (lambda d: d[:4] + b"\xff\xff", "truncated"),
    (lambda d: d[:2] + b"\xff\xe1\xff\xf0Exif\x00\x00", "truncated"),
    (lambda d: b"\x89PNG\r\n\x1a\n" + d, "corrupt"),
    (lambda d: b"\xff\xd8\xff" + b"\x89PNG\r\n\x1a\n" + bytes(64), "corrupt"),
    (lambda d: b"\xff\xd8\xff\xfe\x00\x04ab\xff\xd9", "corrupt"),   # no frame, no scan
])
def test_damaged_or_lying_inputs_are_rejected(mangle, code, clean_jpeg, tmp_path):
    report = _report(tmp_path, mangle(clean_jpeg))
    assert report.status == "rejected", report.as_json()
    assert report.error.code == code, report.error.as_dict()


@pytest.mark.parametrize("mangle, why", [
    (lambda d: d[: len(d) // 2], "ends inside its image data"),
    (lambda d: d[:-2], "ends inside its image data"),
    (lambda d: d[:2] + b"\xff\xe0\x00\x01" + d[2:], "declares length 1"),
    (lambda d: d[:2] + b"\xff\xfe\x00\x04ab\x00\x00garbage" + d[2:], "expected a JPEG marker"),
    (lambda d: d[:len(d) // 2] + b"\xff\x02" + d[len(d) // 2:], "invalid JPEG marker"),
])
def test_damaged_but_decodable_photos_are_salvaged(mangle, why, clean_jpeg, tmp_path):
    """Real cameras write these (a cut, stray bytes, a bad marker in the scan): Pillow shows them, so
    the agency gets a copy re-encoded from the pixels, verified by decoding, and says so."""
    report = _report(tmp_path, mangle(clean_jpeg))
    assert report.status == "sanitized", report.as_json()
    assert report.as_json()["salvaged"] is True and why in report.as_json()["salvage_reason"]
    assert jpeg.inspect(Path(report.output)) == []
    with Image.open(report.output) as im:
        assert im.size == (64, 48) and im.getexif() == {}


def test_pixel_limit_from_the_frame_header(clean_jpeg, tmp_path):
    (tmp_path / "over").mkdir()
    (tmp_path / "at").mkdir()
    assert _report(tmp_path / "over", clean_jpeg, Limits(max_pixels=64 * 48 - 1)).error.code == "too_large"
    assert _report(tmp_path / "at", clean_jpeg, Limits(max_pixels=64 * 48)).status == "sanitized"


def test_entropy_end_skips_stuffing_and_restarts():
    data = b"\x12\xff\x00\x34\xff\xd3\x56\xff\xff\xd9"
    assert jpeg.entropy_end(data, 0) == 8
    with pytest.raises(SanitizeError) as e:
        jpeg.entropy_end(b"\x12\xff\x00\x34", 0)
    assert e.value.code == "truncated"


# --- the verifier --------------------------------------------------------------------------------

def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


PLANTS = {
    "APP13": lambda d: d[:2] + _segment(0xED, fx.photoshop_iptc({120: b"caption"})) + d[2:],
    "COM": lambda d: d[:2] + _segment(0xFE, b"12 Main St") + d[2:],
    "trailer": lambda d: d + b"\x00\x00\x00\x18ftypmp42",
    "XMP": lambda d: d[:2] + _segment(0xE1, jpeg.XMP_ID + fx.xmp_packet('exif:GPSLatitude="40,1N"/>')) + d[2:],
    "full EXIF": lambda d: d[:2] + _segment(0xE1, __import__("piexif").dump({"GPS": fx.gps_ifd(40.7, -74.0)})) + d[2:],
    "APP2 MPF": lambda d: d[:2] + _segment(0xE2, b"MPF\x00" + bytes(16)) + d[2:],
    "JFIF thumbnail": lambda d: d[:2] + _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x01\x01" + bytes(3))
    + d[2 + 18:],
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_verifier_catches_planted_metadata(plant, tmp_path):
    src = tmp_path / "src.jpg"
    fx.iptc_comment_jpeg(src)
    copy = tmp_path / "copy.jpg"
    rebuilt = jpeg.rebuild(src, copy, LIMITS)
    verify_copy(copy, rebuilt, src)   # the honest copy passes
    copy.write_bytes(PLANTS[plant](copy.read_bytes()))
    assert jpeg.inspect(copy) != []
    with pytest.raises(SanitizeError) as e:
        verify_copy(copy, rebuilt, src)
    assert e.value.code == "verify_failed"


def test_verifier_refuses_a_copy_of_another_format(tmp_path):
    copy = tmp_path / "copy.png"
    fx.picture().save(copy, "PNG")
    with pytest.raises(SanitizeError) as e:
        verify_copy(copy, Rebuilt(format="jpeg", media_type="image/jpeg", extension=".jpg"))
    assert e.value.code == "verify_failed"


def test_extended_xmp_is_reassembled_and_read(tmp_path):
    """A fix only in extended XMP (split over two APP1 chunks, out of order) is found, and dropped."""
    document = fx.xmp_packet('exif:GPSLatitude="40,42.768N" exif:GPSLongitude="74,0.36W"/>')
    guid = b"0123456789ABCDEF0123456789ABCDEF"
    half = len(document) // 2
    chunks = [_segment(0xE1, jpeg.XMP_EXTENSION_ID + guid + struct.pack(">II", len(document), offset) + part)
              for offset, part in ((half, document[half:]), (0, document[:half]))]
    src = tmp_path / "extended.jpg"
    fx.picture().save(src, "JPEG")
    data = src.read_bytes()
    src.write_bytes(data[:2] + b"".join(chunks) + data[2:])
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "sanitized"
    assert (report.found.fix.lat, report.found.fix.lon) == pytest.approx((40.7128, -74.006), abs=1e-6)
    assert "APP1 extended XMP" in report.removed
    assert leaks(Path(report.output)) == []


def test_damaged_variants_only_ever_raise_sanitize_errors(tmp_path):
    """Seeded byte flips and cuts of a phone photo: every failure is a SanitizeError with a code."""
    import random

    src = tmp_path / "pxl.jpg"
    fx.android_phone_jpeg(src)
    base, rng, codes = src.read_bytes(), random.Random(311), set()
    damaged, copy = tmp_path / "damaged.jpg", tmp_path / "copy.jpg"
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        damaged.write_bytes(bytes(data[:rng.randrange(len(data))] if rng.random() < 0.3 else data))
        try:
            jpeg.locate(damaged, LIMITS)
            jpeg.rebuild(damaged, copy, LIMITS)
            jpeg.inspect(copy)
        except SanitizeError as e:
            codes.add(e.code)
    assert codes <= {"truncated", "corrupt", "too_large"}


# --- the byte proof and the tables ---------------------------------------------------------------

def test_verifier_proves_scans_by_bytes_and_refuses_a_changed_one(tmp_path):
    """A copy whose scan differs by one byte decodes fine, but it is not the citizen's picture."""
    src = tmp_path / "src.jpg"
    fx.picture((64, 48)).save(src, "JPEG", quality=90)
    copy = tmp_path / "copy.jpg"
    rebuilt = jpeg.rebuild(src, copy, LIMITS)
    verify_copy(copy, rebuilt, src)
    data = bytearray(copy.read_bytes())
    at = data.index(b"\xff\xda") + 40
    data[at] = data[at] ^ 0x01 if data[at] not in (0xFE, 0xFF) and data[at] ^ 0x01 != 0xFF else 0x10
    copy.write_bytes(bytes(data))
    assert jpeg.inspect(copy) == []   # structurally clean: only the proof can tell
    with pytest.raises(SanitizeError) as e:
        verify_copy(copy, rebuilt, src)
    assert e.value.code == "verify_failed" and "differs" in e.value.message


def test_unused_tables_and_slack_are_not_copied(tmp_path):
    """A fourth quantisation table no frame names, an unused Huffman table and slack after a DHT
    table can carry anything: they are dropped, and the proof still shows the same tables in use."""
    clean, src = tmp_path / "clean.jpg", tmp_path / "src.jpg"
    fx.picture((64, 48)).save(clean, "JPEG", quality=90)
    data = clean.read_bytes()
    marker = b"MSCANARY-9e1c"
    unused_dqt = _segment(0xDB, bytes([0x03]) + (marker * 5)[:64])
    unused_dht = _segment(0xC4, bytes([0x13]) + bytes([0] * 15 + [len(marker)]) + marker + marker[:12])
    src.write_bytes(data[:2] + unused_dqt + unused_dht + data[2:])
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "sanitized" and report.as_json()["salvaged"] is False
    out = Path(report.output).read_bytes()
    assert marker not in out
    assert "unused quantisation tables or slack" in report.removed and "unused Huffman tables or slack" in report.removed
    assert pixels(clean) == pixels(Path(report.output))   # libjpeg refuses the slack-laden input itself


def test_impossible_table_headers_are_refused_before_the_rebuild(clean_jpeg, tmp_path):
    """A frame naming a fifth quantisation table is broken input: corrupt (or salvaged), never verify_failed."""
    data = bytearray(clean_jpeg)
    sof = data.index(b"\xff\xc0")
    data[sof + 2 + 2 + 6 + 2] = 0x07   # first component's quantisation table id
    report = _report(tmp_path, bytes(data))
    assert report.status == "rejected" or report.as_json()["salvaged"], report.as_json()
    if report.status == "rejected":
        assert report.error.code == "corrupt"


def test_a_salvaged_photo_still_gives_its_fix_to_the_restricted_record(tmp_path):
    """The phone's fix is read from the damaged file's segments before its scan, then salvaged."""
    src = tmp_path / "pxl.jpg"
    expected = fx.android_phone_jpeg(src)
    data = src.read_bytes()
    scan = [seg for seg in jpeg.walk(data).segments if seg.marker == jpeg.SOS][0]
    src.write_bytes(data[:scan.start + 400])   # ends inside its scan: no EOI
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "sanitized" and report.as_json()["salvaged"], report.as_json()
    assert_fix(report, expected)
    assert leaks(Path(report.output)) == [] and exiftool(Path(report.output)).get("GPS:GPSLatitude") is None


def test_the_verifier_parses_a_rotated_copys_exif_once(tmp_path, monkeypatch):
    """Pillow's JPEG plugin parses the EXIF when it looks for a DPI; the header check reuses that."""
    import io

    from PIL import Image

    from worker.exif import orientation_only_exif
    from worker.verify import pillow_header_findings

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG", exif=b"Exif\x00\x00" + orientation_only_exif(6))
    loads = []
    load = Image.Exif.load
    monkeypatch.setattr(Image.Exif, "load", lambda self, data: loads.append(data) or load(self, data))
    assert pillow_header_findings(tmp_path / "copy.partial", "jpeg", buffer.getvalue()) == []
    assert len(loads) == 1
