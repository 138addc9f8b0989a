"""Photo families: JPEG, PNG/APNG, WebP, GIF (lossless rebuilds by allow-list) and HEIF/AVIF, TIFF
(re-encoded to JPEG by ``reencode``; a camera HEIC read in bands from its tiles by ``heif_tiles``
and written band by band by ``banded_jpeg``). ``proof`` is the verifier's byte proof of the
lossless ones."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")
# What was read of the last two files (an upload and its agency copy), by file, then by what was
# read; the oldest is forgotten first, and a file changed since (same path) is read again.
_FILES = 2
_READS: dict[tuple, dict[tuple, object]] = {}
_BYTES = (Path.read_bytes.__module__, Path.read_bytes.__qualname__)   # file_bytes' entry


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def once_per_file(path: Path, read: Callable[[Path], T]) -> T:
    """``read(path)``, remembered for the last two files: ``locate`` and ``rebuild`` of one upload
    share one read and one walk, the verifier's walks of the copy one read. Keyed by path, inode,
    size and times, so a changed file is read again."""
    key = _file_key(path)
    reads = _READS.pop(key, None)
    if reads is None:
        reads = {}
        for stale in [k for k in _READS if k[0] == key[0]]:
            del _READS[stale]
        while len(_READS) >= _FILES:
            del _READS[next(iter(_READS))]
    _READS[key] = reads   # the most recent last
    what = (read.__module__, read.__qualname__)
    if what not in reads:
        reads[what] = read(path)
    return reads[what]   # type: ignore[return-value]


def file_bytes(path: Path) -> bytes:
    """The file's bytes, read once: a family's walk and the verifier's byte proof of the input, the
    verifier's walks of the copy, take the same bytes object (each still walks it on its own)."""
    return once_per_file(path, Path.read_bytes)


def animation_pixel_budget(limits) -> int:
    """Frames x canvas pixels an animation may declare: what a viewer would have to composite.

    Each frame is checked against ``max_pixels`` already; this bounds their product, so 1999 frames
    on a 119-megapixel canvas are refused from the headers instead of costing minutes.
    """
    return 16 * limits.max_pixels


def import_readers() -> None:
    """Import what sanitizing photos imports on first use: Pillow's JPEG reader (the verifier's
    header parse of every copy but a PNG, WebP or GIF), its TIFF reader (EXIF), its colour
    management (ICC profiles) and the XMP parser.

    A batch's parent calls it before its workers fork, when the batch starts with a photo: the
    workers then share one import rather than each paying for it (#10). A single file never does.
    """
    import xml.etree.ElementTree  # noqa: F401

    from PIL import ImageChops, ImageCms, JpegImagePlugin, TiffImagePlugin  # noqa: F401


def release_read() -> None:
    """Forget the walks: ``rebuild`` is their last user, and a photo's can be large. The bytes stay
    for the verifier's proof; ``release_file`` forgets them."""
    for reads in _READS.values():
        for what in [w for w in reads if w != _BYTES]:
            del reads[what]


def forget_file(path: Path) -> None:
    """Forget what was read of ``path``: the verifier calls it when a copy's walk is done and a
    full decode follows, which reads the file itself (an 11 MB JPEG copy need not sit beside it)."""
    for key in [k for k in _READS if k[0] == str(path)]:
        del _READS[key]


def release_file() -> None:
    """Forget everything read: the sanitizer calls it when an upload is done."""
    _READS.clear()
