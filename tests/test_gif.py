"""GIF end to end: every frame identical, comments, plain text, XMP and private application
extensions gone, loop and ICC kept; rejections; the verifier catching a planted comment."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fixtures import lossless as fx
from fixtures.icc import srgb_icc
from tests.conftest import CORPUS, corpus_params, expected_fix
from tests.readback import exiftool
from tests.test_png import check_location, decoded_frames, metadata_left
from worker import icc
from worker.errors import SanitizeError
from worker.formats.photo import gif
from worker.formats.base import Limits, Rebuilt
from worker.sanitizer import sanitize_file
from worker.verify import verify_copy

LIMITS = Limits()
GIF_REBUILT = Rebuilt(format="gif", media_type="image/gif", extension=".gif")


def sanitize(src: Path, tmp_path: Path):
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "sanitized", report.error
    return report, Path(report.output)


def timing(path: Path) -> list[tuple]:
    """Per frame: duration, disposal and transparency, as Pillow reads them."""
    result = []
    with Image.open(path) as im:
        for index in range(im.n_frames):
            im.seek(index)
            result.append((im.info.get("duration"), im.disposal_method, im.info.get("transparency")))
        return result + [im.info.get("loop")]


def icc_profiles(path: Path) -> list[bytes]:
    """ICC profiles in ICCRGBG1012 extensions (Pillow does not read them from a GIF)."""
    return [b.body for b in gif.walk(path.read_bytes()).blocks if b.application == gif.ICC_APPLICATION]


def test_animated_gif_with_comment_xmp_and_private_extensions(tmp_path):
    src = tmp_path / "in.gif"
    expected = fx.animated_gif_with_comment(src)
    report, out = sanitize(src, tmp_path)
    assert report.format == "gif" and out.suffix == ".gif"
    check_location(report, expected)
    frames = decoded_frames(out)
    assert len(frames) == 4 and frames == decoded_frames(src)
    assert timing(out) == timing(src)
    assert icc_profiles(out) == [icc.rebuild(srgb_icc())]
    assert metadata_left(out) == []
    data = out.read_bytes()
    for secret in (b"Jane", b"Elm", b"XMP DataXMP", b"PRIVATE1.00"):
        assert secret not in data
    assert {"comment extension", "plain text extension", "XMP application extension",
            "application extension PRIVATE1.00"} <= set(report.removed)
    assert gif.inspect(out) == []
    with Image.open(out) as im:
        assert "comment" not in im.info


def test_missing_trailer_is_tolerated_and_data_after_it_dropped(tmp_path):
    src = tmp_path / "in.gif"
    fx.animated_gif_with_comment(src)
    data = src.read_bytes()
    no_trailer = tmp_path / "no_trailer.gif"
    no_trailer.write_bytes(data[:-1])
    _, out = sanitize(no_trailer, tmp_path)
    assert out.read_bytes().endswith(b"\x00\x3b") and decoded_frames(out) == decoded_frames(src)
    padded = tmp_path / "padded.gif"
    padded.write_bytes(data + b"40.7128,-74.0060")
    report = sanitize_file(padded, tmp_path / "copy2", LIMITS)
    out = Path(report.output)
    assert b"40.7128" not in out.read_bytes()
    assert any("after the trailer" in r for r in report.removed)


def test_netscape_buffering_sub_block_is_dropped(tmp_path):
    src = tmp_path / "in.gif"
    fx.picture((8, 8)).quantize(colors=4).save(src, "GIF")
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x05\x00\x05\x02\x00\x10\x00\x00\x00"
    fx.insert_gif_blocks(src, loop)
    _, out = sanitize(src, tmp_path)
    assert b"NETSCAPE2.0\x03\x01\x05\x00\x00" in out.read_bytes()
    with Image.open(out) as im:
        assert im.info["loop"] == 5


def _screen_end(d: bytes) -> int:
    return 13 + 3 * (2 << (d[10] & 7))


@pytest.mark.parametrize("damage, code", [
    (lambda d: d[:10], "truncated"),                                        # inside the screen descriptor
    (lambda d: d[:_screen_end(d) - 5], "truncated"),                        # inside the colour table
    (lambda d: d[:-20], "truncated"),                                       # inside a sub-block chain
    (lambda d: d[:_screen_end(d)], "truncated"),                            # before the first image
    (lambda d: d[:_screen_end(d)] + b"\x99" + d[_screen_end(d):], "salvaged"),  # not a block introducer
])
def test_damaged_gif_is_rejected_with_a_code(tmp_path, damage, code):
    """Damage Pillow still shows is salvaged (re-encoded, reported); the rest is rejected with a code."""
    good = tmp_path / "good.gif"
    fx.picture((40, 30)).quantize(colors=32).save(good, "GIF")
    assert good.read_bytes()[10] & 0x80, "the damage offsets assume a global colour table"
    bad = tmp_path / "bad.gif"
    bad.write_bytes(damage(good.read_bytes()))
    report = sanitize_file(bad, tmp_path / "copy", LIMITS)
    if code == "salvaged":
        assert report.status == "sanitized" and report.as_json()["salvaged"] and report.format == "jpeg"
        return
    assert report.status == "rejected" and report.error.code == code, report.error
    assert not list(tmp_path.glob("copy*"))


def test_pixel_and_frame_limits(tmp_path):
    src = tmp_path / "in.gif"
    fx.animated_gif_with_comment(src)
    assert sanitize_file(src, tmp_path / "a", Limits(max_pixels=100)).error.code == "too_large"
    assert sanitize_file(src, tmp_path / "b", Limits(max_frames=3)).error.code == "too_large"


@pytest.mark.parametrize("planted", [
    fx.gif_extension(0xFE, b"Jane Citizen, 12 Elm Street"),
    fx.gif_xmp_extension(fx.xmp_with_gps(*fx.QUEENS)),
    fx.gif_extension(0xFF, b"owner", application=b"PRIVATE1.00"),
    b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x06\x02secret\x00",
])
def test_verifier_catches_a_planted_extension(tmp_path, planted):
    src = tmp_path / "in.gif"
    fx.animated_gif_with_comment(src)
    _, out = sanitize(src, tmp_path)
    verify_copy(out, GIF_REBUILT, src)
    fx.insert_gif_blocks(out, planted)
    assert gif.inspect(out)
    with pytest.raises(SanitizeError) as e:
        verify_copy(out, GIF_REBUILT, src)
    assert e.value.code == "verify_failed"


def test_exiftool_sees_no_comment_in_the_copy(tmp_path):
    src = tmp_path / "in.gif"
    fx.animated_gif_with_comment(src)
    assert "File:Comment" in exiftool(src) or "GIF:Comment" in exiftool(src)
    _, out = sanitize(src, tmp_path)
    tags = exiftool(out)
    assert not any(k.endswith(":Comment") or k.startswith("XMP") for k in tags)


@pytest.mark.parametrize("row", corpus_params("image", ("image/gif",)))
def test_corpus_gif(tmp_path, row):
    src = CORPUS / row["relative_path"]
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    if report.status != "sanitized":
        assert report.status == "rejected" and report.error.code in ("truncated", "corrupt")
        return
    out = Path(report.output)
    check_location(report, expected_fix(row))
    assert decoded_frames(out) == decoded_frames(src)
    assert timing(out) == timing(src)
    assert icc_profiles(out) == icc_profiles(src)
    assert metadata_left(out) == []
    assert gif.inspect(out) == []
