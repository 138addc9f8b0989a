"""Audio: every tag gone, the audio packets unchanged, bad input rejected with a code.

Fixtures are built at test time (ffmpeg + mutagen, fixtures/audio.py); corpus files are read in
place. Three readers judge each copy: ExifTool, ffprobe and mutagen.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fixtures import audio
from tests.conftest import CORPUS, corpus_params
from tests.readback import ffprobe, sensitive_tags, stream_hashes
from worker.errors import SanitizeError
from worker.formats import identify
from worker.formats.base import Limits
from worker.sanitizer import sanitize_file
from worker.verify import verify_copy

LIMITS = Limits()
# ExifTool fields of the MPEG audio frame header and of the LAME header frame (kept for gapless
# playback): part of the audio stream, not a tag. readback's name pattern matches "copyright" and
# "encoder", so they are named here.
MPEG_STREAM_FIELDS = {"MPEG:CopyrightFlag", "MPEG:Encoder"}
AUDIO_CORPUS_FORMATS = ("audio/mpeg", "audio/flac", "audio/ogg", "audio/x-wav", "audio/x-aiff",
                        "application/octet-stream")


def exiftool_tags(path: Path) -> dict:
    """`exiftool -json -G1 -a -n`, keeping its JSON when it also reports a warning-level error (it
    calls a bare MP3 whose audio happens to contain an MPEG-PS start code a "format error")."""
    proc = subprocess.run(["exiftool", "-json", "-G1", "-a", "-n", "-q", "-q", str(path)],
                          capture_output=True, text=True)
    return json.loads(proc.stdout)[0]


def audio_hash(path: Path) -> str:
    """The streamhash of the first audio stream alone (cover art shows up as a video stream)."""
    return "\n".join(line.split(",", 2)[2] for line in stream_hashes(path).splitlines() if ",a," in line)


def leaks(path: Path) -> list[str]:
    return [t for t in sensitive_tags(exiftool_tags(path)) if t not in MPEG_STREAM_FIELDS]


def assert_clean_copy(src: Path, out: Path) -> None:
    assert leaks(out) == []
    probe = ffprobe(out)
    assert not (probe.get("format") or {}).get("tags")
    assert [s["codec_type"] for s in probe["streams"]] == ["audio"]
    assert all(not s.get("tags") or set(s["tags"]) <= {"encoder"} for s in probe["streams"])
    assert audio_hash(out) == audio_hash(src)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("audio")
    return {name: build(folder / f"{name}.input") for name, build in audio.BUILDERS.items()}


@pytest.mark.parametrize("name", sorted(audio.BUILDERS))
def test_fixture_is_sanitized_clean_and_bit_exact(name, built, tmp_path):
    src = built[name]
    fmt_name, extension = audio.EXPECTED[name]
    before = exiftool_tags(src)
    if name != "amr":   # the format has no tags; the others must start out dirty for the test to mean anything
        assert leaks(src), f"fixture {name} carries no tag"
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "sanitized", report.error and report.error.as_dict()
    assert (report.format, Path(report.output).suffix) == (fmt_name, extension)
    assert report.found.fix is None and report.found.captured_at is None
    out = Path(report.output)
    assert_clean_copy(src, out)
    raw = out.read_bytes()
    for text in (audio.TITLE, audio.ARTIST, audio.PLACE, "Recorder App", "Phone Maker"):
        assert text.encode() not in raw
    if name != "amr":
        assert report.removed
    assert before.get("File:FileType") == exiftool_tags(out).get("File:FileType")


@pytest.mark.corpus
@pytest.mark.parametrize("row", corpus_params("audio", AUDIO_CORPUS_FORMATS))
def test_corpus_audio(row, tmp_path):
    src = CORPUS / row["relative_path"]
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    if report.status != "sanitized":
        # never a traceback, never a verifier failure: a bad input is rejected with a code
        assert report.status == "rejected", report.error.as_dict()
        return
    out = Path(report.output)
    assert leaks(out) == []
    assert [s["codec_type"] for s in ffprobe(out)["streams"]] == ["audio"]
    if row["relative_path"].endswith("id3v1v2-combined.mp3"):
        # its last frame is cut off and ffmpeg's last packet runs on into the ID3v1 tag: the tag
        # bytes are the only difference, and they must go
        return
    assert audio_hash(out) == audio_hash(src)


def test_the_copy_is_a_new_file_and_the_input_is_untouched(built, tmp_path):
    src = tmp_path / "in.mp3"
    shutil.copyfile(built["mp3"], src)
    before = src.read_bytes()
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "sanitized"
    assert src.read_bytes() == before


@pytest.mark.parametrize("name,plant", [
    ("mp3", lambda raw: raw + b"TAG" + b"Jane Citizen".ljust(125, b"\0")),
    ("flac", lambda raw: raw + b"TAG" + b"Jane Citizen".ljust(125, b"\0")),
    ("wav", None),
    ("aiff", None),
    ("amr", lambda raw: raw + b"Jane Citizen"),
])
def test_verifier_fails_on_a_planted_tag(name, plant, built, tmp_path):
    report = sanitize_file(built[name], tmp_path / "copy", LIMITS)
    out = Path(report.output)
    raw = out.read_bytes()
    if plant is None:   # a LIST/INFO (WAV) or NAME (AIFF) chunk appended, container size fixed
        big = name == "aiff"
        extra = audio.iff.chunk(b"NAME" if big else b"LIST", b"Jane Citizen", big_endian=big)
        raw = raw[:4] + (len(raw) - 8 + len(extra)).to_bytes(4, "big" if big else "little") + raw[8:] + extra
    else:
        raw = plant(raw)
    out.write_bytes(raw)
    rebuilt = identify(out)
    from worker.formats.base import Rebuilt
    with pytest.raises(SanitizeError) as e:
        verify_copy(out, Rebuilt(format=rebuilt.name, media_type=rebuilt.media_type, extension=out.suffix))
    assert e.value.code == "verify_failed"


def test_verifier_fails_on_ogg_comments(built, tmp_path):
    """An Ogg copy with a comment put back (mutagen rewrites the pages properly) must fail."""
    from mutagen.oggvorbis import OggVorbis

    from worker.formats.base import Rebuilt

    report = sanitize_file(built["ogg_vorbis"], tmp_path / "copy", LIMITS)
    out = Path(report.output)
    tagged = OggVorbis(out)
    tagged["artist"] = audio.ARTIST
    tagged.save()
    with pytest.raises(SanitizeError) as e:
        verify_copy(out, Rebuilt(format="ogg", media_type="audio/ogg", extension=".ogg"))
    assert e.value.code == "verify_failed"


@pytest.mark.parametrize("name", sorted(audio.BUILDERS))
@pytest.mark.parametrize("keep", [0.0, 0.5])
def test_truncated_input_is_rejected_or_sanitized_never_crashes(name, keep, built, tmp_path):
    raw = built[name].read_bytes()
    src = tmp_path / "cut"
    src.write_bytes(raw[:max(1, int(len(raw) * keep)) if keep else 40])
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status in ("sanitized", "rejected"), report.error and report.error.as_dict()
    if report.status == "rejected":
        assert report.error.code in ("truncated", "corrupt", "unsupported_format")
    else:
        assert leaks(Path(report.output)) == []


@pytest.mark.parametrize("raw,code", [
    (b"", "empty"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x10" + b"\0" * 16, "unsupported_format"),     # a tag and no audio
    (b"fLaC\x80\x00\x00\x22" + b"\0" * 10, "truncated"),                         # STREAMINFO cut short
    (b"RIFF\xff\xff\xff\x7fWAVEfmt \x10\x00\x00\x00" + b"\0" * 4, "truncated"),   # fmt runs past the end
    (b"RIFF\x24\x00\x00\x00WAVELIST\x04\x00\x00\x00INFO", "truncated"),           # no fmt or data at all
    (b"FORM\x00\x00\x00\x04AIFF", "truncated"),
    (b"#!AMR\n\x84", "truncated"),                                                # a frame type with no frame
    (b"#!AMR_MC1.0\n" + b"\0" * 8, "unsupported_format"),
    (b"OggS\x00\x02" + b"\0" * 20 + b"\x01\x1e\x80theora" + b"\0" * 23, "unsupported_format"),
])
def test_lying_or_empty_inputs_get_clear_codes(raw, code, tmp_path):
    src = tmp_path / "input"
    src.write_bytes(raw)
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "rejected"
    assert report.error.code == code, report.error.as_dict()
    assert not list(tmp_path.glob("copy*"))


def test_mp3_keeps_the_lame_header_frame_and_drops_only_tags(built, tmp_path):
    from worker.formats import mp3

    report = sanitize_file(built["mp3"], tmp_path / "copy", LIMITS)
    out = Path(report.output).read_bytes()
    assert mp3.header_frame_text(out), "the Xing/Info header frame was dropped"
    src = built["mp3"].read_bytes()
    assert out in src, "the frames are not one byte-identical run of the input"
    assert {"ID3v1", "APEv2"} <= set(report.removed)
    assert any(r.startswith("ID3v2.4") and "APIC" in r for r in report.removed)


def test_flac_copy_is_streaminfo_and_frames(built, tmp_path):
    from worker.formats import flac

    report = sanitize_file(built["flac"], tmp_path / "copy", LIMITS)
    data = Path(report.output).read_bytes()
    blocks, frames_start = flac.read_blocks(data, 0)
    assert [b[0] for b in blocks] == [flac.STREAMINFO]
    assert data[frames_start:] in built["flac"].read_bytes()
