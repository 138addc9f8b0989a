"""The verifier's look at an ISO-BMFF agency copy, with readers other than the ffmpeg that wrote it.

Each look lists what it finds outside the allow-list:
- our own box walk: no metadata boxes, at most one ``vide`` and one ``soun`` track, zeroed times,
  no media in other files, only known ``ftyp`` brands, only sample tables in ``stbl``, no string
  in a ``dref`` entry, no handler name but the ones ffmpeg writes, no encoder vendor or version in
  a sample entry (but ffmpeg's own 'FFMP'); ``free``/``skip``/``wide`` space and mdat bytes no
  track reads must be zero (a neutralised copy turns what it drops into zeroed ``free`` boxes, and
  zeroes unused media);
- mutagen's MP4 reader: no tags at all;
- ffprobe, where the copy is decoded (below): no tags beyond technical ones, no data, subtitle or
  attachment streams, no chapters (what the box walk already refuses, seen by another reader).

Then the media itself. Given the input (``inspect_copy_of``, the verifier's usual call), the copy is
proved by bytes (``stream_proof``): each of its tracks holds exactly the coded samples of the input
track the rebuild kept (same codec and sizes, the samples compared byte for byte), configured for its decoder by
the same bytes (``movie``: the ``avcC``, ``hvcC``, ``esds``… of both, compared byte for byte; for
a codec without such a box, ffprobe's description of both, extradata by its hash). The input's
decode sample in the rebuild showed those bytes decode, so the copy is not decoded again and no
tool starts. Where the input gives no proof (see ``stream_proof``), or without the input
(``inspect_copy``), ffmpeg decodes a sample of the copy's streams (start, middle, end) instead,
which must log not a single error.
"""
from __future__ import annotations

from pathlib import Path

from worker.errors import SanitizeError
from worker.formats.base import Limits
from worker.formats.walkers.boxes import (DREF_ENTRY_HEADER, ENCRYPTED_ENTRIES, SAMPLE_ENTRY_BOXES, Box, chunk_ranges,
                                  dref_entries, dref_is_external, file_size, iter_boxes, header_times, read_payload, sample_entry_children, sample_entry_types,
                                  walk)
from worker.formats.av import movie, stream_proof
from worker.tools import decode_findings, ffprobe

TOP_LEVEL = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"})
# ffmpeg's mp4 muxer always writes an empty udta/meta(hdlr mdir)/ilst: allowed while it stays empty
ALLOWED_CHILDREN = {b"udta": frozenset({b"meta"}), b"meta": frozenset({b"hdlr", b"ilst"}), b"ilst": frozenset()}
FORBIDDEN = {b"keys": "mdta keys", b"\xa9xyz": "©xyz",
             b"loci": "loci", b"uuid": "uuid", b"XMP_": "XMP", b"chpl": "chapters", b"tref": "track reference",
             b"cprt": "copyright", b"titl": "title", b"auth": "author", b"gps ": "gps", b"CNTH": "vendor"}
TIMED = frozenset({b"mvhd", b"tkhd", b"mdhd"})
# what a sample table may hold: the tables themselves and nothing else (no vendor box, no text)
STBL_CHILDREN = frozenset({b"stsd", b"stts", b"ctts", b"cslg", b"stss", b"stps", b"stsc", b"stsz", b"stz2",
                           b"stco", b"co64", b"sdtp", b"sbgp", b"sgpd", b"free"})
REFERENCES = frozenset({b"rmra", b"rmda", b"rdrf"})
# the vendor code ffmpeg's QuickTime muxer writes in a sample entry, the same in every copy
FFMPEG_VENDOR = b"FFMP"
TRACK_HANDLERS = frozenset({b"vide", b"soun"})
FORMAT_TAGS = frozenset({"major_brand", "minor_version", "compatible_brands"})
STREAM_TAGS = frozenset({"handler_name", "vendor_id", "language"})
HANDLER_NAMES = frozenset({"VideoHandler", "SoundHandler", "DataHandler", ""})
HANDLER_NAME_BYTES = frozenset(name.encode() for name in HANDLER_NAMES)      # the names ffmpeg writes
SPACE = frozenset({b"free", b"skip", b"wide"})
BLOCK = 1 << 20
DEMUXER = "mov"


def nonzero_bytes(f, start: int, end: int) -> bool:
    """Whether any byte in ``[start, end)`` is not zero; read in bounded blocks."""
    f.seek(start)
    while start < end:
        block = f.read(min(BLOCK, end - start))
        if not block:
            return False
        if block.count(0) != len(block):
            return True
        start += len(block)
    return False


def unused_media_findings(f, size: int, mdats: list[Box], stbls: list[Box]) -> list[str]:
    """mdat bytes that no track's sample table points at must be zero."""
    ranges = sorted(r for stbl in stbls for r in chunk_ranges(f, stbl, size))
    findings = []
    for m in mdats:
        pos = m.payload_start
        for start, end in ranges:
            if end <= pos or start >= m.end:
                continue
            if start > pos and nonzero_bytes(f, pos, start):
                findings.append(f"mdat at {m.start} holds bytes no track reads ({pos}..{start})")
            pos = max(pos, end)
        if pos < m.end and nonzero_bytes(f, pos, m.end):
            findings.append(f"mdat at {m.start} holds bytes no track reads ({pos}..{m.end})")
    return findings[:3]


def vendor_field(entry: Box, handler: bytes) -> tuple[int, int] | None:
    """The byte range of a video or sound sample entry's encoder version, revision and vendor code
    (QuickTime: 'appl' and its version; ISO calls them reserved), or None for other entries.
    A sound entry's version says its layout, so only its revision and vendor are included."""
    if entry.header != 8 or entry.end - entry.start < 24:
        return None
    if handler == b"vide":
        return entry.start + 16, entry.start + 24
    if handler == b"soun":
        return entry.start + 18, entry.start + 24
    return None


def vendor_findings(f, stsd: Box, handler: bytes, where: str) -> list[str]:
    findings = []
    for entry in iter_boxes(f, stsd.payload_start + 8, stsd.end):
        span = vendor_field(entry, handler)
        if span is None:
            continue
        f.seek(span[0])
        field = f.read(span[1] - span[0])
        if field.strip(b"\0") and field[-4:] != FFMPEG_VENDOR or field[:-4].strip(b"\0"):
            findings.append(f"{where} {entry.name} entry names an encoder vendor or version {field!r}")
    return findings


def dref_findings(payload: bytes, where: str) -> list[str]:
    if dref_is_external(payload):
        return [f"{where} points at media in other files"]
    return [f"{where} entry holds a location string" for pos, size in dref_entries(payload)
            if payload[pos + DREF_ENTRY_HEADER:pos + size].strip(b"\0")]


def ftyp_findings(payload: bytes) -> list[str]:
    from worker.formats.av.brands import known_av_brand

    if len(payload) < 8 or len(payload) % 4:
        return ["ftyp is not a whole number of brands"]
    findings = [f"ftyp brand {payload[i:i + 4]!r} is not a known brand"
                for i in (0, *range(8, len(payload), 4)) if not known_av_brand(payload[i:i + 4])]
    if payload[4:6] != b"\0\0":
        findings.append(f"ftyp minor version {payload[4:8]!r} is not a small number")
    return findings


def sample_entry_findings(f, stsd: Box, handler: bytes, where: str) -> list[str]:
    """A sample entry may hold decoder configuration and zeroed space, nothing else."""
    findings = []
    for child in sample_entry_children(f, stsd, handler):
        if child.type in SPACE:
            if nonzero_bytes(f, child.payload_start, child.end):
                findings.append(f"{where} entry holds unzeroed {child.name}")
        elif child.type not in SAMPLE_ENTRY_BOXES:
            findings.append(f"{where} entry holds {child.name}")
    return findings


def box_findings(path: Path) -> list[str]:
    findings: list[str] = []
    handlers: list[bytes] = []
    mdats: list[Box] = []
    stbls: list[Box] = []
    handler = b""
    with open(path, "rb") as f:
        size = file_size(f)
        for box_path, box in walk(f, 0, size):
            where = "/".join(p.decode("latin-1") for p in box_path + (box.type,))
            if box.type in SPACE:
                if nonzero_bytes(f, box.payload_start, box.end):
                    findings.append(f"{where} at {box.start} is not zeroed")
            elif not box_path and box.type not in TOP_LEVEL:
                findings.append(f"top-level box {where}")
            elif box_path and box_path[-1] in ALLOWED_CHILDREN and box.type not in ALLOWED_CHILDREN[box_path[-1]]:
                findings.append(f"metadata box {where}")
            elif box.type in FORBIDDEN:
                findings.append(f"{FORBIDDEN[box.type]} box at {where}")
            elif box.type in TIMED:
                created, modified = header_times(read_payload(f, box, 4096))
                if created or modified:
                    findings.append(f"{where} carries creation/modification times")
            elif box.type == b"hdlr":
                payload = read_payload(f, box, 4096)
                if handler_name(payload) not in HANDLER_NAME_BYTES:
                    findings.append(f"{where} names its handler {handler_name(payload)!r}")
                if box_path[-1:] == (b"mdia",):
                    handlers.append(payload[8:12])
                    handler = payload[8:12]
            elif box.type == b"dref":
                findings += dref_findings(read_payload(f, box, 1 << 20), where)
            elif box.type == b"ftyp" and not box_path:
                findings += ftyp_findings(read_payload(f, box, 4096))
            elif box.type in REFERENCES:
                findings.append(f"reference movie box {where}")
            elif box_path[-1:] == (b"stbl",) and box.type not in STBL_CHILDREN:
                findings.append(f"unknown box {where} in a sample table")
            elif box.type == b"mdat" and not box_path:
                mdats.append(box)
            elif box.type == b"stbl":
                stbls.append(box)
            elif box.type == b"stsd":
                if set(sample_entry_types(f, box)) & ENCRYPTED_ENTRIES:
                    findings.append(f"{where} describes encrypted (DRM) samples")
                findings += sample_entry_findings(f, box, handler, where)
                findings += vendor_findings(f, box, handler, where)
        findings += unused_media_findings(f, size, mdats, stbls)
    if any(h not in TRACK_HANDLERS for h in handlers):
        findings.append(f"tracks other than video and sound: {sorted(h.decode('latin-1') for h in handlers)}")
    for kind in TRACK_HANDLERS:
        if handlers.count(kind) > 1:
            findings.append(f"{handlers.count(kind)} {kind.decode()} tracks")
    return findings


def handler_name(hdlr: bytes) -> bytes:
    """The name an ``hdlr`` payload gives its handler (a C string, or QuickTime's counted string)."""
    name = hdlr[24:]
    if name and name[0] == len(name) - 1:
        name = name[1:]
    return name.strip(b"\0")


def is_cover(stream: dict) -> bool:
    return bool((stream.get("disposition") or {}).get("attached_pic"))


def pick_streams(probe: dict) -> tuple[dict | None, dict | None]:
    """The first real video stream (never a cover picture) and the first audio stream of an ffprobe
    description: what a rebuild keeps, and so what the verifier proves the copy against."""
    streams = probe.get("streams") or []
    video = next((s for s in streams if s.get("codec_type") == "video" and not is_cover(s)), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    return video, audio


def ffprobe_findings(probe: dict) -> list[str]:
    """What ffprobe shows of the copy (its ``probe``) beyond the allow-list: tags, chapters, other streams."""
    findings = [f"container tag {k}" for k in (probe.get("format") or {}).get("tags") or {} if k not in FORMAT_TAGS]
    if probe.get("chapters"):
        findings.append(f"{len(probe['chapters'])} chapters")
    streams = probe.get("streams") or []
    if len(streams) > 2:
        findings.append(f"{len(streams)} streams")
    for s in streams:
        label = f"stream {s.get('index')}"
        if s.get("codec_type") not in ("video", "audio"):
            findings.append(f"{label} is {s.get('codec_type')}")
        if is_cover(s):
            findings.append(f"{label} is an attached picture")
        tags = s.get("tags") or {}
        findings += [f"{label} tag {k}" for k in tags if k not in STREAM_TAGS]
        if "handler_name" in tags and tags["handler_name"] not in HANDLER_NAMES:
            findings.append(f"{label} handler name {tags['handler_name']!r}")
    return findings


def proof_findings(path: Path, source: Path) -> list[str] | None:
    """The byte proof of the copy at ``path`` against ``source``: findings, empty when proved, None
    when the input gives no proof (then the copy is decoded)."""
    try:
        source_movie = movie.describe(source)
    except SanitizeError:
        return None
    kept = [t for t in (source_movie.first(b"vide"), source_movie.first(b"soun")) if t is not None]
    if not kept:
        return None
    findings = stream_proof.differences(source, path, {t.kind: t.index for t in kept})
    if findings is None:
        return None
    try:
        copy_movie = movie.describe(path)
    except SanitizeError as e:
        return findings + [f"the copy's boxes cannot be read for the proof: {e.message}"]
    for track in kept:
        findings += decoder_findings(track, copy_movie.first(track.handler), source, path)
    return findings


def decoder_findings(kept: movie.Track, copy: movie.Track | None, source: Path, path: Path) -> list[str]:
    """Findings when the copy's track is configured for its decoder otherwise than the input's:
    the configuration box our walk reads, byte for byte; for a codec whose configuration the walk
    does not read, ffprobe's description of both streams (extradata by its hash)."""
    if copy is None:
        return [f"the copy has no {kept.kind} stream"]
    if kept.config is not None and copy.codec == kept.codec:
        if copy.config != kept.config:
            return [f"the copy's {kept.kind} stream has another decoder configuration "
                    f"({copy.codec.decode('latin-1')}: {len(copy.config or b'')} bytes, the input's {len(kept.config)})"]
        return []
    source_stream = _stream_by_id(ffprobe(source, Limits(), DEMUXER), kept.track_id)
    copy_stream = _stream_by_id(ffprobe(path, Limits(), DEMUXER), copy.track_id)
    if source_stream is None:
        return [f"ffprobe does not see the input's {kept.kind} stream"]
    return stream_proof.decoder_differences(source_stream, copy_stream)


def _stream_by_id(probe: dict, track_id: int) -> dict | None:
    return next((s for s in probe.get("streams") or [] if _stream_id(s) == track_id), None)


def _stream_id(stream: dict) -> int | None:
    try:
        return int(str(stream.get("id")), 0)
    except ValueError:
        return None


def load_copy_readers() -> None:
    """Import the verifier's second reader of a copy (mutagen's MP4 reader: a tenth of a 10 s
    film's run), so that the rebuild can have it done while its ffmpeg run writes the copy."""
    import mutagen.mp4  # noqa: F401


def mutagen_findings(path: Path) -> list[str]:
    from mutagen import MutagenError
    from mutagen.mp4 import MP4

    try:
        tags = MP4(str(path)).tags
    except MutagenError as e:
        return [f"mutagen cannot read the copy: {e}"]
    return [f"mutagen finds tag {k!r}" for k in (tags or {})]


def inspect_copy(path: Path) -> list[str]:
    """Findings on an agency copy, its streams decoded; empty when it is clean. Never raises for a bad copy."""
    try:
        probe = ffprobe(path, Limits(), DEMUXER)
        return (box_findings(path) + ffprobe_findings(probe) + decode_findings(path, probe, Limits(), DEMUXER)
                + mutagen_findings(path))
    except SanitizeError as e:
        return [f"the copy does not read back: {e.code}: {e.message}"]


def inspect_copy_of(path: Path, source: Path) -> list[str]:
    """``inspect_copy`` of a copy made from ``source``: its media proved by bytes against the
    input's where the input allows it (then the copy's own readers are our walk and mutagen, and
    no tool starts), decoded where not. A failed proof is a finding, never a reason to fall back to
    decoding. Never raises for a bad copy."""
    try:
        findings = box_findings(path)
        proof = proof_findings(path, source)
        if proof is None:
            probe = ffprobe(path, Limits(), DEMUXER)
            findings += ffprobe_findings(probe) + decode_findings(path, probe, Limits(), DEMUXER)
        else:
            findings += proof
        return findings + mutagen_findings(path)
    except SanitizeError as e:
        return [f"the copy does not read back: {e.code}: {e.message}"]
