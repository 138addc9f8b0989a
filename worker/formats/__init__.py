"""The registry: every supported container family, listed explicitly, tried in order.

Identification is by content only (magic bytes, then the family's own ``accept``), never by the
file name or the declared content type: an upload can lie.
"""
from __future__ import annotations

from pathlib import Path

from worker.errors import SanitizeError
from worker.formats.base import HEAD_BYTES, Format, Limits, Rebuilt

FORMATS: list[Format] = []


def _register_all() -> None:
    # Order matters only where magic bytes overlap; each family module lists its own Formats.
    from worker.formats import jpeg
    FORMATS.extend(jpeg.FORMATS)
    for optional in ("png", "webp", "gif", "heif", "tiff", "isobmff", "mp3", "flac", "ogg", "riff", "aiff", "amr"):
        try:
            module = __import__(f"worker.formats.{optional}", fromlist=["FORMATS"])
        except ModuleNotFoundError as e:
            if e.name != f"worker.formats.{optional}":
                raise
            continue
        FORMATS.extend(module.FORMATS)


def read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def identify(path: Path) -> Format:
    """The Format this file's content belongs to, or SanitizeError(unsupported_format / empty)."""
    if not FORMATS:
        _register_all()
    head = read_head(path)
    if not head:
        raise SanitizeError("empty", "the file is empty")
    for fmt in FORMATS:
        if fmt.accept(head):
            return fmt
    raise SanitizeError("unsupported_format",
                        f"content not recognised as a supported photo, video or audio format (starts {head[:8].hex()})")


def by_name(name: str) -> Format:
    if not FORMATS:
        _register_all()
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise KeyError(name)


__all__ = ["FORMATS", "Format", "Limits", "Rebuilt", "identify", "by_name", "read_head"]
