"""The agency copy of a plain MP4 or M4A written by our own box copy: no muxer, one pass of the bytes.

An ffmpeg stream copy re-muxes every packet and then, for ``+faststart``, rewrites the whole file
a second time; the copy's chunks are the input's, so none of that is needed where the input is
already laid out the way MP4 wants it. ``plan`` decides from the input's boxes alone (pure: a
file in, a ``Plan`` out) whether it is such a file and what the copy is; ``write`` then writes
``ftyp``, ``moov`` and one ``mdat`` and copies the kept tracks' chunks into it in the input's
order, kernel to kernel (``copy_file_range``).

What the copy holds, by allow-list (what the verifier's walk, ``av_inspect``, reads again):

- ``ftyp``: the brands ffmpeg's MP4 muxer writes (``M4A `` for a sound-only copy);
- ``moov``: ``mvhd``, then each kept ``trak`` in the input's order with ``tkhd``, ``edts/elst``,
  ``mdia`` (``mdhd``, ``hdlr``, ``minf``: ``vmhd``/``smhd``, ``dinf``, ``stbl``). The header
  boxes are rebuilt field by field (``MVHD``, ``TKHD``, ``MDHD``): what plays the media is kept
  (time scales, durations, the display matrix, so the rotation is the input's, track ids, sizes,
  language), times, reserved and pre-defined fields are zeros. ``hdlr`` (named as ffmpeg names
  it), ``dinf`` (self-contained) and ``vmhd``/``smhd`` are written anew. The edit list and the
  sample tables are the input's, each only when its size is exactly what its entry count says
  (no byte can follow the entries), but for the chunk offsets, written anew; the sample
  description's vendor fields and compressor name are zeroed and its boxes beyond decoder
  configuration become zeroed ``free`` boxes (the neutralising plan's own rules);
- ``mdat``: the kept tracks' chunks, nothing else; every other box (``udta``, ``meta``, ``uuid``,
  other tracks, ``free`` space) is left behind.

So the copy plays as the input does: the same packets with the same times, edit list and last
durations (ffmpeg's stream copy may change the time base, and writes an edit list of its own for
AAC's priming samples, from the tags where iTunes keeps them). tests/test_box_copy.py holds both
to the input's packets.

Only what is plain is copied this way (else ``plan`` returns None and ffmpeg copies as before):
an MP4/M4A input (not QuickTime: its sound descriptions differ), one ``moov`` and no fragments,
each kept track with one sample description of a codec MP4 takes, version 0 sound descriptions,
complete sample tables whose chunks lie inside one ``mdat`` each and do not overlap.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO, NamedTuple

from worker.errors import SanitizeError
from worker.formats.av.av_inspect import STBL_CHILDREN
from worker.formats.walkers.boxes import (MAX_TABLE, Box, chunk_lengths, chunk_offsets, file_size, iter_boxes,
                                          media_extent, read_payload, sample_entry_types, sample_sizes,
                                          samples_per_chunk)

# sample entry codes that MP4 takes as they are (QuickTime's PCM and sound descriptions it does not)
PLAIN_CODECS = frozenset({b"avc1", b"avc3", b"hvc1", b"hev1", b"av01", b"vp09", b"mp4a", b"Opus", b"fLaC"})
HANDLER_NAMES = {b"vide": b"VideoHandler", b"soun": b"SoundHandler"}
# what ffmpeg's mp4 muxer writes: major brand, minor version 0x200, compatible brands
VIDEO_BRANDS = (b"isom", b"isom", b"iso2", b"mp41")
AUDIO_BRANDS = (b"M4A ", b"M4A ", b"isom", b"iso2", b"mp41")
MAX_STSD = 1 << 20
MAX_CHUNKS = 4_000_000       # budget on the chunk list, set before it is built
COPY_BLOCK = 64 << 20


class Chunk(NamedTuple):
    offset: int          # in the input
    length: int
    track: int           # which kept track (its place in Plan.tracks)
    number: int          # its place in that track's chunk offset table


class TrackPlan(NamedTuple):
    handler: bytes                       # b"vide" or b"soun"
    tkhd: bytes                          # payloads, rebuilt field by field
    mdhd: bytes
    edits: bytes | None                  # the elst payload, None without an edit list
    stbl_before: bytes                   # the sample table's boxes before the chunk offsets, whole
    stbl_after: bytes                    # and after them
    chunks: int                          # how many chunks its offset table lists


class Plan(NamedTuple):
    mvhd: bytes                          # payload, rebuilt field by field
    tracks: list[TrackPlan]
    chunks: list[Chunk]                  # every kept chunk, in the input's file order
    audio_only: bool


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


# the header boxes, field by field: (name, width in version 0, width in version 1, kept) in order;
# times, reserved and pre-defined fields (and flags but a track's) are written as zeros
MVHD = (("version", 1, 1, True), ("flags", 3, 3, False), ("created", 4, 8, False), ("modified", 4, 8, False), ("timescale", 4, 4, True),
        ("duration", 4, 8, True), ("rate", 4, 4, True), ("volume", 2, 2, True), ("reserved", 10, 10, False),
        ("matrix", 36, 36, True), ("pre_defined", 24, 24, False), ("next_track_id", 4, 4, True))
TKHD = (("version", 1, 1, True), ("flags", 3, 3, True), ("created", 4, 8, False), ("modified", 4, 8, False), ("track_id", 4, 4, True),
        ("reserved", 4, 4, False), ("duration", 4, 8, True), ("reserved", 8, 8, False), ("layer", 2, 2, True),
        ("alternate_group", 2, 2, True), ("volume", 2, 2, True), ("reserved", 2, 2, False), ("matrix", 36, 36, True),
        ("width", 4, 4, True), ("height", 4, 4, True))
MDHD = (("version", 1, 1, True), ("flags", 3, 3, False), ("created", 4, 8, False), ("modified", 4, 8, False), ("timescale", 4, 4, True),
        ("duration", 4, 8, True), ("language", 2, 2, True), ("pre_defined", 2, 2, False))
VMHD = struct.pack(">I6x", 1)            # flags 1, graphics mode copy, no colour: what every muxer writes
SMHD = bytes(8)                          # balance centred


def _fields(payload: bytes, layout: tuple) -> bytes | None:
    """A header box's payload rebuilt from the fields ``layout`` keeps, every other field zeroed;
    None when the payload is not exactly as long as the layout of its version."""
    version = payload[:1]
    if version not in (b"\0", b"\1"):
        return None
    widths = [(v1 if version == b"\1" else v0, kept) for _, v0, v1, kept in layout]
    if len(payload) != sum(width for width, _ in widths):
        return None
    out, pos = bytearray(), 0
    for width, kept in widths:
        out += payload[pos:pos + width] if kept else bytes(width)
        pos += width
    return bytes(out)


# the sample tables copied as they are, each with the size its entry count gives it: (bytes before
# the entries, bytes an entry), so that nothing can follow the entries
TABLES = {b"stts": (8, 8), b"ctts": (8, 8), b"stss": (8, 4), b"stsc": (8, 12), b"sbgp": (12, 8)}


def _table(kind: bytes, payload: bytes, samples: int) -> bytes | None:
    """A sample table's payload when its size is exactly what its fields say, else None."""
    if kind == b"stsz":
        if len(payload) < 12:
            return None
        constant, count = struct.unpack_from(">II", payload, 4)
        return payload if len(payload) == 12 + (0 if constant else 4 * count) else None
    if kind == b"sdtp":
        return payload if len(payload) == 4 + samples else None
    if kind == b"sgpd":                # sample groups with a fixed entry length (AAC's roll recovery)
        if len(payload) < 16 or payload[0] != 1:
            return None
        length, count = struct.unpack_from(">II", payload, 8)
        return payload if length and len(payload) == 16 + length * count else None
    if kind not in TABLES or len(payload) < 8:
        return None
    header, entry = TABLES[kind]
    if kind == b"sbgp" and payload[0] == 1:
        header = 16                    # version 1 adds a grouping type parameter
    count = struct.unpack_from(">I", payload, header - 4)[0]
    return payload if len(payload) == header + entry * count else None


def _edit_list(payload: bytes) -> bytes | None:
    if len(payload) < 8 or payload[0] not in (0, 1):
        return None
    count = struct.unpack_from(">I", payload, 4)[0]
    return payload if len(payload) == 8 + count * (20 if payload[0] else 12) else None


def _children(f: BinaryIO, parent: Box) -> dict[bytes, list[Box]]:
    found: dict[bytes, list[Box]] = {}
    for child in iter_boxes(f, parent.payload_start, parent.end):
        found.setdefault(child.type, []).append(child)
    return found


def _one(found: dict[bytes, list[Box]], kind: bytes) -> Box | None:
    boxes = found.get(kind, [])
    return boxes[0] if len(boxes) == 1 else None


def _sample_description(f: BinaryIO, stsd: Box, stbl: Box, handler: bytes) -> bytes | None:
    """The stsd box, whole, neutralised as ``plan_neutralise`` neutralises it in place."""
    from worker.formats.av.av_rebuild import Plan as Neutralising, plan_sample_entries

    if stsd.payload_size > MAX_STSD or stsd.header != 8:
        return None
    data = bytearray(struct.pack(">I4s", 8 + stsd.payload_size, b"stsd") + read_payload(f, stsd, MAX_STSD))
    changes = Neutralising()
    plan_sample_entries(f, stbl, handler, changes)
    for dropped in changes.blank:
        data[dropped.start - stsd.start + 4:dropped.start - stsd.start + 8] = b"free"
        start, end = dropped.start - stsd.start + dropped.header, dropped.end - stsd.start
        data[start:end] = bytes(end - start)
    for start, end in changes.zero:
        data[start - stsd.start:end - stsd.start] = bytes(end - start)
    return bytes(data)


def _track(f: BinaryIO, trak: Box, size: int) -> tuple[TrackPlan, list[tuple[int, int]]] | None:
    """A kept trak's part of the plan and its chunks' (offset, length), or None when it is not plain."""
    top = _children(f, trak)
    tkhd_box, mdia = _one(top, b"tkhd"), _one(top, b"mdia")
    if tkhd_box is None or mdia is None:
        return None
    media = _children(f, mdia)
    mdhd_box, hdlr, minf = _one(media, b"mdhd"), _one(media, b"hdlr"), _one(media, b"minf")
    if mdhd_box is None or hdlr is None or minf is None:
        return None
    handler = read_payload(f, hdlr, 4096)[8:12]
    tkhd, mdhd = _fields(read_payload(f, tkhd_box, 4096), TKHD), _fields(read_payload(f, mdhd_box, 4096), MDHD)
    if handler not in HANDLER_NAMES or tkhd is None or mdhd is None:
        return None
    edits = None
    edts = _one(top, b"edts")
    if edts is not None:
        elst = _one(_children(f, edts), b"elst")
        edits = _edit_list(read_payload(f, elst, MAX_TABLE)) if elst is not None else None
        if edits is None:
            return None
    stbl = _one(_children(f, minf), b"stbl")
    if stbl is None:
        return None
    tables = _children(f, stbl)
    if any(kind not in STBL_CHILDREN for kind in tables) or any(len(found) > 1 for found in tables.values()):
        return None
    stsd, stsc, stsz, stco = (_one(tables, kind) for kind in (b"stsd", b"stsc", b"stsz", b"stco"))
    if stsd is None or stsc is None or stsz is None or stco is None or b"co64" in tables or b"stz2" in tables:
        return None
    codecs = sample_entry_types(f, stsd)
    if len(codecs) != 1 or codecs[0] not in PLAIN_CODECS or not _plain_entry(f, stsd, handler):
        return None
    description = _sample_description(f, stsd, stbl, handler)
    if description is None:
        return None
    offsets = list(chunk_offsets(read_payload(f, stco, MAX_TABLE), False))
    if len(offsets) > MAX_CHUNKS:
        return None
    per_chunk = samples_per_chunk(read_payload(f, stsc, MAX_TABLE), len(offsets))
    constant, count, sample_bytes = sample_sizes(b"stsz", read_payload(f, stsz, MAX_TABLE))
    if constant:
        return None            # PCM-like layouts: ffmpeg regroups them
    # more samples in the chunks than sizes listed: corrupt, which ``plan`` answers with None
    chunks = list(zip(offsets, chunk_lengths(per_chunk, constant, count, sample_bytes)))
    if sum(per_chunk) != count or not count or any(offset + length > size for offset, length in chunks):
        return None
    before, after, passed = [], [], False
    for child in iter_boxes(f, stbl.payload_start, stbl.end):
        if child.type == b"stco":
            passed = True
        elif child.type == b"stsd":
            (after if passed else before).append(description)
        elif child.type not in (b"free", b"cslg", b"stps"):     # optional hints, left behind
            payload = _table(child.type, read_payload(f, child, MAX_TABLE), count)
            if payload is None:
                return None
            (after if passed else before).append(box(child.type, payload))
    return TrackPlan(handler, tkhd, mdhd, edits, b"".join(before), b"".join(after), len(offsets)), chunks


def _plain_entry(f: BinaryIO, stsd: Box, handler: bytes) -> bool:
    """Whether the one sample entry reads its data from this file (data reference 1, the only
    one the copy has) and, for sound, is a version 0 description (the layout MP4 defines)."""
    entry = next(iter_boxes(f, stsd.payload_start + 8, stsd.end), None)
    if entry is None or entry.header != 8 or entry.payload_size < (28 if handler == b"soun" else 8):
        return False
    f.seek(entry.payload_start + 6)
    fields = f.read(4)
    return fields[:2] == b"\0\1" and (handler != b"soun" or fields[2:] == b"\0\0")


def plan(src: Path, kept: list[int]) -> Plan | None:
    """The box copy of ``src`` keeping the traks at places ``kept`` (in file order), or None when
    ``src`` is not plain enough for it, or its boxes do not read as this plan needs them (then
    ffmpeg copies it, and has its say on the file). Reads only."""
    try:
        return _plan(src, kept)
    except SanitizeError:
        return None


def _plan(src: Path, kept: list[int]) -> Plan | None:
    with open(src, "rb") as f:
        size = media_extent(f, file_size(f))
        top = list(iter_boxes(f, 0, size))
        moovs = [b for b in top if b.type == b"moov"]
        mdats = [b for b in top if b.type == b"mdat"]
        if len(moovs) != 1 or any(b.type in (b"moof", b"mfra") for b in top):
            return None
        moov = _children(f, moovs[0])
        mvhd = _one(moov, b"mvhd")
        if mvhd is None or b"mvex" in moov:
            return None
        traks = moov.get(b"trak", [])
        tracks, chunks = [], []
        for place in sorted(kept):
            if not 0 <= place < len(traks):
                return None
            planned = _track(f, traks[place], size)
            if planned is None:
                return None
            track, ranges = planned
            chunks += [Chunk(offset, length, len(tracks), number) for number, (offset, length) in enumerate(ranges)]
            tracks.append(track)
        mvhd_payload = _fields(read_payload(f, mvhd, 4096), MVHD)
    if mvhd_payload is None:
        return None
    chunks.sort()
    for before, after in zip(chunks, chunks[1:]):
        if before.offset + before.length > after.offset:
            return None             # chunks that share bytes: not a layout to copy as it is
    for chunk in chunks:
        if not any(m.payload_start <= chunk.offset and chunk.offset + chunk.length <= m.end for m in mdats):
            return None
    return Plan(mvhd_payload, tracks, chunks, audio_only=all(t.handler != b"vide" for t in tracks))


def _hdlr(handler: bytes) -> bytes:
    return box(b"hdlr", bytes(4) + bytes(4) + handler + bytes(12) + HANDLER_NAMES[handler] + b"\0")


DINF = box(b"dinf", box(b"dref", struct.pack(">II", 0, 1) + box(b"url ", struct.pack(">I", 1))))


def _moov(p: Plan, offsets: list[list[int]], large: bool) -> bytes:
    traks = []
    for track, table in zip(p.tracks, offsets):
        offsets_box = (box(b"co64", struct.pack(f">II{len(table)}Q", 0, len(table), *table)) if large
                       else box(b"stco", struct.pack(f">II{len(table)}I", 0, len(table), *table)))
        stbl = box(b"stbl", track.stbl_before + offsets_box + track.stbl_after)
        media_header = box(b"vmhd", VMHD) if track.handler == b"vide" else box(b"smhd", SMHD)
        minf = box(b"minf", media_header + DINF + stbl)
        mdia = box(b"mdia", box(b"mdhd", track.mdhd) + _hdlr(track.handler) + minf)
        edts = box(b"edts", box(b"elst", track.edits)) if track.edits is not None else b""
        traks.append(box(b"trak", box(b"tkhd", track.tkhd) + edts + mdia))
    return box(b"moov", box(b"mvhd", p.mvhd) + b"".join(traks))


def layout(p: Plan) -> tuple[bytes, bytes, list[int]]:
    """The copy's ``ftyp`` + ``moov`` + ``mdat`` header, and where each of ``p.chunks`` goes in it."""
    brands = AUDIO_BRANDS if p.audio_only else VIDEO_BRANDS
    ftyp = box(b"ftyp", brands[0] + struct.pack(">I", 0x200) + b"".join(brands[1:]))
    media = sum(c.length for c in p.chunks)
    mdat_header = (struct.pack(">I4sQ", 1, b"mdat", 16 + media) if media + 8 > 0xFFFFFFFF
                   else struct.pack(">I4s", 8 + media, b"mdat"))
    for large in (False, True):
        empty = [[0] * track.chunks for track in p.tracks]
        start = len(ftyp) + len(_moov(p, empty, large)) + len(mdat_header)
        if large or start + media <= 0xFFFFFFFF:
            break
    targets, table, pos = [], [[0] * track.chunks for track in p.tracks], start
    for chunk in p.chunks:
        table[chunk.track][chunk.number] = pos
        targets.append(pos)
        pos += chunk.length
    return ftyp + _moov(p, table, large), mdat_header, targets


def write(p: Plan, src: Path, dst: Path) -> None:
    """Write the copy ``p`` plans for ``src`` to ``dst``: its boxes, then the chunks, each run of
    chunks that lie back to back in the input copied in one go."""
    head, mdat_header, targets = layout(p)
    with open(src, "rb") as source, open(dst, "wb") as copy:
        copy.write(head + mdat_header)
        copy.flush()
        runs: list[list[int]] = []
        for chunk, target in zip(p.chunks, targets):
            if runs and runs[-1][0] + runs[-1][2] == chunk.offset:
                runs[-1][2] += chunk.length
            else:
                runs.append([chunk.offset, target, chunk.length])
        for offset, target, length in runs:
            _copy_range(source.fileno(), copy.fileno(), offset, target, length)


def _copy_range(src: int, dst: int, offset: int, target: int, length: int) -> None:
    while length:
        try:
            n = os.copy_file_range(src, dst, min(length, COPY_BLOCK), offset, target)
        except OSError:
            n = 0           # a file system without it: read and write
        if n <= 0:
            data = os.pread(src, min(length, COPY_BLOCK), offset)
            if not data:
                raise SanitizeError("corrupt", f"the chunk at {offset} ends past the end of the file")
            n = os.pwrite(dst, data, target)
        offset, target, length = offset + n, target + n, length - n
