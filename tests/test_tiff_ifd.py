"""The TIFF IFD walker and worker/exif.py on it: the readings Pillow's ``Image.Exif`` gave, on real
blobs and on thousands of mutations of them, and never an exception.

Pillow stays here as the oracle: ``pillow_reading`` is the reading worker/exif.py made with
``Image.Exif`` before it had its own walker (#10), on the same helpers. One difference is by
design: Pillow reports a thumbnail (IFD1) for an IFD0 cut short, because it re-reads IFD0 from
the header's offset; the walker knows no next IFD then, so it reports none.
"""
from __future__ import annotations

import random
import struct
import warnings
from functools import lru_cache

import piexif
import pytest
from PIL import Image

from fixtures.jpeg import gps_ifd, picture, thumbnail_of
from fixtures.lossless import exif_with_gps
from tests.conftest import CORPUS, corpus_rows
from worker import exif
from worker.formats.walkers import tiff_ifd
from worker.location import Found, found_from

MUTATIONS = 3000


# --- the oracle: worker/exif.py's reading as it was, with Pillow's Image.Exif ---------------------

def _pillow_locate(blob: bytes) -> Found:
    body = exif.tiff_body(blob)
    try:
        if body is None:
            raise ValueError("no TIFF header")
        pillow = Image.Exif()
        pillow.load(body)
    except Exception as e:  # noqa: BLE001
        return Found(notes=(f"exif: unreadable EXIF ({type(e).__name__}: {e})",))
    try:
        sub = pillow.get_ifd(exif.TAG_EXIF_IFD)
    except Exception:  # noqa: BLE001
        sub = {}
    captured_at = None
    for when, offset in ((sub.get(exif.TAG_DATETIME_ORIGINAL), sub.get(exif.TAG_OFFSET_TIME_ORIGINAL)),
                         (sub.get(exif.TAG_DATETIME_DIGITIZED), sub.get(exif.TAG_OFFSET_TIME_DIGITIZED)),
                         (pillow.get(exif.TAG_DATETIME), sub.get(exif.TAG_OFFSET_TIME))):
        captured_at = captured_at or exif.iso_datetime(when, offset)
    try:
        gps = pillow.get_ifd(exif.TAG_GPS_IFD)
    except Exception as e:  # noqa: BLE001
        return Found(captured_at=captured_at, notes=(f"exif: unreadable GPS IFD ({type(e).__name__})",))
    if not gps:
        return Found(captured_at=captured_at)
    if exif.GPS_LATITUDE not in gps or exif.GPS_LONGITUDE not in gps:
        return Found(captured_at=captured_at, notes=("exif: GPS IFD without latitude and longitude",))
    lat = exif._angle(gps[exif.GPS_LATITUDE], gps.get(exif.GPS_LATITUDE_REF))
    lon = exif._angle(gps[exif.GPS_LONGITUDE], gps.get(exif.GPS_LONGITUDE_REF))
    if lat is None or lon is None:
        return Found(captured_at=captured_at, notes=("exif: GPS latitude or longitude is a junk rational",))
    alt = exif._number(gps.get(exif.GPS_ALTITUDE)) if exif.GPS_ALTITUDE in gps else None
    ref = gps.get(exif.GPS_ALTITUDE_REF)
    if isinstance(ref, bytes):
        ref = ref[0] if ref else None
    if alt and exif._number(ref) == 1:
        alt = -alt
    accuracy = exif._number(gps.get(exif.GPS_H_POSITIONING_ERROR)) if exif.GPS_H_POSITIONING_ERROR in gps else None
    return found_from(lat, lon, alt=alt, accuracy=accuracy, source="exif", captured_at=captured_at)


def _pillow_describe(blob: bytes) -> tuple[int, bool, bool, bool] | None:
    """(tags, GPS, maker note, thumbnail) as Pillow counts them; None when unreadable."""
    body = exif.tiff_body(blob)
    if body is None:
        return None
    pillow = Image.Exif()
    try:
        pillow.load(body)
    except Exception:  # noqa: BLE001
        return None

    def ifd(tag: int) -> dict:
        try:
            return dict(pillow.get_ifd(tag))
        except Exception:  # noqa: BLE001
            return {}

    sub, gps = ifd(exif.TAG_EXIF_IFD), ifd(exif.TAG_GPS_IFD)
    tags = len([t for t in pillow if t not in (exif.TAG_EXIF_IFD, exif.TAG_GPS_IFD)]) + len(sub) + len(gps)
    return tags, bool(gps), 0x927C in sub, bool(ifd(-1))


def _pillow_orientation(blob: bytes) -> int:
    try:
        pillow = Image.Exif()
        pillow.load(exif.tiff_body(blob))
        value = int(pillow.get(exif.TAG_ORIENTATION))
    except Exception:  # noqa: BLE001
        return 1
    return value if 1 <= value <= 8 else 1


def pillow_reading(blob: bytes) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = _pillow_locate(blob)
        described = _pillow_describe(blob)
        orientation = _pillow_orientation(blob)
    if described is not None and described[3] and _ifd0_cut_short(blob):
        described = described[:3] + (False,)   # the one difference by design (module docstring)
    return _comparable(found), _description(described), orientation


def our_reading(blob: bytes) -> tuple:
    found = exif.locate_in_exif(blob)
    assert isinstance(found, Found)
    return _comparable(found), exif.describe_exif(blob), exif.orientation_of(blob)


def _ifd0_cut_short(blob: bytes) -> bool:
    try:
        return exif._load(blob).ifd0.cut_short
    except ValueError:
        return False


def _comparable(found: Found) -> tuple:
    # a note's reason up to its parenthesis: the exception text inside differs between the readers
    return found.fix, found.captured_at, tuple(note.split(" (")[0] for note in found.notes)


def _description(described) -> str:
    if described is None:
        return "unreadable"
    tags, gps, maker_note, thumbnail = described
    return ", ".join((["GPS"] if gps else []) + [f"{tags} tags"] + (["maker note"] if maker_note else [])
                     + (["thumbnail"] if thumbnail else []))


# --- real blobs ---------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def real_blobs() -> tuple[bytes, ...]:
    """Every EXIF APP1 of the corpus's photos, and fixtures covering GPS, maker note and thumbnail."""
    from worker.formats.photo.jpeg import APP1, EXIF_ID, metadata_segments

    blobs = [b"Exif\x00\x00" + exif_with_gps(40.712776, -74.005974, orientation=6),
             piexif.dump({"0th": {piexif.ImageIFD.Make: b"Google"}, "GPS": gps_ifd(-33.86, 151.2, alt=-3.5),
                          "Exif": {piexif.ExifIFD.MakerNote: b"maker" * 20},
                          "1st": {piexif.ImageIFD.Compression: 6}, "thumbnail": thumbnail_of(picture())})]
    for row in corpus_rows("image"):
        data = (CORPUS / row["relative_path"]).read_bytes()
        if data[:3] == b"\xff\xd8\xff":
            blobs += [s.payload for s in metadata_segments(data) if s.marker == APP1 and s.payload.startswith(EXIF_ID)]
    return tuple(dict.fromkeys(blobs))


def test_real_blobs_read_as_pillow_read_them():
    blobs = real_blobs()
    located = [b for b in blobs if exif.locate_in_exif(b).fix]
    assert len(located) >= 2, "the seeds must hold GPS fixes for this test to mean anything"
    for blob in blobs:
        assert our_reading(blob) == pillow_reading(blob)


def _mutated(rng: random.Random, blob: bytes) -> bytes:
    data = bytearray(blob)
    for _ in range(rng.randint(1, 8)):
        if len(data) < 16:
            break
        roll = rng.random()
        if roll < 0.55:
            data[rng.randrange(6, len(data))] = rng.randrange(256)
        elif roll < 0.75:
            del data[rng.randrange(6, len(data)):]
        else:   # an offset, count or value set to an edge
            at = rng.randrange(6, len(data) - 4)
            data[at:at + 4] = rng.choice((b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x00\x00\x08",
                                          b"\x80\x00\x00\x00", b"\x00\x00\xff\xff"))
    return bytes(data)


def test_mutated_real_blobs_never_raise_and_read_as_pillow_read_them():
    rng = random.Random(10)   # the same mutations every run: a failure is reproducible
    blobs = real_blobs()
    for index in range(MUTATIONS):
        blob = _mutated(rng, rng.choice(blobs))
        assert our_reading(blob) == pillow_reading(blob), f"mutation {index}: {blob.hex()}"


# --- the walker itself ----------------------------------------------------------------------------

def _tiff(order: str, entries: list[tuple[int, int, int, bytes]], tail: bytes = b"", next_ifd: int = 0) -> bytes:
    """A TIFF header and IFD0 at 8 from (tag, type, count, 4-byte value field), then ``tail``."""
    magic = b"II*\x00" if order == "<" else b"MM\x00*"
    ifd = struct.pack(order + "H", len(entries)) + b"".join(
        struct.pack(order + "HHL", tag, kind, count) + field for tag, kind, count, field in entries)
    return magic + struct.pack(order + "L", 8) + ifd + struct.pack(order + "L", next_ifd) + tail


@pytest.mark.parametrize("order", ["<", ">"])
def test_both_byte_orders_inline_and_out_of_line_values(order):
    tail_at = 8 + 2 + 12 * 4 + 4
    body = _tiff(order, [(0x0112, 3, 1, struct.pack(order + "HH", 6, 0)),
                         (0x0132, 2, 4, b"abc\x00"),
                         (0x0001, 5, 1, struct.pack(order + "L", tail_at)),
                         (0x0002, 10, 1, struct.pack(order + "L", tail_at + 8))],
                 tail=struct.pack(order + "LLll", 7, 2, -9, 4))
    order_read, first = tiff_ifd.header(body)
    directory = tiff_ifd.directory(body, first, order_read)
    assert not directory.cut_short and directory.next == 0
    value = lambda tag: tiff_ifd.value(body, directory.entries[tag], order_read)   # noqa: E731
    assert value(0x0112) == 6 and value(0x0132) == "abc"
    assert float(value(0x0001)) == 3.5 and float(value(0x0002)) == -2.25 and int(value(0x0002)) == -2


def test_zero_denominator_rational_is_kept_as_junk():
    body = _tiff("<", [(0x0002, 5, 1, struct.pack("<L", 8 + 2 + 12 + 4))], tail=struct.pack("<LL", 40, 0))
    entry = tiff_ifd.directory(body, 8, "<").entries[0x0002]
    rational = tiff_ifd.value(body, entry, "<")
    assert rational.denominator == 0 and float(rational) != float(rational)   # NaN
    with pytest.raises(ValueError):
        int(rational)


def test_offsets_and_counts_are_bounded_by_the_blob():
    huge_count = _tiff("<", [(0x0002, 5, 0xFFFF_FFFF, struct.pack("<L", 0)), (0x0112, 3, 1, b"\x06\x00\x00\x00")])
    directory = tiff_ifd.directory(huge_count, 8, "<")
    assert 0x0002 not in directory.entries and 0x0112 in directory.entries   # skipped, the rest read
    past_end = _tiff("<", [(0x0002, 5, 3, struct.pack("<L", 0xFFFF_FF00)), (0x0112, 3, 1, b"\x06\x00\x00\x00")])
    directory = tiff_ifd.directory(past_end, 8, "<")
    assert directory.cut_short and directory.entries == {} and directory.next is None
    for offset in (-1, 7, len(past_end), 1 << 40):
        assert tiff_ifd.directory(past_end, offset, "<").entries == {}


def test_first_entry_of_a_tag_wins_and_unknown_types_are_skipped():
    body = _tiff("<", [(0x0112, 99, 1, b"\x03\x00\x00\x00"), (0x0112, 3, 1, b"\x06\x00\x00\x00"),
                       (0x0112, 3, 1, b"\x08\x00\x00\x00"), (0x0132, 3, 0, b"\x00" * 4)])
    directory = tiff_ifd.directory(body, 8, "<")
    assert tiff_ifd.value(body, directory.entries[0x0112], "<") == 6
    assert 0x0132 not in directory.entries   # no values: nothing to read
    assert exif.orientation_of(body) == pillow_reading(body)[2] == 6


def test_entry_budget():
    entries = [(tag, 3, 1, b"\x01\x00\x00\x00") for tag in range(1, 101)]
    directory = tiff_ifd.directory(_tiff("<", entries), 8, "<", max_entries=10)
    assert len(directory.entries) == 10 and directory.cut_short


@pytest.mark.parametrize("blob", [b"", b"II*\x00", b"MM\x00*\x00\x00", b"not tiff", b"\x00" * 64])
def test_header_refuses_what_is_not_tiff(blob):
    with pytest.raises(ValueError):
        tiff_ifd.header(blob)


def test_a_doubled_exif_prefix_is_read_as_pillow_read_it():
    blob = b"Exif\x00\x00" + exif_with_gps(40.712776, -74.005974, orientation=6)
    doubled = b"Exif\x00\x00" + blob
    assert exif.orientation_of(doubled) == 6 and exif.locate_in_exif(doubled).fix == exif.locate_in_exif(blob).fix
    assert exif.describe_exif(doubled) == exif.describe_exif(blob)


def test_a_latitude_of_a_million_rationals_is_junk_and_not_decoded():
    import time

    count = 1_000_000
    gps_at = 8 + 2 + 12 + 4
    values_at = gps_at + 2 + 12 * 2 + 4
    body = _tiff(">", [(0x8825, 4, 1, struct.pack(">L", gps_at))]) \
        + struct.pack(">H", 2) + struct.pack(">HHL", 0x0002, 5, count) + struct.pack(">L", values_at) \
        + struct.pack(">HHL", 0x0004, 5, 3) + struct.pack(">L", values_at) + struct.pack(">L", 0) \
        + struct.pack(">LL", 40, 1) * count
    started = time.process_time()
    found = exif.locate_in_exif(body)
    assert time.process_time() - started < 0.5
    assert found.fix is None and any("junk" in note for note in found.notes), found.notes
