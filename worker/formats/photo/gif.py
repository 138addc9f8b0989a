"""GIF (87a, 89a, animated): locate in an XMP application extension; rebuild by block allow-list.

The agency copy is the original's header, logical screen descriptor and global colour table, then
its images (descriptor, local colour table, LZW data) and graphic control extensions copied byte
for byte, so every frame decodes identically; the NETSCAPE2.0 / ANIMEXTS1.0 loop count is rewritten
to its one defined sub-block. Comment and plain-text extensions, XMP and every other application
extension, and anything after the trailer, are dropped.

Graphic control extensions are cut to their 4 defined bytes. The ICC profile extension
(ICCRGBG1012) is kept, as ICC is in every other photo format, with its profile rebuilt by
``worker.icc``. Every frame must lie inside the logical screen, and frames x screen pixels are
budgeted; the LZW data is decoded once from the input (within ``reencode.DECODE_CHECK_PIXELS``)
because the copy carries it byte for byte.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from worker import icc
from worker.errors import SanitizeError, corrupt, too_large, truncated
from worker.formats.base import Format, Limits, Rebuilt
from worker.formats.photo import animation_pixel_budget, file_bytes, once_per_file, reencode, release_read
from worker.location import Found, choose
from worker.xmp import MAX_XMP_BYTES, locate_in_xmp

SIGNATURES = (b"GIF87a", b"GIF89a")
SCREEN_DESCRIPTOR = 7
IMAGE_SEPARATOR, EXTENSION, TRAILER = 0x2C, 0x21, 0x3B
GRAPHIC_CONTROL, COMMENT, PLAIN_TEXT, APPLICATION = 0xF9, 0xFE, 0x01, 0xFF
LOOP_APPLICATIONS = (b"NETSCAPE2.0", b"ANIMEXTS1.0")
ICC_APPLICATION = b"ICCRGBG1012"
XMP_APPLICATION = b"XMP DataXMP"
GRAPHIC_CONTROL_BYTES = 4   # flags, delay, transparent index
MAX_BLOCKS = 100_000         # budget on the block walk, set before it starts
MAX_LZW_CODE_SIZE = 11       # the LZW minimum code size is 2..8 by the spec; decoders accept up to 11


@dataclass(frozen=True)
class Block:
    kind: int            # IMAGE_SEPARATOR, or the extension label for EXTENSION blocks
    start: int
    end: int             # after the block terminator
    application: bytes   # the 11-byte identifier of an application extension, else b""
    body: bytes          # an extension's sub-block data, concatenated; empty for images


@dataclass(frozen=True)
class Walk:
    screen_end: int                  # end of the header, screen descriptor and global colour table
    blocks: tuple[Block, ...]
    trailer_present: bool
    after_trailer: int               # bytes after the trailer


def accept(head: bytes) -> bool:
    return head[:6] in SIGNATURES


def _colour_table_size(packed: int) -> int:
    return 3 * (2 << (packed & 0x07)) if packed & 0x80 else 0


def _sub_blocks(data: bytes, pos: int) -> tuple[int, list[tuple[int, int]]]:
    """Walk sub-blocks from ``pos`` to their zero terminator: (offset after it, [(start, end)] of each)."""
    spans = []
    while True:
        if pos >= len(data):
            raise truncated("the GIF ends inside a data sub-block chain")
        size = data[pos]
        if size == 0:
            return pos + 1, spans
        if pos + 1 + size > len(data):
            raise truncated(f"a GIF sub-block at offset {pos} runs past the end of the file")
        spans.append((pos + 1, pos + 1 + size))
        pos += 1 + size


def walk(data: bytes) -> Walk:
    """Every block up to the trailer, each length checked against what remains."""
    if not accept(data):
        raise corrupt("not a GIF: no GIF87a/GIF89a signature")
    if len(data) < 6 + SCREEN_DESCRIPTOR:
        raise truncated("the GIF ends inside its logical screen descriptor")
    pos = 6 + SCREEN_DESCRIPTOR + _colour_table_size(data[10])
    if pos > len(data):
        raise truncated("the GIF ends inside its global colour table")
    screen_end, blocks = pos, []
    screen_width, screen_height = struct.unpack("<HH", data[6:10])
    while True:
        if len(blocks) > MAX_BLOCKS:
            raise too_large(f"over {MAX_BLOCKS} GIF blocks")
        if pos >= len(data):
            if any(b.kind == IMAGE_SEPARATOR for b in blocks):
                return Walk(screen_end, tuple(blocks), False, 0)   # a missing trailer loses nothing
            raise truncated("the GIF ends before its first image")
        introducer = data[pos]
        if introducer == TRAILER:
            return Walk(screen_end, tuple(blocks), True, len(data) - pos - 1)
        if introducer == IMAGE_SEPARATOR:
            if pos + 10 > len(data):
                raise truncated(f"the GIF ends inside an image descriptor at offset {pos}")
            left, top, width, height, packed = struct.unpack("<HHHHB", data[pos + 1:pos + 10])
            if not width or not height:
                raise corrupt(f"a GIF image at offset {pos} declares {width}x{height} pixels")
            if left + width > screen_width or top + height > screen_height:
                raise corrupt(f"a GIF image of {width}x{height} at {left},{top} lies outside the "
                              f"{screen_width}x{screen_height} screen")
            lzw = pos + 10 + _colour_table_size(packed)
            if lzw + 1 > len(data):
                raise truncated(f"the GIF ends inside an image's colour table at offset {pos}")
            if not 1 <= data[lzw] <= MAX_LZW_CODE_SIZE:
                raise corrupt(f"a GIF image at offset {pos} declares LZW code size {data[lzw]}")
            end, _ = _sub_blocks(data, lzw + 1)
            blocks.append(Block(IMAGE_SEPARATOR, pos, end, b"", b""))
        elif introducer == EXTENSION:
            if pos + 2 > len(data):
                raise truncated(f"the GIF ends inside an extension at offset {pos}")
            label = data[pos + 1]
            end, spans = _sub_blocks(data, pos + 2)
            application = b""
            if label == APPLICATION and spans and spans[0][1] - spans[0][0] == 11:
                application = data[spans[0][0]:spans[0][1]]
            if label == APPLICATION and application == XMP_APPLICATION:
                # XMP's "magic trailer" trick: the sub-block length bytes are part of the packet
                body = data[spans[0][1]:end - 1] if spans else b""
            else:
                body = b"".join(data[s:e] for s, e in spans[1 if application else 0:])
            blocks.append(Block(label, pos, end, application, body))
        else:
            raise corrupt(f"unexpected GIF block introducer {introducer:#04x} at offset {pos}")
        pos = end


def _check(data: bytes, w: Walk, limits: Limits) -> None:
    width, height = struct.unpack("<HH", data[6:10])
    if width * height > limits.max_pixels:
        raise too_large(f"{width}x{height} pixels is over the limit of {limits.max_pixels}")
    frames = sum(1 for b in w.blocks if b.kind == IMAGE_SEPARATOR)
    if frames > limits.max_frames:
        raise too_large(f"{frames} frames is over the limit of {limits.max_frames}")
    if frames * width * height > animation_pixel_budget(limits):
        raise too_large(f"{frames} frames of {width}x{height} is over the animation budget of "
                        f"{animation_pixel_budget(limits)} pixels")


def _read(path: Path, limits: Limits) -> tuple[bytes, Walk]:
    """The file and its checked walk, once per file: locate and rebuild share them."""
    def read(p: Path) -> tuple[bytes, Walk]:
        data = file_bytes(p)
        w = walk(data)
        _check(data, w, limits)
        return data, w
    read.__qualname__ = f"gif.read:{limits!r}"
    return once_per_file(path, read)


def _checked_for_copy(path: Path, limits: Limits) -> tuple[bytes, Walk]:
    """The walk, and the LZW data proved decodable: a copy is byte-identical, so it must be sound."""
    data, w = _read(path, limits)
    width, height = struct.unpack("<HH", data[6:10])
    frames = sum(1 for b in w.blocks if b.kind == IMAGE_SEPARATOR)
    reencode.check_decodes(path, frames, width, height, "GIF")
    return data, w


def locate(path: Path, limits: Limits) -> Found:
    try:
        _, w = _read(path, limits)
    except SanitizeError as e:
        if e.code == "too_large":
            raise
        return Found(notes=(f"gif: damaged file, metadata not read ({e.message})",))
    return choose([locate_in_xmp(b.body[:MAX_XMP_BYTES]) for b in w.blocks
                   if b.kind == APPLICATION and b.application == XMP_APPLICATION])


def _loop_extension(block: Block) -> bytes | None:
    """The one defined NETSCAPE sub-block (id 1, loop count); None when the block has none."""
    if len(block.body) < 3 or block.body[0] != 1:
        return None
    return b"\x21\xff\x0b" + block.application + b"\x03\x01" + block.body[1:3] + b"\x00"


def describe(block: Block) -> str:
    if block.kind == COMMENT:
        return "comment extension"
    if block.kind == PLAIN_TEXT:
        return "plain text extension"
    if block.kind == APPLICATION:
        if block.application == XMP_APPLICATION:
            return "XMP application extension"
        name = block.application.decode("latin-1", "replace").strip() or "unnamed"
        return f"application extension {name}"
    return f"extension {block.kind:#04x}"


def _icc_extension(block: Block) -> bytes | None:
    """The ICC application extension with its profile rebuilt by ``worker.icc``; None when unreadable."""
    profile = icc.clean(block.body)
    if profile is None:
        return None
    blocks = b"".join(bytes((len(profile[i:i + 255]),)) + profile[i:i + 255] for i in range(0, len(profile), 255))
    return b"\x21\xff\x0b" + ICC_APPLICATION + blocks + b"\x00"


def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
    try:
        data, w = _checked_for_copy(src, limits)
        release_read()
    except SanitizeError as e:
        return reencode.salvage(src, dst, limits, e)
    icc_written = False
    out, removed = [data[:w.screen_end]], []
    loop_written = False
    for b in w.blocks:
        if b.kind == IMAGE_SEPARATOR:
            out.append(data[b.start:b.end])
        elif b.kind == GRAPHIC_CONTROL:
            # its one defined 4-byte sub-block only: more sub-blocks or a longer one are carriers
            if len(b.body) < GRAPHIC_CONTROL_BYTES:
                removed.append("graphic control extension shorter than 4 bytes")
                continue
            out.append(b"\x21\xf9\x04" + b.body[:GRAPHIC_CONTROL_BYTES] + b"\x00")
            if len(b.body) > GRAPHIC_CONTROL_BYTES:
                removed.append("graphic control extension slack")
        elif b.kind == APPLICATION and b.application == ICC_APPLICATION and not icc_written:
            extension = _icc_extension(b)
            if extension is None:
                removed.append("ICC profile extension (unreadable or not reproducible without its text)")
            else:
                out.append(extension)
                icc_written = True
        elif b.kind == APPLICATION and b.application in LOOP_APPLICATIONS and not loop_written:
            loop = _loop_extension(b)
            if loop is not None:
                out.append(loop)
                loop_written = True
            if len(b.body) > 3:
                removed.append(f"{b.application.decode('latin-1')} sub-blocks besides the loop count")
        else:
            removed.append(describe(b))
    out.append(bytes([TRAILER]))
    if w.after_trailer:
        removed.append(f"data after the trailer ({w.after_trailer} bytes)")
    with open(dst, "wb") as f:
        f.write(b"".join(out))
    return Rebuilt(format="gif", media_type="image/gif", extension=".gif", removed=tuple(dict.fromkeys(removed)))


def inspect(path: Path) -> list[str]:
    """Findings in a copy: any extension but graphic control, loop count and ICC; a loop extension
    with more than its one sub-block; a missing trailer or data after it."""
    data = file_bytes(path)   # the bytes the verifier's proof reads too: one read of the copy
    if data[:6] not in SIGNATURES or len(data) < 13:
        return ["no GIF signature and screen descriptor"]
    findings: list[str] = []
    pos = 13 + _colour_table_size(data[10])
    images = 0
    while pos < len(data) and data[pos] != TRAILER:
        introducer, profile = data[pos], None
        if introducer == IMAGE_SEPARATOR and pos + 11 <= len(data):
            pos += 10 + _colour_table_size(data[pos + 9]) + 1
            images += 1
        elif introducer == EXTENSION and pos + 2 <= len(data):
            label = data[pos + 1]
            first = data[pos + 2] if pos + 2 < len(data) else 0
            name = data[pos + 3:pos + 3 + first] if label == APPLICATION else b""
            if label == APPLICATION and name in LOOP_APPLICATIONS:
                if data[pos + 14:pos + 19] != b"\x03\x01" + data[pos + 16:pos + 18] + b"\x00":
                    findings.append(f"{name.decode('latin-1')} extension with more than the loop count")
            elif label == APPLICATION and name == ICC_APPLICATION:
                profile = []
            elif label == GRAPHIC_CONTROL:
                if data[pos + 2:pos + 3] != b"\x04" or data[pos + 7:pos + 8] != b"\x00":
                    findings.append("graphic control extension with more than its 4 bytes")
            else:
                findings.append(f"{describe(Block(label, pos, pos, name, b''))} is not on the allow-list")
            pos += 2
        else:
            findings.append(f"unexpected GIF block introducer {introducer:#04x} at offset {pos}")
            return findings
        while pos < len(data) and data[pos]:   # skip the sub-blocks to their terminator
            if profile is not None:
                profile.append(data[pos + 1:pos + 1 + data[pos]])
            pos += 1 + data[pos]
        pos += 1
        if profile is not None:
            findings += icc.findings(b"".join(profile[1:]))
    if pos >= len(data):
        findings.append("no GIF trailer")
    elif pos != len(data) - 1:
        findings.append(f"{len(data) - pos - 1} bytes after the GIF trailer")
    if not images:
        findings.append("no image in the GIF")
    return findings


FORMATS = [Format(name="gif", kind="photo", media_type="image/gif", accept=accept, locate=locate,
                  rebuild=rebuild, inspect=inspect, extensions=(".gif",))]
