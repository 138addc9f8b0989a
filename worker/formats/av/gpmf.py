"""GoPro's GPMF telemetry: the first GPS fix of a ``gpmd`` track, read before the track is dropped.

GPMF is KLV: a 4-byte key, a 1-byte type, a 1-byte structure size and a 16-bit repeat count, then
size x repeat bytes of data padded to 4 bytes; type 0 nests more KLV (``DEVC`` > ``STRM`` > items).
A GPS stream (``STRM``) holds ``SCAL`` (divisors), ``GPSF`` (fix: 0 none, 2 2D, 3 3D) and ``GPS5``
records (latitude, longitude, altitude, 2D and 3D speed as int32, each divided by its ``SCAL``);
newer cameras write ``GPS9``, whose first three fields are the same. The first record of the
first stream with a fix (``GPSF`` >= 2, or no ``GPSF`` at all) and not 0,0 is the fix.

Every length is checked against what holds it; nesting depth and the number of items read are
capped, so a crafted track cannot make the parser run away.
"""
from __future__ import annotations

import struct

MAX_DEPTH = 8
MAX_ITEMS = 100_000
# GPMF type code -> struct format of one value
VALUE_FORMATS = {ord("b"): "b", ord("B"): "B", ord("s"): "h", ord("S"): "H", ord("l"): "i", ord("L"): "I",
                 ord("f"): "f", ord("d"): "d", ord("j"): "q", ord("J"): "Q"}
GPS_KEYS = (b"GPS5", b"GPS9")


class _Budget:
    def __init__(self) -> None:
        self.items = 0

    def spend(self) -> bool:
        self.items += 1
        return self.items <= MAX_ITEMS


def _items(data: bytes, start: int, end: int, budget: _Budget):
    """(key, type, structure size, repeat, data offset) of each KLV item in ``[start, end)``."""
    pos = start
    while pos + 8 <= end and budget.spend():
        key, kind, size, repeat = struct.unpack_from(">4sBBH", data, pos)
        if key == b"\0\0\0\0":
            return
        length = size * repeat
        if pos + 8 + length > end:
            return          # cut off: what came before still counts
        yield key, kind, size, repeat, pos + 8
        pos += 8 + ((length + 3) & ~3)


def _values(data: bytes, kind: int, size: int, repeat: int, at: int) -> list[float] | None:
    fmt = VALUE_FORMATS.get(kind)
    if fmt is None:
        return None
    width = struct.calcsize(fmt)
    count = size * repeat // width
    return list(struct.unpack_from(f">{count}{fmt}", data, at))


def _stream_fix(data: bytes, start: int, end: int, budget: _Budget) -> tuple[float, float, float] | None:
    """The first fix of one STRM, or None."""
    scale: list[float] = [1.0]
    locked = True
    for key, kind, size, repeat, at in _items(data, start, end, budget):
        if key == b"SCAL":
            scale = [v or 1.0 for v in (_values(data, kind, size, repeat, at) or [1.0])]
        elif key == b"GPSF":
            values = _values(data, kind, size, repeat, at)
            locked = bool(values) and values[0] >= 2
        elif key in GPS_KEYS and locked and repeat and size >= 12:
            lat, lon, alt = struct.unpack_from(">iii", data, at)
            scales = (scale * 3)[:3] if len(scale) == 1 else scale[:3]
            if len(scales) < 3:
                return None
            fix = (lat / scales[0], lon / scales[1], alt / scales[2])
            if fix[0] or fix[1]:
                return fix
    return None


def first_fix(data: bytes) -> tuple[float, float, float] | None:
    """(lat, lon, alt) of the first GPS fix in GPMF ``data`` (samples laid end to end), or None."""
    budget = _Budget()

    def search(start: int, end: int, depth: int):
        if depth > MAX_DEPTH:
            return None
        for key, kind, size, repeat, at in _items(data, start, end, budget):
            if kind != 0:
                continue
            inner_end = at + size * repeat
            if key == b"STRM":
                fix = _stream_fix(data, at, inner_end, budget)
            else:
                fix = search(at, inner_end, depth + 1)
            if fix is not None:
                return fix
        return None

    return search(0, len(data), 0)
