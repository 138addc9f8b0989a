"""WebM and Matroska end to end: identified by DocType, sanitized by an ffmpeg stream copy, read back
with ExifTool and ffprobe; the verifier's EBML walk refuses what the allow-list does not name."""
from __future__ import annotations

from pathlib import Path

import pytest

from fixtures import webm
from tests import readback
from tests.conftest import build_and_sanitize
from worker import formats
from worker.errors import SanitizeError
from worker.formats.av import matroska
from worker.formats.base import HEAD_BYTES, Limits, Rebuilt
from worker.sanitizer import sanitize_file
from worker.verify import verify_copy

BUILDERS = {
    "vp9.webm": (webm.webm_vp9_opus, "webm"),
    "h264.mkv": (webm.mkv_h264_aac, "mkv"),
    "browser.webm": (webm.browser_like_webm, "webm"),
}
MEDIA_TYPES = {"webm": "video/webm", "mkv": "video/x-matroska"}
# ExifTool names for what the sources carry and the copies must not
DROPPED = ("Title", "Artist", "DateTimeOriginal", "AttachedFileName", "AttachedFileData", "ChapterString",
           "Comment", "Encoder", "Date")


def rebuilt(name: str) -> Rebuilt:
    return Rebuilt(format=name, media_type=MEDIA_TYPES[name], extension=f".{name}")


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    """Each fixture built once and sanitized once: name -> (source, report)."""
    return build_and_sanitize(tmp_path_factory.mktemp("matroska"), BUILDERS)


def assert_clean(src: Path, copy: Path) -> None:
    tags = readback.exiftool(copy)
    assert readback.sensitive_tags(tags) == []
    assert [k for k in tags if k.split(":", 1)[-1] in DROPPED or k.startswith("Chapter")] == []
    assert tags.get("Matroska:MuxingApp") == "Lavf" and tags.get("Matroska:WritingApp") == "Lavf"
    probe = readback.ffprobe(copy)
    assert probe["chapters"] == []
    assert (probe["format"].get("tags") or {}) == {"encoder": "Lavf"}
    assert [s["codec_type"] for s in probe["streams"]] == ["video", "audio"]
    assert all(set(s.get("tags") or {}) == {"DURATION"} for s in probe["streams"])
    assert readback.stream_hashes(copy) == readback.stream_hashes(src)
    data = copy.read_bytes()
    assert [s for s in webm.SECRETS if s in data] == []


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_fixture_sanitized_clean_with_the_same_packets(sanitized, name):
    src, report = sanitized[name]
    expected = BUILDERS[name][1]
    assert formats.identify(src).name == expected
    assert report.status == "sanitized", report.error
    assert (report.format, report.kind, report.media_type) == (expected, "video", MEDIA_TYPES[expected])
    assert Path(report.output).suffix == f".{expected}"
    assert_clean(src, Path(report.output))
    # the source really held what was removed
    assert "Matroska:Title" in readback.exiftool(src)
    assert any(r.startswith("container tags") and "title" in r for r in report.removed)


def test_chapters_subtitles_and_attachments_are_reported(sanitized):
    removed = sanitized["h264.mkv"][1].removed
    assert "1 chapters" in removed
    assert "subtitle stream subrip" in removed and "attachment stream" in removed
    assert "subtitle stream webvtt" in sanitized["vp9.webm"][1].removed


def test_h264_in_a_webm_doctype_becomes_matroska(sanitized, tmp_path):
    """Chrome's MediaRecorder writes H.264 under DocType webm; the WebM muxer refuses it."""
    data = sanitized["h264.mkv"][0].read_bytes()
    old = bytes.fromhex("428288") + b"matroska"
    new = bytes.fromhex("428284") + b"webm" + bytes.fromhex("ec820000")    # same length: a 4-byte Void follows
    assert data.count(old) == 1
    src = tmp_path / "chrome.webm"
    src.write_bytes(data.replace(old, new))
    assert formats.identify(src).name == "webm"
    report = sanitize_file(src, tmp_path / "chrome-copy", Limits())
    assert report.status == "sanitized", report.error
    assert (report.format, Path(report.output).suffix) == ("mkv", ".mkv")
    assert_clean(src, Path(report.output))


def test_only_matroska_doctypes_are_accepted():
    header = bytes.fromhex("1a45dfa3") + bytes([0x80 | 7]) + bytes.fromhex("4282") + bytes([0x80 | 4])
    assert matroska.doctype(header + b"webm") == b"webm"
    assert [f.name for f in matroska.FORMATS if f.accept(header + b"webm")] == ["webm"]
    assert [f.name for f in matroska.FORMATS if f.accept(header + b"fooo")] == []
    assert [f.name for f in matroska.FORMATS if f.accept(header[:6])] == []


def test_cut_short_is_truncated(sanitized, tmp_path):
    for name in ("vp9.webm", "h264.mkv"):
        data = sanitized[name][0].read_bytes()
        cut = tmp_path / f"cut-{name}"
        cut.write_bytes(data[:len(data) // 2])
        report = sanitize_file(cut, tmp_path / f"cut-copy-{name}", Limits())
        assert report.status == "rejected" and report.error.code == "truncated", report.error
    assert not list(tmp_path.glob("cut-copy*"))


def test_verifier_refuses_the_sources_and_a_copy_remuxed_with_metadata(sanitized, tmp_path):
    src, report = sanitized["h264.mkv"]
    copy = Path(report.output)
    verify_copy(copy, rebuilt("mkv"))
    findings = matroska.inspect(src)
    for name in ("Attachments in Segment", "Chapters in Segment", "Title in Segment/Info", "DateUTC in Segment/Info"):
        assert name in findings
    assert any(f.startswith("tag 'ARTIST'") for f in findings)
    tagged = tmp_path / "tagged.mkv"
    webm.remux_with_metadata(copy, tagged, "matroska")
    with pytest.raises(SanitizeError) as e:
        verify_copy(tagged, rebuilt("mkv"))
    assert e.value.code == "verify_failed" and "Title" in e.value.message


def test_verifier_refuses_data_hidden_in_void_space(sanitized, tmp_path):
    copy = Path(sanitized["vp9.webm"][1].output)
    data = bytearray(copy.read_bytes())
    void = data.index(bytes.fromhex("ec01000000000000"))     # the space ffmpeg reserves after the SeekHead
    data[void + 9:void + 21] = b"Apartment 4B"
    planted = tmp_path / "void.webm"
    planted.write_bytes(bytes(data))
    with pytest.raises(SanitizeError) as e:
        verify_copy(planted, rebuilt("webm"))
    assert e.value.code == "verify_failed" and "Void" in e.value.message


def test_inspect_reports_an_unreadable_copy_instead_of_raising(sanitized, tmp_path):
    data = Path(sanitized["vp9.webm"][1].output).read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[:HEAD_BYTES // 64])
    assert any("truncated" in f for f in matroska.inspect(cut))
