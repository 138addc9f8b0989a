"""Our walk of an ISO-BMFF movie (``movie.describe``) answers what ffprobe was started for: the
tracks and their stream ids, codecs, durations, rotation and the decoder configuration (compared
with ffprobe's extradata by SHA-256). Then the decode sample it sets up: the keyframes of H.264,
in the copy's own input for a short film. Real files made with ffmpeg, and the corpus when present."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from fixtures import video
from tests.conftest import CORPUS, corpus_params
from worker import formats
from worker.errors import SanitizeError
from worker.formats.av import movie
from worker.formats.base import Limits
from worker.sanitizer import sanitize_file

CODEC_NAMES = {b"avc1": "h264", b"avc3": "h264", b"hvc1": "hevc", b"hev1": "hevc", b"mp4a": "aac",
               b"alac": "alac", b"mp4v": "mpeg4", b"jpeg": "mjpeg", b"twos": "pcm_s16be", b"samr": "amr_nb"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("movie")
    made = {"android.mp4": video.android_like_mp4, "iphone.mov": video.iphone_like_mov,
            "memo.m4a": video.voice_memo_m4a, "loci.3gp": video.loci_3gp, "gopro.mp4": video.gopro_gpmf_mp4}
    paths = {}
    for name, make in made.items():
        paths[name] = folder / name
        make(paths[name])
    rotated = folder / "rotated.mp4"
    rotated.write_bytes(paths["android.mp4"].read_bytes())
    video.set_rotation(rotated, 180)
    paths["rotated.mp4"] = rotated
    return paths


def _agrees_with_ffprobe(path: Path) -> None:
    described = movie.describe(path)
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
                                       "-show_streams", "-show_data_hash", "SHA256", str(path)],
                                      capture_output=True, check=True).stdout)
    streams = [s for s in probe["streams"] if not (s.get("disposition") or {}).get("attached_pic")]
    covers = len(probe["streams"]) - len(streams)
    assert described.covers == covers, path
    assert [int(s["id"], 0) for s in streams] == [t.track_id for t in described.tracks], path
    # the movie header's duration; ffprobe may count a little more from the sample tables
    assert abs(described.duration - float(probe["format"]["duration"])) < max(0.05, 0.1 * described.duration), path
    for stream, track in zip(streams, described.tracks):
        assert CODEC_NAMES.get(track.codec, stream.get("codec_name")) == stream.get("codec_name"), (path, track)
        rotation = next((float(side["rotation"]) for side in stream.get("side_data_list") or [] if "rotation" in side), 0.0)
        assert track.rotation == rotation, (path, track.rotation, rotation)
        if track.config is not None and "extradata_hash" in stream:
            assert "SHA256:" + hashlib.sha256(_extradata(track)).hexdigest() == stream["extradata_hash"], (path, track.codec)
        if track.codec in (b"avc1", b"hvc1", b"mp4a"):
            assert track.config is not None, (path, track.codec)


def _extradata(track: movie.Track) -> bytes:
    """What ffmpeg keeps as extradata of the configuration our walk reads."""
    if track.codec in (b"mp4a", b"mp4v"):
        return track.config[1:]                       # the decoder specific info, without the object type
    if track.codec == b"alac":
        return (len(track.config) + 8).to_bytes(4, "big") + b"alac" + track.config     # the whole box
    return track.config


@pytest.mark.parametrize("name", ["android.mp4", "iphone.mov", "memo.m4a", "loci.3gp", "gopro.mp4", "rotated.mp4"])
def test_the_walk_reads_what_ffprobe_reads(clips, name):
    _agrees_with_ffprobe(clips[name])


def test_a_turned_film_is_read_turned(clips):
    assert movie.describe(clips["android.mp4"]).first(b"vide").rotation == -90.0     # a phone held upright
    assert abs(movie.describe(clips["rotated.mp4"]).first(b"vide").rotation) == 180.0


@pytest.mark.corpus
@pytest.mark.parametrize("row", corpus_params(formats=("video/mp4", "video/quicktime", "audio/mp4", "audio/x-m4a",
                                                       "video/3gpp", "video/3gpp2", "application/octet-stream")))
def test_the_walk_reads_what_ffprobe_reads_on_the_corpus(row):
    path = CORPUS / row["relative_path"]
    try:
        if formats.identify(path).name not in ("mp4", "mov", "3gp", "3g2", "m4a", "3ga"):
            pytest.skip("another family's file")
        movie.describe(path)
    except SanitizeError as e:
        pytest.skip(f"refused before any walk of its tracks: {e.code}")
    _agrees_with_ffprobe(path)


def test_tracks_sharing_a_track_id_are_corrupt(clips, tmp_path):
    data = bytearray(clips["android.mp4"].read_bytes())
    second = data.find(b"tkhd", data.find(b"tkhd") + 4)
    version = data[second + 4]
    at = second + 4 + (20 if version == 1 else 12)
    data[at:at + 4] = (1).to_bytes(4, "big")                  # the sound track now claims id 1 too
    twice = tmp_path / "twice.mp4"
    twice.write_bytes(bytes(data))
    with pytest.raises(SanitizeError, match="share a track_ID"):
        movie.describe(twice)


def test_esds_config_is_the_object_type_and_decoder_specific_info():
    # ES descriptor (id 1, no flags) > DecoderConfig (AAC 0x40, stream type, buffer, rates) > DSI 12 10
    dsi = bytes([0x05, 0x02, 0x12, 0x10])
    decoder = bytes([0x04, 13 + len(dsi), 0x40, 0x15]) + bytes(11) + dsi
    es = bytes([0x03, 3 + len(decoder) + 3, 0x00, 0x01, 0x00]) + decoder + bytes([0x06, 0x01, 0x02])
    assert movie.esds_config(bytes(4) + es) == b"\x40\x12\x10"
    with pytest.raises(SanitizeError):
        movie.esds_config(bytes(4) + es[:-8])                  # cut inside the decoder configuration


def _keyframe_film(path: Path, seconds: int, keyint: int) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={seconds}",
                    "-f", "lavfi", "-i", f"sine=duration={seconds}", "-c:v", "libx264", "-preset", "ultrafast",
                    "-g", str(keyint), "-c:a", "aac", "-shortest", "-y", str(path)], check=True)
    return path


def test_a_short_film_is_decoded_whole_in_the_copys_own_input_keyframes_only(tmp_path, tool_runs):
    src = _keyframe_film(tmp_path / "short.mp4", 8, 100)      # keyframes at 0, 4 and 8 s
    report = sanitize_file(src, tmp_path / "out", Limits())
    assert report.status == "sanitized", report.as_json()
    assert len(tool_runs) == 1 and tool_runs[0].count("-i") == 1 and "-ss" not in tool_runs[0]
    assert tool_runs[0][tool_runs[0].index("-skip_frame:v") + 1] == "nokey"


def test_a_film_with_many_keyframes_is_sampled_in_three_windows(tmp_path, tool_runs):
    src = _keyframe_film(tmp_path / "many.mp4", 12, 5)         # 60 keyframes: over the whole-file bound
    report = sanitize_file(src, tmp_path / "out", Limits())
    assert report.status == "sanitized", report.as_json()
    [run] = tool_runs           # a plain MP4: the decode sample alone, our box copy beside it
    assert run.count("-i") == 3 and run.count("-ss") == 3 and run.count("-skip_frame:v") == 3
    assert run.count("-discard:v") == 3 and "-c" not in run
    movie_copy = tmp_path / "movie.mov"        # QuickTime's goes to ffmpeg: the copy's input and the three windows
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(src), "-c", "copy", "-y", str(movie_copy)], check=True)
    tool_runs.clear()
    report = sanitize_file(movie_copy, tmp_path / "out2", Limits())
    assert report.status == "sanitized", report.as_json()
    [run] = tool_runs
    assert run.count("-i") == 4 and run.count("-ss") == 3 and run.count("-skip_frame:v") == 3
    assert run.count("-discard:v") == 3       # not on the copy's own input: the copy needs every packet


def test_a_damaged_keyframe_is_corrupt(tmp_path):
    """The keyframe sample still reads the coded picture: bytes flipped inside the first keyframe
    (the first video chunk) make the input corrupt, before any copy."""
    src = _keyframe_film(tmp_path / "film.mp4", 8, 250)
    data = bytearray(src.read_bytes())
    mdat = data.find(b"mdat")
    for at in range(mdat + 400, mdat + 1400, 50):
        data[at] ^= 0x5A
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    report = sanitize_file(broken, tmp_path / "out", Limits())
    assert (report.status, report.error.code) == ("rejected", "corrupt"), report.as_json()


def test_motion_jpeg_from_a_movie_is_proved_under_its_mp4_name(tmp_path, tool_runs):
    """The MP4 muxer names Motion JPEG 'mp4v': the byte proof takes that rename, and ffprobe says
    both are the same codec (a codec with no configuration box our walk reads)."""
    src = tmp_path / "camera.mov"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10:duration=2",
                    "-c:v", "mjpeg", "-y", str(src)], check=True)
    report = sanitize_file(src, tmp_path / "out", Limits())
    assert (report.status, report.format) == ("sanitized", "mp4"), report.as_json()
    assert movie.describe(Path(report.output)).first(b"vide").codec == b"mp4v"
    assert [args[0] for args in tool_runs] == ["ffmpeg", "ffprobe", "ffprobe"], tool_runs


def test_a_long_file_is_copied_and_sampled_in_two_runs(tmp_path, tool_runs, monkeypatch):
    """Past SHARED_RUN_MAX_PACKETS the copy and the decode sample run apart (with several inputs
    ffmpeg queues every packet of the copy through a thread); the walk counts the packets."""
    from worker.formats.av import av_rebuild

    src = _keyframe_film(tmp_path / "film.mov", 4, 250)       # QuickTime's: copied by ffmpeg
    packets = sum(t.packets for t in movie.describe(src).tracks)
    assert movie.describe(src).first(b"vide").packets == 100            # 4 s at 25 fps
    monkeypatch.setattr(av_rebuild, "SHARED_RUN_MAX_PACKETS", packets - 1)
    report = sanitize_file(src, tmp_path / "out", Limits())
    assert report.status == "sanitized", report.as_json()
    assert [args[-1] for args in tool_runs][0] == "-" and len(tool_runs) == 2, tool_runs   # the decode sample, then the copy
