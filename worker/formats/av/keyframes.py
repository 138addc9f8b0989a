"""When the sync samples (keyframes) of one ISO-BMFF video track are shown, in seconds.

ffmpeg's ``-ss`` decodes from the keyframe at or before the time asked; with long groups of
pictures the input's three decode windows (``tools.decode_sample``) each start at the same early
keyframe and decode the same frames up to three times. Knowing the keyframes, the windows can
start where ffmpeg starts anyway and be merged (``tools.sample_ranges``).

A short walk of the one track (boxes.py primitives): ``mdhd`` timescale, ``stts`` decode times,
``ctts`` composition offsets, ``stss`` sync samples. Only the plain timelines are read: no edit
list, or one edit that starts at the media's beginning at normal rate. Anything else (empty edits,
an edit that starts inside the media, a fragmented movie, tables that do not add up) answers None
and the caller keeps its plain windows, which check the same frames. Wrong times could only make
the windows merge more or less than they might: never check fewer frames (each merged range still
covers every window it replaces).
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Iterator

from worker.errors import SanitizeError
from worker.formats.walkers.boxes import MAX_TABLE, Box, file_size, iter_boxes, read_payload, walk

MAX_SYNC_SAMPLES = 1_000_000


def _runs(payload: bytes, signed: bool) -> Iterator[tuple[int, int]]:
    """(sample count, value) runs of an ``stts`` or ``ctts`` payload, count checked."""
    if len(payload) < 8:
        raise SanitizeError("corrupt", "time table shorter than its header")
    count = struct.unpack_from(">I", payload, 4)[0]
    if count > (len(payload) - 8) // 8:
        raise SanitizeError("corrupt", "time table lists more runs than it holds")
    fmt = ">Ii" if signed else ">II"
    for i in range(count):
        yield struct.unpack_from(fmt, payload, 8 + 8 * i)


def _values_at(runs: Iterator[tuple[int, int]], samples: list[int], cumulative: bool) -> list[int]:
    """For each 0-based sample number in ascending ``samples``: the sum of the values of every
    sample before it (``cumulative``: a decode time from ``stts``) or its own value (``ctts``)."""
    out, first, total = [], 0, 0
    run = next(runs, None)
    for sample in samples:
        while run is not None and sample >= first + run[0]:
            total += run[0] * run[1]
            first += run[0]
            run = next(runs, None)
        if run is None:
            raise SanitizeError("corrupt", "the time table ends before the sync samples do")
        out.append(total + (sample - first) * run[1] if cumulative else run[1])
    return out


def _sync_samples(payload: bytes) -> list[int]:
    if len(payload) < 8:
        raise SanitizeError("corrupt", "stss shorter than its header")
    count = struct.unpack_from(">I", payload, 4)[0]
    if count > (len(payload) - 8) // 4 or count > MAX_SYNC_SAMPLES:
        raise SanitizeError("corrupt", "stss lists more samples than it holds")
    numbers = list(struct.unpack_from(f">{count}I", payload, 8))
    if any(n < 1 for n in numbers) or numbers != sorted(numbers):
        raise SanitizeError("corrupt", "stss sample numbers are not ascending")
    return [n - 1 for n in numbers]


def _plain_edit(payload: bytes) -> bool:
    """Whether an ``elst`` payload is one edit from the media's start at normal rate."""
    if len(payload) < 8:
        return False
    version, count = payload[0], struct.unpack_from(">I", payload, 4)[0]
    width = 20 if version == 1 else 12
    if count != 1 or len(payload) < 8 + width:
        return False
    media_time, rate = (struct.unpack_from(">qi", payload, 16) if version == 1
                        else struct.unpack_from(">ii", payload, 12))
    return media_time == 0 and rate == 0x10000


def _track_sync_times(f: BinaryIO, trak: Box) -> list[float] | None:
    tables: dict[bytes, Box] = {}
    for path, box in walk(f, trak.payload_start, trak.end, descend_meta=False):
        if path in ((b"edts",), (b"mdia",), (b"mdia", b"minf", b"stbl")):
            tables.setdefault(box.type, box)
    if b"elst" in tables and not _plain_edit(read_payload(f, tables[b"elst"], MAX_TABLE)):
        return None
    if b"mdhd" not in tables or b"stts" not in tables or b"stss" not in tables:
        return None          # no stss: every sample is a keyframe, the plain windows are already tight
    mdhd = read_payload(f, tables[b"mdhd"], 4096)
    at = 20 if mdhd[:1] == b"\1" else 12
    if len(mdhd) < at + 4:
        return None
    timescale = struct.unpack_from(">I", mdhd, at)[0]
    if not timescale:
        return None
    sync = _sync_samples(read_payload(f, tables[b"stss"], MAX_TABLE))
    times = _values_at(_runs(read_payload(f, tables[b"stts"], MAX_TABLE), False), sync, cumulative=True)
    if b"ctts" in tables:
        offsets = _values_at(_runs(read_payload(f, tables[b"ctts"], MAX_TABLE), True), sync, cumulative=False)
        times = [t + o for t, o in zip(times, offsets)]
    return [t / timescale for t in times]


def sync_times(path: Path, track_index: int) -> list[float] | None:
    """The presentation times, in seconds from the track's start, of the sync samples of the
    ``track_index``-th ``trak`` (ffmpeg's stream index) of ``path``; None when uncertain."""
    try:
        with open(path, "rb") as f:
            top = list(iter_boxes(f, 0, file_size(f)))
            if any(box.type == b"moof" for box in top):
                return None
            moov = next((box for box in top if box.type == b"moov"), None)
            if moov is None:
                return None
            traks = [box for box in iter_boxes(f, moov.payload_start, moov.end) if box.type == b"trak"]
            if not 0 <= track_index < len(traks):
                return None
            return _track_sync_times(f, traks[track_index])
    except (SanitizeError, struct.error):
        return None
