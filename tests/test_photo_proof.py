"""formats/photo/proof.py: the verifier's byte proof that a lossless copy holds the input's picture."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from fixtures import lossless as fx
from worker.formats.base import Limits
from worker.formats.photo import proof
from worker.sanitizer import sanitize_file


def _flip_in(data: bytes, kind: bytes) -> bytes:
    """One bit flipped in the middle of the first ``kind`` chunk's payload (PNG CRC or RIFF kept consistent)."""
    if data.startswith(b"\x89PNG"):
        at = data.index(kind) - 4
        length = struct.unpack(">I", data[at:at + 4])[0]
        body = bytearray(data[at + 8:at + 8 + length])
        body[length // 2] ^= 0x01
        return data[:at + 8] + bytes(body) + struct.pack(">I", zlib.crc32(kind + bytes(body))) + data[at + 12 + length:]
    at = data.index(kind) + 8 + 40   # inside the bitstream (past an ANMF's header and its frame's chunk header)
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


@pytest.mark.parametrize("build, suffix, coded", [
    (fx.png_with_text_and_exif, ".png", b"IDAT"),
    (fx.apng, ".png", b"fdAT"),
    (lambda p: fx.webp_with_exif_xmp(p, lossless=False), ".webp", b"VP8 "),
    (fx.animated_webp, ".webp", b"ANMF"),
])
def test_copy_is_proved_identical_and_a_changed_byte_is_found(tmp_path, build, suffix, coded):
    src = tmp_path / f"in{suffix}"
    build(src)
    report = sanitize_file(src, tmp_path / "copy", Limits())
    assert report.status == "sanitized", report.as_json()
    source, copy = src.read_bytes(), Path(report.output).read_bytes()
    name = report.format
    assert source != copy and proof.differences(name, source, copy) == []
    assert proof.differences(name, source, _flip_in(copy, coded))[0].startswith("image-defining part")


def test_gif_frames_are_proved_and_a_changed_lzw_byte_is_found(tmp_path):
    src = tmp_path / "in.gif"
    fx.animated_gif_with_comment(src)
    report = sanitize_file(src, tmp_path / "copy", Limits())
    source, copy = src.read_bytes(), bytearray(Path(report.output).read_bytes())
    assert proof.differences("gif", source, bytes(copy)) == []
    image = copy.rindex(b"\x2c")   # the last image descriptor; its LZW data follows
    copy[image + 13] ^= 0x01
    assert proof.differences("gif", source, bytes(copy)) != []


def test_a_copy_that_cannot_be_walked_is_a_finding():
    assert proof.differences("jpeg", b"\xff\xd8\xff\xd9", b"not a jpeg") == ["the copy's jpeg image data cannot be walked"]


def test_spans_are_equal_exactly_when_their_bytes_are():
    data = b"..abcdef..abcdef..abcdeX"
    assert proof.Span(data, 2, 8) == proof.Span(b"abcdef", 0, 6) == proof.Span(data, 10, 16)
    assert proof.Span(data, 2, 8) != proof.Span(data, 18, 24)       # one byte differs
    assert proof.Span(data, 2, 8) != proof.Span(data, 2, 7)         # a prefix is not equal
    assert proof.Span(data, 2, 8) != proof.Span(data, 20, 26)       # runs past the end
