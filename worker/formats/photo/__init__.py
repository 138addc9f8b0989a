"""Photo families: JPEG, PNG/APNG, WebP, GIF (lossless rebuilds by allow-list) and HEIF/AVIF, TIFF
(re-encoded to JPEG by ``reencode``)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")
_LAST_READ: dict[tuple, object] = {}


def once_per_file(path: Path, read: Callable[[Path], T]) -> T:
    """``read(path)``, remembered for the last file: ``locate`` and ``rebuild`` of one upload share
    one read and one walk. Keyed by path, inode, size and times, so a changed file is read again."""
    stat = path.stat()
    key = (read.__module__, read.__qualname__, str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns,
           stat.st_ctime_ns)
    if key not in _LAST_READ:
        value = read(path)
        _LAST_READ.clear()
        _LAST_READ[key] = value
    return _LAST_READ[key]


def animation_pixel_budget(limits) -> int:
    """Frames x canvas pixels an animation may declare: what a viewer would have to composite.

    Each frame is checked against ``max_pixels`` already; this bounds their product, so 1999 frames
    on a 119-megapixel canvas are refused from the headers instead of costing minutes.
    """
    return 16 * limits.max_pixels


def release_read() -> None:
    """Forget the remembered read: ``rebuild`` is its last user, and a photo can be large."""
    _LAST_READ.clear()
