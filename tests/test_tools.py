"""worker.tools: every way an external decoder can go wrong ends in a clear code, never a hang."""
from __future__ import annotations

import pytest

from worker.errors import SanitizeError
from worker.formats.base import Limits
from worker.sanitizer import sanitize_file
from worker.tools import STARTS, ffprobe, run_tool

ENDLESS_DECODE = ["ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
                  "-f", "null", "-"]


def code_of(args: list[str], limits: Limits) -> SanitizeError:
    with pytest.raises(SanitizeError) as caught:
        run_tool(args, limits, what="testing")
    return caught.value


def test_a_hung_tool_is_stopped_at_the_timeout():
    error = code_of(ENDLESS_DECODE, Limits(timeout_s=1.5))
    assert error.code == "timeout" and "ran past" in error.message


def test_a_tool_that_cannot_start_under_the_memory_cap_is_ours_to_fix():
    error = code_of(["ffmpeg", "-version"], Limits(memory_bytes=24 << 20))
    assert error.code == "tool_failed" and "memory cap" in error.message


def test_a_crashing_tool_is_tool_failed():
    error = code_of(["sh", "-c", "kill -SEGV $$"], Limits())
    assert error.code == "tool_failed" and "SIGSEGV" in error.message


def test_a_missing_tool_is_tool_failed():
    assert code_of(["mediasan-no-such-decoder"], Limits()).code == "tool_failed"


def test_a_refusal_is_blamed_on_the_input(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(200))
    with pytest.raises(SanitizeError) as caught:
        ffprobe(junk, Limits())
    assert caught.value.code == "corrupt"


def test_a_video_whose_tools_time_out_is_rejected_and_leaves_no_copy(tmp_path):
    from fixtures.video import android_like_mp4

    clip = tmp_path / "clip.mp4"
    android_like_mp4(clip)
    (tmp_path / "out").mkdir()     # the copy's folder exists, as the CLI and the worker make it
    report = sanitize_file(clip, tmp_path / "out" / "clip", Limits(timeout_s=0.001))
    assert report.status == "rejected" and report.error.code == "timeout", report.as_json()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_shared_answer_serves_one_more_ask_of_the_same_bytes_only(tmp_path):
    """ffprobe's answer about a copy is reused once by the next ask of the same bytes; bytes that
    changed in between (same path, same size) are probed again, and a third ask runs again."""
    import shutil
    import subprocess

    clip = tmp_path / "a.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=1", "-metadata", "title=first",
                    str(clip)], check=True)
    before = sum(STARTS.values())
    first = ffprobe(clip, Limits(), share=True)
    assert ffprobe(clip, Limits()) == first and sum(STARTS.values()) - before == 1
    ffprobe(clip, Limits())
    assert sum(STARTS.values()) - before == 2          # the shared answer was used up
    ffprobe(clip, Limits(), share=True)
    other = tmp_path / "b.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=1", "-metadata", "title=other",
                    str(other)], check=True)
    assert other.stat().st_size == clip.stat().st_size
    shutil.copyfile(other, clip)                        # the same path now holds other bytes
    assert ffprobe(clip, Limits())["format"]["tags"]["title"] == "other"
    assert sum(STARTS.values()) - before == 4


def test_an_audio_copy_is_decoded_once_for_the_rebuild_and_the_verifier(tmp_path):
    """MP3's copy is the input's frames: the rebuild's decode sample of it answers the verifier's."""
    import subprocess

    clip = tmp_path / "voice.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=8", "-c:a", "libmp3lame",
                    "-metadata", "title=secret", str(clip)], check=True)
    before = STARTS.copy()
    (tmp_path / "out").mkdir()
    report = sanitize_file(clip, tmp_path / "out" / "voice", Limits())
    assert report.status == "sanitized", report.as_json()
    assert STARTS - before == {"ffmpeg": 1}
