"""WebP end to end: lossy, lossless, alpha, animated; VP8X flags and RIFF size; rejections; the
verifier catching a planted EXIF chunk."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest
from PIL import Image

from fixtures import lossless as fx
from tests.conftest import corpus_params
from tests.readback import exiftool
from tests.test_png import check_location, decoded_frames, icc_of, metadata_left, sanitized_corpus_copy
from worker import icc
from worker.errors import SanitizeError
from worker.formats.photo import webp
from worker.formats.base import Limits, Rebuilt
from worker.formats.walkers.iff import chunk, iter_chunks
from worker.sanitizer import sanitize_file
from worker.verify import verify_copy

LIMITS = Limits()
WEBP_REBUILT = Rebuilt(format="webp", media_type="image/webp", extension=".webp")


def sanitize(src: Path, tmp_path: Path):
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "sanitized", report.error
    return report, Path(report.output)


def chunks_of(path: Path) -> dict[bytes, bytes]:
    data = path.read_bytes()
    return {c.id: data[c.data_offset:c.data_offset + c.size] for c in iter_chunks(data, 12, len(data))}


def check_container(path: Path) -> None:
    data = path.read_bytes()
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    assert webp.inspect(path) == []


@pytest.mark.parametrize("lossless", [True, False])
@pytest.mark.parametrize("orientation", [1, 8])
def test_still_webp_with_exif_and_xmp(tmp_path, lossless, orientation):
    src = tmp_path / "in.webp"
    expected = fx.webp_with_exif_xmp(src, lossless=lossless, orientation=orientation)
    report, out = sanitize(src, tmp_path)
    assert report.format == "webp" and out.suffix == ".webp"
    check_location(report, expected)
    assert report.found.captured_at == "2024-05-17T14:05:09-04:00"
    assert decoded_frames(out) == decoded_frames(src)
    assert icc_of(src) and icc_of(out) == icc.rebuild(icc_of(src))
    assert metadata_left(out) == []
    check_container(out)
    chunks = chunks_of(out)
    assert b"XMP " not in chunks and (b"EXIF" in chunks) == (orientation != 1)
    flags = chunks[b"VP8X"][0]
    assert flags & webp.FLAG_ICC and flags & webp.FLAG_ALPHA and not flags & webp.FLAG_XMP
    assert bool(flags & webp.FLAG_EXIF) == (orientation != 1)
    assert exiftool(out).get("IFD0:Orientation") == (orientation if orientation != 1 else None)
    assert any(r.startswith("EXIF (GPS") for r in report.removed) and "XMP" in report.removed


def test_animated_webp_keeps_every_frame(tmp_path):
    src = tmp_path / "in.webp"
    expected = fx.animated_webp(src)
    report, out = sanitize(src, tmp_path)
    check_location(report, expected)
    frames = decoded_frames(out)
    assert len(frames) == 3 and frames == decoded_frames(src)
    with Image.open(src) as a, Image.open(out) as b:
        assert a.info["loop"] == b.info["loop"]
    assert chunks_of(out)[b"ANIM"] == chunks_of(src)[b"ANIM"]
    flags = chunks_of(out)[b"VP8X"][0]
    assert flags & webp.FLAG_ANIMATION and not flags & (webp.FLAG_XMP | webp.FLAG_EXIF | webp.FLAG_ICC)
    check_container(out)
    assert metadata_left(out) == []


def _with_chunk_in_first_frame(data: bytes, extra: bytes) -> bytes:
    """An animated WebP with an unknown chunk hidden inside its first ANMF frame, sizes fixed."""
    anmf = next(c for c in iter_chunks(data, 12, len(data)) if c.id == b"ANMF")
    payload = data[anmf.data_offset:anmf.data_offset + anmf.size] + extra
    body = data[12:anmf.offset] + chunk(b"ANMF", payload) + data[anmf.end:]
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def test_unknown_chunk_inside_a_frame_is_dropped_and_caught(tmp_path):
    src = tmp_path / "in.webp"
    fx.animated_webp(src)
    src.write_bytes(_with_chunk_in_first_frame(src.read_bytes(), chunk(b"NOTE", b"Jane Citizen")))
    assert webp.inspect(src), "the verifier walk must see inside frames"
    report, out = sanitize(src, tmp_path)
    assert b"Jane Citizen" not in out.read_bytes()
    assert decoded_frames(out) == decoded_frames(src)
    assert "NOTE chunk in an animation frame" in report.removed


def test_data_after_the_riff_is_dropped(tmp_path):
    src = tmp_path / "in.webp"
    fx.webp_with_exif_xmp(src, lossless=True)
    src.write_bytes(src.read_bytes() + b"trailing secret")
    report, out = sanitize(src, tmp_path)
    check_container(out)
    assert any("after the RIFF end" in r for r in report.removed)


def _riff_size(d: bytes, size: int) -> bytes:
    return d[:4] + struct.pack("<I", size) + d[8:]


@pytest.mark.parametrize("damage, code", [
    (lambda d: d[:len(d) // 2], "truncated"),
    (lambda d: _riff_size(d, len(d) + 100), "truncated"),                       # RIFF size lies
    (lambda d: d[:16] + b"\xff\xff\xff\x7f" + d[20:], "truncated"),             # first chunk size lies
    (lambda d: _riff_size(d[:12], 4), "corrupt"),                               # no chunks
    (lambda d: _riff_size(d[:12] + chunk(b"JUNK", b"1234"), 16), "corrupt"),   # no image data
])
def test_damaged_webp_is_rejected_with_a_code(tmp_path, damage, code):
    good = tmp_path / "good.webp"
    fx.webp_with_exif_xmp(good, lossless=False)
    bad = tmp_path / "bad.webp"
    bad.write_bytes(damage(good.read_bytes()))
    report = sanitize_file(bad, tmp_path / "copy", LIMITS)
    assert report.status == "rejected" and report.error.code == code, report.error
    assert not list(tmp_path.glob("copy*"))


def test_pixel_limit(tmp_path):
    src = tmp_path / "in.webp"
    fx.webp_with_exif_xmp(src, lossless=True)
    assert sanitize_file(src, tmp_path / "copy", Limits(max_pixels=100)).error.code == "too_large"


def _planted_exif(data: bytes) -> bytes:
    body = data[12:] + chunk(b"EXIF", fx.exif_with_gps(*fx.NEW_YORK))
    vp8x = bytearray(body[8:18])
    vp8x[0] |= webp.FLAG_EXIF
    body = body[:8] + bytes(vp8x) + body[18:]
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


@pytest.mark.parametrize("plant", [
    _planted_exif,                                                        # flags and size consistent
    lambda d: d + chunk(b"XMP ", fx.xmp_with_gps(*fx.QUEENS)),            # RIFF size not updated
    lambda d: d[:20] + bytes([d[20] | webp.FLAG_XMP]) + d[21:],           # flag without the chunk
])
def test_verifier_catches_planted_metadata(tmp_path, plant):
    src = tmp_path / "in.webp"
    fx.webp_with_exif_xmp(src, lossless=True)
    _, out = sanitize(src, tmp_path)
    verify_copy(out, WEBP_REBUILT, src)
    out.write_bytes(plant(out.read_bytes()))
    assert webp.inspect(out)
    with pytest.raises(SanitizeError) as e:
        verify_copy(out, WEBP_REBUILT, src)
    assert e.value.code == "verify_failed"


@pytest.mark.parametrize("row", corpus_params("image", ("image/webp",)))
def test_corpus_webp(tmp_path, row):
    out = sanitized_corpus_copy(tmp_path, row)
    if out is not None:
        check_container(out)
