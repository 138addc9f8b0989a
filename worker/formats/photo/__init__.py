"""Photo families: JPEG, PNG/APNG, WebP, GIF (lossless rebuilds by allow-list) and HEIF/AVIF, TIFF
(re-encoded to JPEG by ``reencode``)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")
# the reads of the last file, by what was read; a read of another file (or of this one changed) forgets them
_LAST_FILE: list[tuple] = []
_LAST_READS: dict[tuple, object] = {}
_BYTES = (Path.read_bytes.__module__, Path.read_bytes.__qualname__)   # file_bytes' entry


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def once_per_file(path: Path, read: Callable[[Path], T]) -> T:
    """``read(path)``, remembered for the last file: ``locate`` and ``rebuild`` of one upload share
    one read and one walk. Keyed by path, inode, size and times, so a changed file is read again."""
    key = _file_key(path)
    if _LAST_FILE != [key]:
        _LAST_READS.clear()
        _LAST_FILE[:] = [key]
    what = (read.__module__, read.__qualname__)
    if what not in _LAST_READS:
        _LAST_READS[what] = read(path)
    return _LAST_READS[what]   # type: ignore[return-value]


def file_bytes(path: Path) -> bytes:
    """The file's bytes, read once per file: a family's walk and the verifier's byte proof take the
    same bytes object (each still walks it on its own)."""
    return once_per_file(path, Path.read_bytes)


def animation_pixel_budget(limits) -> int:
    """Frames x canvas pixels an animation may declare: what a viewer would have to composite.

    Each frame is checked against ``max_pixels`` already; this bounds their product, so 1999 frames
    on a 119-megapixel canvas are refused from the headers instead of costing minutes.
    """
    return 16 * limits.max_pixels


def release_read() -> None:
    """Forget the walks of the file: ``rebuild`` is their last user, and a photo's can be large. Its
    bytes stay for the verifier's proof; ``release_file`` forgets them."""
    data = _LAST_READS.get(_BYTES)
    _LAST_READS.clear()
    if data is not None:
        _LAST_READS[_BYTES] = data


def release_file() -> None:
    """Forget everything read of the last file: the sanitizer calls it when the file is done."""
    _LAST_READS.clear()
    _LAST_FILE.clear()
