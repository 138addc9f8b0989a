"""The verifier's proof that an ISO-BMFF stream copy holds exactly the input's coded samples, by bytes.

An ffmpeg stream copy (``-c copy``) moves packets without touching them, so the strongest check of
the copy is not a decode but a comparison: ``tracks`` walks one file on its own (boxes.py's
primitives only, nothing of the rebuild's plan) and lists, for every ``trak`` in file order, its
handler, its sample entry codes, its sample sizes (``stsz``/``stz2``) and where its coded samples
lie, in decode order (chunk by chunk: ``stco``/``co64`` offsets, ``stsc`` samples per chunk,
``stsz`` sizes). ``differences`` then requires every track of the copy to be, by codec, sizes and
bytes, the input track the rebuild kept: both tracks' samples are read in bounded blocks and
compared, byte for byte; with identical decoder
configuration (compared by the caller: ``av_inspect``, with ``movie``'s reading of both files)
identical bytes decode to identical frames, so the copy needs no decode of its own: the input's
decode sample (``av_rebuild``) already showed those very bytes decode.

Only what can be proved is proved: ``differences`` returns None (the caller decodes the copy as
before) when the input's kept tracks cannot be walked, hold samples past the end of the file (an
upload cut short), have more than one sample description, are fragmented, or use the QuickTime
layouts where a constant ``stsz`` size counts something other than whole samples (a size of 1,
sound descriptions of version 1 or 2). Tracks with a constant sample size (PCM) may be regrouped into
other chunks by the muxer: for them the total size and the bytes are compared, not the grouping.
"""
from __future__ import annotations

import os
import struct
from array import array
from pathlib import Path
from typing import BinaryIO, NamedTuple

from worker.errors import SanitizeError, corrupt
from worker.formats.walkers.boxes import (MAX_TABLE, Box, chunk_offsets, file_size, iter_boxes, read_payload,
                                          sample_entry_types, sample_sizes, samples_per_chunk, walk)

BLOCK = 1 << 20
KEPT_HANDLERS = {"video": b"vide", "audio": b"soun"}
# the sample tables the proof reads: each at most once, or which one a reader uses is a guess
READ_TABLES = frozenset({b"stsd", b"stsc", b"stsz", b"stz2", b"stco", b"co64"})
# ffprobe's description of a stream's decoder configuration: equal in input and copy, with equal
# coded bytes, means equal frames
DECODER_FIELDS = ("codec_name", "profile", "width", "height", "pix_fmt", "sample_rate", "channels",
                  "extradata_size", "extradata_hash")


class Track(NamedTuple):
    """One ``trak`` as its own sample tables describe it."""

    handler: bytes                  # mdia/hdlr handler type: b"vide", b"soun", …
    codecs: tuple[bytes, ...]       # the four-character codes of its sample entries
    sound_version: int              # a sound entry's description version (0 for every other track)
    constant_size: int              # stsz's one size for every sample, 0 when sizes are listed
    sizes: array                    # each sample's size in decode order (empty when constant)
    count: int                      # samples
    total: int                      # bytes of coded samples
    ranges: tuple                   # (offset, length) of its chunks' samples, in decode order
    complete: bool                  # every sample lies inside the file


def same_samples(a: BinaryIO, a_ranges: tuple, b: BinaryIO, b_ranges: tuple) -> bool:
    """Whether two tracks' coded samples are the same bytes: both lists of ranges are walked
    together, and each stretch that is contiguous in both files is read from each (``pread``, at
    most ``BLOCK`` at a time) and compared. Each file is read once; hashing both cost four times as
    long, and gathering each side's chunks into blocks before comparing twice as long (#10)."""
    a_fd, b_fd = a.fileno(), b.fileno()
    a_next = b_next = 0
    a_at = a_end = b_at = b_end = 0
    while True:
        if a_at == a_end:
            if a_next == len(a_ranges):
                return b_at == b_end and b_next == len(b_ranges)
            a_at, length = a_ranges[a_next]
            a_end, a_next = a_at + length, a_next + 1
        if b_at == b_end:
            if b_next == len(b_ranges):
                return False            # the copy's samples end first
            b_at, length = b_ranges[b_next]
            b_end, b_next = b_at + length, b_next + 1
        n = min(a_end - a_at, b_end - b_at, BLOCK)
        piece = os.pread(a_fd, n, a_at)
        if len(piece) != n:
            raise corrupt(f"a chunk at {a_at} ends past the end of the file")
        if piece != os.pread(b_fd, n, b_at):
            return False
        a_at, b_at = a_at + n, b_at + n


def _sound_version(f: BinaryIO, stsd: Box) -> int:
    entry = next(iter_boxes(f, stsd.payload_start + 8, stsd.end), None)
    if entry is None or entry.payload_size < 10:
        return 0
    f.seek(entry.payload_start + 8)
    return struct.unpack(">H", f.read(2))[0]


def _track(f: BinaryIO, trak: Box, size: int) -> Track:
    handler, tables = b"", {}
    for path, box in walk(f, trak.payload_start, trak.end, descend_meta=False):
        if box.type == b"hdlr" and path == (b"mdia",):
            handler = read_payload(f, box, 4096)[8:12]
        elif path == (b"mdia", b"minf", b"stbl") and box.type in READ_TABLES:
            if box.type in tables:
                raise corrupt(f"two {box.name} boxes in one sample table")
            tables[box.type] = box
    if (b"stco" in tables and b"co64" in tables) or (b"stsz" in tables and b"stz2" in tables):
        raise corrupt("a sample table with two tables of the same kind")
    stsd = tables.get(b"stsd")
    codecs = tuple(sample_entry_types(f, stsd)) if stsd else ()
    sound_version = _sound_version(f, stsd) if stsd and handler == b"soun" else 0
    offsets_box = tables.get(b"co64") or tables.get(b"stco")
    sizes_box = tables.get(b"stsz") or tables.get(b"stz2")
    if offsets_box is None or sizes_box is None or b"stsc" not in tables:
        raise corrupt(f"a {handler.decode('latin-1')} track without complete sample tables")
    offsets = list(chunk_offsets(read_payload(f, offsets_box, MAX_TABLE), offsets_box.type == b"co64"))
    per_chunk = samples_per_chunk(read_payload(f, tables[b"stsc"], MAX_TABLE), len(offsets))
    constant, count, sizes = sample_sizes(sizes_box.type, read_payload(f, sizes_box, MAX_TABLE))
    ranges, sample, total, complete = [], 0, 0, True
    for offset, n in zip(offsets, per_chunk):
        if sample + n > count:
            raise corrupt(f"the chunks hold more samples than the {count} the sample size table lists")
        length = constant * n if constant else sum(sizes[sample:sample + n])
        sample += n
        if offset + length > size:
            complete = False            # samples past the end: nothing after them is compared
            break
        if length:
            if ranges and ranges[-1][0] + ranges[-1][1] == offset:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + length)     # chunks back to back: one read
            else:
                ranges.append((offset, length))
        total += length
    if sample < count:
        complete = False                # sizes listed for samples no chunk holds
    return Track(handler, codecs, sound_version, constant, sizes if sizes is not None else array("I"), count,
                 total, tuple(ranges), complete)


def tracks(path: Path) -> list[Track]:
    """Every ``trak`` of the file at ``path``, in file order (ffmpeg's stream order). Raises
    SanitizeError when the boxes or sample tables do not hold together, or the file is fragmented
    (its samples live in ``moof`` boxes that no ``trak`` lists)."""
    found: list[Track] = []
    with open(path, "rb") as f:
        size = file_size(f)
        top = list(iter_boxes(f, 0, size))
        if any(box.type == b"moof" for box in top):
            raise SanitizeError("unsupported_format", "a fragmented movie: its samples are listed in moof boxes")
        for moov in (box for box in top if box.type == b"moov"):
            for child in iter_boxes(f, moov.payload_start, moov.end):
                if child.type == b"mvex":
                    raise SanitizeError("unsupported_format", "a fragmented movie (mvex)")
                if child.type == b"trak":
                    found.append(_track(f, child, size))
    return found


def _provable(track: Track) -> bool:
    """Whether the input track's tables say plainly which bytes are its samples (see the module doc)."""
    # a listed size is one whole sample in every layout; a constant one is, except in QuickTime's
    # sound descriptions of version 1 and 2 and its size of 1, where it counts PCM frames or bytes
    plain_sizes = not track.constant_size or (track.sound_version == 0 and track.constant_size > 1)
    return track.complete and track.count > 0 and len(track.codecs) == 1 and plain_sizes


# sample entry codes the MP4 muxer writes under another name: Motion JPEG from a QuickTime movie
# becomes 'mp4v' (MPEG-4 systems' object type for JPEG); which codec that is, ffprobe then says
# (the caller compares the decoder configuration of both: codec name included)
RENAMED_BY_MP4 = {b"jpeg": b"mp4v", b"mjpa": b"mp4v", b"AVDJ": b"mp4v", b"dmb1": b"mp4v"}


def _renamed(kept: tuple[bytes, ...], copy: tuple[bytes, ...]) -> bool:
    return len(kept) == len(copy) == 1 and RENAMED_BY_MP4.get(kept[0]) == copy[0]


def _same_samples(kept: Track, copy: Track, source: BinaryIO, copied: BinaryIO) -> str | None:
    """Why the copy's track is not the input's kept track, or None when it is, byte for byte
    (``source``, ``copied``: the two files, open)."""
    label = kept.handler.decode("latin-1")
    if copy.codecs != kept.codecs and not _renamed(kept.codecs, copy.codecs):
        return f"the copy's {label} track is coded as {copy.codecs!r}, the input's as {kept.codecs!r}"
    if not copy.complete:
        return f"the copy's {label} track lists samples past the end of the copy"
    if kept.constant_size:
        # PCM-like: the muxer may regroup samples into other chunks and count them otherwise
        if copy.total != kept.total:
            return f"the copy's {label} track holds {copy.total} bytes of samples, the input's {kept.total}"
    else:
        sizes = copy.sizes if not copy.constant_size else array("I", [copy.constant_size]) * copy.count
        if copy.count != kept.count:
            return f"the copy's {label} track holds {copy.count} samples, the input's {kept.count}"
        if sizes != kept.sizes:
            first = next(i for i, (a, b) in enumerate(zip(sizes, kept.sizes)) if a != b)
            return f"the copy's {label} track's sample {first} is {sizes[first]} bytes, the input's {kept.sizes[first]}"
    try:
        same = same_samples(source, kept.ranges, copied, copy.ranges)
    except SanitizeError as e:
        return f"the copy's {label} track cannot be read for the byte proof: {e.message}"
    if not same:
        return f"the copy's {label} track's coded samples differ from the input's"
    return None


def kept_tracks(source_tracks: list[Track], kept: dict[str, int]) -> dict[bytes, Track] | None:
    """The input's tracks the rebuild kept, by handler, from their places among the traks (``kept``:
    codec type -> index in file order, as ``movie`` numbers them); None when one is not a plainly
    provable track of the right kind."""
    chosen: dict[bytes, Track] = {}
    for kind, index in kept.items():
        if not 0 <= index < len(source_tracks):
            return None
        track = source_tracks[index]
        if track.handler != KEPT_HANDLERS.get(kind) or not _provable(track):
            return None
        chosen[track.handler] = track
    return chosen


def differences(source: Path, copy: Path, kept: dict[str, int]) -> list[str] | None:
    """Findings when the copy's tracks are not the input's kept tracks byte for byte; empty when
    proved; None when the input gives no proof (the copy must then be decoded instead).

    ``kept``: the place among the input's traks of each kept track, by codec type."""
    try:
        chosen = kept_tracks(tracks(source), kept)
    except SanitizeError:
        return None
    if chosen is None:
        return None
    try:
        copy_tracks = tracks(copy)
    except SanitizeError as e:
        return [f"the copy's sample tables cannot be walked for the byte proof: {e.message}"]
    findings = []
    handlers = [t.handler for t in copy_tracks]
    if sorted(handlers) != sorted(chosen):
        findings.append(f"the copy's tracks are {[h.decode('latin-1') for h in handlers]}, "
                        f"the kept ones {[h.decode('latin-1') for h in chosen]}")
    with open(source, "rb") as source_file, open(copy, "rb") as copy_file:
        for track in copy_tracks:
            if track.handler in chosen:
                reason = _same_samples(chosen[track.handler], track, source_file, copy_file)
                if reason:
                    findings.append(reason)
    return findings


def decoder_differences(source_stream: dict, copy_stream: dict | None) -> list[str]:
    """Findings when ffprobe describes the copy's stream's decoder configuration otherwise than the
    input's (codec, profile, picture or sound format, the extradata by its hash)."""
    kind = source_stream.get("codec_type")
    if copy_stream is None:
        return [f"the copy has no {kind} stream"]
    if "extradata_size" in source_stream and "extradata_hash" not in source_stream:
        return ["ffprobe gave no extradata hash to compare"]
    return [f"the copy's {kind} stream has {name} {copy_stream.get(name)!r}, the input's {source_stream.get(name)!r}"
            for name in DECODER_FIELDS if copy_stream.get(name) != source_stream.get(name)]
