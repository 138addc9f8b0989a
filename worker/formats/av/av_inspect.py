"""The verifier's look at an ISO-BMFF agency copy, with readers other than the ffmpeg that wrote it.

Three looks, each listing what it finds outside the allow-list:
- our own box walk: no metadata boxes, at most one ``vide`` and one ``soun`` track, zeroed times,
  no media in other files; ``free``/``skip``/``wide`` space and mdat bytes no track reads must be
  zero (a neutralised copy turns what it drops into zeroed ``free`` boxes, and zeroes unused media);
- ffprobe: no tags beyond technical ones, no data/subtitle/attachment streams, no chapters;
- mutagen's MP4 reader: no tags at all.
"""
from __future__ import annotations

from pathlib import Path

from worker.errors import SanitizeError
from worker.formats.base import Limits
from worker.formats.walkers.boxes import (ENCRYPTED_ENTRIES, SAMPLE_ENTRY_BOXES, Box, chunk_ranges, dref_is_external,
                                  file_size, header_times, read_payload, sample_entry_children, sample_entry_types,
                                  walk)
from worker.tools import ffprobe

TOP_LEVEL = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"})
# ffmpeg's mp4 muxer always writes an empty udta/meta(hdlr mdir)/ilst: allowed while it stays empty
ALLOWED_CHILDREN = {b"udta": frozenset({b"meta"}), b"meta": frozenset({b"hdlr", b"ilst"}), b"ilst": frozenset()}
FORBIDDEN = {b"keys": "mdta keys", b"\xa9xyz": "©xyz",
             b"loci": "loci", b"uuid": "uuid", b"XMP_": "XMP", b"chpl": "chapters", b"tref": "track reference",
             b"cprt": "copyright", b"titl": "title", b"auth": "author", b"gps ": "gps", b"CNTH": "vendor"}
TIMED = frozenset({b"mvhd", b"tkhd", b"mdhd"})
TRACK_HANDLERS = frozenset({b"vide", b"soun"})
FORMAT_TAGS = frozenset({"major_brand", "minor_version", "compatible_brands"})
STREAM_TAGS = frozenset({"handler_name", "vendor_id", "language"})
HANDLER_NAMES = frozenset({"VideoHandler", "SoundHandler", "DataHandler", ""})
SPACE = frozenset({b"free", b"skip", b"wide"})
BLOCK = 1 << 20


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
            elif box.type == b"hdlr" and box_path[-1:] == (b"mdia",):
                payload = read_payload(f, box, 4096)
                handlers.append(payload[8:12])
                handler = payload[8:12]
            elif box.type == b"dref" and dref_is_external(read_payload(f, box, 1 << 20)):
                findings.append(f"{where} points at media in other files")
            elif box.type == b"mdat" and not box_path:
                mdats.append(box)
            elif box.type == b"stbl":
                stbls.append(box)
            elif box.type == b"stsd":
                if set(sample_entry_types(f, box)) & ENCRYPTED_ENTRIES:
                    findings.append(f"{where} describes encrypted (DRM) samples")
                findings += sample_entry_findings(f, box, handler, where)
        findings += unused_media_findings(f, size, mdats, stbls)
    if any(h not in TRACK_HANDLERS for h in handlers):
        findings.append(f"tracks other than video and sound: {sorted(h.decode('latin-1') for h in handlers)}")
    for kind in TRACK_HANDLERS:
        if handlers.count(kind) > 1:
            findings.append(f"{handlers.count(kind)} {kind.decode()} tracks")
    return findings


def ffprobe_findings(path: Path) -> list[str]:
    probe = ffprobe(path, Limits())
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
        if (s.get("disposition") or {}).get("attached_pic"):
            findings.append(f"{label} is an attached picture")
        tags = s.get("tags") or {}
        findings += [f"{label} tag {k}" for k in tags if k not in STREAM_TAGS]
        if "handler_name" in tags and tags["handler_name"] not in HANDLER_NAMES:
            findings.append(f"{label} handler name {tags['handler_name']!r}")
    return findings


def mutagen_findings(path: Path) -> list[str]:
    from mutagen import MutagenError
    from mutagen.mp4 import MP4

    try:
        tags = MP4(str(path)).tags
    except MutagenError as e:
        return [f"mutagen cannot read the copy: {e}"]
    return [f"mutagen finds tag {k!r}" for k in (tags or {})]


def inspect_copy(path: Path) -> list[str]:
    """Findings on an agency copy; empty when it is clean. Never raises for a bad copy."""
    try:
        return box_findings(path) + ffprobe_findings(path) + mutagen_findings(path)
    except SanitizeError as e:
        return [f"the copy does not read back: {e.code}: {e.message}"]
