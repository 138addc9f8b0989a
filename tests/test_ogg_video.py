"""Ogg Theora video end to end: identified apart from Ogg audio, sanitized by an ffmpeg stream copy,
read back with ExifTool, ffprobe and mutagen; the verifier refuses copies that keep comments."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mutagen.oggopus import OggOpus
from mutagen.oggtheora import OggTheora
from mutagen.oggvorbis import OggVorbis

from fixtures import webm
from tests import readback
from tests.conftest import CORPUS, build_and_sanitize
from worker import formats
from worker.errors import SanitizeError
from worker.formats.av import ogg_video
from worker.formats.base import HEAD_BYTES, Limits, Rebuilt
from worker.sanitizer import sanitize_file
from worker.verify import verify_copy

CORPUS_THEORA = CORPUS / "mutagen" / "tests" / "data" / "sample.oggtheora"
BUILDERS = {"theora_vorbis.ogv": (webm.ogg_theora_vorbis, OggVorbis),
            "theora_opus.ogv": (webm.ogg_theora_opus, OggOpus)}
OGV = Rebuilt(format="ogv", media_type="video/ogg", extension=".ogv")


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    """Each fixture built once and sanitized once: name -> (source, report)."""
    return build_and_sanitize(tmp_path_factory.mktemp("ogv"), BUILDERS)


def assert_clean(src: Path, copy: Path) -> None:
    tags = readback.exiftool(copy)
    assert readback.sensitive_tags(tags) == []
    assert not [k for k in tags if k.split(":")[0] in ("Vorbis-Comments",) or k.endswith((":Title", ":Artist",
                                                                                         ":Date", ":Encoder"))]
    assert {v for k, v in tags.items() if k.endswith(":Vendor")} == {"ffmpeg"}
    probe = readback.ffprobe(copy)
    assert not probe["format"].get("tags") and probe["chapters"] == []
    assert all(not s.get("tags") for s in probe["streams"])
    assert readback.stream_hashes(copy) == readback.stream_hashes(src)
    theora = OggTheora(str(copy))
    assert list(theora.tags.keys()) == [] and theora.tags.vendor == "ffmpeg"


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_fixture_sanitized_without_comments_and_with_the_same_packets(sanitized, name):
    src, report = sanitized[name]
    assert report.status == "sanitized", report.error
    assert (report.format, report.kind, report.media_type) == ("ogv", "video", "video/ogg")
    copy = Path(report.output)
    assert copy.suffix == ".ogv"
    assert_clean(src, copy)
    audio = BUILDERS[name][1](str(copy))
    assert list(audio.tags.keys()) == []
    data = copy.read_bytes()
    assert [s for s in webm.SECRETS if s in data] == []
    # the source really had them: the test would notice a builder that stopped writing comments
    assert b"Jane Doe" in src.read_bytes()
    assert any("theora comment header" in r and "6 comments" in r for r in report.removed)


def test_theora_is_told_apart_from_ogg_audio(sanitized, tmp_path):
    src = sanitized["theora_vorbis.ogv"][0]
    assert formats.identify(src).name == "ogv"
    audio = tmp_path / "voice.ogg"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(src), "-vn", "-c", "copy", str(audio)], check=True)
    assert not ogg_video.accept(audio.read_bytes()[:HEAD_BYTES])
    assert formats.identify(audio).name == "ogg"
    # a Theora stream that is not the first one does not make the file ours
    assert not ogg_video.accept(b"OggS" + bytes(60))


@pytest.mark.skipif(not CORPUS_THEORA.exists(), reason="../shared/corpus is absent")
def test_corpus_theora_sanitized_identically(tmp_path):
    report = sanitize_file(CORPUS_THEORA, tmp_path / "sample", Limits())
    assert report.status == "sanitized", report.error
    copy = Path(report.output)
    assert_clean(CORPUS_THEORA, copy)
    assert b"libTheora" in CORPUS_THEORA.read_bytes() and b"libTheora" not in copy.read_bytes()
    assert report.found.fix is None


def test_cut_short_is_truncated(sanitized, tmp_path):
    src = sanitized["theora_vorbis.ogv"][0]
    cut = tmp_path / "cut.ogv"
    data = src.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    report = sanitize_file(cut, tmp_path / "cut-copy", Limits())
    assert report.status == "rejected" and report.error.code == "truncated", report.error
    assert not list(tmp_path.glob("cut-copy*"))


def test_chained_ogg_is_unsupported(sanitized, tmp_path):
    src = sanitized["theora_vorbis.ogv"][0]
    chained = tmp_path / "chained.ogv"
    chained.write_bytes(src.read_bytes() * 2)
    report = sanitize_file(chained, tmp_path / "chained-copy", Limits())
    assert report.status == "rejected" and report.error.code == "unsupported_format", report.error


def test_verifier_refuses_a_copy_with_comments(sanitized, tmp_path):
    copy = Path(sanitized["theora_vorbis.ogv"][1].output)
    verify_copy(copy, OGV)
    tagged = tmp_path / "tagged.ogv"
    webm.remux_with_metadata(copy, tagged, "ogg")
    with pytest.raises(SanitizeError) as e:
        verify_copy(tagged, OGV)
    assert e.value.code == "verify_failed"
    assert "comment header" in e.value.message and "mutagen" in e.value.message


def test_verifier_refuses_a_versioned_vendor_and_trailing_bytes(sanitized, tmp_path):
    copy = Path(sanitized["theora_opus.ogv"][1].output)
    versioned = tmp_path / "versioned.ogv"     # no bitexact: the vendor names ffmpeg's exact version
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(copy), "-map", "0", "-c", "copy",
                    "-map_metadata", "-1", "-f", "ogg", str(versioned)], check=True)
    with pytest.raises(SanitizeError) as e:
        verify_copy(versioned, OGV)
    assert "vendor" in e.value.message
    trailing = tmp_path / "trailing.ogv"
    trailing.write_bytes(copy.read_bytes() + b"Apartment 4B")
    with pytest.raises(SanitizeError) as e:
        verify_copy(trailing, OGV)
    assert "after the last whole Ogg page" in e.value.message


def test_inspect_reports_an_unreadable_copy_instead_of_raising(tmp_path):
    junk = tmp_path / "junk.ogv"
    junk.write_bytes(b"OggS" + bytes(100))
    assert ogg_video.inspect(junk)
