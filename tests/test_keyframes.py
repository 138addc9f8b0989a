"""The input's decode sample decodes each frame at most once: its windows start at the keyframe
before them (``keyframes.sync_times``, our walk of the video track) and merge where they meet
(``tools.sample_ranges``), and still cover every window. Real files made with ffmpeg for the walk."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from worker import tools
from worker.formats.av import av_rebuild
from worker.formats.av.keyframes import sync_times
from worker.formats.base import Limits
from worker.tools import _seek_args, sample_ranges


def _covers(ranges, windows) -> bool:
    return all(any(s <= ws and we <= e for s, e in ranges) for ws, we in windows)


def test_long_gop_windows_merge_into_one_range():
    # 10 s at 30 fps with x264's default keyint (250 frames): keyframes at 0 and 8.33 s
    windows = sample_ranges(10.0)
    assert windows == [(0.0, 2.0), (4.0, 6.0), (8.0, 10.0)]
    ranges = sample_ranges(10.0, [0.0, 250 / 30])
    assert ranges == [(0.0, 10.0)]
    assert _covers(ranges, windows)
    assert _seek_args(ranges, 10.0) == [[]]            # the whole file, decoded once, no seek


def test_short_gop_windows_stay_three_and_start_at_their_keyframes():
    keyframes = [i * 1.0 for i in range(60)]           # a keyframe every second, 60 s
    ranges = sample_ranges(60.0, keyframes)
    assert ranges == [(0.0, 2.0), (29.0, 31.0), (58.0, 60.0)]
    keyframes = [i * 0.75 for i in range(80)]
    ranges = sample_ranges(60.0, keyframes)
    assert len(ranges) == 3 and _covers(ranges, sample_ranges(60.0))
    assert ranges[1] == (28.5, 31.0)                   # widened back to the keyframe at 28.5 s


def test_windows_merge_only_where_the_widened_ranges_meet():
    # windows 0-2, 9-11, 18-20: the middle widens to 8.5 and the last to 12; none meets another
    assert sample_ranges(20.0, [0.0, 8.5, 12.0]) == [(0.0, 2.0), (8.5, 11.0), (12.0, 20.0)]
    # the middle widens back to 0 and the last to 10, inside the middle one: one range
    assert sample_ranges(20.0, [0.0, 10.0]) == [(0.0, 20.0)]
    # a range that starts where another ends is merged with it (ffmpeg would start there anyway)
    assert sample_ranges(20.0, [0.0, 2.0, 12.0]) == [(0.0, 11.0), (12.0, 20.0)]


def test_short_files_and_unknown_keyframes_keep_the_plain_windows():
    assert sample_ranges(5.0, [0.0, 4.0]) == [(0.0, 5.0)]
    assert sample_ranges(30.0, None) == [(0.0, 2.0), (14.0, 16.0), (28.0, 30.0)]
    assert _seek_args(sample_ranges(30.0), 30.0) == [["-ss", "0.000", "-t", "2.000"],
                                                      ["-ss", "14.000", "-t", "2.000"],
                                                      ["-ss", "28.000", "-t", "2.000"]]


def test_seek_starts_round_up_to_stay_on_their_keyframe():
    # rounded down, 8.3333 would become 8.333, before the keyframe: ffmpeg would decode the GOP before
    assert _seek_args([(0.0, 2.0), (250 / 30, 10.5)], 20.0) == [["-ss", "0.000", "-t", "2.000"],
                                                                 ["-ss", "8.334", "-t", "2.166"]]
    for start, length in ((float(s[1]), float(s[3])) for s in _seek_args([(250 / 30, 10.5)], 20.0)):
        assert start >= 250 / 30 and start + length >= 10.5


def _clip(path: Path, seconds: int, gop: int) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error",
                    "-f", "lavfi", "-i", f"testsrc=size=96x64:rate=10:duration={seconds}",
                    "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", str(gop), "-keyint_min", str(gop),
                    "-sc_threshold", "0", "-c:a", "aac", "-y", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gop")
    return {"long": _clip(folder / "long.mp4", 12, 300), "short": _clip(folder / "short.mp4", 30, 10)}


def test_the_walk_finds_the_keyframes_ffprobe_reports(clips):
    for clip in clips.values():
        flags = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                                "packet=pts_time,flags", "-of", "csv=p=0", str(clip)],
                               capture_output=True, text=True, check=True).stdout.split()
        expected = [float(line.split(",")[0]) for line in flags if "K" in line.split(",")[1]]
        assert sync_times(clip, 0) == pytest.approx(expected)


def test_a_long_gop_input_is_decoded_in_one_range_and_a_short_gop_one_in_three(clips, tmp_path, tool_runs):
    started = tool_runs
    for name, inputs in (("long", 1), ("short", 3)):
        started.clear()
        rebuilt = av_rebuild.rebuild_with("mp4", ("mp4",), clips[name], tmp_path / f"{name}.mp4", Limits())
        assert rebuilt.format == "mp4"
        # one ffmpeg run: the whole input for the copy, then one input for each range of the decode sample
        check = next(args for args in started if args[0] == "ffmpeg")
        assert check[-3:] == ["-f", "null", "-"] and check.count("-i") == 1 + inputs, (name, check)
        if name == "long":
            assert "-ss" not in check                  # the whole 12 s, once, instead of 2 + 8 + 12 s
