"""The one chunk walker for RIFF (little-endian: WAV, WebP) and IFF/AIFF (big-endian "FORM").

A chunk is a 4-byte id, a 4-byte size and ``size`` bytes of payload, padded to an even length.
Sizes come from the file, so each is checked against what remains before it is used.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

from worker.errors import SanitizeError

HEADER_SIZE = 8


@dataclass(frozen=True)
class Chunk:
    id: bytes          # the 4-byte chunk id, e.g. b"VP8X", b"COMM"
    offset: int        # where the chunk's header starts
    data_offset: int   # where its payload starts (offset + 8)
    size: int          # payload length as declared, without the pad byte

    @property
    def end(self) -> int:
        """Offset just past the payload and its pad byte."""
        return self.data_offset + self.size + (self.size & 1)


def iter_chunks(data: bytes, start: int, end: int, *, big_endian: bool = False) -> Iterator[Chunk]:
    """Walk the chunks in ``data[start:end]``.

    Raises SanitizeError("truncated") when a header or a payload runs past ``end``. A missing pad
    byte after an odd-sized last chunk is tolerated: many writers omit it and nothing is lost.
    """
    if end > len(data):
        raise SanitizeError("truncated", f"chunk area ends at {end}, past the file's {len(data)} bytes")
    size_format = ">I" if big_endian else "<I"
    pos = start
    while pos < end:
        if end - pos < HEADER_SIZE:
            raise SanitizeError("truncated", f"chunk header at offset {pos} cut short ({end - pos} bytes left)")
        chunk_id = bytes(data[pos:pos + 4])
        (size,) = struct.unpack_from(size_format, data, pos + 4)
        data_offset = pos + HEADER_SIZE
        if size > end - data_offset:
            raise SanitizeError(
                "truncated",
                f"chunk {chunk_id!r} at offset {pos} declares {size} bytes, only {end - data_offset} remain")
        yield Chunk(id=chunk_id, offset=pos, data_offset=data_offset, size=size)
        pos = min(data_offset + size + (size & 1), end)


def chunk(id: bytes, payload: bytes, *, big_endian: bool = False) -> bytes:
    """Serialise one chunk: header, payload and a pad byte when the payload is odd-sized."""
    if len(id) != 4:
        raise ValueError(f"chunk id must be 4 bytes, got {id!r}")
    size_format = ">I" if big_endian else "<I"
    pad = b"\0" if len(payload) & 1 else b""
    return id + struct.pack(size_format, len(payload)) + payload + pad


def container_findings(data, *, big_endian: bool, kept: tuple[bytes, ...], required: tuple[bytes, ...]) -> list[str]:
    """The verifier's walk of a rebuilt RIFF/FORM file (its magic already checked): the container
    size equals the file's, every chunk is on the allow-list, each required chunk is there once."""
    return container_walk(data, big_endian=big_endian, kept=kept, required=required)[0]


def container_walk(data, *, big_endian: bool, kept: tuple[bytes, ...],
                   required: tuple[bytes, ...]) -> tuple[list[str], list[Chunk]]:
    """``container_findings`` and the chunks it walked (empty when they cannot be walked), for a
    caller that reads the kept chunks' fields without walking them again."""
    findings: list[str] = []
    (declared,) = struct.unpack_from(">I" if big_endian else "<I", data, 4)
    if declared + 8 != len(data):
        findings.append(f"{bytes(data[:4]).decode('latin-1')} size {declared} does not match the file's "
                        f"{len(data)} bytes")
    try:
        chunks = list(iter_chunks(data, 12, len(data), big_endian=big_endian))
    except SanitizeError as e:
        return findings + [f"the copy's chunks cannot be walked: {e.message}"], []
    ids = [c.id for c in chunks]
    findings += [f"chunk {cid!r} outside the allow-list" for cid in ids if cid not in kept]
    for cid in required:
        if ids.count(cid) != 1:
            findings.append(f"the copy does not hold exactly one {cid.decode('latin-1').strip()} chunk")
    return findings, chunks
