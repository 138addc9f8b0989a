"""The box copy of a plain MP4/M4A (worker/formats/av/box_copy.py): the same packets, times and
picture as ffmpeg's stream copy, nothing of the input's metadata, and ffmpeg only decodes."""
from __future__ import annotations

import struct
import subprocess
import time
from pathlib import Path

import pytest

from fixtures import video
from tests.conftest import CORPUS, corpus_params
from worker import formats
from worker.errors import SanitizeError
from worker.formats.av import av_rebuild, box_copy, movie, stream_proof
from worker.formats.av.av_inspect import box_findings
from worker.formats.base import Limits
from worker.sanitizer import sanitize_file
from worker.tools import run_tool

NEEDLES = (b"+40.", b"-074.", b"Pixel", b"samsung", b"Apple", b"xyz")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("box_copy")
    paths = {"android.mp4": folder / "android.mp4", "memo.m4a": folder / "memo.m4a", "gopro.mp4": folder / "gopro.mp4"}
    video.android_like_mp4(paths["android.mp4"])
    video.voice_memo_m4a(paths["memo.m4a"])
    video.gopro_gpmf_mp4(paths["gopro.mp4"])
    rotated = folder / "rotated.mp4"
    rotated.write_bytes(paths["android.mp4"].read_bytes())
    video.set_rotation(rotated, 180)
    paths["rotated.mp4"] = rotated
    return paths


def _top_level(path: Path) -> list[tuple[bytes, int, int]]:
    """(type, start, end) of each top-level box."""
    data, pos, found = path.read_bytes(), 0, []
    while pos < len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        size = struct.unpack_from(">Q", data, pos + 8)[0] if size == 1 else size
        found.append((kind, pos, pos + size))
        pos += size
    return found


def _packets(path: Path, track_ids: list[int]) -> list[tuple]:
    """Every packet of the tracks ``track_ids`` as ffmpeg reads it: stream, size, MD5 of its bytes,
    duration, and its decode and presentation times from the stream's first decode time, in
    seconds (a copy may count in another time base)."""
    from fractions import Fraction

    maps = [arg for track_id in track_ids for arg in ("-map", f"0:i:{track_id}")]
    out = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), *maps, "-c", "copy", "-f", "framemd5", "-"],
                         check=True, capture_output=True, text=True).stdout
    bases, first, packets = {}, {}, []
    for line in out.splitlines():
        if line.startswith("#tb "):
            stream, base = line[4:].split(":")
            bases[int(stream)] = Fraction(base.strip())
        elif not line.startswith("#"):
            stream, dts, pts, duration, size, md5 = [field.strip() for field in line.split(",")[:6]]
            base = bases[int(stream)]
            start = first.setdefault(stream, int(dts))
            packets.append((stream, size, md5, int(duration) * base, (int(dts) - start) * base,
                            (int(pts) - start) * base))
    return packets


def _streams(path: Path) -> list[dict]:
    import json

    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", str(path)],
                         check=True, capture_output=True).stdout
    keep = ("codec_name", "profile", "width", "height", "pix_fmt", "sample_rate", "channels", "nb_frames",
            "side_data_list")
    return [{k: s.get(k) for k in keep} for s in json.loads(out)["streams"]]


def _kept_ids(src: Path) -> list[int]:
    described = movie.describe(src)
    return [t.track_id for t in (described.first(b"vide"), described.first(b"soun")) if t is not None]


def _holds_the_inputs_packets(src: Path, ours: Path, theirs: Path) -> None:
    """The box copy holds the input's packets with the input's times, edit list and durations (so
    it plays as the input does); ffmpeg's copy holds the same bytes (its times may differ: it
    writes an edit list of its own for AAC's priming samples and the last sample's duration
    to match it), and both describe the same streams."""
    ids = _kept_ids(src)
    assert _packets(ours, ids) == _packets(src, ids)
    assert [p[:3] for p in _packets(ours, ids)] == [p[:3] for p in _packets(theirs, ids)]
    assert _streams(ours) == _streams(theirs)          # codecs, sizes, frame counts, rotation


def _both_copies(src: Path, folder: Path, monkeypatch) -> tuple[Path, Path]:
    """The copy as sanitize makes it (the box copy) and ffmpeg's stream copy of the same input."""
    ours = sanitize_file(src, folder / "ours", Limits())
    assert ours.status == "sanitized", ours.as_json()
    with monkeypatch.context() as patched:
        patched.setattr(av_rebuild, "BOX_COPIED", frozenset())
        theirs = sanitize_file(src, folder / "ffmpeg", Limits())
    assert theirs.status == "sanitized", theirs.as_json()
    assert (ours.format, ours.removed) == (theirs.format, theirs.removed)
    return Path(ours.output), Path(theirs.output)


@pytest.mark.parametrize("name", ["android.mp4", "memo.m4a", "gopro.mp4", "rotated.mp4"])
def test_the_box_copy_holds_ffmpegs_packets_with_its_times(clips, name, tmp_path, monkeypatch):
    ours, theirs = _both_copies(clips[name], tmp_path, monkeypatch)
    _holds_the_inputs_packets(clips[name], ours, theirs)
    boxes = _top_level(ours)
    assert [kind for kind, _, _ in boxes] == [b"ftyp", b"moov", b"mdat"]     # moov first: it streams from the start
    assert box_findings(ours) == []
    head = ours.read_bytes()[:boxes[2][1]]
    assert not [n for n in NEEDLES if n in head]
    assert ours.stat().st_size <= theirs.stat().st_size


def test_a_plain_mp4_starts_one_tool_that_only_decodes(clips, tmp_path, tool_runs):
    src = clips["android.mp4"]
    report = sanitize_file(src, tmp_path / "out", Limits())
    assert report.status == "sanitized", report.as_json()
    [run] = tool_runs
    assert run[-3:] == ["-f", "null", "-"] and "-c" not in run and "-movflags" not in run
    assert run[run.index("-analyzeduration") + 1] == "0"     # the plan read the streams' descriptions
    described = movie.describe(src)
    kept = {t.kind: t.index for t in (described.first(b"vide"), described.first(b"soun"))}
    assert stream_proof.differences(src, Path(report.output), kept) == []


@pytest.mark.parametrize("at", [200, 1000, 3000])
def test_a_damaged_keyframe_of_a_plain_mp4_is_refused(clips, tmp_path, at):
    """ffmpeg does not probe a plain MP4's streams (the box copy's plan read their descriptions),
    and its decoders still see every keyframe: zeros inside the coded picture are ``corrupt``."""
    data = bytearray(clips["android.mp4"].read_bytes())
    [(_, mdat, _)] = [box for box in _top_level(clips["android.mp4"]) if box[0] == b"mdat"]
    data[mdat + at:mdat + at + 400] = bytes(400)
    src = tmp_path / "damaged.mp4"
    src.write_bytes(bytes(data))
    report = sanitize_file(src, tmp_path / "out", Limits())
    assert (report.status, report.error.code) == ("rejected", "corrupt"), report.as_json()
    assert "does not decode" in report.error.message and report.output is None


def test_what_is_not_plain_goes_to_ffmpeg(clips, tmp_path):
    fragmented = tmp_path / "fragmented.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(clips["android.mp4"]), "-map", "0:v", "-map", "0:a",
                    "-c", "copy", "-movflags", "frag_keyframe+empty_moov", "-y", str(fragmented)], check=True)
    assert box_copy.plan(fragmented, [0, 1]) is None
    pcm = tmp_path / "pcm.mov"         # every sample one size: muxers regroup such samples
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=d=1", "-c:a", "pcm_s16le",
                    "-y", str(pcm)], check=True)
    assert box_copy.plan(pcm, [0]) is None
    # a table with bytes after its entries (where a tag could hide) is not copied as it is
    data = bytearray(clips["android.mp4"].read_bytes())
    at = data.index(b"stss") + 4
    count = struct.unpack_from(">I", data, at + 4)[0]
    struct.pack_into(">I", data, at + 4, count - 1)       # the last entry's 4 bytes now follow the table
    trailing = tmp_path / "trailing.mp4"
    trailing.write_bytes(bytes(data))
    assert box_copy.plan(clips["android.mp4"], [0, 1]) is not None
    assert box_copy.plan(trailing, [0, 1]) is None
    # a sample entry reading its data through another data reference than the copy's one
    data = bytearray(clips["android.mp4"].read_bytes())
    entry = data.index(b"avc1", data.index(b"stsd")) - 4
    struct.pack_into(">H", data, entry + 14, 2)
    elsewhere = tmp_path / "elsewhere.mp4"
    elsewhere.write_bytes(bytes(data))
    assert box_copy.plan(elsewhere, [0, 1]) is None
    # sample tables that do not read as the plan needs (stsc runs out of order): ffmpeg has its say
    data = bytearray(clips["android.mp4"].read_bytes())
    stsc = data.index(b"stsc") + 4                       # its payload: version, count, runs
    struct.pack_into(">I", data, stsc + 8, 0)            # the first run starts at chunk 0: corrupt
    unordered = tmp_path / "unordered.mp4"
    unordered.write_bytes(bytes(data))
    assert box_copy.plan(unordered, [0, 1]) is None


def test_overlapping_chunks_are_not_copied_as_they_are(clips, tmp_path):
    data = bytearray(clips["android.mp4"].read_bytes())
    at = data.index(b"stco") + 4
    count = struct.unpack_from(">I", data, at + 4)[0]
    assert count >= 2
    first = struct.unpack_from(">I", data, at + 8)[0]
    struct.pack_into(">I", data, at + 12, first)      # the second chunk lies where the first does
    src = tmp_path / "overlap.mp4"
    src.write_bytes(bytes(data))
    described = movie.describe(src)
    assert box_copy.plan(src, [t.index for t in described.tracks if t.handler in (b"vide", b"soun")]) is None


def test_past_4_gib_the_offsets_are_64_bit(clips):
    plan = box_copy.plan(clips["android.mp4"], [0, 1])
    assert plan is not None and len(plan.chunks) > 2
    huge = plan._replace(chunks=[c._replace(length=c.length + (3 << 30)) if i in (0, 1) else c
                                 for i, c in enumerate(plan.chunks)])
    head, mdat_header, targets = box_copy.layout(huge)
    assert b"co64" in head and b"stco" not in head
    assert struct.unpack(">I4sQ", mdat_header) == (1, b"mdat", 16 + sum(c.length for c in huge.chunks))
    assert targets[0] == len(head) + 16 and targets[2] > 1 << 32
    head, mdat_header, _ = box_copy.layout(plan)
    assert b"stco" in head and len(mdat_header) == 8


def test_work_done_while_a_tool_runs_that_fails_stops_the_tool():
    def failing() -> None:
        raise OSError("the disk is full")

    started = time.monotonic()
    with pytest.raises(OSError, match="disk is full"):
        run_tool(["sleep", "30"], Limits(), what="waiting", meanwhile=failing)
    assert time.monotonic() - started < 5
    with pytest.raises(SanitizeError) as timeout:      # the tool's time counts from its start, meanwhile included
        run_tool(["sleep", "30"], Limits(timeout_s=0.5), what="waiting", meanwhile=lambda: time.sleep(0.2))
    assert timeout.value.code == "timeout"


@pytest.mark.corpus
@pytest.mark.parametrize("row", corpus_params(formats=("video/mp4", "audio/mp4", "audio/x-m4a",
                                                       "application/octet-stream")))
def test_the_box_copy_holds_ffmpegs_packets_on_the_corpus(row, tmp_path, monkeypatch):
    src = CORPUS / row["relative_path"]
    try:
        if formats.identify(src).name not in av_rebuild.BOX_COPIED:
            pytest.skip("not an MP4 or M4A input")
        described = movie.describe(src)
    except SanitizeError as e:
        pytest.skip(f"refused before any walk: {e.code}")
    kept = [t.index for t in (described.first(b"vide"), described.first(b"soun")) if t is not None]
    if box_copy.plan(src, kept) is None:
        pytest.skip("not plain: ffmpeg copies it")
    ours, theirs = _both_copies(src, tmp_path, monkeypatch)
    _holds_the_inputs_packets(src, ours, theirs)
