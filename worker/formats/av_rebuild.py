"""The agency copy of an ISO-BMFF video or audio file: an ffmpeg stream copy by allow-list.

Only the first real video stream (never a cover picture) and the first audio stream are mapped;
every tag, chapter, data/subtitle/timecode track (GoPro GPMF, Apple ``mebx`` timed metadata) is
left behind. Packets are copied untouched; ``bitexact`` keeps ffmpeg from writing its own name
and creation times; the display matrix (rotation) travels as stream side data and is checked.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from worker.errors import SanitizeError, corrupt, too_large, truncated, unsupported
from worker.formats.base import Limits, Rebuilt
from worker.formats.boxes import chunk_offsets, file_size, read_payload, walk
from worker.tools import ffprobe, run_tool

# boxes that hold metadata; named in the report when the source had them
METADATA_BOXES = {b"udta": "udta", b"meta": "meta", b"keys": "mdta keys", b"ilst": "ilst tags",
                  b"\xa9xyz": "©xyz location", b"loci": "3GPP loci", b"uuid": "uuid box (XMP or vendor)",
                  b"XMP_": "XMP", b"chpl": "Nero chapters"}
MAX_SAMPLE_TABLE = 64 << 20


@dataclass(frozen=True)
class Muxing:
    format_name: str      # the Format.name of the copy
    muxer: str            # ffmpeg's -f
    media_type: str
    extension: str
    brand: str | None = None


def _is_cover(stream: dict) -> bool:
    return bool((stream.get("disposition") or {}).get("attached_pic"))


def pick_streams(probe: dict) -> tuple[dict | None, dict | None]:
    """The first real video stream and the first audio stream of an ffprobe description."""
    streams = probe.get("streams") or []
    video = next((s for s in streams if s.get("codec_type") == "video" and not _is_cover(s)), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    return video, audio


def rotation(stream: dict | None) -> float:
    for side in (stream or {}).get("side_data_list") or []:
        if "rotation" in side:
            return float(side["rotation"])
    return 0.0


def check_limits(probe: dict, limits: Limits) -> None:
    streams = probe.get("streams") or []
    if len(streams) > limits.max_streams:
        raise too_large(f"{len(streams)} streams, over the limit of {limits.max_streams}")
    try:
        duration = float((probe.get("format") or {}).get("duration") or 0)
    except ValueError:
        duration = 0.0
    if duration > limits.max_duration_s:
        raise too_large(f"{duration:.0f} s long, over the limit of {limits.max_duration_s:.0f} s")


def structure_report(src: Path) -> set[str]:
    """Walk the source: the metadata boxes it holds, and truncated if samples point past its end."""
    found: set[str] = set()
    with open(src, "rb") as f:
        size = file_size(f)
        for _, box in walk(f, 0, size):
            if box.type in METADATA_BOXES:
                found.add(METADATA_BOXES[box.type])
            elif box.type in (b"stco", b"co64"):
                offsets = chunk_offsets(read_payload(f, box, MAX_SAMPLE_TABLE), box.type == b"co64")
                if any(offset >= size for offset in offsets):
                    raise truncated("the file ends before the media data its sample tables point to")
    return found


MUXINGS = {
    "mp4": Muxing(format_name="mp4", muxer="mp4", media_type="video/mp4", extension=".mp4"),
    "mov": Muxing(format_name="mov", muxer="mov", media_type="video/quicktime", extension=".mov"),
    "3gp": Muxing(format_name="3gp", muxer="3gp", media_type="video/3gpp", extension=".3gp"),
    "3g2": Muxing(format_name="3g2", muxer="3g2", media_type="video/3gpp2", extension=".3g2"),
    # audio-only copies: the brand says audio, so the copy is identified as audio again
    "m4a": Muxing(format_name="m4a", muxer="mp4", media_type="audio/mp4", extension=".m4a", brand="M4A "),
    "3ga": Muxing(format_name="3ga", muxer="3gp", media_type="audio/3gpp", extension=".3ga"),
}
# the copy's container, whether or not a video stream is kept
AUDIO_VARIANT = {"mp4": "m4a", "3gp": "3ga", "3g2": "3ga"}
VIDEO_VARIANT = {"m4a": "mp4", "3ga": "3gp"}


def _muxing_for(name: str, has_video: bool) -> Muxing:
    """The input's family, audio-branded when there is no video (and video-branded when there is)."""
    name = (VIDEO_VARIANT if has_video else AUDIO_VARIANT).get(name, name)
    return MUXINGS[name]


def remux_args(src: Path, dst: Path, muxing: Muxing, indexes: list[int]) -> list[str]:
    source = ffmpeg.input(str(src))
    options = {
        "c": "copy", "f": muxing.muxer,
        "map_metadata": -1, "map_metadata:s": -1, "map_chapters": -1,
        "fflags": "+bitexact", "flags:v": "+bitexact", "flags:a": "+bitexact",
        "movflags": "+faststart",
    }
    if muxing.brand:
        options["brand"] = muxing.brand
    out = ffmpeg.output(*[source[str(i)] for i in indexes], str(dst), **options)
    return out.global_args("-nostdin", "-v", "error").overwrite_output().compile()


def rebuild_with(targets: tuple[str, ...], src: Path, dst: Path, limits: Limits) -> Rebuilt:
    """Remux ``src`` into the first of ``targets`` whose muxer takes its codecs.

    MOV inputs are written as MP4 first: the QuickTime muxer adds sound-description atoms
    (``wave``/``frma``, ``chan``) that readers show as tags, and MP4 plays everywhere.
    """
    boxes_removed = structure_report(src)     # first: a file without its media data says so
    probe = ffprobe(src, limits)
    check_limits(probe, limits)
    video, audio = pick_streams(probe)
    if video is None and audio is None:
        raise unsupported("no video or audio stream to keep")
    indexes = [s["index"] for s in (video, audio) if s is not None]
    for attempt, name in enumerate(targets):
        target = _muxing_for(name, video is not None)
        try:
            run_tool(remux_args(src, dst, target, indexes), limits, what="remuxing")
            break
        except SanitizeError as e:
            # a muxer refusing a codec exits non-zero like a bad input does; the next one may take it
            if e.code != "corrupt" or attempt == len(targets) - 1:
                raise

    copy = ffprobe(dst, limits)
    copy_video, copy_audio = pick_streams(copy)
    if (copy_video is None) != (video is None) or (copy_audio is None) != (audio is None):
        raise corrupt("ffmpeg could not copy every kept stream (the input's media data is unreadable)")
    if rotation(copy_video) != rotation(video):
        raise SanitizeError("tool_failed", f"rotation {rotation(video)} became {rotation(copy_video)} in the copy")

    removed = sorted(boxes_removed)
    dropped = [s for s in probe.get("streams") or [] if s.get("index") not in indexes]
    removed += [f"{'cover picture' if _is_cover(s) else s.get('codec_type', 'unknown') + ' stream'} "
                f"{s.get('codec_tag_string') or s.get('codec_name') or ''}".strip() for s in dropped]
    if probe.get("chapters"):
        removed.append(f"{len(probe['chapters'])} chapters")
    if (probe.get("format") or {}).get("tags"):
        removed.append("container tags")
    return Rebuilt(format=target.format_name, media_type=target.media_type, extension=target.extension,
                   removed=tuple(removed))
