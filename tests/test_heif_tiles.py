"""HEIC read in bands from its coded tiles, written as a JPEG band by band (heif_tiles, banded_jpeg,
reencode.write_jpeg_in_bands): the same pixels as libheif's whole decode, the same bytes as
Pillow's whole encode, never the whole picture in memory."""
from __future__ import annotations

import io
import itertools
import struct
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from fixtures.heif import iphone_like_heic
from fixtures.jpeg import picture
from tests.conftest import CORPUS
from worker import formats
from worker.answers import recall
from worker.errors import SanitizeError
from worker.formats.base import Limits
from worker.formats.photo.banded_jpeg import BandedJpeg, BandError
from worker.formats.photo.heif_tiles import Bands, Placement, libheif, open_tiles
from worker.formats.photo.reencode import (BAND_ROWS, JPEG_QUALITIES, PILLOW_DECODES, VISUALLY_EQUAL_DB,
                                           psnr, write_jpeg_in_bands)

T = Image.Transpose
OPS = (T.FLIP_LEFT_RIGHT, T.FLIP_TOP_BOTTOM, T.ROTATE_90, T.ROTATE_180, T.ROTATE_270)


def noise(size: tuple[int, int], seed: int = 1) -> Image.Image:
    import random
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


def tiles_of(coded: Image.Image, tile_w: int, tile_h: int, decoded: list | None = None):
    """Tiles as libheif hands them over: full tile size, the edge ones padded past the picture."""
    def tile(column: int, row: int) -> Image.Image:
        if decoded is not None:
            decoded.append((column, row))
        padded = Image.new("RGB", (tile_w, tile_h), (255, 0, 255))
        padded.paste(coded.crop((column * tile_w, row * tile_h, (column + 1) * tile_w, (row + 1) * tile_h)))
        return padded
    return tile


def joined(bands: Bands, rows: int) -> Image.Image:
    width, height = bands.size
    whole = Image.new("RGB", (width, height))
    for top in range(0, height, rows):
        whole.paste(bands.band(top, min(top + rows, height)), (0, top))
    return whole


def whole_decode(path: Path) -> Image.Image:
    import pillow_heif
    heif = pillow_heif.open_heif(path, convert_hdr_to_8bit=True)
    return heif[heif.primary_index].to_pillow().convert("RGB")


# --- geometry: every turn and mirror, tiles that overhang the picture -----------------------------

@pytest.mark.parametrize("ahead", [False, True], ids=["in-line", "decoded-ahead"])
@pytest.mark.parametrize("ops", [()] + [(op,) for op in OPS] + list(itertools.product(OPS[2:], OPS[:2])))
def test_bands_place_turned_tiles_as_the_whole_picture_turned(ops, ahead):
    """Every element of the square's symmetry group (a turn, a mirror, or a turn then a mirror),
    on a grid whose edge tiles overhang: the bands are the whole picture turned, each tile is
    decoded once a pass (with the decoder's thread a band ahead, too), and few are held."""
    from concurrent.futures import ThreadPoolExecutor

    coded = noise((301, 203))
    expected = coded
    for op in ops:
        expected = expected.transpose(op)
    decoded: list = []
    with ThreadPoolExecutor(1) as decoder:
        bands = Bands(Placement(coded.size, ops), (64, 48), tiles_of(coded, 64, 48, decoded),
                      decoder if ahead else None)
        assert bands.size == expected.size
        for rows in (40, 64, 7):
            decoded.clear()
            assert ImageChops.difference(joined(bands, rows), expected).getbbox() is None
            assert sorted(decoded) == sorted(set(decoded)) and len(decoded) == 5 * 5
            assert len(bands._kept) <= 2 * 5 and not bands._ahead


def test_samples_come_from_tiles_the_bands_then_reuse():
    """The quality estimate's blocks are the picture's own pixels, on the 8 x 8 grid, from tiles
    spread over it; the bands take those tiles as they are (no tile is decoded twice)."""
    coded = noise((1000, 760))
    ops = (T.ROTATE_270,)
    upright = coded.transpose(T.ROTATE_270)
    decoded: list = []
    bands = Bands(Placement(coded.size, ops), (256, 256), tiles_of(coded, 256, 256, decoded))
    blocks = bands.samples()
    assert len(blocks) == 16 and len(set(decoded)) == len(decoded) == 4
    pixels = upright.tobytes()
    for block in blocks:
        at = pixels.find(block.tobytes()[:3 * 128])      # noise: a row of 128 pixels is found once
        assert at >= 0 and at % 3 == 0
        top, left = divmod(at // 3, upright.width)
        assert left % 8 == 0 and top % 8 == 0
        assert block.tobytes() == upright.crop((left, top, left + 128, top + 128)).tobytes()
    assert ImageChops.difference(joined(bands, 256), upright).getbbox() is None
    assert len(decoded) == 4 * 3 and len(set(decoded)) == 12 and not bands._spare


def test_a_tile_smaller_than_its_grid_is_refused():
    coded = noise((100, 100))
    bands = Bands(Placement(coded.size, ()), (64, 64), lambda c, r: coded.crop((0, 0, 10, 10)))
    with pytest.raises(Exception, match="smaller than the grid"):
        bands.band(0, 64)


# --- libheif's tiles against libheif's whole decode -----------------------------------------------

def rewrite_transform(path: Path, box: bytes) -> None:
    """Replace the file's 9-byte irot property (size, type, angle) by ``box`` of the same size:
    another angle, or an imir (its byte is the mirror axis)."""
    data = path.read_bytes()
    at = data.index(b"irot") - 4
    assert struct.unpack(">I", data[at:at + 4])[0] == 9 and len(box) == 9
    path.write_bytes(data[:at] + box + data[at + 9:])


TRANSFORMS = {
    "irot 270": None,
    "irot 0": struct.pack(">I", 9) + b"irot\x00",
    "irot 90": struct.pack(">I", 9) + b"irot\x01",
    "irot 180": struct.pack(">I", 9) + b"irot\x02",
    "imir vertical": struct.pack(">I", 9) + b"imir\x00",
    "imir horizontal": struct.pack(">I", 9) + b"imir\x01",
}


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_libheif_tiles_in_bands_are_its_whole_decode(tmp_path, transform):
    """The iPhone-like fixture (a 640x480 grid of 256x256 HEVC tiles, edge tiles overhanging)
    under each transformation libheif applies: the bands are its decode, pixel for pixel."""
    assert libheif() is not None, "pillow-heif's libheif has no tile API"
    src = tmp_path / "photo.heic"
    iphone_like_heic(src)
    if TRANSFORMS[transform]:
        rewrite_transform(src, TRANSFORMS[transform])
    expected = whole_decode(src)
    tiled = open_tiles(src)
    assert tiled is not None
    with tiled:
        assert tiled.grid == (3, 2) and tiled.tile_size == (256, 256)
        bands = tiled.bands()
        assert bands.size == expected.size
        assert ImageChops.difference(joined(bands, 96), expected).getbbox() is None


@pytest.mark.corpus
@pytest.mark.parametrize("name", ["iphone_15_pro.heic", "iphone_7.heic"])
def test_real_iphone_heic_in_bands_is_its_whole_decode(name):
    src = CORPUS / "photoprism" / "assets" / "examples" / name
    if not src.exists():
        pytest.skip("../shared/corpus is absent")
    expected = whole_decode(src)
    with open_tiles(src) as tiled:
        assert tiled.grid in ((8, 6), (6, 8)) and tiled.tile_size == (512, 512)
        assert ImageChops.difference(joined(tiled.bands(), BAND_ROWS), expected).getbbox() is None


def test_libheif_refusing_a_tile_is_the_inputs_fault(tmp_path):
    """A tile whose coded data starts with zeros instead of a NAL unit: libheif's refusal, met
    while the copy is being written band by band, is a clean code, never ``internal``."""
    src = tmp_path / "photo.heic"
    iphone_like_heic(src)
    data = bytearray(src.read_bytes())
    mdat = data.index(b"mdat") + 4
    data[mdat + 4:mdat + 40] = bytes(36)
    src.write_bytes(bytes(data))
    fmt = formats.identify(src)
    with pytest.raises(SanitizeError) as refused:
        fmt.rebuild(src, tmp_path / "copy.jpg", Limits())
    assert refused.value.code == "corrupt" and "did not give a decompressed image" in refused.value.message


# --- the banded JPEG ------------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [8, 64, 200, 256, 776])
def test_bands_make_the_bytes_of_one_whole_encode(rows):
    """Joined band by band, the file is byte for byte Pillow's encode of the whole picture with the
    same options: restart markers renumbered where a band's count is not a multiple of 8."""
    image = noise((333, 777)).resize((1001, 777))
    out = io.BytesIO()
    writer = BandedJpeg(out, image.size, 95, None)
    for top in range(0, image.height, rows):
        writer.add(image.crop((0, top, image.width, min(top + rows, image.height))))
    writer.finish()
    whole = io.BytesIO()
    image.save(whole, "JPEG", quality=95, subsampling=0, restart_marker_rows=1)
    assert out.getvalue() == whole.getvalue()
    assert writer.written == len(out.getvalue())


def test_a_band_that_cannot_be_joined_is_refused():
    image = noise((64, 64))
    writer = BandedJpeg(io.BytesIO(), image.size, 95, None)
    with pytest.raises(BandError, match="inside an MCU row"):
        writer.add(image.crop((0, 0, 64, 12)))
    with pytest.raises(BandError, match="does not fit"):
        writer.add(image.crop((0, 0, 63, 16)))
    writer.add(image.crop((0, 0, 64, 16)))
    writer._icc = b"another profile's tables"   # a later band encoded otherwise: headers differ
    with pytest.raises(BandError, match="differ"):
        writer.add(image.crop((0, 16, 64, 32)))
    with pytest.raises(BandError, match="rows written"):
        writer.finish()


def test_write_in_bands_raises_the_quality_until_the_copy_is_visually_equal(tmp_path):
    """Grain at the first quality misses the bar: the copy is written again, from the bands again,
    and what is kept was decoded from its file and compared (the verifier's decode is answered)."""
    grain = noise((640, 520), seed=7)
    reads: list[tuple[int, int]] = []

    def bands(top: int, end: int) -> Image.Image:
        reads.append((top, end))
        return grain.crop((0, top, grain.width, end))

    dst = tmp_path / "copy.jpg"
    quality = write_jpeg_in_bands(bands, grain.size, dst, None)
    assert quality > JPEG_QUALITIES[0]
    passes = reads.count((0, BAND_ROWS))
    assert passes == JPEG_QUALITIES.index(quality) + 1 and len(reads) == passes * 3
    with Image.open(dst) as copy:
        copy.load()
        assert copy.size == grain.size and (psnr(grain, copy) >= VISUALLY_EQUAL_DB or quality == 100)
    assert recall(PILLOW_DECODES, dst) is True


def test_a_camera_heic_is_written_in_bands_and_verified(tmp_path):
    """The family's rebuild takes the band path for an RGB HEIC (the copy carries the restart
    markers only that path writes), and the copy is the picture, upright."""
    from worker.sanitizer import sanitize_file

    src = tmp_path / "photo.heic"
    iphone_like_heic(src)
    report = sanitize_file(src, tmp_path / "out", Limits())
    copy = Path(report.output)
    data = copy.read_bytes()
    assert b"\xff\xdd" in data[:data.index(b"\xff\xda")]      # DRI: written in bands
    with Image.open(copy) as jpeg:
        jpeg.load()
        assert psnr(whole_decode(src), jpeg) >= VISUALLY_EQUAL_DB


def test_a_grey_heic_is_decoded_whole(tmp_path):
    """Where the band path does not apply (grey pictures stay grey), the whole decode writes it."""
    import pillow_heif
    from worker.sanitizer import sanitize_file

    src = tmp_path / "grey.heic"
    grey = picture((320, 240)).convert("L")
    heif = pillow_heif.HeifFile()
    heif.add_frombytes("L", grey.size, grey.tobytes())
    heif.save(src, quality=95)
    report = sanitize_file(src, tmp_path / "out", Limits())
    data = Path(report.output).read_bytes()
    assert b"\xff\xdd" not in data[:data.index(b"\xff\xda")]
    with Image.open(report.output) as jpeg:
        assert jpeg.mode == "L"


def test_a_heic_with_a_clean_aperture_is_decoded_whole(tmp_path):
    """A ``clap`` crop is libheif's to apply: ``open_tiles`` declines it and the whole decode
    writes the cropped picture. (The fixture's 600-byte ICC ``colr`` property is turned into a
    ``clap`` of the same size: 600 x 440 out of the 640 x 480 coded, before the turn.)"""
    from worker.sanitizer import sanitize_file

    src = tmp_path / "cropped.heic"
    iphone_like_heic(src)
    data = bytearray(src.read_bytes())
    colr = data.index(b"colr", data.index(b"ipco")) - 4
    (size,) = struct.unpack(">I", data[colr:colr + 4])
    clap = struct.pack(">I4s8I", size, b"clap", 600, 1, 440, 1, 0, 1, 0, 1)
    data[colr:colr + len(clap)] = clap
    src.write_bytes(bytes(data))
    expected = whole_decode(src)
    assert expected.size == (440, 600)
    assert open_tiles(src) is None
    report = sanitize_file(src, tmp_path / "out", Limits())
    data = Path(report.output).read_bytes()
    assert b"\xff\xdd" not in data[:data.index(b"\xff\xda")]
    with Image.open(report.output) as jpeg:
        jpeg.load()
        assert jpeg.size == (440, 600) and psnr(expected, jpeg) >= VISUALLY_EQUAL_DB
