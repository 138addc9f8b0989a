"""A baseline JPEG written one band of rows at a time, so the whole picture is never in memory.

Each band is encoded by Pillow on its own, 4:4:4 with a restart marker after every MCU row. A
restart resets the DC predictions and the bit buffer, so the entropy-coded data of each band is
self-contained: the file is the first band's headers (the frame height made the picture's), then
every band's scan one after another, each joined to the previous by the restart marker that
would have stood there, the markers inside it renumbered to continue the count. Every band is
encoded with the same quality, tables and profile, so their headers must agree byte for byte
but for the height; ``BandedJpeg`` checks that rather than assuming it.
"""
from __future__ import annotations

import io
import re
import struct
from typing import BinaryIO

from PIL import Image

SUBSAMPLING_444 = 0          # Pillow's code: one 8 x 8 block of each component per MCU
MCU_ROWS = 8                 # pixel rows in one MCU row at 4:4:4
SOS, SOF0, EOI = 0xDA, 0xC0, b"\xff\xd9"
RESTART = re.compile(rb"\xff[\xd0-\xd7]")   # in entropy-coded data a 0xFF is stuffed (FF 00) or a marker
MAX_HEIGHT = 65535                          # the frame header's 16-bit height


class BandError(Exception):
    """The bands do not make one JPEG (a band's height or tables off): a bug, not the input's."""


def split_scan(encoded: bytes) -> tuple[bytes, int, bytes]:
    """(headers up to and including SOS, offset of SOF0's height field, entropy-coded data) of
    one baseline JPEG as Pillow writes it: SOI, marker segments, one scan, EOI."""
    if encoded[:2] != b"\xff\xd8" or encoded[-2:] != EOI:
        raise BandError("Pillow's band is not a whole JPEG")
    pos, height_at = 2, -1
    while pos + 4 <= len(encoded):
        if encoded[pos] != 0xFF:
            raise BandError(f"no marker at {pos} of a band's headers")
        marker = encoded[pos + 1]
        (length,) = struct.unpack_from(">H", encoded, pos + 2)
        if marker == SOF0:
            height_at = pos + 5
        pos += 2 + length
        if marker == SOS:
            if height_at < 0:
                raise BandError("a band has no baseline frame header")
            return encoded[:pos], height_at, encoded[pos:-2]
    raise BandError("a band has no scan")


class BandedJpeg:
    """Writes ``size`` as a JPEG to ``out`` from bands added top to bottom; ``finish`` ends it.

    A band's height must be a multiple of MCU_ROWS, but for the last. ``written`` is how many
    bytes are in ``out`` so far (a reader may read up to there).
    """

    def __init__(self, out: BinaryIO, size: tuple[int, int], quality: int, icc: bytes | None) -> None:
        width, height = size
        if not (0 < height <= MAX_HEIGHT and 0 < width <= MAX_HEIGHT):
            raise BandError(f"{width}x{height} does not fit a JPEG frame")
        self._out, self.size, self._quality, self._icc = out, size, quality, icc
        self._headers: bytes | None = None
        self.rows = 0          # picture rows written
        self._restarts = 0     # restart intervals (MCU rows) written
        self.written = 0

    def _encode(self, band: Image.Image) -> bytes:
        out = io.BytesIO()
        band.save(out, "JPEG", quality=self._quality, subsampling=SUBSAMPLING_444, icc_profile=self._icc,
                  restart_marker_rows=1)
        return out.getvalue()

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.written += len(data)

    def add(self, band: Image.Image) -> None:
        width, height = self.size
        if band.width != width or not 0 < band.height <= height - self.rows:
            raise BandError(f"a {band.width}x{band.height} band does not fit rows {self.rows}: of {width}x{height}")
        last = self.rows + band.height == height
        if not last and band.height % MCU_ROWS:
            raise BandError(f"a band of {band.height} rows ends inside an MCU row")
        headers, height_at, scan = split_scan(self._encode(band))
        headers = headers[:height_at] + struct.pack(">H", height) + headers[height_at + 2:]
        if self._headers is None:
            self._headers = headers
            self._write(headers)
        else:
            if headers != self._headers:
                raise BandError("a band's tables differ from the first band's")
            shift = self._restarts % 8
            # the marker that ends the previous band's last interval, then this band's own, renumbered
            self._write(bytes((0xFF, 0xD0 + (self._restarts - 1) % 8)))
            if shift:
                scan = RESTART.sub(lambda m: bytes((0xFF, 0xD0 + (m.group()[1] - 0xD0 + shift) % 8)), scan)
        self._write(scan)
        self.rows += band.height
        self._restarts += -(-band.height // MCU_ROWS)

    def finish(self) -> None:
        if self.rows != self.size[1]:
            raise BandError(f"{self.rows} of {self.size[1]} rows written")
        self._write(EOI)
