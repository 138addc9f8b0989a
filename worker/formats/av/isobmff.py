"""Video and audio in ISO-BMFF / QuickTime containers: MOV, MP4, M4V, 3GP, 3G2 and M4A/M4B/3GA.

HEIC/AVIF images share the container and belong to ``heif``: only the brands below are ours.
Identification looks at the ``ftyp`` brand and, when the ``moov`` sits inside the head, at the
track handlers: an MP4 with no ``vide`` track is audio whatever its brand says.

The agency copy is an ffmpeg stream copy (``av_rebuild``); the verifier's walk is ``av_inspect``,
which proves the copy's coded samples by bytes against the input (``stream_proof``).
"""
from __future__ import annotations

import io
import struct
from functools import partial

from worker.errors import SanitizeError
from worker.formats.av.av_inspect import inspect_copy, inspect_copy_of
from worker.formats.av.av_rebuild import rebuild_with
from worker.formats.base import Format
from worker.formats.walkers.boxes import iter_boxes, read_payload, walk
from worker.formats.av.mp4_location import locate

from worker.formats.av.brands import (AUDIO_BRANDS, IMAGE_BRANDS, MP4_BRANDS, QUICKTIME_BRANDS,  # noqa: F401
                                         THREE_GPP2_BRANDS, THREE_GPP_PREFIXES)

# QuickTime movies from before ftyp start straight with one of these atoms
QUICKTIME_FIRST_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})


def _family(head: bytes) -> str | None:
    """'mov', 'mp4', '3gp' or '3g2' from the first box, or None when the content is not ours."""
    if len(head) < 12:
        return None
    size, kind = struct.unpack(">I4s", head[:8])
    if kind != b"ftyp":
        if kind in QUICKTIME_FIRST_ATOMS and (size in (0, 1) or size >= 8):
            return "mov" if _has_quicktime_atoms(head) else None
        return None
    major = head[8:12]
    compatible = {head[i:i + 4] for i in range(16, min(size, len(head), 256) - 3, 4)}
    if major in IMAGE_BRANDS:
        return None
    if major.startswith(b"3g2") or major in THREE_GPP2_BRANDS:
        return "3g2"
    if major.startswith(THREE_GPP_PREFIXES):
        return "3gp"
    if major in QUICKTIME_BRANDS:
        return "mov"
    if major in MP4_BRANDS:
        return "mp4"
    # an unknown major brand is ours only if it declares a video/audio brand and no image brand
    if compatible & IMAGE_BRANDS:
        return None
    if compatible & MP4_BRANDS:
        return "mp4"
    if compatible & QUICKTIME_BRANDS:
        return "mov"
    return None


def _has_quicktime_atoms(head: bytes) -> bool:
    """A brandless file is a QuickTime movie when its top-level atoms (those inside the head) are
    all QuickTime's; a long ``free`` or ``mdat`` atom may hide the rest beyond the head."""
    f = io.BytesIO(head)
    try:
        for box in iter_boxes(f, 0, 1 << 62):
            if box.type not in QUICKTIME_FIRST_ATOMS | {b"ftyp", b"uuid", b"junk"}:
                return False
            if box.end >= len(head):
                break
    except SanitizeError:
        pass
    return True


def _has_video_track(head: bytes) -> bool | None:
    """Whether the tracks say video: True when a ``vide`` handler lies inside the head, False when
    every track was seen without one, None when the head does not tell.

    Every track was seen when the whole moov is in the head, or when the tracks whose handlers the
    head holds number exactly 1 .. mvhd's next_track_ID - 1 (how muxers number them): a long audio
    file's sample tables push its moov past the head, but its one track's handler comes first.
    """
    f = io.BytesIO(head)
    try:
        moov = next((box for box in iter_boxes(f, 0, 1 << 62) if box.type == b"moov"), None)
    except SanitizeError:
        return None           # the head ends before a moov
    if moov is None:
        return None
    handlers: dict[int, bytes] = {}
    next_track = None
    complete = moov.end <= len(head)
    try:
        for box in iter_boxes(f, moov.payload_start, moov.end):
            if box.type == b"mvhd":
                payload = read_payload(f, box, 4096)
                at = 108 if payload[:1] == b"\1" else 96
                next_track = struct.unpack_from(">I", payload, at)[0] if len(payload) >= at + 4 else None
            elif box.type == b"trak":
                track_id, handler = _track_id_and_handler(f, box)
                handlers[track_id] = handler
    except SanitizeError:
        complete = False      # the head ends inside the moov
    if b"vide" in handlers.values():
        return True
    if complete or (next_track and b"" not in handlers.values() and set(handlers) == set(range(1, next_track))):
        return False
    return None


def _track_id_and_handler(f, trak) -> tuple[int, bytes]:
    """A trak's track_ID (tkhd) and media handler (mdia/hdlr), b"" when it lies beyond the head."""
    track_id, handler = 0, b""
    try:
        for path, box in walk(f, trak.payload_start, trak.end, descend_meta=False):
            if box.type == b"tkhd" and not path:
                payload = read_payload(f, box, 4096)
                at = 20 if payload[:1] == b"\1" else 12
                track_id = struct.unpack_from(">I", payload, at)[0] if len(payload) >= at + 4 else 0
            elif box.type == b"hdlr" and path[-1:] == (b"mdia",):
                handler = read_payload(f, box, 4096)[8:12]
                break
    except SanitizeError:
        pass
    return track_id, handler


def _brand_is_audio(head: bytes) -> bool:
    return head[4:8] == b"ftyp" and head[8:12] in AUDIO_BRANDS


def classify(head: bytes) -> str | None:
    """The Format name this head belongs to, or None."""
    family = _family(head)
    if family is None:
        return None
    video = _has_video_track(head)
    audio_only = (video is False) or (video is None and _brand_is_audio(head))
    if family == "mov":
        return "mov"      # QuickTime audio-only movies are rare; remuxed as they are
    if family in ("3gp", "3g2"):
        return "3ga" if audio_only else family
    return "m4a" if audio_only else "mp4"


def _accepts(name: str, head: bytes) -> bool:
    return classify(head) == name


# copy containers, in order of preference (the next is tried when a muxer refuses a codec)
TARGETS = {"mp4": ("mp4", "mov"), "mov": ("mp4", "mov"), "3gp": ("3gp", "mp4", "mov"),
           "3g2": ("3g2", "mp4", "mov"), "m4a": ("m4a", "mov"), "3ga": ("3ga", "m4a", "mov")}
MEDIA_TYPES = {"mp4": "video/mp4", "mov": "video/quicktime", "3gp": "video/3gpp", "3g2": "video/3gpp2",
               "m4a": "audio/mp4", "3ga": "audio/3gpp"}


def _format(name: str, kind: str, extensions: tuple[str, ...]) -> Format:
    return Format(name=name, kind=kind, media_type=MEDIA_TYPES[name], accept=partial(_accepts, name),
                  locate=locate, rebuild=partial(rebuild_with, name, TARGETS[name]), inspect=inspect_copy,
                  extensions=extensions, inspect_copy_of=inspect_copy_of)


FORMATS = [
    _format("mov", "video", (".mov", ".qt")),
    _format("mp4", "video", (".mp4", ".m4v")),
    _format("3gp", "video", (".3gp",)),
    _format("3g2", "video", (".3g2",)),
    _format("m4a", "audio", (".m4a", ".m4b", ".aac")),
    _format("3ga", "audio", (".3ga",)),
]
