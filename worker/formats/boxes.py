"""A bounded ISO-BMFF / QuickTime box walker, shared by the MP4 family's locator and verifier.

Every size read from the file is checked against what is left of its parent before it is used:
a 64-bit ``largesize`` (size 1) is honoured, size 0 means "to the end of the parent", and a box
that claims more than its parent holds is ``truncated``. Depth and box count are capped so a
crafted file cannot make the walk run away.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from worker.errors import SanitizeError, corrupt, truncated

# boxes whose payload is nothing but child boxes
CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl", b"udta", b"edts", b"dinf", b"mvex",
                        b"moof", b"traf", b"tref", b"ilst", b"gmhd", b"tapt", b"sinf", b"schi"})
# ISO `meta` is a full box (4 bytes version/flags before its children); Apple's QuickTime `meta`
# is not. Told apart by where the `hdlr` child starts.
META = b"meta"
MAX_DEPTH = 16
MAX_BOXES = 200_000


@dataclass(frozen=True)
class Box:
    type: bytes          # four bytes, e.g. b"moov", b"\xa9xyz"
    start: int           # offset of the size field
    header: int          # 8, or 16 with a largesize (uuid boxes: +16 for the extended type)
    end: int             # offset just past the box

    @property
    def payload_start(self) -> int:
        return self.start + self.header

    @property
    def payload_size(self) -> int:
        return self.end - self.payload_start

    @property
    def name(self) -> str:
        return self.type.decode("latin-1")


def iter_boxes(f: BinaryIO, start: int, end: int) -> Iterator[Box]:
    """The boxes laid end to end in ``[start, end)`` of ``f``; raises truncated/corrupt on bad sizes."""
    pos = start
    while pos < end:
        if end - pos < 8:
            # a few padding bytes at the very end of a parent are tolerated when zero
            f.seek(pos)
            rest = f.read(end - pos)
            if rest.strip(b"\0"):
                raise truncated(f"{end - pos} stray bytes where a box header was expected at {pos}")
            return
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            raise truncated(f"box header at {pos} runs past the end of the file")
        size, kind = struct.unpack(">I4s", head)
        header = 8
        if size == 1:
            large = f.read(8)
            if len(large) < 8:
                raise truncated(f"box largesize at {pos} runs past the end of the file")
            size = struct.unpack(">Q", large)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if kind == b"uuid":
            header += 16
        if size < header:
            if size == 8 and kind == b"\0\0\0\0":
                return  # QuickTime's optional zero terminator atom
            raise corrupt(f"box {kind!r} at {pos} declares {size} bytes, less than its header")
        if size > end - pos:
            raise truncated(f"box {kind!r} at {pos} declares {size} bytes, only {end - pos} remain")
        yield Box(kind, pos, header, pos + size)
        pos += size


def children_start(f: BinaryIO, box: Box) -> int:
    """Where the children of a container box begin (skips the full-box header of ISO `meta`)."""
    if box.type != META:
        return box.payload_start
    if box.payload_size >= 12:
        f.seek(box.payload_start)
        probe = f.read(12)
        if probe[4:8] == b"hdlr":      # QuickTime style: children start right away
            return box.payload_start
    return box.payload_start + 4


def walk(f: BinaryIO, start: int, end: int, *, descend_meta: bool = True) -> Iterator[tuple[tuple[bytes, ...], Box]]:
    """Every box under ``[start, end)``, depth first, with the path of types leading to it.

    ilst items (``©nam``, or key indexes of Apple's mdta list) are descended too, so their
    ``data`` children are visited.
    """
    count = 0

    def recurse(lo: int, hi: int, path: tuple[bytes, ...]):
        nonlocal count
        if len(path) > MAX_DEPTH:
            raise corrupt(f"boxes nested deeper than {MAX_DEPTH}")
        for box in iter_boxes(f, lo, hi):
            count += 1
            if count > MAX_BOXES:
                raise SanitizeError("too_large", f"more than {MAX_BOXES} boxes")
            yield path, box
            parent = path[-1] if path else b""
            if box.type in CONTAINERS or (box.type == META and descend_meta) or parent == b"ilst":
                yield from recurse(children_start(f, box), box.end, path + (box.type,))

    yield from recurse(start, end, ())


def read_payload(f: BinaryIO, box: Box, limit: int) -> bytes:
    """The payload of ``box``, refusing more than ``limit`` bytes (metadata boxes are small)."""
    if box.payload_size > limit:
        raise SanitizeError("too_large", f"box {box.name} holds {box.payload_size} bytes, over {limit}")
    f.seek(box.payload_start)
    data = f.read(box.payload_size)
    if len(data) != box.payload_size:
        raise truncated(f"box {box.name} at {box.start} runs past the end of the file")
    return data


def file_size(f: BinaryIO) -> int:
    f.seek(0, 2)
    return f.tell()


def chunk_offsets(stco: bytes, large: bool) -> Iterator[int]:
    """Offsets from an ``stco`` (32-bit) or ``co64`` (64-bit) payload, count checked against the payload."""
    if len(stco) < 8:
        raise corrupt("chunk offset box shorter than its header")
    count = struct.unpack(">I", stco[4:8])[0]
    width = 8 if large else 4
    if count > (len(stco) - 8) // width:
        raise corrupt(f"chunk offset box lists {count} entries, room for {(len(stco) - 8) // width}")
    fmt = ">Q" if large else ">I"
    for i in range(count):
        yield struct.unpack_from(fmt, stco, 8 + i * width)[0]


def mac_epoch_iso(seconds: int) -> str | None:
    """Seconds since 1904-01-01 UTC as ISO 8601, or None for 0 (no time) and impossible values."""
    import datetime as dt

    if seconds <= 0:
        return None
    try:
        when = dt.datetime(1904, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=seconds)
    except OverflowError:
        return None
    if when.year < 1970 or when.year > 2200:
        return None
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def header_times(payload: bytes) -> tuple[int, int]:
    """(creation, modification) seconds from an mvhd/tkhd/mdhd payload (version 0 or 1)."""
    if len(payload) < 12:
        raise corrupt("time header shorter than its fields")
    if payload[0] == 1:
        if len(payload) < 20:
            raise corrupt("version 1 time header shorter than its fields")
        return struct.unpack_from(">QQ", payload, 4)
    return struct.unpack_from(">II", payload, 4)
