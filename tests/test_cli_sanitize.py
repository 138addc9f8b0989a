"""`mediasan sanitize --json` as a user runs it: one process, the JSON contract of DESIGN.md, exit status."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CORPUS, corpus_rows, expected_fix
from tests.readback import exiftool, sensitive_tags
from worker.errors import FAILING_CODES, REJECTING_CODES

CONTRACT_KEYS = {"input", "status", "kind", "format", "output", "location", "captured_at", "removed", "error",
                 "salvaged", "salvage_reason",   # salvage fields: issue #9
                 "seconds"}                      # wall time of the input in its process (worker/budget.py's deadline)


def run_sanitize(paths: list[Path], out: Path) -> tuple[int, list[dict], str]:
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "sanitize", "--json", "--out", str(out),
                           *map(str, paths)], capture_output=True, text=True, timeout=1800)
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, reports, proc.stderr


def test_the_json_contract_on_good_and_bad_inputs(tmp_path):
    from fixtures import audio, heif, jpeg, video

    good = {tmp_path / "PXL_1.jpg": jpeg.android_phone_jpeg, tmp_path / "IMG_2.HEIC": heif.iphone_like_heic,
            tmp_path / "VID_3.mp4": video.android_like_mp4, tmp_path / "note.mp3": audio.mp3_with_all_tags}
    fixes = {path: builder(path) for path, builder in good.items()}
    liar, empty, missing = tmp_path / "photo.jpg", tmp_path / "empty.png", tmp_path / "nowhere.jpg"
    liar.write_text("<html>not a photo</html>")
    empty.write_bytes(b"")
    inputs = [*good, liar, empty, missing]

    status, reports, stderr = run_sanitize(inputs, tmp_path / "out")
    assert status == 1, "some inputs were not sanitized, so the exit status says so"
    assert [r["input"] for r in reports] == [str(p) for p in inputs]
    assert all(set(r) == CONTRACT_KEYS for r in reports)
    for path, report in zip(good, reports):
        assert report["status"] == "sanitized" and report["error"] is None, report
        assert Path(report["output"]).parent == tmp_path / "out"
        assert sensitive_tags(exiftool(Path(report["output"]))) == [], path.name
        fix = fixes[path] if isinstance(fixes[path], tuple) else None
        if fix:
            assert report["location"]["lat"] == pytest.approx(fix[0], abs=1e-6)
            assert report["location"]["lon"] == pytest.approx(fix[1], abs=1e-6)
            assert set(report["location"]) == {"lat", "lon", "alt", "source"}
        else:
            assert report["location"] is None
        assert report["removed"], "what was taken out is reported"
    assert [r["kind"] for r in reports[:4]] == ["photo", "photo", "video", "audio"]
    assert reports[1]["format"] == "jpeg", "a HEIC's agency copy is a JPEG, and the report says so"
    assert [(r["status"], r["error"]["code"]) for r in reports[4:]] == [
        ("rejected", "unsupported_format"), ("rejected", "empty"), ("rejected", "unsupported_format")]
    assert all(r["output"] is None for r in reports[4:])
    assert "Traceback" not in stderr

    status, reports, _ = run_sanitize([tmp_path / "PXL_1.jpg"], tmp_path / "again")
    assert status == 0 and reports[0]["status"] == "sanitized"


@pytest.mark.skipif(not corpus_rows(), reason="../shared/corpus is absent")
def test_every_corpus_file_gets_a_report_and_every_fix_is_found(tmp_path):
    rows = corpus_rows()
    inputs = [CORPUS / r["relative_path"] for r in rows]
    _, reports, stderr = run_sanitize(inputs, tmp_path / "out")
    assert "Traceback" not in stderr
    assert [r["input"] for r in reports] == [str(p) for p in inputs]
    photos = [r for row, r in zip(rows, reports) if row["kind"] == "image"]
    assert sum(r["status"] == "sanitized" for r in photos) / len(photos) >= 0.97
    for row, report in zip(rows, reports):
        if report["status"] != "sanitized":
            assert report["error"]["code"] in REJECTING_CODES | FAILING_CODES, report
            assert report["status"] == ("rejected" if report["error"]["code"] in REJECTING_CODES else "failed")
            continue
        fix = expected_fix(row)
        if fix and abs(fix[0]) <= 90 and abs(fix[1]) <= 180:
            assert report["location"], row["relative_path"]
            assert report["location"]["lat"] == pytest.approx(fix[0], abs=1e-6), row["relative_path"]
            assert report["location"]["lon"] == pytest.approx(fix[1], abs=1e-6), row["relative_path"]
        else:
            assert report["location"] is None, (row["relative_path"], report["location"])


def test_parallel_batches_keep_input_order_and_make_the_same_copies(tmp_path):
    """--jobs N sanitizes across processes; the reports keep input order and the copies are the ones
    a one-at-a-time run makes, byte for byte (a slow video first must not reorder the photos)."""
    from fixtures import audio, jpeg, lossless, video

    inputs = [tmp_path / "VID.mp4", tmp_path / "a.jpg", tmp_path / "b.png", tmp_path / "c.mp3",
              tmp_path / "sub" / "a.jpg", tmp_path / "bad.jpg"]
    video.android_like_mp4(inputs[0])
    jpeg.android_phone_jpeg(inputs[1])
    lossless.png_with_text_and_exif(inputs[2])
    audio.mp3_with_all_tags(inputs[3])
    inputs[4].parent.mkdir()
    jpeg.iphone_like_jpeg(inputs[4])
    inputs[5].write_text("<html>")

    def run(jobs: int, out: Path) -> tuple[int, list[dict]]:
        proc = subprocess.run([sys.executable, "-m", "worker.cli", "sanitize", "--json", "--jobs", str(jobs),
                               "--out", str(out), *map(str, inputs)], capture_output=True, text=True, timeout=600)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    serial_status, serial = run(1, tmp_path / "serial")
    parallel_status, parallel = run(3, tmp_path / "parallel")
    assert serial_status == parallel_status == 1, "bad.jpg is rejected, so both runs exit non-zero"
    assert [r["input"] for r in parallel] == [str(p) for p in inputs]
    assert [r["status"] for r in parallel] == ["sanitized"] * 5 + ["rejected"]
    names = [Path(r["output"]).name for r in parallel[:5]]
    assert len(set(names)) == 5, f"two inputs named a.jpg get two copies: {names}"
    for one, other in zip(serial[:5], parallel[:5]):
        assert Path(one["output"]).name == Path(other["output"]).name
        assert Path(one["output"]).read_bytes() == Path(other["output"]).read_bytes(), one["input"]
        assert one["location"] == other["location"]
