"""TIFF: located from its GPS/Exif IFDs and XMP, first page re-encoded upright to a clean JPEG."""
from __future__ import annotations

import piexif
import pytest
from PIL import Image

from fixtures.heif import tiff_with_gps
from fixtures.icc import srgb_icc
from fixtures.jpeg import gps_ifd, picture
from tests.conftest import CORPUS, corpus_oracle, corpus_params, expected_fix
from tests.test_heif import check_clean_copy, decoded_upright, sanitize
from worker import formats
from worker.errors import REJECTING_CODES
from worker.formats.base import Limits


def exif_with(gps: dict, orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif.load(piexif.dump({"0th": {piexif.ImageIFD.Orientation: orientation, piexif.ImageIFD.Make: b"Epson"},
                           "GPS": gps}))
    return exif


def test_tiff_with_gps_becomes_a_clean_jpeg_of_its_first_page(tmp_path):
    src = tmp_path / "scan.tiff"
    lat, lon = tiff_with_gps(src)
    report = sanitize(src, tmp_path)
    check_clean_copy(report, reference=picture((160, 120)), icc=srgb_icc())
    assert (report.found.fix.lat, report.found.fix.lon) == pytest.approx((lat, lon), abs=1e-6)
    assert report.found.fix.alt == pytest.approx(12.5)
    assert report.found.captured_at == "2024-05-17T10:05:09-04:00"
    assert report.input_format == "tiff"
    assert {"GPS IFD", "Exif IFD", "XMP", "other pages"} <= set(report.removed)


def test_tiff_orientation_is_applied(tmp_path):
    src = tmp_path / "turned.tiff"
    exif = exif_with(gps_ifd(40.7, -74.0), orientation=8)   # 8: turn 90 degrees anticlockwise to view
    picture((96, 64)).save(src, "TIFF", exif=exif)
    report = sanitize(src, tmp_path)
    check_clean_copy(report, reference=picture((96, 64)).transpose(Image.Transpose.ROTATE_90), icc=None)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    src = tmp_path / "grey16.tiff"
    ramp = Image.new("I;16", (256, 4))
    ramp.putdata([x * 257 for x in range(256)] * 4)
    ramp.save(src, "TIFF")
    report = sanitize(src, tmp_path)
    assert report.status == "sanitized", report.as_json()
    with Image.open(report.output) as copy:
        assert copy.mode == "L"
        row = [copy.getpixel((x, 1)) for x in range(256)]
    # clipping would make everything above 255/65535 white
    assert all(abs(value - x) <= 2 for x, value in enumerate(row))


def test_bigtiff_is_handled(tmp_path):
    src = tmp_path / "big.tif"
    picture((64, 48)).save(src, "TIFF", big_tiff=True, exif=exif_with(gps_ifd(40.6, -73.9)))
    assert src.read_bytes()[:4] == b"II+\x00"
    report = sanitize(src, tmp_path)
    check_clean_copy(report, reference=picture((64, 48)), icc=None)
    assert (report.found.fix.lat, report.found.fix.lon) == pytest.approx((40.6, -73.9), abs=1e-6)


def test_cmyk_tiff_keeps_its_colours(tmp_path):
    src = tmp_path / "cmyk.tiff"
    picture((64, 48), "CMYK").save(src, "TIFF")
    report = sanitize(src, tmp_path)
    check_clean_copy(report, reference=decoded_upright(src), icc=None)


@pytest.mark.parametrize("extra, what", [
    ({50706: (1, 4, 0, 0)}, "DNG"),                 # DNGVersion
    ({254: 1}, "reduced preview"),                   # NewSubfileType: IFD0 is a preview (NEF, ARW)
    ({262: 32803}, "CFA"),                           # PhotometricInterpretation: colour filter array
])
def test_camera_raw_is_refused(tmp_path, extra, what):
    src = tmp_path / "raw.tif"
    picture((32, 24)).save(src, "TIFF", tiffinfo=extra)
    report = sanitize(src, tmp_path)
    assert report.status == "rejected" and report.error.code == "unsupported_format", (what, report.as_json())


def test_junk_gps_is_no_fix_and_no_error(tmp_path):
    src = tmp_path / "junk.tiff"
    gps = {piexif.GPSIFD.GPSLatitudeRef: b"N", piexif.GPSIFD.GPSLatitude: ((40, 0), (0, 0), (0, 0)),
           piexif.GPSIFD.GPSLongitudeRef: b"W", piexif.GPSIFD.GPSLongitude: ((74, 1), (0, 1), (0, 1))}
    picture((32, 24)).save(src, "TIFF", exif=exif_with(gps))
    report = sanitize(src, tmp_path)
    assert report.status == "sanitized"
    assert report.found.fix is None
    assert report.found.notes


def test_tiff_over_the_pixel_limit_is_refused(tmp_path):
    src = tmp_path / "wide.tiff"
    picture((200, 100)).save(src, "TIFF")
    assert sanitize(src, tmp_path, Limits(max_pixels=200 * 100 - 1)).error.code == "too_large"
    assert sanitize(src, tmp_path, Limits(max_pixels=200 * 100)).status == "sanitized"


@pytest.mark.parametrize("keep", [8, 30, 200, 0.5, 0.95])
def test_cut_tiff_is_rejected_with_a_code(tmp_path, keep):
    src = tmp_path / "whole.tiff"
    picture((160, 120)).save(src, "TIFF", exif=exif_with(gps_ifd(40.7, -74.0)))
    data = src.read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    report = sanitize(cut, tmp_path)
    assert report.status == "rejected", report.as_json()
    assert report.error.code in REJECTING_CODES


def test_tiff_inspect_fails_closed(tmp_path):
    src = tmp_path / "x.tiff"
    tiff_with_gps(src)
    assert formats.identify(src).name == "tiff"
    assert formats.by_name("tiff").inspect(src)


@pytest.mark.corpus
@pytest.mark.parametrize("row", corpus_params("image", ("image/tiff",)))
def test_corpus_tiff(row, tmp_path):
    src = CORPUS / row["relative_path"]
    report = sanitize(src, tmp_path)
    with Image.open(src) as im:
        icc = im.info.get("icc_profile") or None
    oracle = corpus_oracle().get(row["relative_path"], {})
    assert any(k.startswith("ICC") for k in oracle) == bool(icc)
    check_clean_copy(report, reference=decoded_upright(src), icc=icc)
    expected = expected_fix(row)
    if expected is None:
        assert report.found.fix is None
    else:
        assert (report.found.fix.lat, report.found.fix.lon) == pytest.approx(expected, abs=1e-6)
