"""TIFF photos (classic and BigTIFF): located from the GPS/Exif IFDs and XMP, re-encoded to JPEG.

A TIFF *is* an EXIF structure, so every descriptive tag lives beside the pixels' own tags in
IFD0, and any private IFD can hold more. Nothing of it is copied: the first page is decoded and
written as a new JPEG (``reencode``) with its ICC profile.

The IFDs are read through Pillow's lazy TIFF reader (it seeks to each IFD, it does not read
the whole file), and only the tags a location needs are handed to ``worker.exif`` as a small
EXIF of their own: a scan can be gigabytes, an EXIF blob is capped at 16 MiB.

Camera raw files that are TIFF underneath (DNG, CR2, NEF, ARW, ...) are refused: their first IFD
is a reduced preview, and decoding that would hand an agency a thumbnail instead of the photo.
"""
from __future__ import annotations

import struct
import warnings
from pathlib import Path

from PIL import Image

from worker.errors import SanitizeError, corrupt, too_large, truncated, unsupported
from worker.exif import TAG_DATETIME, TAG_EXIF_IFD, TAG_GPS_IFD, locate_in_exif
from worker.formats.base import Format, Limits, Rebuilt
from worker.formats.photo.reencode import write_jpeg
from worker.location import Found, choose
from worker.xmp import locate_in_xmp

TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
BIGTIFF_MAGICS = (b"II+\x00", b"MM\x00+")
CR2_MARKER = b"CR"                       # bytes 8..10 of a Canon CR2
TAG_NEW_SUBFILE_TYPE = 254
TAG_PHOTOMETRIC = 262
TAG_SUB_IFDS = 330
TAG_XMP = 700
TAG_IPTC = 33723
TAG_PHOTOSHOP = 34377
TAG_DNG_VERSION = 50706
RAW_PHOTOMETRICS = frozenset({32803, 34892})     # CFA, LinearRaw
# Exif IFD tags that date the capture; nothing else of that IFD is needed for a location
TIME_TAGS = frozenset({0x9003, 0x9004, 0x9010, 0x9011, 0x9012})


def accept(head: bytes) -> bool:
    return head[:4] in TIFF_MAGICS + BIGTIFF_MAGICS


def decoder_error(error: Exception) -> SanitizeError:
    message = str(error).strip()
    if "unknown pixel mode" in message:   # a layout Pillow does not decode (CFA, LinearRaw, odd samples)
        return unsupported(f"the TIFF's pixel layout is not supported: {message}")
    if "truncated" in message.lower() or isinstance(error, EOFError):
        return truncated(f"the TIFF ends early: {message}")
    return corrupt(f"the TIFF cannot be decoded: {type(error).__name__}: {message}")


def open_tiff(path: Path) -> Image.Image:
    """Pillow's lazy TIFF image of the first page: IFD0 read, pixels not yet decoded."""
    from PIL.TiffImagePlugin import TiffImageFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # Pillow warns on odd tags; they are not copied anyway
            return TiffImageFile(path)
    except (SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error, EOFError, OSError) as e:
        raise decoder_error(e) from None


def has_more_pages(path: Path) -> bool:
    """Whether IFD0 links to a next IFD: read from the header and IFD0's entry count, not by walking
    pages (Pillow's n_frames visits every page: 30 s on 60,000 pages, and it raises on broken ones)."""
    with open(path, "rb") as f:
        head = f.read(16)
        order = "<" if head[:2] == b"II" else ">"
        big = head[2:4] in (b"+\x00", b"\x00+")
        try:
            if big:
                (ifd0,) = struct.unpack(order + "Q", head[8:16])
                f.seek(ifd0)
                (count,) = struct.unpack(order + "Q", f.read(8))
                f.seek(ifd0 + 8 + 20 * count)
                (following,) = struct.unpack(order + "Q", f.read(8))
            else:
                (ifd0,) = struct.unpack(order + "I", head[4:8])
                f.seek(ifd0)
                (count,) = struct.unpack(order + "H", f.read(2))
                f.seek(ifd0 + 2 + 12 * count)
                (following,) = struct.unpack(order + "I", f.read(4))
        except (struct.error, OSError, OverflowError, ValueError):
            return False
    return following != 0


def refuse_raw(image: Image.Image, head: bytes) -> None:
    """Camera raw is not a photo we can re-encode faithfully: say so instead of shipping its preview."""
    tags = image.tag_v2
    if head[8:10] == CR2_MARKER:
        raise unsupported("a Canon CR2 raw file (TIFF-based camera raw) is not supported")
    if TAG_DNG_VERSION in tags:
        raise unsupported("a DNG raw file is not supported")
    if tags.get(TAG_PHOTOMETRIC) in RAW_PHOTOMETRICS:
        raise unsupported("a camera raw (CFA or linear raw) TIFF is not supported")
    if (int(tags.get(TAG_NEW_SUBFILE_TYPE, 0) or 0) & 1) or TAG_SUB_IFDS in tags:
        raise unsupported("the first TIFF image is a reduced preview with the full image elsewhere "
                          "(camera raw such as NEF or ARW): not supported")


def location_exif(image: Image.Image) -> bytes:
    """A small EXIF holding only IFD0 DateTime, the GPS IFD and the Exif IFD's capture times."""
    exif = image.getexif()
    minimal = Image.Exif()
    if TAG_DATETIME in exif:
        minimal[TAG_DATETIME] = exif[TAG_DATETIME]
    gps = exif.get_ifd(TAG_GPS_IFD)
    if gps:
        minimal[TAG_GPS_IFD] = dict(gps)
    times = {tag: value for tag, value in exif.get_ifd(TAG_EXIF_IFD).items() if tag in TIME_TAGS}
    if times:
        minimal[TAG_EXIF_IFD] = times
    return minimal.tobytes()


def xmp_of(image: Image.Image) -> bytes | None:
    value = image.tag_v2.get(TAG_XMP)
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    return value if isinstance(value, bytes) and value else None


def locate(path: Path, limits: Limits) -> Found:
    with open_tiff(path) as image:
        readings: list[Found] = []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                readings.append(locate_in_exif(location_exif(image), source="exif"))
        except Exception as e:  # noqa: BLE001 - a broken GPS/Exif IFD costs the fix, noted, never the upload
            readings.append(Found(notes=(f"exif: unreadable TIFF GPS or Exif IFD ({type(e).__name__}: {e})",)))
        try:
            xmp = xmp_of(image)
        except Exception:  # noqa: BLE001 - an unreadable XMP tag costs its fix only
            xmp = None
        if xmp:
            readings.append(locate_in_xmp(xmp))
        return choose(readings)


def removed_from(image: Image.Image, more_pages: bool) -> tuple[str, ...]:
    """What the copy leaves behind, for the report. Other pages are never opened."""
    tags = image.tag_v2
    removed = [f"TIFF IFD0 ({len(tags)} tags)"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exif = image.getexif()
            removed += [name for tag, name in ((TAG_EXIF_IFD, "Exif IFD"), (TAG_GPS_IFD, "GPS IFD")) if exif.get_ifd(tag)]
    except Exception:  # noqa: BLE001 - removed either way; only the description is lost
        removed.append("unreadable Exif or GPS IFD")
    removed += [name for tag, name in ((TAG_XMP, "XMP"), (TAG_IPTC, "IPTC"), (TAG_PHOTOSHOP, "Photoshop resources"))
                if tag in tags]
    if more_pages:
        removed.append("other pages")
    return tuple(removed)


def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
    with open(src, "rb") as f:
        head = f.read(16)
    with open_tiff(src) as image:
        refuse_raw(image, head)
        width, height = image.size
        if width * height > limits.max_pixels:
            raise too_large(f"the TIFF image is {width}x{height}, over the limit of {limits.max_pixels} pixels")
        removed = removed_from(image, has_more_pages(src))
        icc = image.info.get("icc_profile") or None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image.load()
        except MemoryError:
            raise too_large("the TIFF's first page does not fit in memory") from None
        except Exception as e:  # noqa: BLE001 - libtiff and Pillow's decoders raise many types for one cause
            raise decoder_error(e) from None
        write_jpeg(image, dst, icc)
    return Rebuilt(format="jpeg", media_type="image/jpeg", extension=".jpg", removed=removed)


def inspect(path: Path) -> list[str]:
    """An agency copy is never a TIFF (TIFF inputs are re-encoded to JPEG): any is a finding."""
    return ["an agency copy is never TIFF: TIFF inputs are re-encoded to JPEG"]


FORMATS = [
    Format(name="tiff", kind="photo", media_type="image/tiff", accept=accept, locate=locate, rebuild=rebuild,
           inspect=inspect, extensions=(".tif", ".tiff")),
]
