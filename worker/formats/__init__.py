"""The registry: every supported container family, listed explicitly, tried in order.

The layout shows the roles: ``photo/`` holds the photo families (one module a container, plus the
shared JPEG re-encoder), ``av/`` the audio and video families (with the ffmpeg remux and the
verifier's walks they share), ``walkers/`` the bounded structure walkers several families use
(ISO-BMFF boxes, RIFF/IFF chunks, TIFF IFDs). ``base`` is the one interface.

Identification is by content only (magic bytes, then the family's own ``accept``), never by the
file name or the declared content type: an upload can lie.

A family's module is imported only when a file might be one of its own (its ``might`` prefilter
below says so) or when asked for by name: sanitizing a JPEG imports no audio or video code (#10,
start time). A prefilter only saves an import: it may pass heads the family then refuses, never
refuse a head the family's ``accept`` would take (tests/test_startup.py checks that on every
fixture and the corpus); the family's ``accept`` stays the authority.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from worker.errors import SanitizeError
from worker.formats.base import HEAD_BYTES, Format, Limits, Rebuilt


def _printable_box_type(head: bytes) -> bool:
    # ISO-BMFF starts with a box: a 4-character type at offset 4 (ftyp, or QuickTime's moov/mdat/wide/…)
    return len(head) >= 8 and all(0x20 <= b < 0x7F for b in head[4:8])


def _lists_image_brand(head: bytes) -> bool:
    # a leading ftyp naming a still-image brand among its brands: a movie never imports the photo code
    from worker.formats.av.brands import IMAGE_BRANDS

    if head[4:8] != b"ftyp":
        return False
    ftyp = head[8:int.from_bytes(head[:4], "big")]
    return any(ftyp[i:i + 4] in IMAGE_BRANDS for i in (0, *range(8, len(ftyp), 4)))


def _mpeg_audio(head: bytes) -> bool:
    # an ID3v2 tag, or an MPEG audio frame sync (11 set bits) at the very start
    return head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


# Every supported family, in the order identification tries them, each with the cheap test a head
# must pass before its module is imported. Magic bytes do not overlap except inside ISO-BMFF, where
# heif (image brands) and isobmff (video and audio brands) each accept only their own `ftyp` brands,
# and in Ogg, where ogg_video takes only a Theora first stream.
FAMILIES: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("photo.jpeg", lambda head: head[:3] == b"\xff\xd8\xff"),
    ("photo.png", lambda head: head[:8] == b"\x89PNG\r\n\x1a\n"),
    ("photo.webp", lambda head: head[:4] == b"RIFF"),
    ("photo.gif", lambda head: head[:3] == b"GIF"),
    ("photo.heif", _lists_image_brand),
    ("photo.tiff", lambda head: head[:2] in (b"II", b"MM")),
    ("av.isobmff", _printable_box_type),
    ("av.matroska", lambda head: head[:4] == b"\x1a\x45\xdf\xa3"),
    ("av.mp3", _mpeg_audio),
    ("av.flac", lambda head: head[:4] == b"fLaC" or head[:3] == b"ID3"),
    ("av.ogg_video", lambda head: head[:4] == b"OggS"),
    ("av.ogg", lambda head: head[:4] == b"OggS"),
    ("av.riff", lambda head: head[:4] == b"RIFF"),
    ("av.aiff", lambda head: head[:4] == b"FORM"),
    ("av.amr", lambda head: head[:5] == b"#!AMR"),
)

_loaded: dict[str, list[Format]] = {}


def family_formats(family: str) -> list[Format]:
    """The Formats of one family (e.g. "photo.jpeg"), importing its module on first use."""
    if family not in _loaded:
        _loaded[family] = list(importlib.import_module(f"worker.formats.{family}").FORMATS)
    return _loaded[family]


def all_formats() -> list[Format]:
    """Every Format of every family, in identification order (imports them all)."""
    return [fmt for family, _ in FAMILIES for fmt in family_formats(family)]


def __getattr__(name: str):
    # `formats.FORMATS` (the full list) stays available; it is what imports every family
    if name == "FORMATS":
        return all_formats()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def identify(path: Path, data: bytes | None = None) -> Format:
    """The Format this file's content belongs to, or SanitizeError(unsupported_format / empty).

    ``data``: the whole file, when the caller has read it already (its head is what is looked at).
    """
    head = read_head(path) if data is None else data[:HEAD_BYTES]
    if not head:
        raise SanitizeError("empty", "the file is empty")
    for family, might in FAMILIES:
        if not might(head):
            continue
        for fmt in family_formats(family):
            if fmt.accept(head):
                return fmt
    raise SanitizeError("unsupported_format",
                        f"content not recognised as a supported photo, video or audio format (starts {head[:8].hex()})")


def by_name(name: str) -> Format:
    # the families already imported first (names are unique): the format of a copy just rebuilt is
    # found without importing the families before it (an MP3's would otherwise import Pillow, #10)
    for formats in list(_loaded.values()):
        for fmt in formats:
            if fmt.name == name:
                return fmt
    for family, _ in FAMILIES:   # in order: photo names are found without importing audio or video
        for fmt in family_formats(family):
            if fmt.name == name:
                return fmt
    raise KeyError(name)


__all__ = ["FORMATS", "FAMILIES", "Format", "Limits", "Rebuilt", "identify", "by_name", "read_head",
           "family_formats", "all_formats"]
