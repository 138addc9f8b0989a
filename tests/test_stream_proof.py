"""The verifier proves an ISO-BMFF stream copy by bytes against its input (``stream_proof``):
an honest copy passes without a decode of its own; one flipped sample byte or a changed decoder
configuration (avcC) fails as verify_failed. Real files and real ffmpeg/ffprobe; tool starts are
counted by recording what ``worker.tools.run_tool`` is asked to run."""
from __future__ import annotations

from pathlib import Path

import pytest

from fixtures import video
from worker import formats, tools
from worker.errors import SanitizeError
from worker.formats.av import av_rebuild, stream_proof
from worker.formats.base import Limits
from worker.formats.walkers.boxes import chunk_ranges, file_size, read_payload, walk
from worker.verify import verify_copy


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("proof")
    src = folder / "android.mp4"
    video.android_like_mp4(src)
    memo = folder / "memo.m4a"
    video.voice_memo_m4a(memo)
    return {"mp4": src, "m4a": memo}


@pytest.fixture
def runs(tool_runs) -> list[list[str]]:
    return tool_runs


def _rebuild(src: Path, folder: Path):
    fmt = formats.identify(src)
    copy = folder / f"copy{src.suffix}"
    return copy, fmt.rebuild(src, copy, Limits())


def _decodes_of(path: Path, started: list[list[str]]) -> list[list[str]]:
    return [args for args in started if args[0] == "ffmpeg" and tools.tool_url(path) in args]


def _first_sample_range(path: Path, handler: bytes) -> tuple[int, int]:
    with open(path, "rb") as f:
        size, current = file_size(f), b""
        for box_path, box in walk(f, 0, size):
            if box.type == b"hdlr" and box_path[-1:] == (b"mdia",):
                current = read_payload(f, box, 4096)[8:12]
            elif box.type == b"stbl" and current == handler:
                return chunk_ranges(f, box, size)[0]
    raise AssertionError(f"no {handler!r} track")


@pytest.mark.parametrize("kind", ["mp4", "m4a"])
def test_an_honest_copy_is_proved_without_decoding_it(built, kind, tmp_path, runs):
    src = built[kind]
    copy, rebuilt = _rebuild(src, tmp_path)
    runs.clear()
    verify_copy(copy, rebuilt, src)
    assert _decodes_of(copy, runs) == [], runs           # the proof stood in for the copy's decode
    assert runs == []      # both probes (input's and copy's) were answered by the rebuild's runs
    assert stream_proof.differences(src, copy, {"video": 0, "audio": 1} if kind == "mp4" else {"audio": 0}) == []


def test_the_whole_sanitize_starts_one_tool_for_a_movie(built, tmp_path, runs):
    from worker.sanitizer import sanitize_file

    report = sanitize_file(built["mp4"], tmp_path / "out", Limits())
    assert report.status == "sanitized", report.as_json()
    # our walk stands in for both ffprobes; one ffmpeg writes the copy and decodes the input's
    # keyframes and sound from the same input; the copy is proved by bytes, not decoded
    assert [args[0] for args in runs] == ["ffmpeg"], runs
    run = runs[0]
    assert run.count("-i") == 1 and run[-3:] == ["-f", "null", "-"] and "-ss" not in run
    assert run[run.index("-skip_frame:v") + 1] == "nokey"


@pytest.mark.parametrize("kind,handler", [("mp4", b"vide"), ("mp4", b"soun"), ("m4a", b"soun")])
def test_one_flipped_sample_byte_fails_the_proof(built, kind, handler, tmp_path, runs):
    src = built[kind]
    copy, rebuilt = _rebuild(src, tmp_path)
    start, end = _first_sample_range(copy, handler)
    data = bytearray(copy.read_bytes())
    data[(start + end) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    runs.clear()
    with pytest.raises(SanitizeError) as e:
        verify_copy(copy, rebuilt, src)
    assert e.value.code == "verify_failed"
    assert "coded samples differ from the input's" in e.value.message, e.value.message
    assert _decodes_of(copy, runs) == []                 # a failed proof is a finding, not a decode


def test_a_changed_avcc_fails_the_proof(built, tmp_path):
    src = built["mp4"]
    copy, rebuilt = _rebuild(src, tmp_path)
    data = bytearray(copy.read_bytes())
    avcc = data.find(b"avcC")
    assert avcc > 0
    data[avcc + 4 + 3] ^= 0x01        # AVCLevelIndication: the stream still parses, configured otherwise
    copy.write_bytes(bytes(data))
    with pytest.raises(SanitizeError) as e:
        verify_copy(copy, rebuilt, src)
    assert e.value.code == "verify_failed"
    assert "another decoder configuration" in e.value.message, e.value.message


def test_a_copy_of_another_track_fails_the_proof(built, tmp_path):
    """The copy's samples must be the kept track's: a copy of a different movie is refused."""
    other = tmp_path / "other.mp4"
    video.loci_3gp(other)             # same codecs, other frames and sizes
    copy, rebuilt = _rebuild(other, tmp_path)
    assert stream_proof.differences(built["mp4"], copy, {"video": 0, "audio": 1})


def test_an_input_cut_short_gives_no_proof(built, tmp_path):
    """Samples past the end of the input: nothing to prove against, the verifier decodes the copy."""
    copy, _ = _rebuild(built["mp4"], tmp_path)        # faststart: the moov comes first, media last
    cut = tmp_path / "cut.mp4"
    data = bytearray(copy.read_bytes()[:-200])
    mdat = data.rfind(b"mdat") - 4                     # the box walk stays whole; its samples do not
    data[mdat:mdat + 4] = (int.from_bytes(data[mdat:mdat + 4], "big") - 200).to_bytes(4, "big")
    cut.write_bytes(bytes(data))
    assert not all(t.complete for t in stream_proof.tracks(cut))
    assert stream_proof.differences(cut, copy, {"video": 0, "audio": 1}) is None


def test_a_codec_the_first_muxer_refuses_goes_to_the_next_and_pcm_is_proved_by_total_and_bytes(tmp_path, runs):
    """PCM in a MOV: the mp4 muxer refuses it, so the run that copies and decodes at once fails;
    the decode sample alone passes (the input is fine), the mp4 remux fails, the mov one is kept.
    The copy's PCM track (one size for every sample, regrouped by the muxer) is proved by its total
    size and bytes, without a decode."""
    import subprocess

    from worker.sanitizer import sanitize_file

    src = tmp_path / "pcm.mov"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=10:duration=8",
                    "-f", "lavfi", "-i", "sine=duration=8", "-c:v", "libx264", "-preset", "ultrafast",
                    "-c:a", "pcm_s16be", "-y", str(src)], check=True)
    report = sanitize_file(src, tmp_path / "out", Limits())
    assert (report.status, report.format) == ("sanitized", "mov"), report.as_json()
    # the run that copies and decodes at once fails; the decode sample alone (one keyframe in 8 s:
    # the whole file, keyframes only), then each muxer in turn; PCM's configuration is not one box
    # our walk reads, so ffprobe describes the input's and the copy's
    assert [args[0] for args in runs] == ["ffmpeg", "ffmpeg", "ffmpeg", "ffmpeg", "ffprobe", "ffprobe"], runs
    assert runs[1][-3:] == ["-f", "null", "-"] and runs[1].count("-i") == 1 and "-ss" not in runs[1]
    assert "mp4" in runs[2] and "mov" in runs[3]
    soun = [t for t in stream_proof.tracks(Path(report.output)) if t.handler == b"soun"][0]
    assert soun.constant_size == 2 and soun.codecs == (b"twos",)
    assert stream_proof.differences(src, Path(report.output), {"video": 0, "audio": 1}) == []


def test_a_sample_table_listed_twice_gives_no_proof(built, tmp_path):
    """Two stsz in one stbl: which one a reader uses is a guess, so the input proves nothing."""
    copy, _ = _rebuild(built["m4a"], tmp_path)
    data = bytearray(copy.read_bytes())
    stco = data.find(b"stco")
    assert stco > 0 and data.find(b"stsz") > 0
    data[stco:stco + 4] = b"stsz"          # renamed in place: every size and offset stays valid
    twice = tmp_path / "twice.m4a"
    twice.write_bytes(bytes(data))
    with pytest.raises(SanitizeError, match="two stsz boxes"):
        stream_proof.tracks(twice)
    assert stream_proof.differences(twice, copy, {"audio": 0}) is None
