"""A bounded ISO-BMFF / QuickTime box walker, shared by the MP4 family's locator and verifier.

Every size read from the file is checked against what is left of its parent before it is used:
a 64-bit ``largesize`` (size 1) is honoured, size 0 means "to the end of the parent", and a box
that claims more than its parent holds is ``truncated``. Depth and box count are capped so a
crafted file cannot make the walk run away.
"""
from __future__ import annotations

import struct
import sys
from array import array
from typing import BinaryIO, Iterator, NamedTuple

from worker.errors import SanitizeError, corrupt, truncated

# boxes whose payload is nothing but child boxes
CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl", b"udta", b"edts", b"dinf", b"mvex",
                        b"moof", b"traf", b"tref", b"ilst", b"gmhd", b"tapt", b"sinf", b"schi"})
# ISO `meta` is a full box (4 bytes version/flags before its children); Apple's QuickTime `meta`
# is not. Told apart by where the `hdlr` child starts.
META = b"meta"
MAX_DEPTH = 16
MAX_BOXES = 200_000
MAX_TABLE = 64 << 20       # one sample table (stco, stsz, stsc): 16 million entries


class Box(NamedTuple):
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


def media_extent(f: BinaryIO, size: int) -> int:
    """Where the top-level boxes end: ``size``, or, when bytes that are no whole box follow a moov
    and an mdat (something appended to a finished movie), the end of the last whole box before them.
    The walks then read only up to there and the copy never holds what follows."""
    seen: set[bytes] = set()
    pos = 0
    try:
        for box in iter_boxes(f, 0, size):
            seen.add(box.type)
            pos = box.end
    except SanitizeError:
        if {b"moov", b"mdat"} <= seen:
            return pos
        raise
    return size


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


def samples_per_chunk(stsc: bytes, chunks: int) -> array:
    """How many samples each of ``chunks`` chunks holds, from an ``stsc`` payload (runs of chunks)."""
    if len(stsc) < 8:
        raise corrupt("stsc box shorter than its header")
    count = struct.unpack(">I", stsc[4:8])[0]
    if count > (len(stsc) - 8) // 12:
        raise corrupt(f"stsc lists {count} entries, room for {(len(stsc) - 8) // 12}")
    runs = [struct.unpack_from(">II", stsc, 8 + i * 12) for i in range(count)]
    out = array("I", bytes(4 * chunks))
    for i, (first, per_chunk) in enumerate(runs):
        nxt = runs[i + 1][0] if i + 1 < count else chunks + 1
        if first < 1 or nxt <= first:
            raise corrupt("stsc runs do not start at increasing chunk numbers")
        for chunk in range(first - 1, min(nxt - 1, chunks)):
            out[chunk] = per_chunk
    return out


def sample_sizes(box_type: bytes, payload: bytes) -> tuple[int, int, array | None]:
    """(constant size or 0, sample count, sizes or None) of an ``stsz`` or ``stz2`` payload."""
    if len(payload) < 12:
        raise corrupt(f"{box_type.decode()} box shorter than its header")
    if box_type == b"stsz":
        constant, count = struct.unpack_from(">II", payload, 4)
        if constant:
            return constant, count, None
        if count > (len(payload) - 12) // 4:
            raise corrupt(f"stsz lists {count} sizes, room for {(len(payload) - 12) // 4}")
        sizes = array("I", payload[12:12 + 4 * count])
        if sys.byteorder == "little":
            sizes.byteswap()
        return 0, count, sizes
    field, count = payload[7], struct.unpack_from(">I", payload, 8)[0]   # stz2: 4, 8 or 16 bits a sample
    if field not in (4, 8, 16) or count > (len(payload) - 12) * 8 // field:
        raise corrupt("stz2 field size or sample count does not fit the box")
    body = payload[12:]
    if field == 16:
        sizes = array("I", (struct.unpack_from(">H", body, 2 * i)[0] for i in range(count)))
    elif field == 8:
        sizes = array("I", body[:count])
    else:
        sizes = array("I", ((body[i // 2] >> (0 if i % 2 else 4)) & 15 for i in range(count)))
    return 0, count, sizes


def chunk_ranges(f: BinaryIO, stbl: Box, file_end: int) -> list[tuple[int, int]]:
    """The byte ranges ``[start, end)`` holding one track's samples, as its sample table says.

    Only chunks that start inside the file are listed (a file cut short keeps tables pointing past
    its end); their ends are clipped to ``file_end``. Tables that contradict each other are corrupt.
    """
    tables = {box.type: box for box in iter_boxes(f, stbl.payload_start, stbl.end)}
    offsets_box = tables.get(b"co64") or tables.get(b"stco")
    if offsets_box is None:
        return []
    offsets = list(chunk_offsets(read_payload(f, offsets_box, MAX_TABLE), offsets_box.type == b"co64"))
    if all(offset >= file_end for offset in offsets):
        return []
    if b"stsc" not in tables:
        raise corrupt("a track with chunks but no stsc (samples per chunk)")
    per_chunk = samples_per_chunk(read_payload(f, tables[b"stsc"], MAX_TABLE), len(offsets))
    sizes_box = tables.get(b"stsz") or tables.get(b"stz2")
    if sizes_box is None:
        raise corrupt("a track with chunks but no stsz (sample sizes)")
    constant, count, sizes = sample_sizes(sizes_box.type, read_payload(f, sizes_box, MAX_TABLE))
    return [(offset, min(offset + length, file_end))
            for offset, length in zip(offsets, chunk_lengths(per_chunk, constant, count, sizes))
            if offset < file_end and length]


def chunk_lengths(per_chunk: array, constant: int, count: int, sizes: array | None) -> Iterator[int]:
    """The bytes each chunk holds, in the chunk table's order, from its samples per chunk and the
    sample sizes (``sample_sizes``); corrupt when the chunks hold more than ``count`` samples."""
    sample = 0
    for n in per_chunk:
        if sample + n > count:
            raise corrupt(f"the chunks hold more samples than the {count} the sample size table lists")
        yield constant * n if constant else sum(sizes[sample:sample + n])
        sample += n


def counted_entries(payload: bytes, *, what: str, min_size: int) -> Iterator[tuple[int, int]]:
    """(offset, size) of each entry of a full box that holds a 32-bit count and then size-prefixed
    entries (``dref``, Apple's ``keys``), every size checked against what the box holds."""
    if len(payload) < 8:
        raise corrupt(f"{what} box shorter than its header")
    count, pos = struct.unpack(">I", payload[4:8])[0], 8
    for _ in range(count):
        if len(payload) - pos < min_size:
            raise corrupt(f"{what} lists more entries than it holds")
        size = struct.unpack(">I", payload[pos:pos + 4])[0]
        if size < min_size or size > len(payload) - pos:
            raise corrupt(f"{what} entry of {size} bytes runs past the box")
        yield pos, size
        pos += size


DREF_ENTRY_HEADER = 12      # size, type, version and flags of a data reference entry
MAX_DREF_ENTRIES = 64


def dref_entries(payload: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each entry of a ``dref`` payload; a few at most (one per data source)."""
    entries = []
    for entry in counted_entries(payload, what="dref", min_size=DREF_ENTRY_HEADER):
        entries.append(entry)
        if len(entries) > MAX_DREF_ENTRIES:
            raise corrupt(f"dref lists more than {MAX_DREF_ENTRIES} data references")
    return entries


def dref_is_external(payload: bytes) -> bool:
    """Whether a ``dref`` payload points at media in another file (an entry without the
    self-contained flag: a URL or a Mac alias, which also names folders and volumes)."""
    return any(not payload[pos + 11] & 1 for pos, _ in dref_entries(payload))


# sample entries of encrypted (DRM) media: iTunes FairPlay and Common Encryption
ENCRYPTED_ENTRIES = frozenset({b"drms", b"drmi", b"drmt", b"enca", b"encv", b"enct", b"encs", b"encm", b"encf"})


def sample_entry_types(f: BinaryIO, stsd: Box) -> list[bytes]:
    """The four-character codes of an ``stsd``'s sample entries (codecs such as avc1, mp4a, drms)."""
    if stsd.payload_size < 8:
        raise corrupt("stsd box shorter than its header")
    return [entry.type for entry in iter_boxes(f, stsd.payload_start + 8, stsd.end)]


# what a sample entry may hold after its fixed fields: decoder configuration and display hints only
# (not an iTunes `pinf` purchase record, a `sinf`, a vendor `uuid`)
SAMPLE_ENTRY_BOXES = frozenset({
    b"esds", b"avcC", b"hvcC", b"av1C", b"vpcC", b"dOps", b"dfLa", b"alac", b"damr", b"dawp", b"d263",
    b"dac3", b"dec3", b"dac4", b"dmlp", b"ddts", b"glbl", b"lhvC", b"hvcE", b"dvcC", b"dvvC", b"dvwC",
    b"colr", b"pasp", b"btrt", b"clap", b"fiel", b"gama", b"mdcv", b"clli", b"CoLL", b"SmDm", b"st3d",
    b"sv3d", b"SA3D", b"chan", b"chnl", b"wave", b"enda", b"m4ds", b"ccst", b"amve",
})
VISUAL_FIELDS = 78                               # after the 8-byte header of a visual sample entry
SOUND_FIELDS = {0: 28, 1: 44, 2: 64}             # by the sound description's version


def sample_entry_children(f: BinaryIO, stsd: Box, handler: bytes) -> Iterator[Box]:
    """The boxes after the fixed fields of each sample entry of a video or sound track's ``stsd``."""
    if stsd.payload_size < 8:
        raise corrupt("stsd box shorter than its header")
    for entry in iter_boxes(f, stsd.payload_start + 8, stsd.end):
        if handler == b"vide":
            fixed = VISUAL_FIELDS
        elif handler == b"soun":
            f.seek(entry.payload_start + 8)
            version = struct.unpack(">H", f.read(2).rjust(2, b"\0"))[0]
            if version not in SOUND_FIELDS:
                raise corrupt(f"sound description version {version}")
            fixed = SOUND_FIELDS[version]
        else:
            continue
        if entry.payload_size > fixed:
            yield from iter_boxes(f, entry.payload_start + fixed, entry.end)
