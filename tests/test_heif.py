"""HEIC/HEIF and AVIF: identified by brand, located, re-encoded upright to a clean JPEG, read back by ExifTool."""
from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from fixtures.heif import avif_with_exif, iphone_like_heic
from fixtures.icc import srgb_icc
from fixtures.jpeg import picture
from tests.conftest import CORPUS, corpus_oracle, corpus_params, expected_fix
from tests.readback import TECHNICAL_GROUPS, exiftool, sensitive_tags
from worker import formats
from worker import icc as icc_profiles
from worker.errors import REJECTING_CODES, SanitizeError
from worker.formats.base import Limits
from worker.formats.photo.heif import image_codec
from worker.sanitizer import Report, sanitize_file

HEIF_FORMATS = ("image/heic", "image/heif", "image/avif")


def decoded_upright(path: Path) -> Image.Image:
    """The input as a viewer shows it, by the plugins' own rules (as the corpus check reads it)."""
    import pillow_heif
    pillow_heif.register_heif_opener()
    with Image.open(path) as im:
        im.load()
        return ImageOps.exif_transpose(im).convert("RGB")


def psnr(a: Image.Image, b: Image.Image) -> float:
    da, db = a.convert("RGB").tobytes(), b.convert("RGB").tobytes()
    squares = sum((x - y) ** 2 for x, y in zip(da[::7], db[::7]))
    return math.inf if squares == 0 else 10 * math.log10(255 ** 2 / (squares / len(da[::7])))


def sanitize(src: Path, tmp_path: Path, limits: Limits = Limits()) -> Report:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return sanitize_file(src, out / src.stem, limits)


def check_clean_copy(report: Report, *, reference: Image.Image, icc: bytes | None) -> dict:
    """What every re-encoded copy must be: a JPEG, upright and visually equal, the ICC kept, nothing else."""
    assert report.status == "sanitized", report.as_json()
    assert report.format == "jpeg" and report.media_type == "image/jpeg"
    out = Path(report.output)
    assert out.suffix == ".jpg"
    assert formats.identify(out).name == "jpeg"
    with Image.open(out) as copy:
        copy.load()
        assert copy.format == "JPEG"
        assert copy.size == reference.size
        assert psnr(reference, copy) >= 40
        assert copy.info.get("icc_profile") == (icc_profiles.rebuild(icc) if icc else None)
        assert "exif" not in copy.info and "xmp" not in copy.info and "comment" not in copy.info
    tags = exiftool(out)
    assert sensitive_tags(tags) == []
    groups = {key.split(":", 1)[0] for key in tags if ":" in key}
    assert groups <= TECHNICAL_GROUPS, sorted(groups - TECHNICAL_GROUPS)
    return tags


# --- identification ---------------------------------------------------------------------------

def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\0\0\0\0" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body


@pytest.mark.parametrize("head, expected", [
    (ftyp(b"heic", b"mif1", b"heic"), "heic"),
    (ftyp(b"heix", b"mif1"), "heic"),
    (ftyp(b"avif", b"mif1", b"miaf"), "avif"),
    (ftyp(b"mif1", b"avif", b"miaf"), "avif"),
    (ftyp(b"mif1", b"heic"), "heic"),
    (ftyp(b"mif1", b"miaf") + b"....av1C....", "avif"),      # codec-neutral brands: the codec box decides
    (ftyp(b"mif1", b"miaf") + b"....hvcC....", "heic"),
    (ftyp(b"isom", b"mif1", b"mp41"), None),                 # a movie listing an image brand is a movie
    (ftyp(b"qt  ", b"qt  "), None),
    (ftyp(b"M4A ", b"M4A ", b"mp42"), None),
    (ftyp(b"3gp4", b"3gp4"), None),
    (b"\x00\x00\x00\x18ftyp", None),                         # ftyp cut short
    (b"\x00\x00\x10\x00ftypheic" + bytes(40), None),         # ftyp claiming more than there is
])
def test_brands_decide_heic_or_avif(head, expected):
    assert image_codec(head) == expected


# --- fixtures -------------------------------------------------------------------------------------

def test_iphone_like_heic_becomes_a_clean_upright_jpeg(tmp_path):
    src = tmp_path / "IMG_0001.HEIC"
    lat, lon = iphone_like_heic(src)
    report = sanitize(src, tmp_path)
    # stored sensor-landscape, shown portrait by irot; EXIF says the same turn (6). The copy is
    # turned exactly once: turning again by the EXIF Orientation would show it upside down.
    shown = picture((640, 480)).transpose(Image.Transpose.ROTATE_270)
    check_clean_copy(report, reference=shown, icc=srgb_icc())
    assert report.found.fix.lat == pytest.approx(lat, abs=1e-6)
    assert report.found.fix.lon == pytest.approx(lon, abs=1e-6)
    assert report.found.fix.source == "exif"
    assert report.found.captured_at == "2024-05-17T10:05:09-04:00"
    assert report.input_format == "heic"
    assert {"HEIF container", "XMP", "thumbnail", "other images or frames"} <= set(report.removed)
    assert any(r.startswith("Exif item (GPS") for r in report.removed)


def test_heic_fix_comes_from_the_primary_image(tmp_path):
    # the second top-level image carries Brooklyn; the primary's New York is the fix
    src = tmp_path / "two.heic"
    lat, lon = iphone_like_heic(src)
    found = formats.by_name("heic").locate(src, Limits())
    assert (found.fix.lat, found.fix.lon) == pytest.approx((lat, lon), abs=1e-6)


@pytest.mark.parametrize("orientation, transpose", [
    (1, None),
    (6, Image.Transpose.ROTATE_270),   # EXIF 6: turn 90 degrees clockwise to view
    (3, Image.Transpose.ROTATE_180),
])
def test_avif_orientation_applied_once(tmp_path, orientation, transpose):
    # Pillow's AVIF writer turns EXIF Orientation into irot/imir and keeps the pixels as given
    src = tmp_path / f"o{orientation}.avif"
    lat, lon = avif_with_exif(src, orientation=orientation)
    report = sanitize(src, tmp_path)
    drawn = picture((320, 240))
    check_clean_copy(report, reference=drawn.transpose(transpose) if transpose else drawn, icc=srgb_icc())
    assert (report.found.fix.lat, report.found.fix.lon) == pytest.approx((lat, lon), abs=1e-6)
    assert report.input_format == "avif"
    assert "XMP" in report.removed


def test_heic_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    src = tmp_path / "big.heic"
    iphone_like_heic(src)
    # overwrite the coded pixels: decoding this cannot succeed, so too_large proves the size was
    # read from the container (ispe) and checked first
    data = bytearray(src.read_bytes())
    start = data.find(b"mdat") + 4
    data[start:] = b"\xff" * (len(data) - start)
    garbled = tmp_path / "garbled.heic"
    garbled.write_bytes(data)
    assert sanitize(garbled, tmp_path, Limits(max_pixels=640 * 480 - 1)).error.code == "too_large"
    assert sanitize(garbled, tmp_path).error.code in ("truncated", "corrupt")
    assert sanitize(src, tmp_path, Limits(max_pixels=640 * 480)).status == "sanitized"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["big.jpg"]


@pytest.mark.parametrize("keep", [12, 40, 400, 1500, 3000, 0.5, 0.9])
def test_cut_heic_and_avif_are_rejected_with_a_code(tmp_path, keep):
    for build, name in ((iphone_like_heic, "x.heic"), (avif_with_exif, "x.avif")):
        src = tmp_path / name
        build(src)
        data = src.read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
        report = sanitize(cut, tmp_path)
        assert report.status == "rejected", report.as_json()
        assert report.error.code in REJECTING_CODES
        assert report.output is None


def test_heic_with_garbage_after_the_ftyp_is_rejected(tmp_path):
    src = tmp_path / "junk.heic"
    src.write_bytes(ftyp(b"heic", b"mif1", b"heic") + bytes(range(256)) * 8)
    report = sanitize(src, tmp_path)
    assert report.status == "rejected" and report.error.code in ("corrupt", "truncated")


def test_heic_inspect_fails_closed(tmp_path):
    src = tmp_path / "x.heic"
    iphone_like_heic(src)
    assert formats.by_name("heic").inspect(src)
    assert formats.by_name("avif").inspect(src)


# --- the real-device corpus -----------------------------------------------------------------------

@pytest.mark.corpus
@pytest.mark.parametrize("row", corpus_params("image", HEIF_FORMATS))
def test_corpus_heif_and_avif(row, tmp_path):
    src = CORPUS / row["relative_path"]
    report = sanitize(src, tmp_path)
    oracle = corpus_oracle().get(row["relative_path"], {})
    reference = decoded_upright(src)
    icc = decoded_icc(src)
    assert any(k.startswith("ICC") for k in oracle) == bool(icc)
    check_clean_copy(report, reference=reference, icc=icc)
    expected = expected_fix(row)
    if expected is None:
        assert report.found.fix is None
    else:
        assert (report.found.fix.lat, report.found.fix.lon) == pytest.approx(expected, abs=1e-6)


def decoded_icc(path: Path) -> bytes | None:
    import pillow_heif
    pillow_heif.register_heif_opener()
    with Image.open(path) as im:
        return im.info.get("icc_profile") or None


def test_avif_over_the_pixel_limit_is_refused(tmp_path):
    src = tmp_path / "wide.avif"
    avif_with_exif(src)
    assert sanitize(src, tmp_path, Limits(max_pixels=320 * 240 - 1)).error.code == "too_large"


# --- the quality check: one estimate, one full check, and it still catches a bad encode ---------

def noisy_picture(size: tuple[int, int]) -> Image.Image:
    """Fine grain everywhere: what needs a high JPEG quality to stay visually equal."""
    import random
    rng = random.Random(10)
    return Image.frombytes("RGB", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3)))


def test_the_full_check_refuses_a_bad_encode_and_accepts_a_good_one():
    from worker.formats.photo.reencode import encode_jpeg, visually_equal
    reference = noisy_picture((600, 520))   # more than two 256-row strips, not a multiple of them
    assert not visually_equal(reference, encode_jpeg(reference, 50, None))
    assert visually_equal(reference, encode_jpeg(reference, 100, None))
    # a good encode of a picture one strip short is not the picture
    assert not visually_equal(reference, encode_jpeg(reference.crop((0, 0, 600, 264)), 100, None))
    # a fault in only the last strip is caught too: the strips cover every row
    damaged = reference.copy()
    damaged.paste((0, 0, 0), (0, 500, 600, 520))
    assert not visually_equal(reference, encode_jpeg(damaged, 100, None))


def test_the_check_as_it_decodes_measures_what_a_full_decode_measures(tmp_path):
    """The copy is compared strip by strip while Pillow decodes it (never whole beside the picture):
    the same squares, to the bit, as the full decode compared in strips; from bytes or its file."""
    import io

    from worker.formats.photo.reencode import (_streamed_squares, _to_db, _WatchedBytes, encode_jpeg, psnr,
                                               rows_of, visually_equal)
    reference = noisy_picture((700, 530))   # rows not a multiple of a strip, width not of a page
    for quality in (60, 97):
        data = encode_jpeg(reference, quality, None)
        with Image.open(io.BytesIO(data)) as whole:
            whole.load()
            expected = psnr(reference, whole)
        feed = _WatchedBytes(data)
        with Image.open(feed) as decoded:
            assert _to_db(_streamed_squares(rows_of(reference), decoded, feed, rows=16), 700 * 530 * 3) == expected
        (tmp_path / "copy.jpg").write_bytes(data)
        assert visually_equal(reference, tmp_path / "copy.jpg") == visually_equal(reference, data) == (expected >= 41)


def test_the_heic_is_copied_into_pillow_as_the_plugin_loads_it(tmp_path):
    """``decoded_heic`` copies libheif's buffer in strips and gives its pages back behind it: the
    picture is the plugin's own, pixel for pixel, for odd sizes, grey and alpha."""
    import pillow_heif

    from worker.formats.photo.heif import COPY_ROWS, decoded_heic, open_heic
    pillow_heif.register_heif_opener()
    for mode, size in (("RGB", (1001, 2 * COPY_ROWS + 77)), ("L", (257, 129)), ("RGBA", (64, 640)), ("RGB", (3, 5))):
        noise = Image.effect_noise(size, 60)
        source = Image.merge("RGBA", [noise] * 4) if mode == "RGBA" else noise.convert(mode)
        path = tmp_path / f"{mode}-{size[0]}.heic"
        source.save(path, quality=90)
        with open_heic(path) as image:
            copied = decoded_heic(image)
        with Image.open(path) as image:
            image.load()
            assert (copied.mode, copied.size) == (image.mode, image.size)
            assert copied.tobytes() == image.tobytes()


def test_the_estimate_picks_a_higher_quality_only_where_the_picture_needs_it():
    from worker.formats.photo.reencode import JPEG_QUALITIES, estimated_quality
    smooth = picture((1200, 900))
    assert estimated_quality(smooth) == JPEG_QUALITIES[0]
    grain = noisy_picture((1200, 900))
    assert estimated_quality(grain) > JPEG_QUALITIES[0]


def test_write_jpeg_keeps_a_visually_equal_copy_of_a_grainy_picture(tmp_path):
    from worker.formats.photo.reencode import VISUALLY_EQUAL_DB, psnr, write_jpeg
    grain = noisy_picture((1200, 900))
    quality = write_jpeg(grain.copy(), tmp_path / "copy.jpg", None)
    with Image.open(tmp_path / "copy.jpg") as copy:
        copy.load()
        assert quality > 95 and psnr(grain, copy) >= VISUALLY_EQUAL_DB


def test_the_quality_checks_decode_of_the_copy_answers_the_verifiers_once(tmp_path, monkeypatch):
    """The rebuild's quality check decoded the whole JPEG it wrote: the verifier's decode of those
    very bytes is answered by it (one full decode, not two); bytes changed after it are decoded."""
    from worker import verify

    src = tmp_path / "photo.heic"
    iphone_like_heic(src)
    decodes: list[Path] = []
    full = verify.pillow_findings
    monkeypatch.setattr(verify, "pillow_findings", lambda path: decodes.append(path) or full(path))
    fmt = formats.identify(src)
    copy = tmp_path / "copy.partial"
    rebuilt = fmt.rebuild(src, copy, Limits())
    verify.verify_copy(copy, rebuilt, src, source_format=fmt.name)
    assert decodes == []
    rebuilt = fmt.rebuild(src, copy, Limits())
    copy.write_bytes(copy.read_bytes()[:-2] + b"\xff\xd9")     # rewritten after the check: new bytes
    verify.verify_copy(copy, rebuilt, src, source_format=fmt.name)
    assert decodes == [copy]
    truncated = copy.read_bytes()
    rebuilt = fmt.rebuild(src, copy, Limits())
    copy.write_bytes(truncated[:len(truncated) // 2])           # cut after the check: refused
    with pytest.raises(SanitizeError) as refused:
        verify.verify_copy(copy, rebuilt, src, source_format=fmt.name)
    assert refused.value.code == "verify_failed"
