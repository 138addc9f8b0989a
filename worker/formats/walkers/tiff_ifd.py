"""The one TIFF image file directory (IFD) reader: the structure of every EXIF blob.

A TIFF header ("II*\\0" little-endian or "MM\\0*" big-endian, then the offset of IFD0) and
directories of 12-byte entries (tag, type, count, and the value itself when it fits in 4 bytes,
else the offset of the value). Every offset and count comes from the blob, so each is checked
against the blob before it is used, and a directory is read at most ``max_entries`` entries deep.
Nothing here raises on hostile bytes except ``header`` (a ValueError for a blob that is not TIFF).

Which entries count is Pillow's rule (``TiffImagePlugin.ImageFileDirectory_v2.load``), so that a
reading here is the reading Pillow gave mediasan before (#10): the first entry of a tag wins; an
entry of an unknown type, of no bytes, or whose out-of-line values would take the directory's
total past the blob's size is skipped; a value or an entry running past the blob cuts the
directory short there (what was read stays, the next-IFD offset is unknown). ``value`` gives the
Python value Pillow's ``Image.Exif`` gives: bytes for BYTE and UNDEFINED, str for ASCII, a number
for one value (or for a tag defined as one value), a tuple for several, ``Rational`` for
RATIONAL and SRATIONAL.
"""
from __future__ import annotations

import math
import struct
from typing import NamedTuple

MAGICS = {b"II*\x00": "<", b"MM\x00*": ">"}
ENTRY_SIZE = 12
MAX_ENTRIES = 4096          # per directory: a camera's has tens, a maker's a few hundred

BYTE, ASCII, UNDEFINED = 1, 2, 7
RATIONAL, SRATIONAL = 5, 10
# type: (bytes per value, struct code of one number; None where the value is the bytes themselves)
TYPES: dict[int, tuple[int, str | None]] = {
    1: (1, None), 2: (1, None), 3: (2, "H"), 4: (4, "L"), 5: (8, "L"), 6: (1, "b"), 7: (1, None),
    8: (2, "h"), 9: (4, "l"), 10: (8, "l"), 11: (4, "f"), 12: (8, "d"), 13: (4, "L"), 16: (8, "Q"),
}


class Rational:
    """A RATIONAL or SRATIONAL as stored; a zero denominator is kept (it is junk to the caller), as NaN."""

    __slots__ = ("numerator", "denominator")

    def __init__(self, numerator: int, denominator: int) -> None:
        self.numerator, self.denominator = numerator, denominator

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rational):
            return NotImplemented
        return (self.numerator, self.denominator) == (other.numerator, other.denominator)

    def __hash__(self) -> int:
        return hash((self.numerator, self.denominator))

    def __repr__(self) -> str:
        return f"Rational({self.numerator}, {self.denominator})"

    def __float__(self) -> float:
        return self.numerator / self.denominator if self.denominator else math.nan

    def __int__(self) -> int:
        if not self.denominator:
            raise ValueError("a rational with a zero denominator is not a number")
        quotient = abs(self.numerator) // abs(self.denominator)   # truncated toward zero, as int(Fraction)
        return quotient if (self.numerator < 0) == (self.denominator < 0) else -quotient


# tuples, not dataclasses: an EXIF has tens of entries and they are made on every read (#10)
class Entry(NamedTuple):
    tag: int
    type: int
    count: int
    at: int             # offset of the value's bytes in the blob (inside the entry when they fit in 4)
    size: int           # bytes of the value: count x the type's size


class Directory(NamedTuple):
    entries: dict[int, Entry]   # by tag, in file order: the entries that count (see the module's rule)
    next: int | None            # offset of the next IFD (0: none); None when the directory is cut short
    cut_short: bool             # an entry or value ran past the blob, or over ``max_entries`` entries


EMPTY = Directory({}, None, True)


def header(body: bytes) -> tuple[str, int]:
    """(struct byte order, offset of IFD0) of a TIFF header; ValueError when ``body`` has none."""
    order = MAGICS.get(body[:4])
    if order is None:
        raise ValueError("no TIFF header")
    if len(body) < 8:
        raise ValueError(f"a TIFF header of {len(body)} bytes")
    return order, struct.unpack_from(order + "L", body, 4)[0]


def directory(body: bytes, offset: int, order: str, max_entries: int = MAX_ENTRIES) -> Directory:
    """The IFD at ``offset``: bounded by the blob and by ``max_entries``; never raises."""
    if not 0 <= offset <= len(body) - 2:
        return EMPTY
    (count,) = struct.unpack_from(order + "H", body, offset)
    first = offset + 2
    whole = min(count, (len(body) - first) // ENTRY_SIZE, max_entries)
    entries: dict[int, Entry] = {}
    out_of_line = 0
    limit = len(body)
    unpack = struct.Struct(order + "HHL").unpack_from
    unpack_offset = struct.Struct(order + "L").unpack_from
    for index in range(whole):
        at = first + ENTRY_SIZE * index
        tag, kind, n = unpack(body, at)
        if tag in entries:
            continue
        unit = TYPES.get(kind)
        if unit is None:
            continue
        size = n * unit[0]
        if size > 4:
            out_of_line += size
            if out_of_line > limit:
                continue   # more value bytes than the blob holds: this one is skipped, as Pillow does
            (value_at,) = unpack_offset(body, at + 8)
            if value_at + size > limit:
                return Directory(entries, None, True)
        else:
            value_at = at + 8
        if size:
            entries[tag] = Entry(tag, kind, n, value_at, size)
    if whole < count:
        return Directory(entries, None, True)
    end = first + ENTRY_SIZE * count
    if end + 4 > len(body):
        return Directory(entries, None, True)
    return Directory(entries, unpack_offset(body, end)[0], False)


def value(body: bytes, entry: Entry, order: str, one: bool = False, at_most: int | None = None):
    """The entry's value as Python (see the module docstring). ``one``: the tag is defined as one value,
    so only the first of several counts (and only it is decoded). ``at_most``: None for an entry of more
    numbers than that, undecoded (a reader wanting three rationals pays for three, not for a million)."""
    if entry.type in (BYTE, UNDEFINED):
        return body[entry.at:entry.at + entry.size]
    if entry.type == ASCII:
        raw = body[entry.at:entry.at + entry.size]
        return (raw[:-1] if raw.endswith(b"\x00") else raw).decode("latin-1")
    if at_most is not None and entry.count > at_most and not one:
        return None
    count = 1 if one else entry.count
    code = TYPES[entry.type][1]
    if entry.type in (RATIONAL, SRATIONAL):
        numbers = struct.unpack_from(f"{order}{2 * count}{code}", body, entry.at)
        values = tuple(Rational(a, b) for a, b in zip(numbers[::2], numbers[1::2]))
    else:
        values = struct.unpack_from(f"{order}{count}{code}", body, entry.at)
    return values[0] if len(values) == 1 else values


__all__ = ["Rational", "Entry", "Directory", "header", "directory", "value", "MAX_ENTRIES"]
