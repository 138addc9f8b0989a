"""HEIC/HEIF and AVIF photos: located from the Exif and XMP items, re-encoded to JPEG.

Identified by the ``ftyp`` box: the major brand, or a compatible brand, must be a still-image
brand; MP4/MOV/M4A/3GP brands are the video and audio modules' (``isobmff``), so a movie that
merely lists ``mif1`` is not ours. HEIC decoding is libheif's (pillow-heif), AVIF decoding is
Pillow's own plugin (libavif/dav1d): pillow-heif here has no AV1 decoder.

The agency copy is a JPEG of the primary image only (``reencode``): thumbnails, depth and gain
maps, auxiliary images, other top-level images and every metadata item stay behind, because
nothing but the decoded pixels and the ICC profile is written.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable

from PIL import Image

from worker.errors import SanitizeError, corrupt, too_large, truncated
from worker.exif import describe_exif, locate_in_exif
from worker.formats.base import Format, Limits, Rebuilt
from worker.formats.walkers.boxes import children_start, file_size, iter_boxes, read_payload
from worker.formats.photo.heif_tiles import TileError, open_tiles
from worker.formats.photo.reencode import icc_space, write_jpeg, write_jpeg_in_bands
from worker.location import Found, choose
from worker.xmp import locate_in_xmp

# Brands that name a still image (or an image sequence) in a HEIF container.
HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"MiHE"})
AVIF_BRANDS = frozenset({b"avif", b"avis", b"avio"})
GENERIC_IMAGE_BRANDS = frozenset({b"mif1", b"mif2", b"msf1", b"miaf"})   # codec-neutral HEIF / MIAF
IMAGE_BRANDS = HEIC_BRANDS | AVIF_BRANDS | GENERIC_IMAGE_BRANDS
# Major brands of movies and audio: such a file is never taken as a photo, whatever it lists.
MOVIE_BRANDS = frozenset({b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"qt  ", b"M4A ", b"M4B ",
                          b"M4V ", b"M4P ", b"3gp4", b"3gp5", b"3gp6", b"3gp7", b"3g2a", b"3g2b", b"3g2c", b"dash",
                          b"avc1", b"f4v ", b"MSNV", b"XAVC", b"crx "})
MAX_FTYP_BYTES = 4096


def brands(head: bytes) -> tuple[bytes, frozenset[bytes]] | None:
    """(major brand, compatible brands) of a leading ``ftyp`` box, or None when there is none."""
    if len(head) < 16 or head[4:8] != b"ftyp":
        return None
    (size,) = struct.unpack(">I", head[:4])
    if not 16 <= size <= min(len(head), MAX_FTYP_BYTES):
        return None
    compatible = frozenset(head[i:i + 4] for i in range(16, size - 3, 4))
    return head[8:12], compatible


def image_codec(head: bytes) -> str | None:
    """"heic" or "avif" when the ftyp says this is a HEIF still image, else None."""
    found = brands(head)
    if found is None:
        return None
    major, compatible = found
    if major in MOVIE_BRANDS:
        return None
    listed = compatible | {major}
    if not listed & IMAGE_BRANDS:
        return None
    if major in AVIF_BRANDS:
        return "avif"
    if major in HEIC_BRANDS:
        return "heic"
    if listed & AVIF_BRANDS and not listed & HEIC_BRANDS:
        return "avif"
    if listed & HEIC_BRANDS:
        return "heic"
    # codec-neutral brands only: the item's codec configuration box says which
    return "avif" if b"av1C" in head and b"hvcC" not in head else "heic"


def accept_heic(head: bytes) -> bool:
    return image_codec(head) == "heic"


def accept_avif(head: bytes) -> bool:
    return image_codec(head) == "avif"


def decoder_error(what: str, error: Exception) -> SanitizeError:
    """A libheif/libavif complaint as our error: a short file is truncated, anything else corrupt."""
    message = str(error).strip()
    lowered = message.lower()
    if "end of file" in lowered or "end of data" in lowered or "truncated" in lowered:
        return truncated(f"the {what} ends early: {message}")
    return corrupt(f"the {what} cannot be decoded: {message}")


def open_heic(path: Path) -> Image.Image:
    """pillow-heif's lazy image of the primary item: container parsed, pixels not yet decoded."""
    from pillow_heif import HeifImageFile

    try:
        return HeifImageFile(path)
    except (SyntaxError, ValueError, TypeError, KeyError, RuntimeError, EOFError, OSError) as e:
        raise decoder_error("HEIF container", e) from None


def open_avif(path: Path) -> Image.Image:
    """Pillow's lazy AVIF image: the primary item's header parsed, pixels not yet decoded."""
    from PIL.AvifImagePlugin import AvifImageFile

    try:
        return AvifImageFile(path)
    except (SyntaxError, ValueError, TypeError, KeyError, RuntimeError, EOFError, OSError) as e:
        raise decoder_error("AVIF container", e) from None


MAX_ILOC_BYTES = 1 << 20


def item_extents(iloc: bytes) -> list[tuple[int, int]]:
    """(file offset, length) of every extent an ``iloc`` box places in the file itself
    (construction method 0; idat- and item-relative extents are inside boxes already walked).
    ``corrupt`` when the box is shorter than what it declares."""
    try:
        version = iloc[0]
        offset_size, length_size = iloc[4] >> 4, iloc[4] & 15
        base_size, index_size = iloc[5] >> 4, (iloc[5] & 15) if version in (1, 2) else 0
        pos = 6
        count_format = ">I" if version == 2 else ">H"
        (count,) = struct.unpack_from(count_format, iloc, pos)
        pos += struct.calcsize(count_format)

        def number(width: int) -> int:
            nonlocal pos
            if width not in (0, 4, 8):
                raise corrupt(f"iloc field of {width} bytes")
            if pos + width > len(iloc):
                raise struct.error("iloc runs short")
            value = int.from_bytes(iloc[pos:pos + width], "big")
            pos += width
            return value

        extents = []
        for _ in range(count):
            pos += 4 if version == 2 else 2                       # item ID
            method = 0
            if version in (1, 2):
                method = struct.unpack_from(">H", iloc, pos)[0] & 15   # 12 reserved bits, then the method
                pos += 2
            pos += 2                                              # data reference index
            base = number(base_size)
            (extent_count,) = struct.unpack_from(">H", iloc, pos)
            pos += 2
            for _ in range(extent_count):
                number(index_size)
                offset, length = number(offset_size), number(length_size)
                if method == 0:
                    extents.append((base + offset, length))
        return extents
    except (IndexError, struct.error):
        raise corrupt("the iloc box is shorter than the items it lists") from None


def check_layout(path: Path) -> None:
    """The container holds what it says before anything is decoded: its top-level boxes end with
    the file and every item extent lies inside it. libheif decodes a file cut inside its coded
    data without complaint (1.23: the missing tiles come out grey), so this is the check that
    refuses it as ``truncated``."""
    with open(path, "rb") as f:
        size = file_size(f)
        for box in iter_boxes(f, 0, size):
            if box.type != b"meta":
                continue
            for child in iter_boxes(f, children_start(f, box), box.end):
                if child.type == b"iloc":
                    for offset, length in item_extents(read_payload(f, child, MAX_ILOC_BYTES)):
                        if offset + length > size:
                            raise truncated(f"an item's data at {offset} runs {offset + length - size} "
                                            f"bytes past the end of the file")


def check_pixels(image: Image.Image, limits: Limits, what: str) -> None:
    """Refuse before decoding: the size comes from the container (ispe), not from pixels."""
    width, height = image.size
    if width * height > limits.max_pixels:
        raise too_large(f"the {what} image is {width}x{height}, over the limit of {limits.max_pixels} pixels")


def metadata_of(image: Image.Image) -> tuple[bytes | None, bytes | None]:
    """(Exif, XMP) payloads as the plugin exposes them; pillow-heif drops the item's 4-byte offset."""
    exif, xmp = image.info.get("exif"), image.info.get("xmp")
    return (exif if isinstance(exif, bytes) and exif else None,
            xmp if isinstance(xmp, bytes) and xmp else None)


def found_in(exif: bytes | None, xmp: bytes | None) -> Found:
    readings = []
    if exif:
        readings.append(locate_in_exif(exif, source="exif"))
    if xmp:
        readings.append(locate_in_xmp(xmp))
    return choose(readings)


def locate_heic(path: Path, limits: Limits) -> Found:
    """Every top-level image's Exif and XMP items, primary first (it wins a tie)."""
    from pillow_heif import open_heif

    # read lazily (as pillow-heif's Pillow plugin does): the container and the metadata items, not
    # the whole file, whose 8.5 MB (12 MP) would otherwise stay in the heap under the decode's peak
    with open(path, "rb") as f:
        try:
            heif = open_heif(f, convert_hdr_to_8bit=True, lazy_read=True, filename=str(path))
        except (SyntaxError, ValueError, TypeError, KeyError, RuntimeError, EOFError, OSError) as e:
            raise decoder_error("HEIF container", e) from None
        primary = heif.primary_index
        order = [primary] + [i for i in range(len(heif)) if i != primary]
        return choose([found_in(*metadata_of(heif[i])) for i in order])


def locate_avif(path: Path, limits: Limits) -> Found:
    with open_avif(path) as image:
        return found_in(*metadata_of(image))


def removed_from(image: Image.Image, container: str) -> tuple[str, ...]:
    """What the copy leaves behind, for the report: named where the plugin tells us, always the container."""
    exif, xmp = metadata_of(image)
    removed = [container]
    if exif:
        removed.append(f"Exif item ({describe_exif(exif)})")
    if xmp:
        removed.append("XMP")
    info = image.info
    if info.get("thumbnails"):
        removed.append("thumbnail")
    if info.get("depth_images"):
        removed.append("depth image")
    if info.get("aux"):
        removed.append("auxiliary images (" + ", ".join(sorted(info["aux"])) + ")")
    if getattr(image, "n_frames", 1) > 1:
        removed.append("other images or frames")
    return tuple(removed)


# libheif's buffer is copied into Pillow's image this many rows at a time, each run's pages given back
COPY_ROWS = 256


def _page_releaser(view: memoryview) -> Callable[[int], None]:
    """A function that gives the pages of ``view``'s first ``upto`` bytes back to the system
    (madvise DONTNEED): they read as zeros afterwards, so it is for a buffer that is only read
    once more, front to back, before it is freed. Only whole pages inside the buffer are touched,
    never the allocator's bookkeeping around it. A no-op where the address or madvise is missing.
    """
    import ctypes
    import mmap

    class PyBuffer(ctypes.Structure):   # Py_buffer, as the C API defines it (stable since 3.3)
        _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                    ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                    ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                    ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]

    try:
        api = ctypes.pythonapi
        api.PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int]
        api.PyBuffer_Release.argtypes = [ctypes.POINTER(PyBuffer)]
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        buffer = PyBuffer()
        if api.PyObject_GetBuffer(view, ctypes.byref(buffer), 0) != 0:
            raise OSError("no buffer")
        address = buffer.buf or 0
        api.PyBuffer_Release(ctypes.byref(buffer))   # ``view`` keeps the memory alive, not this
    except (OSError, AttributeError, TypeError):
        return lambda upto: None
    page = mmap.PAGESIZE
    released = -(-address // page) * page   # the first whole page inside the buffer
    limit = address + min(len(view), view.nbytes)

    def release(upto: int) -> None:
        nonlocal released
        end = min(address + upto, limit) // page * page
        if address and end > released:
            madvise(released, end - released, mmap.MADV_DONTNEED)
            released = end
    return release


def decoded_heic(image: Image.Image) -> Image.Image:
    """The HEIC's primary image decoded, as a Pillow image of its own (same ``info``).

    pillow-heif's own load copies libheif's decoded buffer (3 bytes a pixel) into Pillow's image
    (4) in one go, so both are whole at once, 84 MB at 12 MP, above libheif's own peak. Here the
    copy runs COPY_ROWS rows at a time and the buffer's pages are given back behind it, so the two
    together stay at about one picture. The caller closes ``image`` (libheif's buffer and context)
    before encoding. Anything pillow-heif does not hand over as expected goes its own way (``load``).
    """
    heif_file = getattr(image, "_heif_file", None)
    if heif_file is None or getattr(image, "is_animated", False):
        image.load()
        return image
    frame = heif_file[image.tell()]
    data = frame.data   # libheif decodes here
    if frame.mode != image.mode or image.mode not in ("L", "RGB", "RGBA") or not isinstance(data, memoryview):
        del data, frame
        image.load()
        return image
    (width, height), stride = frame.size, frame.stride
    if len(data) < stride * height:
        raise ValueError(f"libheif's buffer is {len(data)} bytes, {stride * height} expected")
    picture = Image.new(image.mode, (width, height), None)   # not filled: pages cost only once written
    release = _page_releaser(data)
    decoder = Image._getdecoder(image.mode, "raw", (frame.mode, stride, 1))
    try:
        decoder.setimage(picture.im, None)
        for top in range(0, height, COPY_ROWS):
            end = min(top + COPY_ROWS, height)
            status, err = decoder.decode(data[top * stride:end * stride])
            # whole rows in, whole rows taken (the last run completes the picture: -1); only then
            # are their pages given back
            if err != 0 or status != ((end - top) * stride if end < height else -1):
                raise ValueError("libheif's buffer does not fill the picture")
            release(end * stride)
    finally:
        decoder.cleanup()
    picture.info = dict(image.info)
    return picture


def give_back_freed_memory() -> None:
    """glibc's malloc_trim: libheif's decode leaves ~10 MB (12 MP) freed but held by the allocator's
    arenas, which the encode and the check would otherwise pile on top of. A no-op elsewhere."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load_in_place(image: Image.Image) -> Image.Image:
    image.load()
    return image


def written_from_tiles(src: Path, image: Image.Image, icc: bytes | None, dst: Path) -> bool:
    """Write the copy of HEIC ``src`` band by band from its coded tiles (``heif_tiles``), the
    whole picture never decoded at once; False, with nothing written, where that path does not
    apply: a picture that is not RGB (grey, or an ICC profile of another space), or one that
    ``open_tiles`` cannot read in bands (a clean aperture, no tile API). The bands must come out
    the size pillow-heif reads, or the whole-image decode has the last word."""
    if image.mode not in ("RGB", "RGBA") or icc_space(icc) not in (None, "RGB"):
        return False
    try:
        tiled = open_tiles(src)
        if tiled is None:
            return False
        with tiled:
            bands = tiled.bands()
            if bands.size != image.size:
                return False
            write_jpeg_in_bands(bands.band, bands.size, dst, icc, bands.samples())
    except TileError as e:   # libheif's refusal of the container or of a tile: the input's
        raise decoder_error("HEIF image", e) from None
    return True


WriteInBands = Callable[[Path, Image.Image, bytes | None, Path], bool]


def reencode(opener: Callable[[Path], Image.Image], what: str, container: str,
             load: Callable[[Image.Image], Image.Image] = load_in_place,
             in_bands: WriteInBands | None = None) -> Callable[[Path, Path, Limits], Rebuilt]:
    """A rebuild that writes the picture ``opener`` opens as a JPEG: in bands where ``in_bands``
    can, else decoded whole (``load``) and re-encoded (``write_jpeg``)."""
    def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
        check_layout(src)
        with opener(src) as image:
            check_pixels(image, limits, what)
            removed = removed_from(image, container)
            icc = image.info.get("icc_profile") or None
            if in_bands is None or not in_bands(src, image, icc, dst):
                try:
                    picture = load(image)
                except MemoryError:
                    raise too_large(f"the {what} image does not fit in memory") from None
                # libheif/libavif errors arrive as many types; all are the input's
                except Exception as e:  # noqa: BLE001
                    raise decoder_error(f"{what} image", e) from None
                if picture is not image:
                    image.close()   # the decoder's buffer and the container go before the encode
                    give_back_freed_memory()
                write_jpeg(picture, dst, icc)
        return Rebuilt(format="jpeg", media_type="image/jpeg", extension=".jpg", removed=removed)
    return rebuild


def never_a_copy(what: str) -> Callable[[Path], list[str]]:
    """An agency copy is never HEIF or AVIF (they are re-encoded to JPEG), so any is a finding.

    The verifier only calls the copy's own format's inspect; should a copy ever read as HEIF,
    failing closed is the whole check needed, no box walk.
    """
    def inspect(path: Path) -> list[str]:
        return [f"an agency copy is never {what}: {what} inputs are re-encoded to JPEG"]
    return inspect


FORMATS = [
    Format(name="heic", kind="photo", media_type="image/heic", accept=accept_heic, locate=locate_heic,
           rebuild=reencode(open_heic, "HEIF", "HEIF container", decoded_heic, written_from_tiles),
           inspect=never_a_copy("HEIF"), extensions=(".heic", ".heif")),
    Format(name="avif", kind="photo", media_type="image/avif", accept=accept_avif, locate=locate_avif,
           rebuild=reencode(open_avif, "AVIF", "AVIF container"), inspect=never_a_copy("AVIF"),
           extensions=(".avif",)),
]
