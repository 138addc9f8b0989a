"""The agency copy of an ISO-BMFF video or audio file: a stream copy by allow-list.

A plain MP4 or M4A (``box_copy.plan`` says which) is copied by our own box copy, written while
ffmpeg decodes the input's sample, and ffmpeg muxes nothing. Every other input (QuickTime, 3GPP,
fragmented files, PCM, several sample descriptions…) is an ffmpeg stream copy, as follows.

Only the first real video stream (never a cover picture) and the first audio stream are mapped;
every tag, chapter, data/subtitle/timecode track (GoPro GPMF, Apple ``mebx`` timed metadata) is
left behind. Packets are copied untouched; ``bitexact`` keeps ffmpeg from writing its own name
and creation times; the display matrix (rotation) travels as stream side data and is checked.

When ffmpeg cannot copy a file, the lossless fallback below neutralises its boxes in place instead.

Before any copy: the box walk refuses reference movies (``rmra``, external ``dref`` entries) as
``unsupported_format`` and sample tables with no chunk inside the file as ``corrupt``; our walk of
the tracks (``movie``) says what ffprobe used to: which tracks there are, their codecs, the
duration, the rotation. One ffmpeg run then writes the copy and decodes a sample of the kept
streams of the input, so a broken input is ``corrupt`` here and ``verify_failed`` keeps meaning
that our copy is wrong. The decode sample: the sound of the start, middle and end (2 s each), and
of the video the keyframes there (``-skip_frame nokey`` for H.264, HEVC and MPEG-4 Part 2, whose
decoders honour it; every frame for other codecs). A keyframe is where the decoder's configuration
and the coded picture meet, so it shows the stream decodes; the frames between them are copied,
and proved copied byte for byte, but not decoded (decoding them was 85% of the time of the
bench's 10 s film, whose keyframes x264 set 250 frames apart). A short film (at most 60 s and 20
keyframes) is decoded whole in the same input as the copy: every keyframe and all its sound, the
file opened once. When that run fails or logs anything, the decode sample and the remux run apart,
so that a failure is put down to the input or to the muxer as before. Tools: that one ffmpeg run
(two for a file of more than 30,000 packets, about 11 minutes of AAC, where sharing costs more);
for a plain MP4/M4A one run that only decodes, its inputs' demuxers discarding all but keyframes.
The verifier proves the copy's samples and decoder configuration by bytes against the input's
(``stream_proof``, ``movie``) and decodes the copy only where the input gives no such proof (an
upload cut short, odd sample tables).
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, NamedTuple

from worker.errors import SanitizeError, corrupt, too_large, unsupported
from worker.formats.av import box_copy
from worker.formats.av.av_inspect import STBL_CHILDREN, inspect_copy, load_copy_readers, pick_streams, vendor_field
from worker.formats.av.brands import known_av_brand
from worker.formats.av.movie import Movie, Track, describe
from worker.formats.base import HEAD_BYTES, Limits, Rebuilt
from worker.formats.walkers.boxes import (DREF_ENTRY_HEADER, ENCRYPTED_ENTRIES, SAMPLE_ENTRY_BOXES, Box,
                                          chunk_offsets, chunk_ranges, dref_entries, dref_is_external, file_size,
                                          header_times, iter_boxes, media_extent, read_payload, sample_entry_children,
                                          sample_entry_types, walk)
from worker.tools import copy_and_decode_sample, decode_sample, ffprobe, probe_duration, run_tool, stream_copy_args

# boxes that hold metadata; named in the report when the source had them
METADATA_BOXES = {b"udta": "udta", b"meta": "meta", b"keys": "mdta keys", b"ilst": "ilst tags",
                  b"\xa9xyz": "©xyz location", b"loci": "3GPP loci", b"uuid": "uuid box (XMP or vendor)",
                  b"XMP_": "XMP", b"chpl": "Nero chapters"}
MAX_SAMPLE_TABLE = 64 << 20
# a reference movie's media is other movies named by URL or alias (rmra/rmda/rdrf); never fetched
REFERENCE_BOXES = frozenset({b"rmra", b"rmda", b"rdrf"})
DEMUXER = "mov"            # ffmpeg's demuxer for the whole family (mov, mp4, m4a, 3gp, 3g2)
# video codecs whose ffmpeg decoders honour -skip_frame nokey: their decode sample is their keyframes
KEYFRAME_SAMPLE_CODECS = frozenset({b"avc1", b"avc3", b"hvc1", b"hev1", b"mp4v", b"s263"})
# a short film with few keyframes is decoded whole, every keyframe and all its sound, in one input:
# each input ffmpeg opens costs about as much as ten 1080p keyframes (its demuxer and decoders start)
WHOLE_SAMPLE_SECONDS = 60.0
WHOLE_SAMPLE_KEYFRAMES = 20
# the copy and the decode sample share one ffmpeg run up to this many packets: with several inputs
# ffmpeg hands every packet of the copy through a demuxer thread's queue (~3 us each), which from
# here on costs more than a second start (3 h of AAC: 2.9 s together, 1.7 s apart)
SHARED_RUN_MAX_PACKETS = 30_000
# inputs whose copy ``box_copy`` writes when they are plain (QuickTime's and 3GPP's go to ffmpeg)
BOX_COPIED = frozenset({"mp4", "m4a"})


class Muxing(NamedTuple):
    format_name: str      # the Format.name of the copy
    muxer: str            # ffmpeg's -f
    media_type: str
    extension: str
    brand: str | None = None


def check_counts(streams: int, duration: float, limits: Limits) -> None:
    """``too_large`` past the limits on streams and duration."""
    if streams > limits.max_streams:
        raise too_large(f"{streams} streams, over the limit of {limits.max_streams}")
    if duration > limits.max_duration_s:
        raise too_large(f"{duration:.0f} s long, over the limit of {limits.max_duration_s:.0f} s")


def check_limits(probe: dict, limits: Limits) -> None:
    """``check_counts`` of an ffprobe description (Matroska, Ogg video)."""
    check_counts(len(probe.get("streams") or []), probe_duration(probe), limits)


class Source(NamedTuple):
    """What a walk of the source found before any tool ran."""

    metadata: frozenset[str]       # names of the metadata boxes it holds
    media_missing: bool            # some sample tables point past the end of the file
    trailing: int = 0              # bytes after the last whole top-level box


def structure_report(src: Path) -> Source:
    """Walk the source: its metadata boxes, whether media data is missing; refuse reference movies."""
    found: set[str] = set()
    missing = present = False
    with open(src, "rb") as f:
        whole = file_size(f)
        size = media_extent(f, whole)
        for _, box in walk(f, 0, size):
            if box.type in METADATA_BOXES:
                found.add(METADATA_BOXES[box.type])
            elif box.type in (b"stco", b"co64"):
                offsets = list(chunk_offsets(read_payload(f, box, MAX_SAMPLE_TABLE), box.type == b"co64"))
                missing = missing or any(offset >= size for offset in offsets)
                present = present or any(offset < size for offset in offsets)
            elif box.type in REFERENCE_BOXES:
                raise unsupported("a QuickTime reference movie: its media lives in other files or at URLs")
            elif box.type == b"dref" and dref_is_external(read_payload(f, box, MAX_SAMPLE_TABLE)):
                # a QuickTime reference movie: the frames are other files, named by path in an alias
                raise unsupported("the movie's media data lives in other files (a QuickTime reference movie)")
            elif box.type == b"stsd" and set(sample_entry_types(f, box)) & ENCRYPTED_ENTRIES:
                # nobody can play it without the buyer's key, and its sinf names the buyer's account
                raise unsupported("the media is encrypted (DRM)")
    if missing and not present:
        # every chunk lies past the end: the file was cut before its first sample, or made up
        raise corrupt("the sample tables point past the end of the file (no chunk lies inside it)")
    if missing:
        found.add("samples past the end of the file (the upload was cut short)")
    if size < whole:
        found.add(f"{whole - size} bytes after the last box")
    return Source(frozenset(found), missing, whole - size)


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
    options = {"movflags": "+faststart"}
    if muxing.brand:
        options["brand"] = muxing.brand
    return stream_copy_args(src, dst, demuxer=DEMUXER, muxer=muxing.muxer, indexes=indexes, options=options)


def _remux(targets: tuple[str, ...], src: Path, dst: Path, kept: tuple[Track | None, Track | None],
           limits: Limits) -> Muxing:
    """Stream-copy the kept tracks into the first of ``targets`` whose muxer takes their codecs;
    ``corrupt`` when none does, or when the copy lacks a track that was kept."""
    video, _ = kept
    for attempt, name in enumerate(targets):
        target = _muxing_for(name, video is not None)
        try:
            run_tool(remux_args(src, dst, target, stream_ids(kept)), limits, what="remuxing")
            break
        except SanitizeError as e:
            # a muxer refusing a codec exits non-zero like a bad input does; the next one may take it
            if e.code != "corrupt" or attempt == len(targets) - 1:
                raise
    _check_copy(dst, kept)
    return target


def stream_ids(kept: tuple[Track | None, ...]) -> list[str]:
    """ffmpeg's specifiers of the kept tracks: by stream id, the track_ID the demuxer gives each."""
    return [f"i:{track.track_id}" for track in kept if track is not None]


def _check_copy(dst: Path, kept: tuple[Track | None, Track | None]) -> None:
    """``corrupt`` when the copy lacks a track that was kept; ``tool_failed`` when its rotation changed."""
    video, audio = kept
    copy = describe(dst)
    copy_video, copy_audio = copy.first(b"vide"), copy.first(b"soun")
    if (copy_video is None) != (video is None) or (copy_audio is None) != (audio is None):
        # ffmpeg writes a stream only once it has a packet of it: none means no frame was readable
        raise corrupt("ffmpeg could not copy every kept stream (no readable frames)")
    if video is not None and copy_video.rotation != video.rotation:
        raise SanitizeError("tool_failed", f"rotation {video.rotation} became {copy_video.rotation} in the copy")


def check_movie_limits(movie: Movie, limits: Limits) -> None:
    """``check_counts`` of our walk's reading (ffprobe shows each cover picture as a stream)."""
    check_counts(len(movie.tracks) + movie.covers, movie.duration, limits)


def rebuild_with(name: str, targets: tuple[str, ...], src: Path, dst: Path, limits: Limits) -> Rebuilt:
    """The agency copy of ``src`` (identified as ``name``): an ffmpeg stream copy into the first of
    ``targets`` whose muxer takes its codecs, else the boxes of ``src`` neutralised in place.

    MOV inputs are written as MP4 first: the QuickTime muxer adds sound-description atoms
    (``wave``/``frma``, ``chan``) that readers show as tags, and MP4 plays everywhere.
    """
    source = structure_report(src)
    # our own walk answers what ffprobe was started for (tracks, codecs, duration, rotation)
    movie = describe(src)
    check_movie_limits(movie, limits)
    video, audio = movie.first(b"vide"), movie.first(b"soun")
    if video is None and audio is None:
        raise unsupported("no video or audio stream to keep")
    # a broken input is refused here, so that a copy that does not decode is our fault alone
    # (a file cut short: ffmpeg says "partial file" for each sample past its end, which the copy
    # leaves out; with samples missing there is no byte proof, so the verifier decodes the copy)
    kept = (video, audio)
    keyframes_only = video is not None and video.codec in KEYFRAME_SAMPLE_CODECS
    whole = (keyframes_only and movie.duration <= WHOLE_SAMPLE_SECONDS
             and video.sync_samples is not None and video.sync_samples <= WHOLE_SAMPLE_KEYFRAMES)
    sample = {"duration": movie.duration, "demuxer": DEMUXER, "indexes": stream_ids(kept),
              "cut_short": source.media_missing, "keyframes_only": keyframes_only, "whole": whole}
    first = _muxing_for(targets[0], video is not None)
    # a plain MP4/M4A: our own box copy, written while ffmpeg decodes the input's sample
    plain = box_copy.plan(src, [t.index for t in kept if t is not None]) if name in BOX_COPIED else None
    if plain is not None:
        def write_copy() -> None:
            box_copy.write(plain, src, dst)
            _check_copy(dst, kept)
            load_copy_readers()

        # the plan read every kept track's sample description: ffmpeg need not probe the streams
        decode_sample(src, limits, what="checking the input", **sample, described=True, meanwhile=write_copy)
        return _rebuilt(first, source, movie, kept)
    # else, the usual case in one ffmpeg run: the copy into the first target and the input's decode
    # sample (a long file's run apart: SHARED_RUN_MAX_PACKETS); when that run fails or logs anything,
    # the two run apart, as each alone says what failed: an input that does not decode is corrupt
    # (raised here), a muxer that refuses a codec passes to the next target
    copied = (sum(track.packets for track in kept if track is not None) <= SHARED_RUN_MAX_PACKETS
              and copy_and_decode_sample(remux_args(src, dst, first, stream_ids(kept)), src, limits, **sample,
                                         meanwhile=load_copy_readers))
    if not copied:
        decode_sample(src, limits, what="checking the input", **sample)
    try:
        if copied:
            _check_copy(dst, kept)
            target = first
        else:
            target = _remux(targets, src, dst, kept, limits)
    except SanitizeError as refusal:
        if refusal.code != "corrupt":
            raise
        return neutralise_fallback(name, src, dst, refusal, source, kept, limits)

    return _rebuilt(target, source, movie, kept)


def _rebuilt(target: Muxing, source: Source, movie: Movie, kept: tuple[Track | None, Track | None]) -> Rebuilt:
    removed = sorted(source.metadata)
    removed += [track.label() for track in movie.tracks if track not in kept]
    removed += ["cover picture"] * movie.covers
    return Rebuilt(format=target.format_name, media_type=target.media_type, extension=target.extension,
                   removed=tuple(removed))


# --- the lossless fallback: neutralise the boxes in place -------------------------------------
#
# When ffmpeg cannot stream-copy a file (a codec no muxer takes), the copy is the file itself with
# every box outside the allow-list below turned into a zeroed ``free`` box of the same size. Nothing
# moves, so every size and chunk offset stays valid. Every byte the allow-list keeps but does not
# understand is neutralised too: the times in mvhd/tkhd/mdhd, the handler and compressor names,
# the encoder vendor and version of each sample entry ('appl', 'FFMP'), the ``ftyp`` (reduced to
# brands we know, minor version zero), each ``dref`` entry's location string (a self-contained
# entry needs none), any box in ``stbl`` that is not a sample table; mdat bytes that no kept track
# uses (a dropped timed-metadata or chapter track's samples, leftovers) are zeroed; bytes after the
# last box are cut off. The verifier (``av_inspect``) reads each of these places again.
#
# Inputs are checked before this: sample tables that put every chunk past the end of the file are
# ``corrupt``, and a decode sample of the input must pass; the copy must pass the verifier's decode.

KEEP_TOP = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide"})
BLANK_TOP = frozenset({b"free", b"skip", b"wide"})      # kept as they are, payload zeroed
KEEP_CHILDREN = {
    b"moov": frozenset({b"mvhd", b"trak"}),
    b"trak": frozenset({b"tkhd", b"edts", b"mdia"}),
    b"edts": frozenset({b"elst"}),
    b"mdia": frozenset({b"mdhd", b"hdlr", b"minf"}),
    b"minf": frozenset({b"vmhd", b"smhd", b"dinf", b"stbl"}),
    b"dinf": frozenset({b"dref"}),
    b"stbl": STBL_CHILDREN,        # sample tables only: an unknown box in stbl is a free box
}
TIMED = frozenset({b"mvhd", b"tkhd", b"mdhd"})
KEPT_TRACKS = (b"vide", b"soun")
COMPRESSOR_NAME = (50, 82)     # bytes of a visual sample entry, from its start


class Plan:
    """What neutralising one file does: boxes turned into zeroed ``free``, byte ranges zeroed."""

    def __init__(self) -> None:
        self.blank: list[Box] = []
        self.zero: list[tuple[int, int]] = []
        self.removed: list[str] = []
        self.tracks: list[tuple[bytes, Box]] = []        # kept (handler, stbl)
        self.patch: list[tuple[int, bytes]] = []         # bytes rewritten in place (ftyp brands)

    def drop(self, box: Box, label: str | None = None) -> None:
        self.blank.append(box)
        self.removed.append(label or METADATA_BOXES.get(box.type) or f"{box.name} box")


def _handler(f: BinaryIO, trak: Box) -> bytes:
    for path, box in walk(f, trak.payload_start, trak.end, descend_meta=False):
        if box.type == b"hdlr" and path[-1:] == (b"mdia",):
            return read_payload(f, box, 4096)[8:12]
    return b"none"


def _plan_children(f: BinaryIO, parent: Box, handler: bytes, plan: Plan) -> None:
    for box in iter_boxes(f, parent.payload_start, parent.end):
        if box.type in KEEP_CHILDREN[parent.type]:
            _plan_box(f, box, handler, plan)
        else:
            plan.drop(box)


def _plan_box(f: BinaryIO, box: Box, handler: bytes, plan: Plan) -> None:
    """One allow-listed box of a kept track (or the mvhd): zero what in it names a time or a tool."""
    if box.type in TIMED:
        payload = read_payload(f, box, 4096)
        header_times(payload)                   # checks the fields are there
        width = 16 if payload[0] == 1 else 8
        plan.zero.append((box.payload_start + 4, box.payload_start + 4 + width))
    elif box.type == b"hdlr" and box.payload_size > 24:
        plan.zero.append((box.payload_start + 24, box.end))       # the handler's name
    elif box.type == b"dref":
        payload = read_payload(f, box, MAX_SAMPLE_TABLE)
        if dref_is_external(payload):
            raise unsupported("the movie's media data lives in other files (a QuickTime reference movie)")
        # a self-contained entry needs no location: whatever string follows its flags is emptied
        for pos, size in dref_entries(payload):
            if size > DREF_ENTRY_HEADER:
                plan.zero.append((box.payload_start + pos + DREF_ENTRY_HEADER, box.payload_start + pos + size))
    elif box.type == b"stbl":
        plan.tracks.append((handler, box))
        plan_sample_entries(f, box, handler, plan)
    if box.type in KEEP_CHILDREN:
        _plan_children(f, box, handler, plan)


def plan_sample_entries(f: BinaryIO, stbl: Box, handler: bytes, plan: Plan) -> None:
    """Drop what a sample entry holds beyond decoder configuration (an iTunes ``pinf`` names the
    buyer), and zero each visual entry's 32-byte compressor name (it can name the device's encoder)."""
    stsd = next((b for b in iter_boxes(f, stbl.payload_start, stbl.end) if b.type == b"stsd"), None)
    if stsd is None:
        return
    for child in sample_entry_children(f, stsd, handler):
        if child.type not in SAMPLE_ENTRY_BOXES:
            plan.drop(child, f"{child.name} in the sample description")
    for entry in iter_boxes(f, stsd.payload_start + 8, stsd.end):
        vendor = vendor_field(entry, handler)
        if vendor is not None:
            plan.zero.append(vendor)           # the encoder's vendor code and version ('appl', 'FFMP'…)
        if handler == b"vide" and entry.header == 8 and entry.end - entry.start >= COMPRESSOR_NAME[1]:
            plan.zero.append((entry.start + COMPRESSOR_NAME[0], entry.start + COMPRESSOR_NAME[1]))


def plan_neutralise(f: BinaryIO) -> Plan:
    """Decide, by allow-list, what neutralising the open file changes. Reads only; raises
    SanitizeError when the file's structure or sample tables do not hold together."""
    size = media_extent(f, file_size(f))
    plan = Plan()
    mdats: list[Box] = []
    for box in iter_boxes(f, 0, size):
        if box.type not in KEEP_TOP:
            plan.drop(box)
        elif box.type in BLANK_TOP:
            plan.zero.append((box.payload_start, box.end))
        elif box.type == b"ftyp":
            plan.patch += _known_brands(read_payload(f, box, 4096), box.payload_start)
        elif box.type == b"mdat":
            mdats.append(box)
        elif box.type == b"moov":
            for child in iter_boxes(f, box.payload_start, box.end):
                if child.type == b"trak":
                    handler = _handler(f, child)
                    if handler in KEPT_TRACKS and handler not in (h for h, _ in plan.tracks):
                        _plan_box(f, child, handler, plan)
                        continue
                    plan.drop(child, f"{handler.decode('latin-1').strip() or 'unnamed'} track")
                elif child.type == b"mvhd":
                    _plan_box(f, child, b"", plan)
                else:
                    plan.drop(child)
    if not plan.tracks:
        raise unsupported("no video or sound track to keep")
    kept = sorted(r for _, stbl in plan.tracks for r in chunk_ranges(f, stbl, size))
    plan.zero += _unused_media(kept, mdats)
    return plan


def _known_brands(ftyp: bytes, at: int) -> list[tuple[int, bytes]]:
    """Rewrites reducing an ``ftyp`` to brands we know (each unknown one becomes the major brand, so
    nothing moves) with a zero minor version: brands are four free bytes each, readers show them."""
    if len(ftyp) < 8 or len(ftyp) % 4:
        raise corrupt("ftyp box is not a whole number of brands")
    brands = [ftyp[i:i + 4] for i in range(8, len(ftyp), 4)]
    major = ftyp[:4] if known_av_brand(ftyp[:4]) else next((b for b in brands if known_av_brand(b)), None)
    if major is None:
        raise unsupported("the ftyp box names no brand of a video or audio file")
    patch = [(at, major + bytes(4))]
    patch += [(at + 8 + 4 * i, major) for i, brand in enumerate(brands) if not known_av_brand(brand)]
    return patch


def _unused_media(kept: list[tuple[int, int]], mdats: list[Box]) -> list[tuple[int, int]]:
    """The ranges of mdat payload no kept chunk covers; every kept chunk inside the file must lie
    inside one mdat (a track reading its samples from another box is not a layout we keep)."""
    gaps: list[tuple[int, int]] = []
    inside = {m.start: [] for m in mdats}
    for start, end in kept:
        home = next((m for m in mdats if m.payload_start <= start and end <= m.end), None)
        if home is None:
            raise corrupt(f"a kept track's samples at {start} lie outside every mdat")
        inside[home.start].append((start, end))
    for m in mdats:
        pos = m.payload_start
        for start, end in sorted(inside[m.start]):
            if start > pos:
                gaps.append((pos, start))
            pos = max(pos, end)
        if pos < m.end:
            gaps.append((pos, m.end))
    return gaps


def _size_header(box: Box) -> int:
    """The size and type fields (8 bytes, 16 with a largesize), without a uuid's extended type."""
    return box.header - (16 if box.type == b"uuid" else 0)


def _zero(f: BinaryIO, start: int, end: int) -> None:
    f.seek(start)
    block = bytes(min(end - start, 1 << 20))
    while start < end:
        n = min(len(block), end - start)
        f.write(block[:n])
        start += n


def apply_plan(path: Path, plan: Plan) -> None:
    """Carry ``plan`` out on ``path`` (a byte copy of the source), in place; no size changes."""
    with open(path, "r+b") as f:
        for box in plan.blank:
            f.seek(box.start + 4)
            f.write(b"free")
            _zero(f, box.start + _size_header(box), box.end)
        for start, end in plan.zero:
            _zero(f, start, end)
        for at, data in plan.patch:
            f.seek(at)
            f.write(data)


def neutralise_fallback(name: str, src: Path, dst: Path, refusal: SanitizeError, source: Source,
                        streams: tuple[Track | None, Track | None], limits: Limits) -> Rebuilt:
    """The neutralised copy of ``src`` when ffmpeg refused it; ffmpeg's refusal stands (with the
    reason added) unless the copy is clean to the verifier's walk and ffprobe sees the kept streams."""
    try:
        return _neutralise(name, src, dst, source, streams, limits)
    except SanitizeError as e:
        dst.unlink(missing_ok=True)
        raise SanitizeError(refusal.code, f"{refusal.message}; nor could its boxes be neutralised: {e.message}") \
            from None


def _neutralise(name: str, src: Path, dst: Path, source: Source, streams: tuple[Track | None, Track | None],
                limits: Limits) -> Rebuilt:
    import shutil   # here: only the fallback copies a file whole

    from worker.formats.av.isobmff import classify     # isobmff imports this module; the copy is judged as identify will

    with open(src, "rb") as f:
        plan = plan_neutralise(f)
    shutil.copyfile(src, dst)
    if source.trailing:
        with open(dst, "r+b") as f:
            f.truncate(file_size(f) - source.trailing)
    apply_plan(dst, plan)
    findings = inspect_copy(dst)
    if findings:
        raise corrupt("the copy would still hold " + "; ".join(findings[:5]))
    copy_video, copy_audio = pick_streams(ffprobe(dst, limits, DEMUXER, share=True))
    video, audio = streams
    if (copy_video is None) != (video is None) or (copy_audio is None) != (audio is None):
        raise corrupt("ffprobe does not see the kept streams in the copy")
    has_video = any(handler == b"vide" for handler, _ in plan.tracks)
    family = {"3ga": "3gp", "m4a": "mp4"}.get(name, name)
    target = MUXINGS[family if family == "mov" else _muxing_for(family, has_video).format_name]
    with open(dst, "rb") as f:
        seen = classify(f.read(HEAD_BYTES))
    if seen != target.format_name:
        raise corrupt(f"the copy would be identified as {seen}, not {target.format_name}")
    removed = sorted(source.metadata | set(plan.removed))
    return Rebuilt(format=target.format_name, media_type=target.media_type, extension=target.extension,
                   removed=(*removed, "boxes neutralised in place: ffmpeg could not copy the streams"))
