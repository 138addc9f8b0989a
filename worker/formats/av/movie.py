"""What an ISO-BMFF movie holds, read by our own walk: its tracks, their codecs, durations, display
rotation and decoder configuration.

This answers, for the rebuild and the verifier, what ffprobe was started for (one tool start of
about 50-100 ms, twice per file): which tracks there are and in what order, which one is the first
video and the first sound track, how long the movie is, how each track is turned, and the bytes
that configure each track's decoder. The QuickTime demuxer makes one stream per ``trak`` and
gives it the track's ``track_ID`` as its stream id, so ffmpeg is told which tracks to copy by id
(``-map 0:i:ID``), never by a position that cover art in the tags could shift.

The decoder configuration is read for the codecs whose decoders take everything from one box of
the sample entry: ``avcC`` (H.264), ``hvcC`` (HEVC), ``av1C``, ``vpcC``, ``dOps`` (Opus), ``dfLa``
(FLAC), ``alac``, and the ``esds`` of MPEG-4 video and audio (its object type and decoder specific
info: what ffmpeg takes as extradata; the muxer rewrites the descriptor's buffer size and bit
rates). For any other codec ``config`` is None and the verifier asks ffprobe instead.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import BinaryIO, NamedTuple

from worker.errors import corrupt
from worker.formats.walkers.boxes import Box, file_size, iter_boxes, media_extent, read_payload, walk

# sample entry code -> the child box holding its decoder configuration
CONFIG_BOXES = {b"avc1": b"avcC", b"avc3": b"avcC", b"hvc1": b"hvcC", b"hev1": b"hvcC", b"av01": b"av1C",
                b"vp09": b"vpcC", b"Opus": b"dOps", b"fLaC": b"dfLa", b"alac": b"alac",
                b"mp4a": b"esds", b"mp4v": b"esds"}
VISUAL_FIELDS = 78                          # a visual sample entry's fixed fields, after its header
SOUND_FIELDS = {0: 28, 1: 44, 2: 64}        # a sound entry's fixed fields, by its version
# how ffprobe names a track by its handler, for the report of what was left out
KINDS = {b"vide": "video", b"soun": "audio", b"text": "subtitle", b"sbtl": "subtitle", b"subt": "subtitle",
         b"subp": "subtitle", b"clcp": "subtitle"}
MAX_CONFIG = 1 << 20
STBL = (b"mdia", b"minf", b"stbl")           # where a trak's sample tables sit
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


class Track(NamedTuple):
    index: int                  # its place among the traks (ffmpeg's stream number for it)
    track_id: int               # tkhd track_ID (ffmpeg's stream id)
    handler: bytes              # mdia/hdlr handler type: b"vide", b"soun", b"meta", …
    codec: bytes                # the first sample entry's code (b"" when it has none)
    entries: int                # sample entries in its stsd
    duration: float             # seconds, from mdhd
    rotation: float             # degrees, of its display matrix combined with the movie's
    config: bytes | None        # its decoder configuration (see the module doc), None when not read
    sync_samples: int | None    # keyframes its stss lists; None without an stss (every sample is one)
    packets: int                # what ffmpeg reads it as: its samples (stsz), or its chunks when
                                # every sample has one size (PCM, whose "samples" are sound frames)

    @property
    def kind(self) -> str:
        return KINDS.get(self.handler, "data")

    def label(self) -> str:
        return f"{self.kind} stream {self.codec.decode('latin-1').strip()}".strip()


class Movie(NamedTuple):
    tracks: tuple[Track, ...]
    duration: float             # seconds: mvhd's, else the longest track's
    covers: int                 # cover pictures in the tags (ffprobe shows each as a stream)

    def first(self, handler: bytes) -> Track | None:
        return next((t for t in self.tracks if t.handler == handler), None)


def _fixed(payload: bytes, v0: tuple[int, str], v1: tuple[int, str]) -> tuple:
    at, fmt = v1 if payload[:1] == b"\1" else v0
    if len(payload) < at + struct.calcsize(fmt):
        raise corrupt("a movie header box is shorter than its fields")
    return struct.unpack_from(fmt, payload, at)


def _matrix(payload: bytes, at: int) -> tuple[float, ...]:
    if len(payload) < at + 36:
        raise corrupt("a header box is shorter than its display matrix")
    raw = struct.unpack_from(">9i", payload, at)
    # a, b, c, d, x, y are 16.16 fixed point; u, v, w are 2.30
    return tuple(v / (1 << 30 if i % 3 == 2 else 1 << 16) for i, v in enumerate(raw))


def _multiply(m: tuple[float, ...], n: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(sum(m[3 * i + k] * n[3 * k + j] for k in range(3)) for i in range(3) for j in range(3))


def rotation_of(matrix: tuple[float, ...]) -> float:
    """The rotation ffmpeg reads from a display matrix (``av_display_rotation_get``), in degrees."""
    scale0, scale1 = math.hypot(matrix[0], matrix[3]), math.hypot(matrix[1], matrix[4])
    if not scale0 or not scale1:
        return 0.0
    angle = -math.degrees(math.atan2(matrix[1] / scale1, matrix[0] / scale0))
    return round(angle, 6) + 0.0


def _descriptor(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, payload start, payload end) of the MPEG-4 descriptor at ``pos``."""
    if pos >= len(data):
        raise corrupt("esds ends inside a descriptor")
    tag, size, pos = data[pos], 0, pos + 1
    for _ in range(4):
        if pos >= len(data):
            raise corrupt("esds ends inside a descriptor's size")
        size, more, pos = (size << 7) | (data[pos] & 0x7F), data[pos] & 0x80, pos + 1
        if not more:
            break
    if pos + size > len(data):
        raise corrupt("an esds descriptor runs past its box")
    return tag, pos, pos + size


def esds_config(payload: bytes) -> bytes:
    """The object type and decoder specific info of an ``esds`` payload (after version and flags)."""
    tag, start, end = _descriptor(payload, 4)
    if tag != 0x03 or end - start < 3:
        raise corrupt("esds holds no ES descriptor")
    flags, pos = payload[start + 2], start + 3
    pos += 2 if flags & 0x80 else 0                          # depends on another stream
    if flags & 0x40:                                          # a URL: never followed, but skipped
        if pos >= end:
            raise corrupt("esds ends inside its URL")
        pos += 1 + payload[pos]
    pos += 2 if flags & 0x20 else 0                          # OCR stream
    while pos < end:
        tag, dstart, dend = _descriptor(payload, pos)
        if tag == 0x04:                                       # DecoderConfigDescriptor
            if dend - dstart < 13:
                raise corrupt("esds decoder configuration shorter than its fields")
            specific = b""
            inner = dstart + 13
            while inner < dend:
                itag, istart, iend = _descriptor(payload, inner)
                if itag == 0x05:
                    specific = payload[istart:iend]
                    break
                inner = iend
            return payload[dstart:dstart + 1] + specific
        pos = dend
    raise corrupt("esds holds no decoder configuration")


def _sample_entry(f: BinaryIO, stsd: Box, handler: bytes) -> tuple[bytes, int, bytes | None]:
    """(first entry's code, number of entries, its decoder configuration or None)."""
    if stsd.payload_size < 8:
        raise corrupt("stsd box shorter than its header")
    entries = list(iter_boxes(f, stsd.payload_start + 8, stsd.end))
    if not entries:
        return b"", 0, None
    entry = entries[0]
    wanted = CONFIG_BOXES.get(entry.type)
    if wanted is None or handler not in (b"vide", b"soun"):
        return entry.type, len(entries), None
    if handler == b"vide":
        fixed = VISUAL_FIELDS
    else:
        f.seek(entry.payload_start + 8)
        version = struct.unpack(">H", f.read(2).rjust(2, b"\0"))[0]
        if version not in SOUND_FIELDS:
            return entry.type, len(entries), None
        fixed = SOUND_FIELDS[version]
    found = []
    if entry.payload_size > fixed:
        for child in iter_boxes(f, entry.payload_start + fixed, entry.end):
            if child.type == wanted:
                found.append(child)
            elif child.type == b"wave" and handler == b"soun":
                # QuickTime sound descriptions keep the configuration inside a wave box
                found += [box for box in iter_boxes(f, child.payload_start, child.end) if box.type == wanted]
    if len(found) > 1:
        raise corrupt(f"two {wanted.decode('latin-1')} boxes in one sample entry")
    if not found:
        return entry.type, len(entries), None
    payload = read_payload(f, found[0], MAX_CONFIG)
    return entry.type, len(entries), esds_config(payload) if wanted == b"esds" else payload


def _table_header(f: BinaryIO, box: Box, fmt: str) -> tuple:
    """The leading fields of a sample table (its version and flags skipped), without reading the table."""
    f.seek(box.payload_start)
    header = f.read(min(struct.calcsize(fmt), box.payload_size))
    if len(header) < struct.calcsize(fmt):
        raise corrupt(f"{box.name} shorter than its header")
    return struct.unpack(fmt, header)


def _track(f: BinaryIO, trak: Box, index: int, movie_matrix: tuple[float, ...]) -> Track:
    track_id, handler, codec, entries, duration, matrix, config = 0, b"", b"", 0, 0.0, IDENTITY, None
    stsd, sync_samples, samples, chunks, constant = None, None, 0, 0, False
    for path, box in walk(f, trak.payload_start, trak.end, descend_meta=False):
        if box.type == b"tkhd" and not path:
            payload = read_payload(f, box, 4096)
            (track_id,) = _fixed(payload, (12, ">I"), (20, ">I"))
            matrix = _matrix(payload, 52 if payload[:1] == b"\1" else 40)
        elif box.type == b"mdhd" and path == (b"mdia",):
            timescale, length = _fixed(read_payload(f, box, 4096), (12, ">II"), (20, ">IQ"))
            duration = length / timescale if timescale else 0.0
        elif box.type == b"hdlr" and path == (b"mdia",):
            handler = read_payload(f, box, 4096)[8:12]
        elif box.type == b"stsd" and path == STBL:
            if stsd is not None:
                raise corrupt("two stsd boxes in one sample table")
            stsd = box
        elif box.type == b"stss" and path == STBL:
            (sync_samples,) = _table_header(f, box, ">4xI")
        elif box.type in (b"stsz", b"stz2") and path == STBL:
            size, samples = _table_header(f, box, ">4xII")
            constant = box.type == b"stsz" and size != 0
        elif box.type in (b"stco", b"co64") and path == STBL:
            (chunks,) = _table_header(f, box, ">4xI")
    if stsd is not None:
        codec, entries, config = _sample_entry(f, stsd, handler)
    return Track(index, track_id, handler, codec, entries, duration,
                 rotation_of(_multiply(matrix, movie_matrix)), config, sync_samples,
                 chunks if constant else samples)


def _covers(f: BinaryIO, moov: Box) -> int:
    """Cover pictures in the movie's iTunes tags (``covr`` data items)."""
    count = 0
    for path, box in walk(f, moov.payload_start, moov.end):
        if box.type == b"data" and path[-1:] == (b"covr",):
            count += 1
    return count


def describe(path: Path) -> Movie:
    """The movie at ``path`` as its boxes describe it. Raises SanitizeError (``corrupt``) when its
    boxes do not hold together or it has no ``moov``; the walk's own bounds apply (boxes.py)."""
    try:
        with open(path, "rb") as f:
            size = media_extent(f, file_size(f))
            moov = next((box for box in iter_boxes(f, 0, size) if box.type == b"moov"), None)
            if moov is None:
                raise corrupt("no moov box: the movie has no description of its tracks")
            movie_matrix, duration, traks = IDENTITY, 0.0, []
            for child in iter_boxes(f, moov.payload_start, moov.end):
                if child.type == b"mvhd":
                    payload = read_payload(f, child, 4096)
                    timescale, length = _fixed(payload, (12, ">II"), (20, ">IQ"))
                    duration = length / timescale if timescale else 0.0
                    movie_matrix = _matrix(payload, 48 if payload[:1] == b"\1" else 36)
                elif child.type == b"trak":
                    traks.append(child)
            tracks = tuple(_track(f, trak, i, movie_matrix) for i, trak in enumerate(traks))
            covers = _covers(f, moov)
    except struct.error:
        raise corrupt("a movie box is shorter than its fields") from None
    ids = [t.track_id for t in tracks]
    if len(set(ids)) != len(ids) or 0 in ids:
        raise corrupt("two tracks share a track_ID (or one has none): which one a player shows is a guess")
    if not duration:
        duration = max((t.duration for t in tracks), default=0.0)
    return Movie(tracks, duration, covers)

