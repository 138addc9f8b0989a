"""worker.tools: every way an external decoder can go wrong ends in a clear code, never a hang."""
from __future__ import annotations

import pytest

from worker.errors import SanitizeError
from worker.formats.base import Limits
from worker.sanitizer import sanitize_file
from worker.tools import ffprobe, run_tool

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
    report = sanitize_file(clip, tmp_path / "out" / "clip", Limits(timeout_s=0.001))
    assert report.status == "rejected" and report.error.code == "timeout", report.as_json()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
