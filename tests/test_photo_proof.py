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


def _jpeg_seeds(tmp_path) -> list[bytes]:
    """Baseline and progressive JPEGs (several scans, restart markers) from the fixtures."""
    from PIL import Image

    from fixtures.jpeg import picture

    seeds = []
    for name, options in (("baseline", {}), ("progressive", {"progressive": True}),
                          ("restarts", {"progressive": True, "restart_marker_blocks": 1})):
        path = tmp_path / f"{name}.jpg"
        picture().save(path, "JPEG", quality=90, **options)
        seeds.append(path.read_bytes())
    return seeds


def _walked(items):
    # Span by where it sits, not only by its bytes: the copy's walk must end each scan where a search would
    return None if items is None else [tuple((x.start, x.end) if isinstance(x, proof.Span) else x for x in item)
                                       for item in items]


def test_the_copy_walk_guided_by_the_input_ends_every_scan_where_its_own_search_would(tmp_path):
    import random

    rng = random.Random(10)
    for source in _jpeg_seeds(tmp_path):
        expected = proof.jpeg_image(source)
        assert sum(item[0] == "scan" for item in expected) >= 1
        assert _walked(proof.jpeg_image(source, like=expected)) == _walked(expected)
        for _ in range(300):
            copy = bytearray(source)
            for _ in range(rng.randint(1, 3)):   # markers, stuffing and fill put into or taken from the scans
                at = rng.randrange(2, len(copy) - 2)
                copy[at:at + rng.randint(1, 2)] = rng.choice((b"\xff", b"\xff\x00", b"\xff\xd9", b"\xff\xd0",
                                                              b"\xff\xff", b"\x00", b"\xd9", b""))
            copy = bytes(copy[:len(copy) - rng.choice((0, 0, 1, 2, 3))])
            assert _walked(proof.jpeg_image(copy, like=expected)) == _walked(proof.jpeg_image(copy))
        for item in expected:   # where the input's scan ends, the copy's marker made stuffing, restart or fill
            if item[0] == "scan":
                for second in (0x00, 0xD3, 0xFF):
                    copy = bytearray(source)
                    copy[item[-1].end + 1] = second
                    copy = bytes(copy)
                    assert _walked(proof.jpeg_image(copy, like=expected)) == _walked(proof.jpeg_image(copy))
