"""WebM and Matroska (.webm, .mkv): an ffmpeg stream copy of the first video and first audio stream.

A Matroska file is EBML: an ``EBML`` header naming its DocType (``webm`` or ``matroska``), then one
``Segment`` holding Info (title, date, writing application), Tracks, Clusters of blocks, Cues,
Chapters, Attachments (fonts, cover art, any file) and Tags (NAME=value pairs for the file, a
track, a chapter). The copy is written by ffmpeg's muxer from the packets of the two kept streams,
with no metadata, chapters, attachments or subtitles, and with ``bitexact``: no date, no segment
UID, random track UIDs replaced by track numbers, and ``Lavf`` (no version) as muxing and writing
application. ffmpeg adds one technical tag per track, ``DURATION``, allowed by its form.

A ``webm`` input whose codecs the WebM muxer refuses (Chrome records H.264 into WebM) is written as
Matroska. Matroska has no standard location field: ``locate`` finds none, and the tags that might
hold one are dropped whole. A Segment whose declared size runs past the end of the file is
``truncated``; a Segment of unknown size (a live recording) is copied as far as ffmpeg reads it.

The verifier's look (``inspect``): a bounded walk of every EBML element of the copy against the
allow-list below (never reading a block's payload; Void space must be zero; a SimpleTag must be
ffmpeg's DURATION), and ffprobe: one video and at most one audio stream, no chapter, no attachment,
no tag but ``DURATION`` and the container's ``encoder: Lavf``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, Iterator


from worker.errors import SanitizeError, corrupt, truncated, unsupported
from worker.formats.av.av_inspect import nonzero_bytes
from worker.formats.av.av_rebuild import check_limits, pick_streams
from worker.formats.base import Format, Limits, Rebuilt
from worker.formats.av.ogg_video import probe_findings
from worker.location import Found
from worker.tools import decode_findings, decode_sample, ffprobe, probe_duration, run_tool, stream_copy_args

EBML_MAGIC = b"\x1a\x45\xdf\xa3"
EBML, SEGMENT, CLUSTER, VOID, CRC32 = 0x1A45DFA3, 0x18538067, 0x1F43B675, 0xEC, 0xBF
DOCTYPE, MUXING_APP, WRITING_APP = 0x4282, 0x4D80, 0x5741
TAG, SIMPLE_TAG, TAG_NAME, TAG_STRING = 0x7373, 0x67C8, 0x45A3, 0x4487
UNKNOWN_SIZE = -1
MAX_DEPTH = 8
MAX_VALUE = 4096                # the longest string or integer element the walk reads
# ffmpeg's name under bitexact: the muxer library, no version, the same in every copy
MUXER_NAME = b"Lavf"
DEMUXER = "matroska"        # ffmpeg's demuxer for Matroska and WebM
DURATION_VALUE = re.compile(rb"\d{2}:\d{2}:\d{2}\.\d{9}\Z")

# every element an agency copy may hold: id -> (name, children when it is a master element, else None)
_LEAF = None
COLOUR = {0x55B1: "MatrixCoefficients", 0x55B2: "BitsPerChannel", 0x55B3: "ChromaSubsamplingHorz",
          0x55B4: "ChromaSubsamplingVert", 0x55B5: "CbSubsamplingHorz", 0x55B6: "CbSubsamplingVert",
          0x55B7: "ChromaSitingHorz", 0x55B8: "ChromaSitingVert", 0x55B9: "Range", 0x55BA: "TransferCharacteristics",
          0x55BB: "Primaries", 0x55BC: "MaxCLL", 0x55BD: "MaxFALL"}
MASTERING = {i: "MasteringMetadata field" for i in range(0x55D1, 0x55DB)}
PROJECTION = {0x7671: "ProjectionType", 0x7672: "ProjectionPrivate", 0x7673: "ProjectionPoseYaw",
              0x7674: "ProjectionPosePitch", 0x7675: "ProjectionPoseRoll"}


def _leaves(names: dict[int, str]) -> dict[int, tuple[str, None]]:
    return {i: (n, _LEAF) for i, n in names.items()}


GLOBAL = {VOID: ("Void", _LEAF), CRC32: ("CRC-32", _LEAF)}
VIDEO = {**_leaves({0xB0: "PixelWidth", 0xBA: "PixelHeight", 0x54B0: "DisplayWidth", 0x54BA: "DisplayHeight",
                    0x54B2: "DisplayUnit", 0x9A: "FlagInterlaced", 0x9D: "FieldOrder", 0x53B8: "StereoMode",
                    0x53C0: "AlphaMode", 0x54AA: "PixelCropBottom", 0x54BB: "PixelCropTop", 0x54CC: "PixelCropLeft",
                    0x54DD: "PixelCropRight", 0x54B3: "AspectRatioType", 0x2383E3: "FrameRate"}),
         0x55B0: ("Colour", {**_leaves(COLOUR), 0x55D0: ("MasteringMetadata", _leaves(MASTERING))}),
         0x7670: ("Projection", _leaves(PROJECTION))}
AUDIO = _leaves({0xB5: "SamplingFrequency", 0x78B5: "OutputSamplingFrequency", 0x9F: "Channels", 0x6264: "BitDepth"})
TRACK_ENTRY = {**_leaves({0xD7: "TrackNumber", 0x73C5: "TrackUID", 0x83: "TrackType", 0xB9: "FlagEnabled",
                          0x88: "FlagDefault", 0x55AA: "FlagForced", 0x9C: "FlagLacing", 0x6DE7: "MinCache",
                          0x23E383: "DefaultDuration", 0x23314F: "TrackTimestampScale", 0x55EE: "MaxBlockAdditionID",
                          0x22B59C: "Language", 0x22B59D: "LanguageBCP47", 0x86: "CodecID", 0x63A2: "CodecPrivate",
                          0x56AA: "CodecDelay", 0x56BB: "SeekPreRoll"}),
               0xE0: ("Video", VIDEO), 0xE1: ("Audio", AUDIO),
               0x41E4: ("BlockAdditionMapping", _leaves({0x41F0: "BlockAddIDValue", 0x41A4: "BlockAddIDName",
                                                          0x41E7: "BlockAddIDType", 0x41ED: "BlockAddIDExtraData"}))}
BLOCK_GROUP = {**_leaves({0xA1: "Block", 0x9B: "BlockDuration", 0xFB: "ReferenceBlock", 0x75A2: "DiscardPadding"}),
               0x75A1: ("BlockAdditions", {0xA6: ("BlockMore", _leaves({0xEE: "BlockAddID", 0xA5: "BlockAdditional"}))})}
CUE_POINT = {0xB3: ("CueTime", _LEAF),
             0xB7: ("CueTrackPositions", _leaves({0xF7: "CueTrack", 0xF1: "CueClusterPosition",
                                                  0xF0: "CueRelativePosition", 0xB2: "CueDuration",
                                                  0x5378: "CueBlockNumber", 0xEA: "CueCodecState"}))}
TAG_ENTRY = {0x63C0: ("Targets", _leaves({0x68CA: "TargetTypeValue", 0x63CA: "TargetType", 0x63C5: "TagTrackUID"})),
             SIMPLE_TAG: ("SimpleTag", _leaves({TAG_NAME: "TagName", TAG_STRING: "TagString", 0x447A: "TagLanguage",
                                                0x447B: "TagLanguageBCP47", 0x4484: "TagDefault"}))}
SEGMENT_CHILDREN = {
    0x114D9B74: ("SeekHead", {0x4DBB: ("Seek", _leaves({0x53AB: "SeekID", 0x53AC: "SeekPosition"}))}),
    0x1549A966: ("Info", _leaves({0x2AD7B1: "TimestampScale", 0x4489: "Duration", MUXING_APP: "MuxingApp",
                                  WRITING_APP: "WritingApp"})),
    0x1654AE6B: ("Tracks", {0xAE: ("TrackEntry", TRACK_ENTRY)}),
    CLUSTER: ("Cluster", {**_leaves({0xE7: "Timestamp", 0xA3: "SimpleBlock", 0xA7: "Position", 0xAB: "PrevSize"}),
                          0xA0: ("BlockGroup", BLOCK_GROUP)}),
    0x1C53BB6B: ("Cues", {0xBB: ("CuePoint", CUE_POINT)}),
    0x1254C367: ("Tags", {TAG: ("Tag", TAG_ENTRY)}),
}
HEADER_CHILDREN = _leaves({0x4286: "EBMLVersion", 0x42F7: "EBMLReadVersion", 0x42F2: "EBMLMaxIDLength",
                           0x42F3: "EBMLMaxSizeLength", DOCTYPE: "DocType", 0x4287: "DocTypeVersion",
                           0x4285: "DocTypeReadVersion"})
TOP = {EBML: ("EBML", HEADER_CHILDREN), SEGMENT: ("Segment", SEGMENT_CHILDREN)}
# well-known elements outside the allow-list, named in findings
KNOWN = {0x1941A469: "Attachments", 0x1043A770: "Chapters", 0x7BA9: "Title", 0x4461: "DateUTC",
         0x73A4: "SegmentUID", 0x7384: "SegmentFilename", 0x536E: "Track Name", 0x258688: "CodecName",
         0x6D80: "ContentEncodings", 0x7446: "AttachmentLink", 0x4485: "TagBinary", 0x63C9: "TagEditionUID",
         0x63C4: "TagChapterUID", 0x63C6: "TagAttachmentUID"}


@dataclass(frozen=True)
class Element:
    id: int
    start: int
    data: int                   # where the payload starts
    size: int                   # payload size, UNKNOWN_SIZE when the muxer did not say

    def end(self, limit: int) -> int:
        return limit if self.size == UNKNOWN_SIZE else self.data + self.size


def _vint(f: BinaryIO, *, keep_marker: bool) -> int | None:
    """One EBML variable-length integer at the file's position; None at the end of the file."""
    first = f.read(1)
    if not first:
        return None
    b = first[0]
    length = 9 - b.bit_length() if b else 9
    if length > 8 or (keep_marker and length > 4):
        raise corrupt(f"invalid EBML {'ID' if keep_marker else 'size'} at byte {f.tell() - 1}")
    rest = f.read(length - 1)
    if len(rest) != length - 1:
        raise truncated("the file ends inside an EBML element header")
    value = int.from_bytes(first + rest, "big")
    if keep_marker:
        return value
    value &= (1 << (7 * length)) - 1
    return UNKNOWN_SIZE if value == (1 << (7 * length)) - 1 else value


def iter_elements(f: BinaryIO, start: int, end: int) -> Iterator[Element]:
    """The elements from ``start`` to ``end``; each one's payload must fit inside ``end``."""
    pos = start
    while pos < end:
        f.seek(pos)
        ident = _vint(f, keep_marker=True)
        if ident is None:
            raise truncated(f"the file ends at byte {pos}, inside its parent element")
        size = _vint(f, keep_marker=False)
        if size is None:
            raise truncated("the file ends inside an EBML element header")
        element = Element(ident, pos, f.tell(), size)
        if size != UNKNOWN_SIZE and element.data + size > end:
            raise truncated(f"EBML element {ident:#x} at byte {pos} runs past its parent or the file")
        yield element
        if size == UNKNOWN_SIZE:
            return          # a parent of unknown size: its children are walked by the caller
        pos = element.data + size


def read_value(f: BinaryIO, element: Element) -> bytes:
    if element.size == UNKNOWN_SIZE or element.size > MAX_VALUE:
        raise corrupt(f"EBML value element {element.id:#x} of {element.size} bytes")
    f.seek(element.data)
    return f.read(element.size)


def file_size(f: BinaryIO) -> int:
    return f.seek(0, 2)


# --- identification --------------------------------------------------------------------------


def doctype(head: bytes) -> bytes | None:
    """The DocType the EBML header at the start of ``head`` declares, or None."""
    import io

    if not head.startswith(EBML_MAGIC):
        return None
    f = io.BytesIO(head)
    try:
        header = next(iter_elements(f, 0, len(head)))
        for child in iter_elements(f, header.data, header.end(len(head))):
            if child.id == DOCTYPE:
                return read_value(f, child).rstrip(b"\0")
    except (SanitizeError, StopIteration):
        return None
    return None


DOCTYPES = {"webm": b"webm", "mkv": b"matroska"}


def _accepts(name: str, head: bytes) -> bool:
    return doctype(head) == DOCTYPES[name]


def locate(path: Path, limits: Limits) -> Found:
    return Found()      # no standard location field; the tags that could hold one are dropped


# --- rebuild ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Muxing:
    name: str           # the Format.name of the copy
    muxer: str
    media_type: str
    extension: str


MUXINGS = {"webm": Muxing("webm", "webm", "video/webm", ".webm"),
           "mkv": Muxing("mkv", "matroska", "video/x-matroska", ".mkv")}
TARGETS = {"webm": ("webm", "mkv"), "mkv": ("mkv",)}


def check_segment(src: Path) -> None:
    """The EBML header and a Segment whose declared size the file holds (unknown size is allowed)."""
    with open(src, "rb") as f:
        size = file_size(f)
        elements = iter_elements(f, 0, size)
        header = next(elements, None)
        segment = next(elements, None)
        if header is None or header.id != EBML or segment is None:
            raise truncated("the file ends before its Segment")
        if segment.id != SEGMENT:
            raise corrupt(f"EBML element {segment.id:#x} where the Segment should be")


def remux_args(src: Path, dst: Path, muxing: Muxing, indexes: list[int]) -> list[str]:
    return stream_copy_args(src, dst, demuxer=DEMUXER, muxer=muxing.muxer, indexes=indexes)


def removed_items(probe: dict, kept: set[int]) -> list[str]:
    removed = []
    if (probe.get("format") or {}).get("tags"):
        removed.append(f"container tags {sorted((probe['format']['tags']))}")
    if probe.get("chapters"):
        removed.append(f"{len(probe['chapters'])} chapters")
    for s in probe.get("streams") or []:
        if s.get("index") in kept:
            if set(s.get("tags") or {}) - {"DURATION"}:
                removed.append(f"{s.get('codec_type')} stream tags {sorted(set(s['tags']) - {'DURATION'})}")
        else:
            removed.append(f"{s.get('codec_type', 'unknown')} stream {s.get('codec_name') or ''}".strip())
    return removed


def rebuild_with(name: str, src: Path, dst: Path, limits: Limits) -> Rebuilt:
    check_segment(src)
    probe = ffprobe(src, limits, DEMUXER)
    check_limits(probe, limits)
    video, audio = pick_streams(probe)
    if video is None:
        raise unsupported("no video stream to keep (audio-only Matroska is not supported)")
    kept = [s for s in (video, audio) if s is not None]
    decode_sample(src, limits, duration=probe_duration(probe), demuxer=DEMUXER,
                  indexes=[s["index"] for s in kept], what="checking the input")
    targets = TARGETS[name]
    for attempt, target in enumerate(targets):
        muxing = MUXINGS[target]
        try:
            run_tool(remux_args(src, dst, muxing, [s["index"] for s in kept]), limits, what="remuxing")
            break
        except SanitizeError as e:
            # the WebM muxer refuses codecs outside WebM's list the same way ffmpeg refuses bad input
            if e.code != "corrupt" or attempt == len(targets) - 1:
                raise
    copy_video, copy_audio = pick_streams(ffprobe(dst, limits, DEMUXER))
    if copy_video is None or (copy_audio is None) != (audio is None):
        raise corrupt("ffmpeg could not copy every kept stream (no readable frames)")
    return Rebuilt(format=muxing.name, media_type=muxing.media_type, extension=muxing.extension,
                   removed=tuple(removed_items(probe, {s["index"] for s in kept})))


# --- inspect ---------------------------------------------------------------------------------


def _simple_tag_findings(f: BinaryIO, element: Element, where: str) -> list[str]:
    """A SimpleTag is allowed only as ffmpeg's per-track DURATION: name and a duration, nothing else."""
    values = {child.id: read_value(f, child) for child in iter_elements(f, element.data, element.end(0))
              if child.id in (TAG_NAME, TAG_STRING)}
    if values.get(TAG_NAME) != b"DURATION" or not DURATION_VALUE.match(values.get(TAG_STRING, b"").rstrip(b"\0")):
        name = values.get(TAG_NAME, b"?").decode("utf-8", "replace")[:40]
        return [f"tag {name!r} at {where}"]
    return []


def element_findings(path: Path) -> list[str]:
    """Walk every element of the copy against the allow-list; blocks are skipped, never read."""
    findings: list[str] = []
    with open(path, "rb") as f:
        size = file_size(f)
        top = list(iter_elements(f, 0, size))
        if [e.id for e in top] != [EBML, SEGMENT]:
            findings.append(f"top-level elements {[hex(e.id) for e in top]}, expected the EBML header and one Segment")
        for element in top:
            name, children = TOP.get(element.id, (None, None))
            if children is not None:
                _walk(f, element, name, children, size, findings, 1)
    return findings


def _walk(f: BinaryIO, parent: Element, where: str, allowed: dict, size: int, findings: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        findings.append(f"{where} nested deeper than {MAX_DEPTH}")
        return
    if parent.size == UNKNOWN_SIZE:
        findings.append(f"{where} has an unknown size")
        return
    for child in iter_elements(f, parent.data, parent.end(size)):
        if child.id in GLOBAL:
            if child.id == VOID and nonzero_bytes(f, child.data, child.end(size)):
                findings.append(f"Void at byte {child.start} in {where} is not zeroed")
            continue
        entry = allowed.get(child.id)
        if entry is None:
            findings.append(f"{KNOWN.get(child.id, f'element {child.id:#x}')} in {where}")
            continue
        name, grandchildren = entry
        path = f"{where}/{name}"
        if child.id == SIMPLE_TAG:
            findings += _simple_tag_findings(f, child, path)
        if child.id in (MUXING_APP, WRITING_APP) and read_value(f, child).rstrip(b"\0") != MUXER_NAME:
            findings.append(f"{path} is not {MUXER_NAME.decode()}")
        elif grandchildren is not None:
            _walk(f, child, path, grandchildren, size, findings, depth + 1)


def inspect(path: Path) -> list[str]:
    """Findings on an agency copy; empty when it is clean. Never raises for a bad copy."""
    try:
        findings = element_findings(path)
        probe = ffprobe(path, Limits(), DEMUXER)
    except SanitizeError as e:
        return [f"the copy does not read back: {e.code}: {e.message}"]
    findings += probe_findings(probe, format_tags=frozenset({"encoder"}), stream_tags=frozenset({"DURATION"}))
    encoder = ((probe.get("format") or {}).get("tags") or {}).get("encoder")
    if encoder not in (None, MUXER_NAME.decode()):
        findings.append(f"container encoder tag {encoder!r}")
    return findings + decode_findings(path, probe, Limits(), DEMUXER)


def _format(name: str, extensions: tuple[str, ...]) -> Format:
    muxing = MUXINGS[name]
    return Format(name=name, kind="video", media_type=muxing.media_type, accept=partial(_accepts, name),
                  locate=locate, rebuild=partial(rebuild_with, name), inspect=inspect, extensions=extensions)


FORMATS = [_format("webm", (".webm",)), _format("mkv", (".mkv", ".mk3d"))]
