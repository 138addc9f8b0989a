"""The registry: every supported container family, listed explicitly, tried in order.

The layout shows the roles: ``photo/`` holds the photo families (one module a container, plus the
shared JPEG re-encoder), ``av/`` the audio and video families (with the ffmpeg remux and the
verifier's walks they share), ``walkers/`` the bounded structure walkers several families use
(ISO-BMFF boxes, RIFF/IFF chunks). ``base`` is the one interface.

Identification is by content only (magic bytes, then the family's own ``accept``), never by the
file name or the declared content type: an upload can lie.
"""
from __future__ import annotations

from pathlib import Path

from worker.errors import SanitizeError
from worker.formats.base import HEAD_BYTES, Format, Limits, Rebuilt

FORMATS: list[Format] = []


# Every supported family, in the order identification tries them. Magic bytes do not overlap
# except inside ISO-BMFF, where heif (image brands) and isobmff (video and audio brands) each accept
# only their own `ftyp` brands, and in Ogg, where ogg_video takes only a Theora first stream.
FAMILIES = ("photo.jpeg", "photo.png", "photo.webp", "photo.gif", "photo.heif", "photo.tiff",
            "av.isobmff", "av.matroska", "av.mp3", "av.flac", "av.ogg_video", "av.ogg", "av.riff", "av.aiff", "av.amr")


def _register_all() -> None:
    import importlib

    # all or nothing: an import cut short (a per-file deadline, MemoryError) must not leave a registry
    # that lacks the families after it, since a non-empty FORMATS is never filled again
    found = [fmt for family in FAMILIES for fmt in importlib.import_module(f"worker.formats.{family}").FORMATS]
    FORMATS.extend(found)


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
