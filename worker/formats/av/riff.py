"""WAV (RIFF WAVE): keep the chunks that describe and hold the samples, drop every other chunk.

A WAV file is "RIFF", a size, "WAVE" and chunks. Only ``fmt `` (the sample format), ``fact``
(sample count of compressed formats) and ``data`` (the samples) are needed to play it. Everything
else is metadata or unknown: LIST (INFO text, adtl labels), bext (broadcast originator, dates),
iXML, ``id3 ``/``ID3 `` tags, ``_PMX`` (XMP), cue/smpl/inst, JUNK/PAD. The copy is written in the
order fmt, fact, data with a RIFF size that matches. WAV has no standard place for a location, so
``locate`` finds nothing. RF64 (the 64-bit variant) is not supported.
"""
from __future__ import annotations

import struct
from pathlib import Path

from worker.errors import SanitizeError, corrupt, too_large, truncated, unsupported
from worker.formats.walkers import iff
from worker.formats.av.audio_inspect import CopyWalk, inspect_copy, mapped_file, write_range
from worker.formats.base import Format, Limits, Rebuilt
from worker.location import Found

KEPT_CHUNKS = (b"fmt ", b"fact", b"data")
FORM_HEADER = 12                        # "RIFF", size, "WAVE"
MIN_FMT_SIZE = 16


def accept(head: bytes) -> bool:
    return len(head) >= FORM_HEADER and head[:4] == b"RIFF" and head[8:12] == b"WAVE"


def locate(path: Path, limits: Limits) -> Found:
    return Found()


def _chunks(data) -> tuple[dict[bytes, iff.Chunk], list[iff.Chunk], int]:
    """The kept chunks by id, all chunks in order, and where the RIFF form ends in the file."""
    if data[:4] == b"RF64":
        raise unsupported("RF64 (64-bit WAV) is not supported")
    if len(data) < FORM_HEADER or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise unsupported("not a RIFF WAVE file")
    (declared,) = struct.unpack_from("<I", data, 4)
    # streaming writers leave the RIFF size at 0 or too large; the chunks then run to the end of file
    form_end = 8 + declared if FORM_HEADER <= 8 + declared <= len(data) else len(data)
    kept: dict[bytes, iff.Chunk] = {}
    every: list[iff.Chunk] = []
    for chunk in iff.iter_chunks(data, FORM_HEADER, form_end):
        every.append(chunk)
        if chunk.id in KEPT_CHUNKS:
            if chunk.id in kept:
                raise corrupt(f"WAV file with two {chunk.id.decode()!r} chunks")
            kept[chunk.id] = chunk
        if chunk.id == b"data":
            # nothing after the samples is needed; a lying size on a later chunk must not stop us
            break
    if b"fmt " not in kept or b"data" not in kept:
        raise truncated("WAV file without a fmt and a data chunk")
    if kept[b"fmt "].size < MIN_FMT_SIZE:
        raise corrupt("WAV fmt chunk shorter than 16 bytes")
    return kept, every, form_end


def _rest_after_data(data, form_end: int, after: int) -> list[iff.Chunk]:
    """Chunks after ``data`` (LIST, id3 and the like are often appended); damage there is dropped too."""
    try:
        return list(iff.iter_chunks(data, after, form_end))
    except SanitizeError:
        return []


def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
    with mapped_file(src, limits) as data:
        kept, every, form_end = _chunks(data)
        fmt, samples = kept[b"fmt "], kept[b"data"]
        (byte_rate,) = struct.unpack_from("<I", data, fmt.data_offset + 8)
        if byte_rate and samples.size / byte_rate > limits.max_duration_s:
            raise too_large(f"{samples.size / byte_rate:.0f} s of audio is over the limit of "
                            f"{limits.max_duration_s:.0f} s")
        after = _rest_after_data(data, form_end, samples.end)
        removed = [f"{c.id.decode('latin-1').strip() or repr(c.id)} chunk ({c.size} bytes)"
                   for c in every + after if c.id not in KEPT_CHUNKS]
        if after and after[-1].end < form_end or not after and samples.end < form_end:
            removed.append("damaged or unknown data after the samples")
        if form_end < len(data):
            removed.append(f"data after the RIFF form ({len(data) - form_end} bytes)")
        head = b"".join(iff.chunk(cid, bytes(data[kept[cid].data_offset:kept[cid].data_offset + kept[cid].size]))
                        for cid in (b"fmt ", b"fact") if cid in kept)
        pad = samples.size & 1
        body_size = 4 + len(head) + iff.HEADER_SIZE + samples.size + pad
        if body_size > 0xFFFFFFFF:
            raise too_large("the WAV copy would exceed the 4 GiB RIFF size")
        with open(dst, "wb") as out:
            out.write(b"RIFF" + struct.pack("<I", body_size) + b"WAVE" + head)
            # the samples are streamed from the map, not built into one chunk in memory
            out.write(b"data" + struct.pack("<I", samples.size))
            write_range(out, data, samples.data_offset, samples.data_offset + samples.size)
            out.write(b"\0" * pad)
    return Rebuilt(format="wav", media_type="audio/wav", extension=".wav", removed=tuple(removed))


def walk_copy(data) -> CopyWalk:
    """The RIFF walk of the copy against the allow-list; the duration is the data chunk's bytes
    over the fmt chunk's byte rate."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return CopyWalk(["the copy is not a RIFF WAVE file"], None)
    findings, chunks = iff.container_walk(data, big_endian=False, kept=KEPT_CHUNKS, required=(b"fmt ", b"data"))
    by_id = {c.id: c for c in chunks}
    duration = None
    if b"fmt " in by_id and b"data" in by_id and by_id[b"fmt "].size >= MIN_FMT_SIZE:
        (byte_rate,) = struct.unpack_from("<I", data, by_id[b"fmt "].data_offset + 8)
        duration = by_id[b"data"].size / byte_rate if byte_rate else None
    return CopyWalk(findings, duration)


def inspect(path: Path) -> list[str]:
    import mutagen.wave

    return inspect_copy(path, walk_copy, mutagen.wave.WAVE)


FORMATS = [
    Format(name="wav", kind="audio", media_type="audio/wav", accept=accept, locate=locate, rebuild=rebuild,
           inspect=inspect, extensions=(".wav",)),
]
