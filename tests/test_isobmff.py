"""ISO-BMFF video and audio end to end: identify, sanitize, and read the copy back with ExifTool,
ffprobe and mutagen. Fixtures are built with ffmpeg; the corpus is used when present."""
from __future__ import annotations

from pathlib import Path

import pytest
from mutagen.mp4 import MP4

from fixtures import video
from tests import readback
from tests.conftest import CORPUS, corpus_params, expected_fix
from worker import formats
import shutil
import struct

from worker.formats.av.av_inspect import inspect_copy
from worker.formats.av.av_rebuild import apply_plan, plan_neutralise
from worker.formats.walkers.boxes import walk
from worker.formats.base import Limits
from worker.sanitizer import sanitize_file

ISO_BMFF_ROWS = corpus_params(formats=("video/mp4", "video/quicktime", "audio/mp4", "audio/x-m4a", "video/3gpp",
                                       "video/3gpp2", "application/octet-stream"))
STREAM_TAGS = {"handler_name", "vendor_id", "language"}
FORMAT_TAGS = {"major_brand", "minor_version", "compatible_brands"}

BUILDERS = {
    "iphone.mov": (video.iphone_like_mov, "mov", "video"),
    "android.mp4": (video.android_like_mp4, "mp4", "video"),
    "gopro.mp4": (video.gopro_like_mp4, "mp4", "video"),
    "memo.m4a": (video.voice_memo_m4a, "m4a", "audio"),
    "loci.3gp": (video.loci_3gp, "3gp", "video"),
}


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    """Each fixture built once and sanitized once: name -> (source, fix written, report)."""
    folder = tmp_path_factory.mktemp("isobmff")
    out = folder / "out"
    out.mkdir()
    results = {}
    for name, (builder, _, _) in BUILDERS.items():
        src = folder / name
        fix = builder(src)
        results[name] = (src, fix, sanitize_file(src, out / Path(name).stem, Limits()))
    return results


def _rotation(probe: dict) -> float:
    for s in probe.get("streams", []):
        if s.get("codec_type") == "video":
            for side in s.get("side_data_list") or []:
                if "rotation" in side:
                    return float(side["rotation"])
    return 0.0


def _kept_hashes(path: Path) -> list[str]:
    """Stream hashes, ignoring a cover picture (it is dropped on purpose)."""
    probe = readback.ffprobe(path)
    covers = {str(s["index"]) for s in probe["streams"] if (s.get("disposition") or {}).get("attached_pic")}
    lines = readback.stream_hashes(path).splitlines()
    if covers:
        lines = [line.split(",", 1)[1] for line in lines if line.split(",", 2)[1] != "v"]
    else:
        lines = [line.split(",", 1)[1] for line in lines]
    return lines


# mvhd fields and ffmpeg's default handler names that readback.sensitive_tags' name patterns
# ("preview", "description") catch although they say nothing about a person, place or device
QUICKTIME_TECHNICAL = {"PreviewTime": {0}, "PreviewDuration": {0},
                       "HandlerDescription": {"VideoHandler", "SoundHandler", "DataHandler"}}


def sensitive(tags: dict) -> list[str]:
    return [k for k in readback.sensitive_tags(tags)
            if tags[k] not in QUICKTIME_TECHNICAL.get(k.split(":", 1)[1], ())]


def assert_clean_copy(src: Path, copy: Path) -> None:
    assert sensitive(readback.exiftool(copy)) == []
    probe = readback.ffprobe(copy)
    assert set((probe["format"].get("tags") or {})) <= FORMAT_TAGS
    assert probe.get("chapters") == []
    assert len(probe["streams"]) <= 2
    for s in probe["streams"]:
        assert s["codec_type"] in ("video", "audio")
        assert not (s.get("disposition") or {}).get("attached_pic")
        assert set(s.get("tags") or {}) <= STREAM_TAGS
    assert not MP4(str(copy)).tags
    assert _kept_hashes(copy) == _kept_hashes(src)
    assert _rotation(probe) == _rotation(readback.ffprobe(src))
    assert readback.exiftool(copy).get("Composite:Rotation", 0) == readback.exiftool(src).get("Composite:Rotation", 0)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_fixture_identified_by_content(sanitized, name):
    src = sanitized[name][0]
    fmt = formats.identify(src)
    assert (fmt.name, fmt.kind) == BUILDERS[name][1:]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_fixture_sanitized_clean_and_identical(sanitized, name):
    src, fix, report = sanitized[name]
    assert report.status == "sanitized", report.error
    assert_clean_copy(src, Path(report.output))
    if fix is None:
        assert report.found.fix is None
    else:
        assert report.found.fix.lat == pytest.approx(fix[0], abs=1e-6)
        assert report.found.fix.lon == pytest.approx(fix[1], abs=1e-6)


def test_rotation_90_survives(sanitized):
    for name in ("iphone.mov", "android.mp4"):
        copy = Path(sanitized[name][2].output)
        assert abs(_rotation(readback.ffprobe(copy))) == 90
        assert readback.exiftool(copy)["Composite:Rotation"] == 90


def test_dropped_tracks_and_tags_are_reported(sanitized):
    iphone = sanitized["iphone.mov"][2]
    assert "mdta keys" in iphone.removed and "©xyz location" in iphone.removed
    assert any("tmcd" in r for r in iphone.removed) and any("subtitle" in r for r in iphone.removed)
    memo = sanitized["memo.m4a"][2]
    assert any(r.startswith("cover picture") for r in memo.removed)
    assert sanitized["loci.3gp"][2].removed.count("3GPP loci") == 1


def test_mov_copies_are_mp4_and_audio_copies_stay_audio(sanitized):
    assert sanitized["iphone.mov"][2].format == "mp4"
    memo = sanitized["memo.m4a"][2]
    assert (memo.format, memo.kind, memo.media_type) == ("m4a", "audio", "audio/mp4")
    assert Path(memo.output).read_bytes()[8:12] == b"M4A "


def test_inspect_flags_the_originals(sanitized):
    findings = inspect_copy(sanitized["iphone.mov"][0])
    text = " ".join(findings)
    assert "meta/keys" in text and "©xyz" in text and "tracks other than video and sound" in text
    assert "stream 3 is data" in text and "stream 2 is subtitle" in text
    assert any("carries creation/modification times" in f for f in findings)
    assert any("mutagen finds tag" in f for f in inspect_copy(sanitized["memo.m4a"][0]))


def test_truncated_mp4_is_rejected_with_a_code(sanitized, tmp_path):
    data = sanitized["android.mp4"][0].read_bytes()
    for cut_at in (len(data) // 2, len(data) - 50, 20):
        cut = tmp_path / f"cut{cut_at}.mp4"
        cut.write_bytes(data[:cut_at])
        report = sanitize_file(cut, tmp_path / f"out{cut_at}", Limits())
        assert report.status == "rejected"
        assert report.error.code in ("truncated", "corrupt")
        assert not list(tmp_path.glob(f"out{cut_at}*"))


def test_stream_and_duration_limits(sanitized, tmp_path):
    src = sanitized["iphone.mov"][0]
    report = sanitize_file(src, tmp_path / "few", Limits(max_streams=3))
    assert (report.status, report.error.code) == ("rejected", "too_large")
    report = sanitize_file(src, tmp_path / "short", Limits(max_duration_s=0.5))
    assert (report.status, report.error.code) == ("rejected", "too_large")


def test_heif_brands_are_not_ours():
    from worker.formats.av.isobmff import classify

    heic_head = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 40
    assert classify(heic_head) is None
    kddi = b"\0\0\0\x18ftypkddi\0\0\0\0kddi3g2a" + b"\0" * 40
    assert classify(kddi) == "3g2"
    brandless = b"\0\0\0\x10wide\0\0\0\0\0\0\0\0" + b"\0\0\0\x08mdat"
    assert classify(brandless) == "mov"


@pytest.mark.corpus
@pytest.mark.parametrize("row", ISO_BMFF_ROWS)
def test_corpus_file_sanitized_or_rejected_with_a_code(row, tmp_path):
    src = CORPUS / row["relative_path"]
    try:
        fmt = formats.identify(src)
    except Exception:
        pytest.skip("not identified (another family's file)")
    if fmt.name not in ("mp4", "mov", "3gp", "3g2", "m4a", "3ga"):
        pytest.skip(f"{fmt.name}: another family's file")
    report = sanitize_file(src, tmp_path / "copy", Limits())
    assert report.status in ("sanitized", "rejected"), report.error
    expected = expected_fix(row)
    if expected is None:
        assert report.found.fix is None
    else:
        assert report.found.fix.lat == pytest.approx(expected[0], abs=1e-6)
        assert report.found.fix.lon == pytest.approx(expected[1], abs=1e-6)
    if report.status == "rejected":
        # too_large: an audiobook's tables claiming 47 hours, over the duration limit
        assert report.error.code in ("truncated", "corrupt", "unsupported_format", "too_large")
        return
    assert_clean_copy(src, Path(report.output))


@pytest.mark.corpus
def test_most_corpus_video_is_sanitized(tmp_path):
    rows = [p.values[0] for p in corpus_params(kind="video") if p.values[0] is not None]
    if not rows:
        pytest.skip("../shared/corpus is absent")
    ours = [r for r in rows if (CORPUS / r["relative_path"]).read_bytes()[4:8] in (b"ftyp", b"free", b"moov")]
    done = sum(sanitize_file(CORPUS / r["relative_path"], tmp_path / str(i), Limits()).status == "sanitized"
               for i, r in enumerate(ours))
    # metadata test samples whose frames were cut off are neutralised; a reference movie is rejected
    assert done >= 0.8 * len(ours)


# --- the lossless fallback: boxes neutralised in place when ffmpeg copies nothing --------------

def _boxes(path: Path) -> list[tuple[tuple[bytes, ...], bytes, int, int]]:
    with open(path, "rb") as f:
        return [(p, b.type, b.start, b.end) for p, b in walk(f, 0, path.stat().st_size)]


@pytest.fixture(scope="module")
def no_frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noframes")
    src = folder / "noframes.mp4"
    fix = video.no_frames_mp4(src)
    return src, fix, sanitize_file(src, folder / "copy", Limits())


def test_no_frames_file_is_refused_before_a_copy_but_located(no_frames):
    """Sample tables pointing past the end of the file: no frame decodes, so the input is refused
    as corrupt (by the walk or by the input's decode check) before any copy is built; its
    location is still read."""
    src, fix, report = no_frames
    assert (report.status, report.error.code) == ("rejected", "corrupt"), report.as_json()
    assert "past the end of the file" in report.error.message or "checking the input" in report.error.message
    assert report.found.fix.lat == pytest.approx(fix[0], abs=1e-4)
    assert report.output is None


def test_neutralising_keeps_every_size_and_offset(no_frames, tmp_path):
    """The in-place plan on a file with every box whole: drops turn into zeroed free boxes of the
    same size, sample tables stay byte for byte, the planted text is gone."""
    src, _, _ = no_frames
    copy = tmp_path / "neutral.mp4"
    shutil.copyfile(src, copy)
    with open(src, "rb") as f:
        plan = plan_neutralise(f)
    apply_plan(copy, plan)
    assert copy.stat().st_size == src.stat().st_size
    before, after = _boxes(src), _boxes(copy)
    # every box where it was; what was dropped is now a zeroed free box of the same size
    assert {(s, e) for _, _, s, e in after} <= {(s, e) for _, _, s, e in before}
    assert [(s, e) for p, _, s, e in after if not p] == [(s, e) for p, _, s, e in before if not p]
    source = src.read_bytes()
    data = copy.read_bytes()
    offsets = [(s, e) for _, t, s, e in after if t == b"stco"]
    assert len(offsets) == 2 and all(data[s:e] == source[s:e] for s, e in offsets)
    for path, kind, start, end in after:
        if kind == b"free":
            assert data[start + 8:end].count(0) == end - start - 8
    for marker in (b"Jane", b"\xa9xyz", b"loci", b"Apartment"):
        assert marker not in data
    kept = {t for _, t, _, _ in after}
    assert {b"stco", b"stsz", b"avcC", b"mdat"} & kept == {b"stco", b"stsz", b"mdat"}
    assert {"udta", "sbtl track"} <= set(plan.removed)


def test_neutralising_zeroes_dropped_tracks_samples(sanitized, tmp_path):
    """On a whole file too: the subtitle and timecode tracks' samples in mdat are zeroed, the kept
    streams' packets are untouched, and the verifier finds nothing."""
    src = sanitized["iphone.mov"][0]
    assert b"Apartment 4B" in src.read_bytes()
    copy = tmp_path / "neutral.mov"
    shutil.copyfile(src, copy)
    with open(src, "rb") as f:
        plan = plan_neutralise(f)
    apply_plan(copy, plan)
    assert b"Apartment 4B" not in copy.read_bytes()
    assert inspect_copy(copy) == []
    assert readback.stream_hashes(copy) == readback.stream_hashes(src)
    assert abs(_rotation(readback.ffprobe(copy))) == 90
    assert {"tmcd track", "text track", "udta", "tref box"} <= set(plan.removed)


def test_verifier_flags_unzeroed_free_space_and_unused_media(sanitized, tmp_path):
    src = sanitized["iphone.mov"][0]
    copy = tmp_path / "neutral.mov"
    shutil.copyfile(src, copy)
    with open(src, "rb") as f:
        plan = plan_neutralise(f)
    apply_plan(copy, plan)
    free = next(s for p, t, s, e in _boxes(copy) if t == b"free" and e - s > 16)
    planted = bytearray(copy.read_bytes())
    planted[free + 12] = 0x41
    dirty = tmp_path / "dirty.mov"
    dirty.write_bytes(bytes(planted))
    assert any("is not zeroed" in f for f in inspect_copy(dirty))
    # the original's mdat holds the text track's samples, which no kept track reads once it is gone
    shutil.copyfile(src, dirty)
    with open(src, "rb") as f:
        plan = plan_neutralise(f)
    plan.zero = [z for z in plan.zero if not _in_mdat(z, _boxes(src))]
    apply_plan(dirty, plan)
    assert any("holds bytes no track reads" in f for f in inspect_copy(dirty))


def _in_mdat(span, boxes) -> bool:
    return any(t == b"mdat" and s <= span[0] and span[1] <= e for p, t, s, e in boxes if not p)


def test_reference_movie_is_rejected(sanitized, tmp_path):
    """A dref entry without the self-contained flag: the media is another file, named by path."""
    data = bytearray(sanitized["android.mp4"][0].read_bytes())
    at = data.find(b"url ", data.find(b"dref"))
    data[at + 7] &= 0xFE
    src = tmp_path / "reference.mp4"
    src.write_bytes(bytes(data))
    report = sanitize_file(src, tmp_path / "copy", Limits())
    assert (report.status, report.error.code) == ("rejected", "unsupported_format")
    assert any("other files" in f for f in inspect_copy(src))


def test_encrypted_and_purchase_records_are_refused(sanitized, tmp_path):
    data = bytearray(sanitized["memo.m4a"][0].read_bytes())
    at = data.find(b"mp4a", data.find(b"stsd"))
    data[at:at + 4] = b"drms"
    src = tmp_path / "drm.m4a"
    src.write_bytes(bytes(data))
    report = sanitize_file(src, tmp_path / "copy", Limits())
    assert (report.status, report.error.code) == ("rejected", "unsupported_format")
    assert any("encrypted" in f for f in inspect_copy(src))
    # an iTunes purchase record inside the sample entry (where the esds is) is a finding
    data = bytearray(sanitized["memo.m4a"][0].read_bytes())
    at = data.find(b"esds", data.find(b"stsd"))
    data[at:at + 4] = b"pinf"
    src.write_bytes(bytes(data))
    assert any("holds pinf" in f for f in inspect_copy(src))


# --- audio whose moov lies past what identification sees --------------------------------------

@pytest.fixture(scope="module")
def long_audio(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    three_gp, mp4 = folder / "voice.3gp", folder / "voice.mp4"
    video.long_audio(three_gp, "3gp")
    video.long_audio(mp4, "mp4", source=three_gp)
    return {"3gp": three_gp, "mp4": mp4, "out": folder}


@pytest.mark.parametrize("name, expected", [("3gp", "3ga"), ("mp4", "m4a")])
def test_long_audio_with_moov_at_the_end_becomes_an_audio_copy(long_audio, name, expected):
    src = long_audio[name]
    assert src.read_bytes()[8:12] in (b"3gp4", b"3gp5", b"isom")
    report = sanitize_file(src, long_audio["out"] / name, Limits())
    assert report.status == "sanitized", report.error
    copy = Path(report.output)
    assert report.format == expected
    assert formats.identify(copy).kind == "audio"
    moov = next((s, e) for p, t, s, e in _boxes(copy) if t == b"moov" and not p)
    assert moov[1] > 64 * 1024        # the copy's own moov outgrows the head too
    assert_clean_copy(src, copy)


def test_classify_counts_tracks_in_a_moov_cut_by_the_head():
    from worker.formats.av.isobmff import classify

    def trak(track_id: int, handler: bytes) -> bytes:
        tkhd = video.box(b"tkhd", b"\0" * 12 + struct.pack(">I", track_id) + b"\0" * 64)
        hdlr = video.box(b"hdlr", b"\0" * 8 + handler + b"\0" * 13)
        return video.box(b"trak", tkhd + video.box(b"mdia", hdlr))

    def head(next_track: int, *traks: bytes) -> bytes:
        mvhd = video.box(b"mvhd", b"\0" * 96 + struct.pack(">I", next_track))
        body = mvhd + b"".join(traks)
        # the moov declares far more than the head holds: its sample tables lie beyond
        moov = struct.pack(">I4s", 8 + len(body) + 200_000, b"moov") + body
        ftyp = b"\0\0\0\x14ftypisom\0\0\0\0isom"
        return (ftyp + moov)[:65536]

    assert classify(head(2, trak(1, b"soun"))) == "m4a"
    assert classify(head(3, trak(1, b"soun"))) == "mp4"       # track 2 is beyond the head: unknown
    assert classify(head(3, trak(1, b"soun"), trak(2, b"vide"))) == "mp4"
    assert classify(head(3, trak(1, b"soun"), trak(2, b"text"))) == "m4a"
