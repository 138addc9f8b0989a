"""The verifier's proof that a lossless photo copy shows exactly the input's picture, by bytes.

For JPEG, PNG/APNG, WebP and GIF the agency copy is made of the input's own coded image data, so
the strongest check is not a decode but a comparison: each function here walks one file on its
own (none shares a walker with the rebuild) and lists what defines the picture, in order. The
verifier runs it on the input and on the copy; equal lists mean equal pixels, for every frame,
whatever a decoder would do with them (a decode of a JPEG cut off in its scan "succeeds").

- JPEG: every frame header, and for every scan its header, the restart interval (its 2 bytes), the quantisation
  and Huffman (or arithmetic) tables it reads *as in effect when it starts*, and its
  entropy-coded bytes. Table segments may be rewritten (unused tables and slack dropped), so
  what is proved is "tables in use and scans identical", which is what a decoder sees.
- PNG: IHDR, PLTE, tRNS and the animation chunks (acTL, fcTL) whole; IDAT and fdAT data.
- WebP: the canvas and the alpha/animation flags of VP8X, ANIM, each ANMF's frame header, every
  VP8/VP8L/ALPH payload (top level and inside frames).
- GIF: logical screen and global colour table, the 4 defined bytes of each graphic control
  extension, each image (descriptor, local colour table, LZW data).

Coded data is listed as a ``Span`` of its file and compared byte for byte in place, not hashed.
Each returns None when the file cannot be walked (which, for a copy, is itself a finding).
"""
from __future__ import annotations

import re
import struct

_SCAN_END = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")
_NOT_MARKER = frozenset({0x00, 0xFF, *range(0xD0, 0xD8)})   # after 0xFF in a scan: stuffing, fill, RST
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_MAX_ITEMS = 100_000


class Span:
    """A run of one file's bytes (coded image data), equal to another exactly when their bytes are.

    Compared in place, by memcmp (``bytes.startswith`` at an offset), never copied or hashed: an
    exact comparison proves more than equal digests, at a tenth of a hash's CPU (#10).
    """

    __slots__ = ("data", "start", "end")
    __hash__ = None   # type: ignore[assignment]

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.start, self.end = data, start, end

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Span):
            return NotImplemented
        return (self.end - self.start == other.end - other.start
                and self.data.startswith(memoryview(other.data)[other.start:other.end], self.start))

    def __repr__(self) -> str:
        return f"Span({self.end - self.start} bytes at {self.start})"


def _scan_end(data: bytes, start: int, like: Span | None) -> int | None:
    """Where the entropy-coded data from ``start`` ends: at the first 0xFF that is not stuffing, a
    restart marker or fill (None: it never ends).

    ``like`` is the input's scan, found by that search. Where the bytes here are the same bytes and a
    marker follows them, the search would stop exactly there: no pair of bytes before it can be a
    marker, since the input's search found none in the same bytes (the last pair is the same byte
    and an 0xFF). So that end is checked by memcmp instead of searched for; otherwise searched.
    """
    if like is not None:
        end = start + like.end - like.start
        if end + 1 < len(data) and data[end] == 0xFF and data[end + 1] not in _NOT_MARKER \
                and like == Span(data, start, end):
            return end
    match = _SCAN_END.search(data, start)
    return None if match is None else match.start()


def jpeg_image(data: bytes, like: list[tuple] | None = None) -> list[tuple] | None:
    """The JPEG's image-defining parts. ``like``: the input's, when ``data`` is its copy (see ``_scan_end``)."""
    if data[:2] != b"\xff\xd8":
        return None
    like_scans = iter([item[-1] for item in like if item[0] == "scan"] if like else ())
    quant: dict[int, bytes] = {}
    huffman: dict[tuple[int, int], bytes] = {}
    arithmetic = restart = b""
    frame: dict[int, int] = {}
    items: list[tuple] = []
    pos = 2
    while len(items) < _MAX_ITEMS:
        while pos + 1 < len(data) and data[pos] == 0xFF and data[pos + 1] == 0xFF:
            pos += 1
        if pos + 2 > len(data) or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xD9:
            return items
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if pos + 4 > len(data):
            return None
        length = struct.unpack_from(">H", data, pos + 2)[0]
        end = pos + 2 + length
        if length < 2 or end > len(data):
            return None
        payload = data[pos + 4:end]
        if marker == 0xDB:
            i = 0
            while i < len(payload):
                size = 65 if payload[i] >> 4 == 0 else 129
                if i + size > len(payload):
                    break
                quant[payload[i] & 0x0F] = payload[i:i + size]
                i += size
        elif marker == 0xC4:
            i = 0
            while i + 17 <= len(payload):
                size = 17 + sum(payload[i + 1:i + 17])
                if i + size > len(payload):
                    break
                huffman[(payload[i] >> 4, payload[i] & 0x0F)] = payload[i:i + size]
                i += size
        elif marker == 0xCC:
            arithmetic += payload
        elif marker == 0xDD:
            restart = payload[:2]   # the interval; a decoder reads nothing more
        elif marker in _SOF:
            count = payload[5] if len(payload) > 5 else 0
            frame = {payload[6 + 3 * i]: payload[8 + 3 * i] for i in range(count) if 9 + 3 * i <= len(payload)}
            items.append(("frame", marker, payload))
        elif marker == 0xDA:
            scan_end = _scan_end(data, end, next(like_scans, None))
            if scan_end is None:
                return None
            count = payload[0] if payload else 0
            components = [(payload[1 + 2 * i], payload[2 + 2 * i]) for i in range(count) if 3 + 2 * i <= len(payload)]
            dc, ac = (payload[-3] == 0, payload[-2] > 0) if len(payload) >= 3 else (True, True)
            tables = tuple((quant.get(frame.get(cid, -1)), huffman.get((0, t >> 4)) if dc else None,
                            huffman.get((1, t & 0x0F)) if ac else None) for cid, t in components)
            items.append(("scan", payload, restart, tables, arithmetic, Span(data, end, scan_end)))
            end = scan_end
        pos = end
    return None


_PNG_WHOLE = frozenset({b"IHDR", b"PLTE", b"tRNS", b"acTL", b"fcTL"})
_PNG_HASHED = frozenset({b"IDAT", b"fdAT"})


def png_image(data: bytes) -> list[tuple] | None:
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    items, pos = [], 8
    while pos + 12 <= len(data) and len(items) < _MAX_ITEMS:
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            return None
        if kind in _PNG_WHOLE:
            items.append((kind, data[pos + 8:end - 4]))
        elif kind in _PNG_HASHED:
            items.append((kind, Span(data, pos + 8, end - 4)))
        if kind == b"IEND":
            return items
        pos = end
    return None


def _riff_chunks(data: bytes, start: int, end: int):
    pos = start
    while pos + 8 <= end:
        kind, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if pos + 8 + size > end:
            raise ValueError("chunk runs past its container")
        yield kind, pos + 8, size
        pos += 8 + size + (size & 1)


def webp_image(data: bytes) -> list[tuple] | None:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    items = []
    end = min(len(data), 8 + struct.unpack_from("<I", data, 4)[0])
    try:
        for kind, at, size in _riff_chunks(data, 12, end):
            if kind == b"VP8X" and size >= 10:
                items.append((kind, data[at] & 0x12, data[at + 4:at + 10]))
            elif kind == b"ANIM":
                items.append((kind, data[at:at + 6]))
            elif kind in (b"VP8 ", b"VP8L", b"ALPH"):
                items.append((kind, Span(data, at, at + size)))
            elif kind == b"ANMF" and size >= 16:
                items.append((kind, data[at:at + 16]))
                items += [(inner, Span(data, i, i + n)) for inner, i, n in _riff_chunks(data, at + 16, at + size)
                          if inner in (b"VP8 ", b"VP8L", b"ALPH")]
    except ValueError:
        return None
    return items


def gif_image(data: bytes) -> list[tuple] | None:
    if data[:6] not in (b"GIF87a", b"GIF89a") or len(data) < 13:
        return None

    def table(packed: int) -> int:
        return 3 * (2 << (packed & 7)) if packed & 0x80 else 0

    pos = 13 + table(data[10])
    items: list[tuple] = [("screen", data[6:pos])]
    while pos < len(data) and data[pos] != 0x3B and len(items) < _MAX_ITEMS:
        start = pos
        if data[pos] == 0x2C:
            if pos + 10 > len(data):
                return None
            pos += 10 + table(data[pos + 9]) + 1
            kind = "image"
        elif data[pos] == 0x21 and pos + 1 < len(data):
            kind = "control" if data[pos + 1] == 0xF9 else None
            pos += 2
            if kind:
                start = -1   # a control's 4 defined bytes (flags, delay, transparency) are all a decoder reads
                if pos + 5 <= len(data) and data[pos] >= 4:
                    items.append(("control", data[pos + 1:pos + 5]))
        else:
            return None
        while pos < len(data) and data[pos]:
            pos += 1 + data[pos]
        pos += 1
        if pos > len(data):
            return None
        if kind and start >= 0:
            items.append((kind, Span(data, start, pos)))
    return items


IMAGE_PROOFS = {"jpeg": jpeg_image, "png": png_image, "webp": webp_image, "gif": gif_image}


def differences(format_name: str, source: bytes, copy: bytes) -> list[str]:
    """Findings when the copy's image-defining bytes are not the source's; empty when proved equal."""
    prove = IMAGE_PROOFS[format_name]
    expected = prove(source)
    got = jpeg_image(copy, like=expected) if format_name == "jpeg" else prove(copy)
    if expected is None:
        return [f"the input's {format_name} image data cannot be walked for the byte proof"]
    if got is None:
        return [f"the copy's {format_name} image data cannot be walked"]
    if expected == got:
        return []
    if len(expected) != len(got):
        return [f"the copy has {len(got)} image-defining parts, the input {len(expected)}"]
    first = next(i for i, (a, b) in enumerate(zip(expected, got)) if a != b)
    return [f"image-defining part {first} ({expected[first][0]!r}) differs from the input's"]
