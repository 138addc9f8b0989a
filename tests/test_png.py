"""PNG and APNG end to end: fixtures and the corpus through sanitize_file, read back with Pillow and
ExifTool; the walker's rejections; the verifier catching planted metadata.

The read-back helpers here (decoded_frames, metadata_left, check_location) serve the WebP and GIF
tests too: the three lossless formats promise the same things."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from fixtures import lossless as fx
from tests.conftest import CORPUS, corpus_params, expected_fix
from tests.readback import exiftool, sensitive_tags
from worker import icc
from worker.errors import SanitizeError
from worker.formats.photo import png
from worker.formats.base import Limits, Rebuilt
from worker.sanitizer import sanitize_file
from worker.verify import verify_copy

LIMITS = Limits()
PNG_REBUILT = Rebuilt(format="png", media_type="image/png", extension=".png")
EXIF_GROUPS = ("ExifIFD", "GPS", "IFD1", "InteropIFD", "MakerNotes")


def decoded_frames(path: Path) -> list[tuple[tuple[int, int], bytes]]:
    """Every frame as Pillow shows it: the first after EXIF orientation, all as RGBA."""
    frames = []
    with Image.open(path) as im:
        for index in range(getattr(im, "n_frames", 1)):
            im.seek(index)
            shown = ImageOps.exif_transpose(im) if index == 0 else im
            frames.append((shown.size, shown.convert("RGBA").tobytes()))
    return frames


def icc_of(path: Path) -> bytes | None:
    with Image.open(path) as im:
        return im.info.get("icc_profile")


def metadata_left(path: Path) -> list[str]:
    """What ExifTool still finds that a clean copy must not hold: sensitive tags (the kept ICC
    profile's own strings excepted), any XMP, any EXIF beyond IFD0:Orientation, any text."""
    tags = exiftool(path)
    found = [t for t in sensitive_tags(tags) if not t.startswith("ICC")]
    found += [k for k in tags if k.startswith("XMP") or k.split(":")[0] in EXIF_GROUPS]
    found += [k for k in tags if k.startswith("IFD0:") and k != "IFD0:Orientation"]
    found += [k for k in tags if k.split(":")[0] in ("PNG", "GIF", "RIFF") and
              k.split(":")[1] in ("Comment", "Author", "Description", "Text", "ModifyDate", "XMP", "Exif")]
    return sorted(set(found))


def check_location(report, expected: tuple[float, float] | None) -> None:
    fix = report.found.fix
    if expected is None:
        assert fix is None, f"invented a fix {fix}"
    else:
        assert fix is not None, "the fix was not found"
        assert abs(fix.lat - expected[0]) < 1e-6 and abs(fix.lon - expected[1]) < 1e-6


def sanitize(src: Path, tmp_path: Path):
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "sanitized", report.error
    return report, Path(report.output)


def chunk_types(path: Path) -> list[bytes]:
    return [c.type for c in png.walk(path.read_bytes()).chunks]


@pytest.mark.parametrize("orientation", [1, 6])
def test_png_with_every_kind_of_metadata(tmp_path, orientation):
    src = tmp_path / "in.png"
    expected = fx.png_with_text_and_exif(src, orientation=orientation)
    report, out = sanitize(src, tmp_path)
    assert report.format == "png" and out.suffix == ".png"
    check_location(report, expected)
    assert report.found.captured_at == "2024-05-17T14:05:09-04:00"
    assert decoded_frames(out) == decoded_frames(src)
    assert icc_of(src) and icc_of(out) == icc.rebuild(icc_of(src))
    assert metadata_left(out) == []
    tags = exiftool(out)
    assert tags.get("IFD0:Orientation") == (orientation if orientation != 1 else None)
    kept = chunk_types(out)
    assert set(kept) <= {b"IHDR", b"iCCP", b"eXIf", b"IDAT", b"IEND"}
    assert (b"eXIf" in kept) == (orientation != 1)
    assert {"tIME", "private chunk prVt", "tEXt Comment", "zTXt Raw profile type exif",
            "iTXt XML:com.adobe.xmp"} <= set(report.removed)
    assert png.inspect(out) == []


def test_apng_keeps_every_frame_and_the_animation(tmp_path):
    src = tmp_path / "in.png"
    expected = fx.apng(src)
    report, out = sanitize(src, tmp_path)
    check_location(report, expected)
    frames = decoded_frames(out)
    assert len(frames) == 3 and frames == decoded_frames(src)
    with Image.open(src) as a, Image.open(out) as b:
        assert a.info["loop"] == b.info["loop"]
        for index in range(3):
            a.seek(index), b.seek(index)
            assert (a.info["duration"], a.info.get("disposal")) == (b.info["duration"], b.info.get("disposal"))
    assert chunk_types(out).count(b"fcTL") == 3
    assert metadata_left(out) == []


def test_xmp_orientation_becomes_an_orientation_only_exif(tmp_path):
    src = tmp_path / "in.png"
    fx.picture((20, 10)).save(src, "PNG")
    packet = fx.xmp_packet('xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="3"/>')
    fx.insert_png_chunks(src, fx.png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + packet))
    report, out = sanitize(src, tmp_path)
    assert report.found.fix is None
    assert decoded_frames(out) == decoded_frames(src)
    assert exiftool(out).get("IFD0:Orientation") == 3
    assert metadata_left(out) == []


def test_hidden_data_after_iend_and_bad_ancillary_crc_are_dropped(tmp_path):
    src = tmp_path / "in.png"
    fx.picture((16, 16)).save(src, "PNG")
    bad_gamma = fx.png_chunk(b"gAMA", struct.pack(">I", 45455))[:-1] + b"\x00"
    fx.insert_png_chunks(src, bad_gamma)
    src.write_bytes(src.read_bytes() + b"secret trailer with 40.7128,-74.0060")
    report, out = sanitize(src, tmp_path)
    assert out.read_bytes().endswith(b"IEND\xaeB`\x82")
    assert b"gAMA" not in chunk_types(out)
    assert any("after IEND" in r for r in report.removed) and "gAMA (bad CRC)" in report.removed


def _idat_corrupted(data: bytes) -> bytes:
    at = data.index(b"IDAT") + 6
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


@pytest.mark.parametrize("damage, code", [
    (lambda d: b"", "empty"),
    (lambda d: d[:len(d) // 2], "truncated"),
    (lambda d: d[:-12], "salvaged"),                                        # no IEND
    (lambda d: d[:8] + b"\x7f\xff\xff\xf0" + d[12:], "truncated"),           # IHDR length lies
    (_idat_corrupted, "corrupt"),                                           # IDAT fails its CRC
    (lambda d: d[:8] + fx.png_chunk(b"IDAT", b"x") + d[8:], "salvaged"),    # IHDR not first: Pillow shows it
    (lambda d: d[:12] + b"IH!R" + d[16:], "corrupt"),                       # invalid chunk type
])
def test_damaged_png_is_rejected_with_a_code(tmp_path, damage, code):
    good = tmp_path / "good.png"
    fx.picture((16, 16)).save(good, "PNG")
    bad = tmp_path / "bad.png"
    bad.write_bytes(damage(good.read_bytes()))
    report = sanitize_file(bad, tmp_path / "copy", LIMITS)
    if code == "salvaged":
        assert report.status == "sanitized" and report.as_json()["salvaged"], report.as_json()
        return
    assert report.status == "rejected" and report.error.code == code, report.error
    assert not list(tmp_path.glob("copy*"))


def test_pixel_and_frame_limits(tmp_path):
    src = tmp_path / "in.png"
    fx.apng(src)
    assert sanitize_file(src, tmp_path / "a", Limits(max_pixels=100)).error.code == "too_large"
    assert sanitize_file(src, tmp_path / "b", Limits(max_frames=2)).error.code == "too_large"


def test_zip_bomb_text_is_capped_not_inflated(tmp_path):
    src = tmp_path / "in.png"
    fx.picture((8, 8)).save(src, "PNG")
    bomb = zlib.compress(b"0" * (png.MAX_TEXT_BYTES + 1024), 9)
    fx.insert_png_chunks(src, fx.png_chunk(b"zTXt", b"Raw profile type exif\x00\x00" + bomb))
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "rejected" and report.error.code == "too_large", report.as_json()
    assert "inflates past" in report.error.message


@pytest.mark.parametrize("planted", [
    fx.png_chunk(b"tEXt", b"Comment\x00Jane Citizen"),
    fx.png_chunk(b"eXIf", fx.exif_with_gps(*fx.NEW_YORK)),
    fx.png_chunk(b"prVt", b"anything"),
])
def test_verifier_catches_a_planted_chunk(tmp_path, planted):
    src = tmp_path / "in.png"
    fx.png_with_text_and_exif(src)
    _, out = sanitize(src, tmp_path)
    verify_copy(out, PNG_REBUILT, src)   # the clean copy passes the byte proof and the header parse
    fx.insert_png_chunks(out, planted)
    assert png.inspect(out)
    with pytest.raises(SanitizeError) as e:
        verify_copy(out, PNG_REBUILT, src)
    assert e.value.code == "verify_failed"


def test_verifier_catches_data_after_iend(tmp_path):
    src = tmp_path / "in.png"
    fx.picture((8, 8)).save(src, "PNG")
    src.write_bytes(src.read_bytes() + b"GPS 40.7,-74.0")
    with pytest.raises(SanitizeError) as e:
        verify_copy(src, PNG_REBUILT)
    assert e.value.code == "verify_failed"


def sanitized_corpus_copy(tmp_path, row, *, rejections=("truncated", "corrupt", "unsupported_format")) -> Path | None:
    """Sanitize one corpus file and check what every lossless photo copy must hold: the manifest's
    location, identical frames, the ICC profile, no metadata. None when it was (rightly) rejected."""
    src = CORPUS / row["relative_path"]
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    if report.status != "sanitized":
        assert report.status == "rejected" and report.error.code in rejections
        return None
    out = Path(report.output)
    check_location(report, expected_fix(row))
    assert decoded_frames(out) == decoded_frames(src)
    if icc_of(src):
        assert icc_of(out) == icc.rebuild(icc_of(src))
    assert metadata_left(out) == []
    return out


@pytest.mark.parametrize("row", corpus_params("image", ("image/png", "image/apng")))
def test_corpus_png(tmp_path, row):
    out = sanitized_corpus_copy(tmp_path, row)
    if out is not None:
        assert png.inspect(out) == []
