"""Decoded picture in, clean JPEG out: the one re-encoding step for formats an agency cannot open.

HEIC/HEIF, AVIF and TIFF copies are not rebuilt container-wise: their containers hold too many
places for a location (Exif items, XMP, auxiliary and depth images, thumbnails, private IFDs) and
agencies' software often cannot open them anyway. So the primary picture is decoded, turned
upright, and written as a new JPEG that holds pixels and the ICC profile, nothing else.

The caller opens the image (its own plugin, its own limits checked) and hands it here loaded.
"""
from __future__ import annotations

import io
import math
import mmap
import operator
import warnings
from pathlib import Path
from typing import Callable

from PIL import Image, ImageChops, ImageOps

from worker import icc as icc_profiles
from worker.answers import remember
from worker.errors import SanitizeError, corrupt, too_large, unsupported
from worker.formats.base import Limits, Rebuilt
from worker.formats.photo.banded_jpeg import BandedJpeg, BandError

# Tried in order until the copy is visually equal to the decoded input: 95 is plenty for camera
# photos; lossless sources (TIFF scans, screenshots) with fine detail can need more.
JPEG_QUALITIES = (95, 98, 100)
# the question the quality check answers for the verifier (worker.answers): Pillow decodes the copy
PILLOW_DECODES = ("pillow decodes",)
VISUALLY_EQUAL_DB = 41.0       # PSNR; 40 dB is the usual "visually equal" line, with a margin
JPEG_SUBSAMPLING_444 = 0       # Pillow's code for 4:4:4: no chroma loss on re-encoding
# the colour space an ICC profile describes (header bytes 16..20) -> the JPEG mode it needs
ICC_SPACE_MODE = {b"RGB ": "RGB", b"GRAY": "L", b"CMYK": "CMYK"}
GREY_MODES = frozenset({"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
SIXTEEN_BIT_GREY = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def icc_space(icc: bytes | None) -> str | None:
    """The JPEG mode an ICC profile's colour space calls for, or None (absent or not RGB/grey/CMYK)."""
    if not icc or len(icc) < 20:
        return None
    return ICC_SPACE_MODE.get(icc[16:20])


def upright(image: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: EXIF (or XMP) orientation applied, once.

    The plugins already fold container transforms into that orientation: pillow-heif applies
    HEIF irot/imir while decoding and resets EXIF Orientation to 1; Pillow's AVIF plugin writes
    irot/imir into the Orientation it reports. So one ``exif_transpose`` is right for all three.
    """
    if image.getexif().get(0x0112, 1) in (None, 1):
        return image   # already upright: exif_transpose would hand back a full-size copy for nothing
    return ImageOps.exif_transpose(image)


def to_jpeg_mode(image: Image.Image, icc: bytes | None) -> Image.Image:
    """8-bit L, RGB or CMYK, matching the ICC profile's colour space when there is one.

    Alpha is dropped, not composited: a photo has none, and the colour values under it are kept
    as they are (what every reader shows for the RGB of a transparent pixel).
    """
    mode = icc_space(icc) or ("L" if image.mode in GREY_MODES else "CMYK" if image.mode == "CMYK" else "RGB")
    if image.mode in SIXTEEN_BIT_GREY:
        # Pillow clips 16-bit grey to 8 bits; scale it instead, or a scan turns white.
        image = image.convert("I").point(lambda value: value * (1 / 257))
    try:
        return image.convert(mode) if image.mode != mode else image   # no full-size copy when the mode is right
    except ValueError as e:   # e.g. LAB or multi-sample TIFFs Pillow cannot convert
        raise unsupported(f"cannot convert a {image.mode} picture to {mode} for the agency copy ({e})") from None


_RGB_SQUARES = tuple(value * value for value in range(256)) * 3   # weights of an RGB histogram's 768 counts


def _squared_error(a: Image.Image, b: Image.Image) -> float:
    """Sum of squared RGB differences of two same-size pictures: from the histogram of their
    difference, weighted in C (ImageStat's sum2 walks its 768 counts in Python)."""
    difference = ImageChops.difference(a if a.mode == "RGB" else a.convert("RGB"), b if b.mode == "RGB" else b.convert("RGB"))
    return float(sum(map(operator.mul, difference.histogram(), _RGB_SQUARES)))


def _to_db(squares: float, samples: int) -> float:
    if squares == 0:
        return math.inf
    return 10 * math.log10(255 ** 2 / (squares / samples))


def psnr(a: Image.Image, b: Image.Image, rows: int = 256) -> float:
    """Peak signal-to-noise ratio of two same-size pictures, over their RGB values, in dB.

    Compared ``rows`` rows at a time, so the difference (and any RGB conversion) is a strip,
    never another full-size picture beside the two.
    """
    squares = 0.0
    for top in range(0, a.height, rows):
        box = (0, top, a.width, min(top + rows, a.height))
        squares += _squared_error(a.crop(box), b.crop(box))
    return _to_db(squares, a.width * a.height * 3)


def save_jpeg(picture: Image.Image, out: Path | io.BytesIO, quality: int, icc: bytes | None) -> None:
    """Pillow's JPEG writer, given the profile and nothing else: no EXIF, no XMP, no comment."""
    # no optimize=True: it costs ~4x the encode time for 2-5% smaller files
    picture.save(out, "JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING_444, icc_profile=icc)


def encode_jpeg(picture: Image.Image, quality: int, icc: bytes | None) -> bytes:
    out = io.BytesIO()
    save_jpeg(picture, out, quality, icc)
    return out.getvalue()


# The quality estimate encodes this many tiles of TILE x TILE pixels, on an even grid over the
# picture (~2% of a 12 MP photo). Tiles start on the 8x8 block grid: with 4:4:4 every block is
# transformed and quantised on its own, so a tile's error is exactly that of the same blocks in
# the full encode and the estimate is the full picture's PSNR over a sample of its blocks.
ESTIMATE_GRID = 4
ESTIMATE_TILE = 128
ESTIMATE_MARGIN_DB = 0.5       # a sample is not the whole: ask it for a little more


def sample_tiles(picture: Image.Image) -> list[Image.Image]:
    """Up to ESTIMATE_GRID² block-aligned tiles spread over ``picture`` (the whole when it is small)."""
    width, height = picture.size
    if width * height <= (ESTIMATE_GRID * ESTIMATE_TILE) ** 2:
        return [picture]
    tile_w, tile_h = min(ESTIMATE_TILE, width), min(ESTIMATE_TILE, height)
    tiles = []
    for row in range(ESTIMATE_GRID):
        for column in range(ESTIMATE_GRID):
            left = (column * (width - tile_w) // max(ESTIMATE_GRID - 1, 1)) // 8 * 8
            top = (row * (height - tile_h) // max(ESTIMATE_GRID - 1, 1)) // 8 * 8
            tiles.append(picture.crop((left, top, left + tile_w, top + tile_h)))
    return tiles


def estimated_quality(picture: Image.Image) -> int:
    """The lowest of ``JPEG_QUALITIES`` whose encode of the sample tiles is visually equal (with a margin)."""
    tiles = sample_tiles(picture)
    if len(tiles) == 1 and tiles[0] is picture:
        return JPEG_QUALITIES[0]   # small: the full check below is as cheap as any estimate
    return quality_for(tiles)


def quality_for(tiles: list[Image.Image]) -> int:
    """The lowest of ``JPEG_QUALITIES`` whose encode of ``tiles`` is visually equal (with a margin)."""
    if not tiles:
        return JPEG_QUALITIES[0]
    samples = sum(t.width * t.height * 3 for t in tiles)
    for quality in JPEG_QUALITIES[:-1]:
        squares = 0.0
        for tile in tiles:
            with Image.open(io.BytesIO(encode_jpeg(tile, quality, None))) as decoded:
                squares += _squared_error(tile, decoded)
        if _to_db(squares, samples) >= VISUALLY_EQUAL_DB + ESTIMATE_MARGIN_DB:
            return quality
    return JPEG_QUALITIES[-1]


class _Watched:
    """The copy's bytes as Pillow's JPEG loader reads them: ``between`` runs before each read, that
    is after the decoder has taken the previous block and written every row it could from it."""

    between: Callable[[], None] | None = None

    def read(self, size: int | None = -1) -> bytes:
        if self.between is not None:
            self.between()
        return super().read(size)  # type: ignore[misc]


class _WatchedBytes(_Watched, io.BytesIO):
    pass


class _WatchedFile(_Watched, io.BufferedReader):
    pass


Rows = Callable[[int, int], Image.Image]   # rows top:end of a picture, as an image


def rows_of(picture: Image.Image) -> Rows:
    return lambda top, end: picture.crop((0, top, picture.width, end))


def _streamed_squares(source: Rows, decoded: Image.Image, feed: _Watched, rows: int = 64,
                      before_read: Callable[[int], None] | None = None) -> float:
    """Sum of squared RGB differences of the picture whose rows ``source`` gives and the RGB JPEG
    ``decoded`` (opened, not loaded, the picture's size), compared while it decodes: the decoded
    copy is never whole in memory beside the picture. ``before_read(position)`` runs before each
    read of ``feed``, after the comparisons: a writer can add to the copy there.

    Pillow's decoder writes into an anonymous map, which costs memory only where it is written;
    every ``rows`` finished rows are compared and their pages given back, so the copy's decode
    holds a few strips, not 4 bytes a pixel of a second full-size picture (48 MB at 12 MP). A row
    is finished when the padding byte of its last pixel is 255: Pillow's RGB unpacking writes it
    with the pixel, the map starts (and is given back) as zeros. Every row is compared, after the
    decode has succeeded at the latest: what the padding byte says only moves comparisons earlier.
    """
    width, height = decoded.size
    stride = width * 4
    # not closed here: the decoded image points into it until the caller closes that image
    target = mmap.mmap(-1, stride * height)
    pixels = memoryview(target)
    blank = Image.new("RGB", (0, 0))
    squares = 0.0
    done = compared = released = 0

    def rgb_view(start: int, end: int) -> Image.Image:
        """Rows ``start:end`` of the map as an RGB image, in place (what ``ImageFile`` does for raw
        files: Pillow keeps RGB in 4 bytes a pixel, so the map is its own layout)."""
        return blank._new(Image.core.map_buffer(pixels[start * stride:end * stride], (width, end - start),
                                                "raw", 0, ("RGB", 0, 1)))

    def compare(upto: int) -> None:
        nonlocal compared, released, squares
        while compared < upto:
            end = min(compared + rows, upto)
            squares += _squared_error(source(compared, end), rgb_view(compared, end))
            compared = end
        page_end = compared * stride // mmap.PAGESIZE * mmap.PAGESIZE
        if page_end > released:
            target.madvise(mmap.MADV_DONTNEED, released, page_end - released)
            released = page_end

    def between() -> None:
        nonlocal done
        while done < height and target[done * stride + stride - 1] == 255:
            done += 1
        if done - compared >= rows:
            compare(done - (done - compared) % rows)
        if before_read is not None:
            before_read(feed.tell())

    decoded.im = rgb_view(0, height).im
    feed.between = between
    try:
        decoded.load()
    finally:
        feed.between = None
    compare(height)
    return squares


def visually_equal(picture: Image.Image, copy: bytes | Path) -> bool:
    """Whether the JPEG ``copy`` (its bytes or its file) decodes to ``picture`` within
    VISUALLY_EQUAL_DB: one full decode, compared in strips (as it decodes, for RGB: ``_streamed_squares``)."""
    feed: _Watched = _WatchedBytes(copy) if isinstance(copy, bytes) else _WatchedFile(io.FileIO(copy))
    with feed, Image.open(feed) as decoded:
        if decoded.size != picture.size:
            return False
        if decoded.mode == picture.mode == "RGB" and decoded.format == "JPEG" and len(decoded.tile) == 1:
            squares = _streamed_squares(rows_of(picture), decoded, feed)
            return _to_db(squares, picture.width * picture.height * 3) >= VISUALLY_EQUAL_DB
        decoded.load()
        return psnr(picture, decoded) >= VISUALLY_EQUAL_DB


def write_jpeg(image: Image.Image, dst: Path, icc: bytes | None) -> int:
    """Write the loaded ``image`` upright to ``dst`` as a JPEG holding pixels and ``icc`` only.

    ``info`` is emptied first because Pillow's writer takes a comment from it. The quality is the
    lowest of ``JPEG_QUALITIES`` that a few sample tiles say is enough (``estimated_quality``); the
    whole copy is then decoded once and compared with the picture, and only when it misses the
    bar (the sample was not representative) is the next quality tried. Returns the quality kept.
    """
    # The caller's image is not used after this, so it is turned in place: a copy would keep the
    # unturned full-size picture alive through the encode and the check.
    if image.getexif().get(0x0112, 1) not in (None, 1):
        ImageOps.exif_transpose(image, in_place=True)
    picture = to_jpeg_mode(image, icc)
    picture.info = {}   # may be the caller's own image: it is not used after this
    keep_icc = icc_profiles.clean(icc) if icc and icc_space(icc) == picture.mode else None
    first = JPEG_QUALITIES.index(estimated_quality(picture))
    for quality in JPEG_QUALITIES[first:]:
        # written to ``dst`` and checked from there: the copy (11 MB at 12 MP, q95 4:4:4) is never
        # held in memory beside the picture; a miss is overwritten by the next quality
        try:
            save_jpeg(picture, dst, quality, keep_icc)
        except OSError as e:
            raise SanitizeError("internal", f"writing the JPEG copy failed: {e}") from None
        if quality == JPEG_QUALITIES[-1]:
            break
        if visually_equal(picture, dst):
            # that check decoded the whole copy: the verifier's decode of these bytes is answered
            remember(PILLOW_DECODES, dst, True)
            break
    return quality


# Rows of the picture encoded, decoded and compared at a time by ``write_jpeg_in_bands``
BAND_ROWS = 256


def _written_and_compared(bands: Rows, size: tuple[int, int], dst: Path, quality: int,
                          icc: bytes | None) -> float:
    """Write ``dst`` from ``bands`` at ``quality`` while Pillow decodes it from the file: the next
    band is written only when the decoder has read all that is there. Returns the sum of squared
    differences between the bands and the decode of ``dst``'s bytes. At most a band or two of
    the picture, and a few strips of the decode, are in memory at once."""
    width, height = size
    held: list[tuple[int, Image.Image]] = []   # bands written, not yet wholly compared

    def source(top: int, end: int) -> Image.Image:
        while held and held[0][0] + held[0][1].height <= top:
            held.pop(0)   # compared: rows only ever go forward
        pieces = [(start, band) for start, band in held if start < end and start + band.height > top]
        if len(pieces) == 1:
            start, band = pieces[0]
            return band.crop((0, top - start, width, end - start))
        joined = Image.new("RGB", (width, end - top))
        for start, band in pieces:
            joined.paste(band.crop((0, max(top - start, 0), width, min(end - start, band.height))),
                         (0, max(start - top, 0)))
        return joined

    with open(dst, "wb") as out:
        writer = BandedJpeg(out, size, quality, icc)

        def write_ahead(position: int) -> None:
            while position >= writer.written and writer.rows < height:
                top = writer.rows
                band = bands(top, min(top + BAND_ROWS, height))
                held.append((top, band))
                writer.add(band)
                if writer.rows == height:
                    writer.finish()
                out.flush()

        write_ahead(0)
        feed = _WatchedFile(io.FileIO(dst))
        with feed, Image.open(feed) as decoded:
            if decoded.size != size or decoded.mode != "RGB" or len(decoded.tile) != 1:
                raise BandError(f"the banded copy reads as {decoded.mode} {decoded.size}")
            squares = _streamed_squares(source, decoded, feed, before_read=write_ahead)
        if writer.rows != height:
            raise BandError(f"the decode ended at row {writer.rows} of {height}")
    return squares


def write_jpeg_in_bands(bands: Rows, size: tuple[int, int], dst: Path, icc: bytes | None,
                        samples: list[Image.Image] | None = None) -> int:
    """Write the RGB picture whose upright rows ``bands`` gives to ``dst`` as a JPEG holding pixels
    and ``icc`` only, never holding the whole picture (``BandedJpeg``). The first quality tried
    is the one ``samples`` of the picture call for (``quality_for``); the next is tried only when
    the copy, decoded from its file as it is written, is not visually equal to the bands, and
    then the bands are read again. Returns the quality kept.
    """
    keep_icc = icc_profiles.clean(icc) if icc and icc_space(icc) == "RGB" else None
    width, height = size
    first = JPEG_QUALITIES.index(quality_for(samples or []))
    for quality in JPEG_QUALITIES[first:]:
        try:
            squares = _written_and_compared(bands, size, dst, quality, keep_icc)
        except BandError as e:
            raise SanitizeError("internal", f"writing the JPEG copy in bands failed: {e}") from None
        except OSError as e:
            raise SanitizeError("internal", f"writing or reading back the JPEG copy failed: {e}") from None
        if _to_db(squares, width * height * 3) >= VISUALLY_EQUAL_DB or quality == JPEG_QUALITIES[-1]:
            break
    # the copy was decoded whole, from its file, to be compared: the verifier's decode is answered
    remember(PILLOW_DECODES, dst, True)
    return quality


# Coded image data the walks cannot judge (LZW, VP8/VP8L) is decoded once from the input when the
# whole animation costs at most this many pixels; larger ones rely on the walks and the byte proof.
DECODE_CHECK_PIXELS = 64_000_000


def check_decodes(src: Path, frames: int, width: int, height: int, what: str) -> None:
    """SanitizeError(corrupt) when Pillow cannot decode every frame of ``src`` (within the budget).

    A byte flip inside LZW or VP8 data passes every structure walk, and a copy of it would be
    byte-identical yet undecodable: refused here, before the rebuild, so ``salvage`` can try.
    """
    if frames * width * height > DECODE_CHECK_PIXELS:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(src) as image:
                image.load()
                for index in range(1, frames):
                    image.seek(index)
                    image.load()
    except Exception as e:  # noqa: BLE001 - any decoder complaint means the input's image data is broken
        raise corrupt(f"the {what} image data does not decode ({type(e).__name__}: {e})") from None


SALVAGEABLE_CODES = frozenset({"corrupt", "truncated"})


def salvage(src: Path, dst: Path, limits: Limits, damage: SanitizeError, *, truncated_ok: bool = False) -> Rebuilt:
    """Decode ``src`` with Pillow and write it as a clean JPEG; ``damage`` (why the container walk
    refused it) is raised when nothing decodes, and is the salvage reason when something does.

    ``truncated_ok`` lets Pillow's JPEG decoder finish a picture whose data stops early (grey below
    the cut), as viewers show it; it is set only around this one decode.

    Only a damaged container (``corrupt``, ``truncated``) is salvaged; any other refusal (too large,
    unsupported, a timeout) is raised as it is, so the families call this from every refusal.
    """
    if damage.code not in SALVAGEABLE_CODES:
        raise damage
    from PIL import ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(src) as image:
                width, height = image.size
                if width * height > limits.max_pixels:
                    raise too_large(f"{width}x{height} pixels is over the limit of {limits.max_pixels}")
                ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
                image.load()
                icc = image.info.get("icc_profile") or None
                write_jpeg(image, dst, icc)
    except SanitizeError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow's many ways of saying "cannot decode" are one answer here
        raise SanitizeError(damage.code, f"{damage.message}; no decoder shows the picture either "
                                         f"({type(e).__name__}: {e})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return Rebuilt(format="jpeg", media_type="image/jpeg", extension=".jpg",
                   removed=("the damaged container and all its metadata",), salvage_reason=damage.message)


__all__ = ["write_jpeg", "salvage", "upright", "to_jpeg_mode", "icc_space", "psnr", "JPEG_QUALITIES",
           "estimated_quality", "visually_equal", "write_jpeg_in_bands"]
