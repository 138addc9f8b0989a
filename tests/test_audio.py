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
# ExifTool fields of the MPEG audio frame header: part of the audio stream, not a tag. readback's
# name pattern matches "copyright", so it is named here. MPEG:Encoder (the LAME extension's encoder
# name) is not: the copy blanks that extension, so ExifTool must find no encoder at all.
MPEG_STREAM_FIELDS = {"MPEG:CopyrightFlag"}
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
    assert all(not s.get("tags") for s in probe["streams"])
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
    (b"OggS\x00\x02" + b"\0" * 20 + b"\x01\x1e\x80theora" + b"\0" * 23, "corrupt"),     # a page failing its CRC
    ("theora-headers-cut-short", "truncated"),   # a whole, valid page: a video's headers cut short
])
def test_lying_or_empty_inputs_get_clear_codes(raw, code, tmp_path):
    if raw == "theora-headers-cut-short":
        from worker.formats.av.ogg import page_crc
        page = b"OggS\x00\x02" + b"\0" * 20 + b"\x01\x1e\x80theora" + b"\0" * 23
        raw = page[:22] + page_crc(page).to_bytes(4, "little") + page[26:]
    src = tmp_path / "input"
    src.write_bytes(raw)
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "rejected"
    assert report.error.code == code, report.error.as_dict()
    assert not list(tmp_path.glob("copy*"))


def _frames_only(raw: bytes) -> bytes:
    """The MPEG frames of an MP3, every tag peeled off, nothing blanked (what the copy held before
    the LAME extension was blanked)."""
    from worker.formats.av import mp3

    start = mp3.id3v2_size(raw, 0) or 0
    end = mp3.peel_trailing_tags(raw, len(raw), [])
    return raw[start:end]


def _lame_fields(path: Path) -> list[str]:
    return [k for k in exiftool_tags(path) if k == "MPEG:Encoder" or k.split(":", 1)[-1].startswith("Lame")]


def _duration(path: Path) -> float:
    return float(ffprobe(path)["format"]["duration"])


def test_mp3_keeps_the_xing_fields_blanks_the_lame_extension_and_drops_only_tags(built, tmp_path):
    from worker.formats.av import mp3

    src = built["mp3"]
    raw = src.read_bytes()
    frames = _frames_only(raw)
    assert audio.LAME_ENCODER in frames[:mp3.frame_header(frames, 0).length]
    assert _lame_fields(src) == ["MPEG:Encoder"], "the fixture's header frame names no encoder"
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    copy = Path(report.output)
    out = copy.read_bytes()
    header = mp3.frame_header(out, 0)
    fields_end = mp3.header_fields_end(out, 0, header, first=True)
    assert mp3.header_frame_text(out) and fields_end is not None, "the Xing/Info header frame was dropped"
    # the frame header, side information and Xing fields (frame count, byte count, TOC, scale) are
    # the input's; from the LAME extension to the end of the frame the copy holds zeros
    assert out[:fields_end] == frames[:fields_end]
    assert fields_end + mp3.LAME_EXTENSION_SIZE <= header.length
    assert out[fields_end:header.length] == bytes(header.length - fields_end)
    assert frames[fields_end:fields_end + 9] == audio.LAME_ENCODER
    # every audio frame after it is byte for byte the input's
    assert out[header.length:] == frames[header.length:]
    assert {"ID3v1", "APEv2"} <= set(report.removed)
    assert any(r.startswith("ID3v2.4") and "APIC" in r for r in report.removed)
    assert any("LAME extension" in r for r in report.removed)
    # what readers now see: no encoder, no LAME settings; the same packets and the same duration
    assert _lame_fields(copy) == []
    assert all("encoder" not in (s.get("tags") or {}) for s in ffprobe(copy)["streams"])
    assert audio_hash(copy) == audio_hash(src)
    assert abs(_duration(copy) - _duration(src)) <= header.samples / header.sample_rate


LAME_CORPUS = ("mat2/tests/data/dirty.mp3", "mutagen/tests/data/apev2-lyricsv2.mp3", "mediafile/test/rsrc/image.mp3")


@pytest.mark.corpus
@pytest.mark.parametrize("relative_path", LAME_CORPUS)
def test_corpus_lame_header_frames_name_no_encoder(relative_path, tmp_path):
    """Real LAME files (3.93 to 3.99r; one CRC-protected, one mono): the encoder and its settings
    are gone, the packets and the duration are not."""
    from worker.formats.av import mp3

    src = CORPUS / relative_path
    if not src.exists():
        pytest.skip("../shared/corpus is absent")
    assert _lame_fields(src), "the corpus file no longer carries a LAME extension"
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "sanitized", report.error and report.error.as_dict()
    copy = Path(report.output)
    out = copy.read_bytes()
    header = mp3.frame_header(out, 0)
    assert mp3.header_fields_end(out, 0, header, first=True) is not None
    assert b"LAME" not in out[:header.length]
    assert _lame_fields(copy) == []
    assert all(not s.get("tags") for s in ffprobe(copy)["streams"])
    assert audio_hash(copy) == audio_hash(src)
    assert abs(_duration(copy) - _duration(src)) <= header.samples / header.sample_rate


def test_verifier_fails_on_a_lame_extension_put_back(built, tmp_path):
    """The copy with its header frame restored to the input's (LAME extension, valid CRC): both the
    frame walk and mutagen's reading of the header frame must fail it."""
    import mutagen.mp3

    from worker.formats.av import mp3
    from worker.formats.av.audio_inspect import mutagen_findings
    from worker.formats.base import Rebuilt

    report = sanitize_file(built["mp3"], tmp_path / "copy", LIMITS)
    out = Path(report.output)
    copy = out.read_bytes()
    length = mp3.frame_header(copy, 0).length
    out.write_bytes(_frames_only(built["mp3"].read_bytes())[:length] + copy[length:])
    assert any("encoder" in f for f in mp3.walk_copy(out.read_bytes()).findings)
    assert any("encoder 'LAME" in f for f in mutagen_findings(out, mutagen.mp3.MP3))
    with pytest.raises(SanitizeError) as e:
        verify_copy(out, Rebuilt(format="mp3", media_type="audio/mpeg", extension=".mp3"))
    assert e.value.code == "verify_failed"
    assert "encoder" in e.value.message


def _vbri_frame(header: bytes, length: int, encoder: bytes) -> bytes:
    """A Fraunhofer-style VBRI header frame: the VBRI fields, a two-entry seek table, then text."""
    toc = (100).to_bytes(2, "big") + (200).to_bytes(2, "big")
    vbri = (b"VBRI" + (1).to_bytes(2, "big") + (576).to_bytes(2, "big") + (75).to_bytes(2, "big")
            + (5000).to_bytes(4, "big") + (40).to_bytes(4, "big") + (2).to_bytes(2, "big") + (1).to_bytes(2, "big")
            + (2).to_bytes(2, "big") + (20).to_bytes(2, "big") + toc)
    frame = header + bytes(32) + vbri + encoder
    return frame + bytes(length - len(frame))


def test_vbri_header_frame_keeps_its_fields_and_loses_what_follows(built, tmp_path):
    from worker.formats.av import mp3

    frames = _frames_only(built["mp3"].read_bytes())
    length = mp3.frame_header(frames, 0).length
    vbri = _vbri_frame(frames[:4], length, b"FhG encoder 1.2 Jane's laptop")
    src = tmp_path / "vbri.mp3"
    src.write_bytes(vbri + frames[length:])
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "sanitized", report.error and report.error.as_dict()
    out = Path(report.output).read_bytes()
    fields_end = mp3.VBRI_OFFSET + mp3.VBRI_FIELDS + 4
    assert mp3.header_fields_end(out, 0, mp3.frame_header(out, 0), first=True) == fields_end
    assert out[:fields_end] == vbri[:fields_end]
    assert out[fields_end:length] == bytes(length - fields_end)
    assert out[length:] == frames[length:]
    assert b"Jane" not in out and b"FhG" not in out


def test_a_header_frame_inside_the_stream_is_blanked_too(built, tmp_path):
    """Two recordings glued together: the second one's LAME header frame is silence in the middle of
    the audio and still names its encoder."""
    from worker.formats.av import mp3

    frames = _frames_only(built["mp3"].read_bytes())
    src = tmp_path / "glued.mp3"
    src.write_bytes(frames + frames)
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "sanitized", report.error and report.error.as_dict()
    out = Path(report.output).read_bytes()
    assert len(out) == 2 * len(frames)
    assert "LAME extensions of 2 header frames (encoder name and settings)" in report.removed
    length = mp3.frame_header(frames, 0).length
    for start in (0, len(frames)):
        header = out[start:start + length]
        assert audio.LAME_ENCODER in frames[:length] and audio.LAME_ENCODER not in header
        assert mp3.header_fields_end(out, start, mp3.frame_header(out, start), first=not start) is not None
    # and only the two header frames changed (LAME's own "LAME3.100UUU" filler in the ancillary
    # data of audio frames is audio-frame content: it stays, see mp3.py)
    assert out[length:len(frames)] == frames[length:]
    assert out[len(frames) + length:] == frames[length:]
    assert mp3.walk_copy(out).findings == []


def test_info_inside_real_audio_is_not_taken_for_a_header_frame(built):
    """An audio frame (non-zero side information) that happens to hold "Info" where a header frame
    would: later in the stream it is audio and must not be blanked."""
    from worker.formats.av import mp3

    frames = _frames_only(built["mp3"].read_bytes())
    pos = 0
    for _ in range(5):
        pos += mp3.frame_header(frames, pos).length
    audio_frame = bytearray(frames[pos:pos + mp3.frame_header(frames, pos).length])
    assert mp3.frame_header(audio_frame, 0).length == len(audio_frame)
    assert any(audio_frame[4:21]), "the fixture's audio frame has empty side information"
    audio_frame[21:25] = b"Info"
    assert mp3.header_fields_end(bytes(audio_frame), 0, mp3.frame_header(audio_frame, 0), first=False) is None
    audio_frame[4:21] = bytes(17)
    assert mp3.header_fields_end(bytes(audio_frame), 0, mp3.frame_header(audio_frame, 0), first=False) is not None


def test_a_header_frame_and_a_cut_off_frame_is_truncated(built, tmp_path):
    """Tag-reader test samples cut off after the first audio frame's start: the only whole frame is
    the Xing/Info header, which holds no audio, and ffmpeg decodes nothing."""
    from worker.formats.av import mp3

    raw = built["mp3"].read_bytes()
    frames = _frames_only(raw)
    length = mp3.frame_header(frames, 0).length
    src = tmp_path / "cut.mp3"
    src.write_bytes(raw[:mp3.id3v2_size(raw, 0)] + frames[:length + 60])
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "rejected"
    assert report.error.code == "truncated", report.error.as_dict()


# tinytag's tag-reader samples: tags with one or no whole frame after them; ffmpeg fails on every
# one, with the tags removed or not
REJECTED_CORPUS = {
    "tinytag/tinytag/tests/samples/chinese_id3.mp3": "truncated",        # Info frame + 71 bytes of the next
    "tinytag/tinytag/tests/samples/id3_image_jfif.mp3": "truncated",     # Xing frame + a cut-off frame
    "tinytag/tinytag/tests/samples/id3v22_image.mp3": "unsupported_format",   # an ID3v2.2 tag, nothing after it
    "tinytag/tinytag/tests/samples/id3v1-latin1.mp3": "unsupported_format",   # 128 bytes of 0x55 and an ID3v1 tag
}


@pytest.mark.corpus
@pytest.mark.parametrize("relative_path", sorted(REJECTED_CORPUS))
def test_corpus_tag_only_mp3s_are_rejected_with_the_right_code(relative_path, tmp_path):
    src = CORPUS / relative_path
    if not src.exists():
        pytest.skip("../shared/corpus is absent")
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "rejected"
    assert report.error.code == REJECTED_CORPUS[relative_path], report.error.as_dict()
    assert not list(tmp_path.glob("copy*"))


def test_flac_copy_is_streaminfo_and_frames(built, tmp_path):
    from worker.formats.av import flac

    report = sanitize_file(built["flac"], tmp_path / "copy", LIMITS)
    data = Path(report.output).read_bytes()
    blocks, frames_start = flac.read_blocks(data, 0)
    assert [b[0] for b in blocks] == [flac.STREAMINFO]
    assert data[frames_start:] in built["flac"].read_bytes()


# --- hostile input: walks that end where the audio ends, checks before a copy --------------------

ID3V23_NO_FOOTER = (b"ID3\x03\x00\x00\x00\x00\x00\x2a" + b"TXXX\x00\x00\x00\x20\x00\x00"
                    + b"\x00GPS\x00+40.7128-074.0060/ MSCANARY")


@pytest.mark.parametrize("payload", [ID3V23_NO_FOOTER, b"<html><body>MSCANARY +40.7128-074.0060</body></html>"],
                         ids=["id3v23-no-footer", "html"])
def test_anything_after_the_last_flac_frame_goes(payload, built, tmp_path):
    src = tmp_path / "appended.flac"
    src.write_bytes(built["flac"].read_bytes() + payload)
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert report.status == "sanitized", report.error and report.error.as_dict()
    data = Path(report.output).read_bytes()
    assert b"MSCANARY" not in data and b"+40.7" not in data
    assert any("after the last frame" in item for item in report.removed)


def test_bytes_between_flac_frames_are_corrupt(built, tmp_path):
    from worker.formats.av import flac

    raw = built["flac"].read_bytes()
    blocks, start = flac.read_blocks(raw, 0)
    second = next(p for p in range(start + 2, len(raw)) if flac.frame_header(raw, p))
    src = tmp_path / "inserted.flac"
    src.write_bytes(raw[:second] + b"MSCANARY" + raw[second:])
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert (report.status, report.error.code) == ("rejected", "corrupt"), report.as_json()


def test_mp3_scan_is_linear_over_junk(built):
    import time

    from worker.formats.av import mp3

    raw = built["mp3"].read_bytes()
    for junk in (b"\xff\x00" * (1 << 19), b"\xff" * (1 << 20), b"\xff\xe2\x10\x00" * (1 << 18)):
        began = time.monotonic()
        result = mp3.scan(raw + junk + b"MSCANARY", LIMITS)
        assert time.monotonic() - began < 2.0
        assert result.frames[-1][1] <= len(raw)


@pytest.mark.parametrize("damage", ["sequence gap", "bad crc"])
def test_damaged_ogg_pages_are_corrupt_before_a_copy(damage, built, tmp_path):
    from fixtures.hostile_av import _ogg_bad_crcs, _ogg_sequence_gap

    raw = built["opus"].read_bytes()
    src = tmp_path / "damaged.opus"
    src.write_bytes(_ogg_sequence_gap(raw) if damage == "sequence gap" else _ogg_bad_crcs(raw))
    report = sanitize_file(src, tmp_path / "copy", LIMITS)
    assert (report.status, report.error.code) == ("rejected", "corrupt"), report.as_json()


# --- MP3 frames walked in runs (#10) -------------------------------------------------------------

def _scan_outcome(data: bytes):
    from worker.formats.av import mp3

    try:
        result = mp3.scan(data, LIMITS)
    except SanitizeError as e:
        return e.code, e.message
    return result.frames, result.removed, result.blanked, result.samples, result.sample_rate


def _damaged(raw: bytes, seed: int) -> bytes:
    """``raw`` with a few deterministic kinds of damage: flipped bits, junk, tags and header-frame
    markers inserted, a header frame of silence planted mid-stream, ranges repeated or cut."""
    import random

    rng = random.Random(seed)
    data = bytearray(raw)
    snippets = (b"Xing", b"Info", b"VBRI", b"APETAGEX", b"TAG", b"ID3\x04\x00\x00\x00\x00\x00\x10" + bytes(16),
                b"\xff\xfb\x50\xc4", b"\xff\xf3\x50\xc4", bytes(7) + b"Info", b"LYRICSEND")
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(data))
        op = rng.choice(("flip", "junk", "snippet", "repeat", "delete", "cut", "silent header"))
        if op == "flip":
            data[at] ^= 1 << rng.randrange(8)
        elif op == "junk":
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif op == "snippet":
            data[at:at] = rng.choice(snippets)
        elif op == "repeat":
            data[at:at] = data[at:at + rng.randint(1, 4000)]
        elif op == "delete":
            del data[at:at + rng.randint(1, 600)]
        elif op == "cut":
            del data[max(at, 1):]
        else:   # the next frame made a header frame: zero side information, a marker, an encoder name
            frame = data.find(raw[:2] if raw[:1] == b"\xff" else b"\xff\xfb", at)
            if frame > 0:
                data[frame + 4:frame + 4 + 17 + 16] = bytes(17) + rng.choice((b"Xing", b"Info")) + bytes(3) + b"\x01" \
                    + b"LAME3.99"
    return bytes(data)


@pytest.mark.parametrize("window", [0, 3000])
def test_mp3_runs_keep_exactly_what_the_per_frame_checks_keep(window, built, monkeypatch):
    """The scan and the copy's walk in runs (one regular expression a stream) against the same code
    with no run at all (RUN_WINDOW 0: every frame through frame_header, _confirmed and
    header_fields_end one by one), on damaged files: the same frames, blanks, removals, sample
    count, error and findings. A window of 3000 bytes puts run ends everywhere."""
    from worker.formats.av import mp3

    inputs = {"tagged": built["mp3"].read_bytes(), "frames": _frames_only(built["mp3"].read_bytes())}
    inputs["glued"] = inputs["frames"] * 3
    cases = [(name, raw) for name, raw in inputs.items()]
    cases += [(f"{name} damaged {seed}", _damaged(raw, seed)) for name, raw in inputs.items() for seed in range(40)]
    runs = {name: (_scan_outcome(data), mp3.walk_copy(data)) for name, data in cases}
    monkeypatch.setattr(mp3, "RUN_WINDOW", window)
    per_frame = {name: (_scan_outcome(data), mp3.walk_copy(data)) for name, data in cases}
    assert runs == per_frame
    # the damage reached what the walks judge: frames dropped, header frames blanked, findings
    assert sum(isinstance(scan[0], list) and len(scan[0]) > 1 for scan, _ in runs.values()) >= 5
    assert sum(len(scan[2]) > 1 for scan, _ in runs.values() if isinstance(scan[0], list)) >= 5
    assert sum(bool(walk.findings) for _, walk in runs.values()) >= 20


def test_a_damaged_frame_header_mid_stream_is_dropped_and_named(built):
    """One frame header broken in the middle of the audio: that frame goes, and so does the one
    before it, which no next frame confirms (both named as non-audio data); the frames on both
    sides stay, as the per-frame scan has always done."""
    from worker.formats.av import mp3

    frames = _frames_only(built["mp3"].read_bytes())
    glued = bytearray(frames * 4)
    before, pos = 0, 0
    while pos < len(glued) // 2:
        before, pos = pos, pos + mp3.frame_header(glued, pos).length
    broken = mp3.frame_header(glued, pos)
    glued[pos + 2] |= 0xF0                # bitrate index 15: not a frame header
    result = mp3.scan(bytes(glued), LIMITS)
    assert result.frames == [(0, before), (pos + broken.length, len(glued))]
    assert f"non-audio data ({pos + broken.length - before} bytes)" in result.removed
    # the copy's walk stops there; before it, it named the LAME header frames of the glued copies
    findings = mp3.walk_copy(bytes(glued)).findings
    assert findings[-1] == f"bytes at {pos} are not an MPEG audio frame of the stream"
    assert [f.split(" keeps")[0] for f in findings[:-1]] == [f"the header frame at {at}"
                                                             for at in range(0, pos, len(frames))]


def test_a_long_mp3_is_walked_without_holding_it_in_memory(tmp_path):
    """A 40 MiB MP3 is mapped, walked and copied with the pages behind the walk released: the
    sanitizing process grows by far less than the file (the ffmpeg decode is another process)."""
    import subprocess
    import sys

    clip = tmp_path / "clip.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=10", "-c:a", "libmp3lame", "-b:a", "128k",
                    "-write_xing", "0", "-id3v2_version", "0", str(clip)], check=True)
    one = clip.read_bytes()
    src = tmp_path / "long.mp3"
    with open(src, "wb") as f:
        for _ in range((40 << 20) // len(one)):
            f.write(one)
    script = ("import resource, sys\n"
              "from pathlib import Path\n"
              "from worker.formats.base import Limits\n"
              "from worker.sanitizer import sanitize_file\n"
              "import mutagen.mp3, worker.tools\n"
              "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              f"report = sanitize_file(Path({str(src)!r}), Path({str(tmp_path / 'copy')!r}), Limits())\n"
              "assert report.status == 'sanitized', report.as_json()\n"
              "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) < src.stat().st_size // 4


@pytest.mark.parametrize("name", sorted(audio.BUILDERS))
def test_one_tool_start_per_audio_file(name, built, tmp_path, tool_runs):
    """Every audio family starts one tool, the decode sample (the rebuild's, or for WAV and AIFF the
    verifier's): counted on the argument lists worker.tools.run_tool really runs."""
    started = tool_runs
    report = sanitize_file(built[name], tmp_path / "copy", LIMITS)
    assert report.status == "sanitized", report.as_json()
    assert [args[0] for args in started] == ["ffmpeg"]
    assert started[0][-3:] == ["-f", "null", "-"]


def _table_crc16(data: bytes) -> int:
    """FLAC's CRC-16 one table step per byte: the reference crc16_closes is held to."""
    from worker.formats.av.flac import CRC16

    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ CRC16[(crc >> 8) ^ byte]
    return crc


def test_flac_crc16_by_factors_agrees_with_the_table_crc():
    """crc16_closes (parity and the x^15 + x + 1 fold, in big integers) says a frame closes exactly
    when the table CRC over it is 0: frames of every size with their CRC appended, then each with
    one bit flipped, one byte changed, two bytes swapped, the trinomial factor or the whole
    polynomial added, and random data."""
    import random

    from worker.formats.av.flac import crc16_closes

    rng = random.Random(10)
    checked = closing = 0
    for size in (1, 2, 3, 7, 16, 31, 64, 500, 1601, 4096, 12345):
        for _ in range(30):
            body = rng.randbytes(size)
            frame = body + _table_crc16(body).to_bytes(2, "big")
            variants = [frame, body]
            flipped = bytearray(frame)
            bit = rng.randrange(len(frame) * 8)
            flipped[bit // 8] ^= 1 << (bit % 8)
            changed = bytearray(frame)
            changed[rng.randrange(len(frame))] = rng.randrange(256)
            swapped = bytearray(frame)
            i, j = rng.randrange(len(frame)), rng.randrange(len(frame))
            swapped[i], swapped[j] = swapped[j], swapped[i]
            variants += [bytes(flipped), bytes(changed), bytes(swapped), frame + b"\0", b"\0" + frame]
            # x^15 + x + 1 or the whole polynomial 0x18005 added somewhere: the first only the parity
            # of the bits tells apart, the second no CRC can (it stays 0)
            for poly in (0x8003, 0x18005):
                if len(frame) > 3:
                    value = int.from_bytes(frame, "big") ^ (poly << rng.randrange(len(frame) * 8 - 17))
                    variants.append(value.to_bytes(len(frame), "big"))
            for data in variants:
                expected = _table_crc16(data) == 0
                assert crc16_closes(data) == expected, (size, data[:16].hex())
                checked, closing = checked + 1, closing + expected
    assert closing > 300 and checked - closing > 1000     # both answers were exercised
