"""Property fuzzing of the walkers and location parsers: any bytes give a result or a SanitizeError.

Inputs are arbitrary bytes, or real structures (built from the repository's fixtures) mutated the
way a hostile or damaged file is: bit flips, size fields set to edge values, cuts, insertions and
duplicated spans. Every call must return (or raise SanitizeError, or the parser's documented
refusal) within a bounded time; anything else is a bug. CI runs a deterministic, bounded number of
examples (MEDIASAN_FUZZ_EXAMPLES raises it, MEDIASAN_FUZZ_RANDOM=1 draws new ones; `bench/fuzz.py`
runs the same targets under atheris for long runs).

Bugs found here in files this test does not own are pinned below as strict xfails with the
minimal input, so that the fix turns them into passes (and the marker must then go).
"""
from __future__ import annotations

import io
import os
import struct
import time
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from worker.errors import SanitizeError
from worker.formats.photo import jpeg, png
from worker.formats.walkers import boxes, iff
from worker.location import NoFix, dms_to_degrees, normalise, parse_iso6709

EXAMPLES = int(os.environ.get("MEDIASAN_FUZZ_EXAMPLES", "150"))
SECONDS = 2.0    # one call on a few KiB: anything slower is a runaway loop, not a slow machine
# CI: the same examples every run (a red build is reproducible); MEDIASAN_FUZZ_RANDOM=1 explores
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("MEDIASAN_FUZZ_RANDOM"),
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# size fields worth trying: zero, one, under and at a header, the signed and unsigned edges
EDGE_SIZES = (0, 1, 7, 8, 9, 16, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF)


# --- seeds: real structures from the fixtures, built once ---------------------------------------

@lru_cache(maxsize=None)
def seed(name: str) -> bytes:
    import tempfile
    from pathlib import Path

    from fixtures import audio, jpeg as jpeg_fixtures, lossless, video

    builders = {
        "jpeg": jpeg_fixtures.android_phone_jpeg, "png": lossless.png_with_text_and_exif,
        "webp": lambda p: lossless.webp_with_exif_xmp(p, lossless=False), "wav": audio.wav_with_info_and_bext,
        "aiff": audio.aiff_with_text, "mp4": video.android_like_mp4, "mov": video.iphone_like_mov,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"seed.{name}"
        builders[name](path)
        data = path.read_bytes()
    if name in ("mp4", "mov"):
        # the boxes that matter, small: ftyp and moov, and an mdat cut to its header
        return b"".join(data[start:start + size] if kind != b"mdat" else struct.pack(">I4s", 8, b"mdat")
                        for kind, start, size in _top_level(data))
    return data


def _top_level(data: bytes) -> list[tuple[bytes, int, int]]:
    out, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        out.append((kind, pos, size))
        pos += size
    return out


@lru_cache(maxsize=None)
def exif_seed() -> bytes:
    from fixtures.jpeg import NEW_YORK
    from fixtures.lossless import exif_with_gps

    return exif_with_gps(*NEW_YORK, orientation=6)


@lru_cache(maxsize=None)
def xmp_seed() -> bytes:
    from fixtures.jpeg import QUEENS
    from fixtures.lossless import xmp_with_gps

    return xmp_with_gps(*QUEENS)


@st.composite
def mutated(draw, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 8))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(("flip", "size", "size", "cut", "insert", "duplicate")))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "size":
            data[at:at + 4] = struct.pack(draw(st.sampled_from((">I", "<I"))), draw(st.sampled_from(EDGE_SIZES)))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(max_size=24))
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 256))]
    return bytes(data)


def inputs(base: bytes, prefix: bytes = b"") -> st.SearchStrategy[bytes]:
    """Mutations of a real structure, or arbitrary bytes (after the magic the walker expects)."""
    return st.one_of(mutated(base), st.binary(max_size=2048).map(lambda b: prefix + b))


def bounded(call, *args, allowed: tuple[type[BaseException], ...] = (SanitizeError,), **kwargs):
    """Run ``call``; it may return or raise one of ``allowed``, and must not take long."""
    started = time.monotonic()
    try:
        result = call(*args, **kwargs)
        if hasattr(result, "__next__"):
            result = list(result)
    except allowed:
        result = None
    elapsed = time.monotonic() - started
    assert elapsed < SECONDS, f"{call.__qualname__} took {elapsed:.2f} s"
    return result


# --- the walkers ---------------------------------------------------------------------------------

def walk_boxes(data: bytes) -> None:
    """Every box of an ISO-BMFF file, and the tables the locator and verifier read from them."""
    f = io.BytesIO(data)
    handler = b""
    for path, box in boxes.walk(f, 0, len(data)):
        if box.type == b"hdlr" and box.payload_size >= 12:
            handler = boxes.read_payload(f, box, 64)[8:12]
        elif box.type == b"stbl":
            boxes.chunk_ranges(f, box, len(data))
        elif box.type in (b"stco", b"co64"):
            list(boxes.chunk_offsets(boxes.read_payload(f, box, boxes.MAX_TABLE), box.type == b"co64"))
        elif box.type in (b"mvhd", b"tkhd", b"mdhd"):
            created, _ = boxes.header_times(boxes.read_payload(f, box, 1 << 16))
            boxes.mac_epoch_iso(created)
        elif box.type == b"dref":
            boxes.dref_is_external(boxes.read_payload(f, box, 1 << 16))
        elif box.type == b"keys":
            list(boxes.counted_entries(boxes.read_payload(f, box, 1 << 16), what="keys", min_size=8))
        elif box.type == b"stsd":
            boxes.sample_entry_types(f, box)
            list(boxes.sample_entry_children(f, box, handler))


@FUZZ
@given(st.data())
def test_box_walker(data):
    base = seed(data.draw(st.sampled_from(("mp4", "mov"))))
    bounded(walk_boxes, data.draw(inputs(base)))


def sample_tables(data: bytes) -> None:
    """The verifier's byte-proof walk, the movie walk that stands in for ffprobe (tracks, codecs,
    decoder configuration) and the box copy's plan of an ISO-BMFF file: a SanitizeError or an
    answer, nothing else (the plan never refuses: it is a plan or None, and a plan lays out)."""
    import tempfile
    from pathlib import Path

    from worker.formats.av import box_copy, movie, stream_proof

    with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
        tmp.write(data)
        tmp.flush()
        bounded(stream_proof.tracks, Path(tmp.name))
        assert bounded(stream_proof.differences, Path(tmp.name), Path(tmp.name), {"video": 0, "audio": 1}) in (None, [])
        described = bounded(movie.describe, Path(tmp.name))
        assert described is None or all(t.duration >= 0 and isinstance(t.rotation, float) for t in described.tracks)
        planned = box_copy.plan(Path(tmp.name), [0, 1])
        if planned is not None:
            head, mdat_header, targets = box_copy.layout(planned)
            assert len(targets) == len(planned.chunks) and head[4:8] == b"ftyp"


@FUZZ
@given(st.data())
def test_stream_proof_and_keyframe_walks(data):
    base = seed(data.draw(st.sampled_from(("mp4", "mov"))))
    bounded(sample_tables, data.draw(inputs(base)))


@FUZZ
@given(st.data())
def test_riff_and_iff_chunk_walker(data):
    name = data.draw(st.sampled_from(("wav", "webp", "aiff")))
    big_endian = name == "aiff"
    blob = data.draw(inputs(seed(name), seed(name)[:12]))
    bounded(lambda: list(iff.iter_chunks(blob, 12, len(blob), big_endian=big_endian)))
    if len(blob) >= 12:
        findings = bounded(lambda: iff.container_findings(blob, big_endian=big_endian, kept=(b"fmt ", b"data"),
                                                          required=(b"data",)), allowed=())
        assert isinstance(findings, list)


@FUZZ
@given(st.data())
def test_jpeg_segment_walk(data):
    blob = data.draw(inputs(seed("jpeg"), b"\xff\xd8"))
    walk = bounded(jpeg.walk, blob)
    if walk is not None:
        assert walk.segments[0].marker == jpeg.SOI and walk.segments[-1].marker == jpeg.EOI
        assert all(s.start < s.end <= len(blob) for s in walk.segments[1:])


@FUZZ
@given(st.data())
def test_png_chunk_walk(data):
    blob = data.draw(inputs(seed("png"), png.SIGNATURE))
    walk = bounded(png.walk, blob)
    if walk is not None:
        assert walk.chunks[-1].type == b"IEND"
        bounded(png.embedded, walk.chunks)


# --- EXIF, XMP and the location parsers ----------------------------------------------------------

@FUZZ
@given(st.data())
def test_exif_readers_never_raise(data):
    from worker import exif

    blob = data.draw(st.one_of(mutated(exif_seed()), mutated(b"Exif\0\0" + exif_seed()),
                               st.binary(max_size=512).map(lambda b: b"II*\0" + b)))
    found = bounded(exif.locate_in_exif, blob, allowed=())
    assert found is not None
    if found.fix:
        assert abs(found.fix.lat) <= 90 and abs(found.fix.lon) <= 180
    bounded(exif.describe_exif, blob, allowed=())
    bounded(exif.orientation_of, blob, allowed=(SanitizeError,))
    bounded(exif.orientation_only_findings, blob, allowed=())


@FUZZ
@given(st.data())
def test_xmp_reader_never_raises(data):
    from worker import xmp

    packet = data.draw(st.one_of(mutated(xmp_seed()), st.binary(max_size=1024),
                                 st.text(max_size=400).map(lambda t: b'<x:xmpmeta xmlns:x="adobe:ns:meta/">'
                                                           + t.encode() + b"</x:xmpmeta>")))
    found = bounded(xmp.locate_in_xmp, packet, allowed=())
    if found.fix:
        assert abs(found.fix.lat) <= 90 and abs(found.fix.lon) <= 180


@FUZZ
@given(st.text(alphabet="0123456789+-.,/ NSEWCRSx\u0660", max_size=40) | st.text(max_size=40))
def test_xmp_value_parsers(text):
    from worker import xmp

    value = bounded(xmp.coordinate, text, allowed=(ValueError,))
    assert value is None or isinstance(value, float)
    number = bounded(xmp.rational, text, allowed=())
    assert number is None or isinstance(number, float)
    stamp = bounded(xmp.xmp_datetime, text, allowed=())
    assert stamp is None or isinstance(stamp, str)


ISO6709_PIECES = st.lists(st.sampled_from(["+", "-", "40", "4042", "404245", "074", "07400", "0740021", ".", "5",
                                           "99999", "/", "CRSWGS_84", "+010.000", " ", "0" * 30, "e5", "\u0664"]),
                          max_size=10).map("".join)


@FUZZ
@given(ISO6709_PIECES | st.text(max_size=60))
def test_iso6709_parser(text):
    result = bounded(parse_iso6709, text, allowed=(NoFix,))
    if result is not None:
        lat, lon, alt = result
        assert all(isinstance(v, float) for v in (lat, lon)) and (alt is None or isinstance(alt, float))
        fix = bounded(normalise, lat, lon, alt=alt, source="quicktime", allowed=(NoFix,))
        assert fix is None or (abs(fix.lat) <= 90 and abs(fix.lon) <= 180)


@FUZZ
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=8), st.none()),
       st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=8), st.none()),
       st.one_of(st.floats(), st.integers(-10**30, 10**30), st.text(max_size=8), st.none()))
@example(0.0, 1e-97, None)    # found here: rounded to the stored 9 places it was 0,0, and passed as a fix
def test_normalise_any_candidate(lat, lon, alt):
    fix = bounded(normalise, lat, lon, alt=alt, accuracy=alt, source="exif", allowed=(NoFix,))
    if fix is not None:
        assert abs(fix.lat) <= 90 and abs(fix.lon) <= 180 and (fix.lat, fix.lon) != (0, 0)
        assert fix.alt is None or abs(fix.alt) <= 100_000


@FUZZ
@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True),
       st.floats(allow_nan=True, allow_infinity=True), st.one_of(st.none(), st.text(max_size=3)))
def test_dms_to_degrees(degrees, minutes, seconds, ref):
    value = bounded(dms_to_degrees, degrees, minutes, seconds, ref, allowed=())
    assert isinstance(value, float)


def test_the_seeds_are_real_structures():
    """The mutations start from files the walkers accept, so the fuzzing reaches past the first check."""
    assert list(boxes.walk(io.BytesIO(seed("mp4")), 0, len(seed("mp4"))))
    assert jpeg.walk(seed("jpeg")).segments[-1].marker == jpeg.EOI
    assert png.walk(seed("png")).chunks[-1].type == b"IEND"
    assert list(iff.iter_chunks(seed("wav"), 12, len(seed("wav"))))
    from worker import exif, xmp
    assert exif.locate_in_exif(exif_seed()).fix and xmp.locate_in_xmp(xmp_seed()).fix
