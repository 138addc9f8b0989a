"""AIFF and AIFF-C (IFF "FORM", big-endian): keep COMM, SSND and FVER, drop every other chunk.

COMM describes the samples, SSND holds them and FVER is the AIFF-C version stamp decoders check.
NAME, AUTH, "(c) ", ANNO, COMT, "ID3 ", APPL, MARK, INST and anything unknown are metadata or
not needed to play the file. The copy is written COMM, (FVER), SSND with a FORM size that
matches. AIFF has no standard place for a location, so ``locate`` finds nothing.
"""
from __future__ import annotations

import struct
from pathlib import Path

from worker.errors import corrupt, too_large, truncated, unsupported
from worker.formats.walkers import iff
from worker.formats.av.audio_inspect import CopyWalk, inspect_copy, mapped_file, write_range
from worker.formats.base import Format, Limits, Rebuilt
from worker.location import Found

KEPT_CHUNKS = (b"COMM", b"FVER", b"SSND")
FORM_TYPES = (b"AIFF", b"AIFC")
FORM_HEADER = 12                       # "FORM", size, form type
MIN_COMM_SIZE = 18


def accept(head: bytes) -> bool:
    return len(head) >= FORM_HEADER and head[:4] == b"FORM" and head[8:12] in FORM_TYPES


def locate(path: Path, limits: Limits) -> Found:
    return Found()


def _extended_to_float(raw: bytes) -> float:
    """The 80-bit IEEE extended sample rate of COMM."""
    exponent = ((raw[0] & 0x7F) << 8 | raw[1]) - 16383
    mantissa = int.from_bytes(raw[2:10], "big")
    value = mantissa * 2.0 ** (exponent - 63) if mantissa else 0.0
    return -value if raw[0] & 0x80 else value


def _chunks(data) -> tuple[dict[bytes, iff.Chunk], list[str], int]:
    if len(data) < FORM_HEADER or data[:4] != b"FORM" or data[8:12] not in FORM_TYPES:
        raise unsupported("not an AIFF or AIFF-C file")
    (declared,) = struct.unpack_from(">I", data, 4)
    form_end = 8 + declared if FORM_HEADER <= 8 + declared <= len(data) else len(data)
    kept: dict[bytes, iff.Chunk] = {}
    removed: list[str] = []
    for chunk in iff.iter_chunks(data, FORM_HEADER, form_end, big_endian=True):
        if chunk.id in KEPT_CHUNKS:
            if chunk.id in kept:
                raise corrupt(f"AIFF file with two {chunk.id.decode()!r} chunks")
            kept[chunk.id] = chunk
        else:
            removed.append(f"{chunk.id.decode('latin-1').strip() or repr(chunk.id)} chunk ({chunk.size} bytes)")
    if b"COMM" not in kept or b"SSND" not in kept:
        raise truncated("AIFF file without a COMM and an SSND chunk")
    if kept[b"COMM"].size < MIN_COMM_SIZE:
        raise corrupt("AIFF COMM chunk shorter than 18 bytes")
    if form_end < len(data):
        removed.append(f"data after the FORM ({len(data) - form_end} bytes)")
    return kept, removed, form_end


def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
    with mapped_file(src, limits) as data:
        kept, removed, _ = _chunks(data)
        comm = kept[b"COMM"]
        frames = struct.unpack_from(">I", data, comm.data_offset + 2)[0]
        rate = _extended_to_float(bytes(data[comm.data_offset + 8:comm.data_offset + 18]))
        if rate > 0 and frames / rate > limits.max_duration_s:
            raise too_large(f"{frames / rate:.0f} s of audio is over the limit of {limits.max_duration_s:.0f} s")
        head = b"".join(iff.chunk(cid, bytes(data[kept[cid].data_offset:kept[cid].data_offset + kept[cid].size]),
                                  big_endian=True) for cid in (b"COMM", b"FVER") if cid in kept)
        sound = kept[b"SSND"]
        pad = sound.size & 1
        body_size = 4 + len(head) + iff.HEADER_SIZE + sound.size + pad
        if body_size > 0xFFFFFFFF:
            raise too_large("the AIFF copy would exceed the 4 GiB FORM size")
        with open(dst, "wb") as out:
            out.write(b"FORM" + struct.pack(">I", body_size) + bytes(data[8:12]) + head)
            # the samples are streamed from the map, not built into one chunk in memory
            out.write(b"SSND" + struct.pack(">I", sound.size))
            write_range(out, data, sound.data_offset, sound.data_offset + sound.size)
            out.write(b"\0" * pad)
    return Rebuilt(format="aiff", media_type="audio/aiff", extension=".aiff", removed=tuple(removed))


def walk_copy(data) -> CopyWalk:
    """The FORM walk of the copy against the allow-list; the duration is COMM's frame count over
    its sample rate."""
    if data[:4] != b"FORM" or data[8:12] not in FORM_TYPES:
        return CopyWalk(["the copy is not an AIFF or AIFF-C file"], None)
    findings, chunks = iff.container_walk(data, big_endian=True, kept=KEPT_CHUNKS, required=(b"COMM", b"SSND"))
    comm = next((c for c in chunks if c.id == b"COMM"), None)
    duration = None
    if comm is not None and comm.size >= MIN_COMM_SIZE:
        frames = struct.unpack_from(">I", data, comm.data_offset + 2)[0]
        rate = _extended_to_float(bytes(data[comm.data_offset + 8:comm.data_offset + 18]))
        duration = frames / rate if rate > 0 else None
    return CopyWalk(findings, duration)


def inspect(path: Path) -> list[str]:
    import mutagen.aiff

    return inspect_copy(path, walk_copy, mutagen.aiff.AIFF)


FORMATS = [
    Format(name="aiff", kind="audio", media_type="audio/aiff", accept=accept, locate=locate, rebuild=rebuild,
           inspect=inspect, extensions=(".aiff", ".aif", ".aifc")),
]
