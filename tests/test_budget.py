"""The sanitizing process's own budgets (worker/budget.py), on real files through `mediasan sanitize`.

Each case runs the same input twice: with the default budgets it is sanitized (so the file is
fine), with a small budget it is refused with the budget's code and a message naming the setting.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import CORPUS


def sanitize(path: Path, out: Path, **env: str) -> tuple[dict, float, str]:
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "sanitize", "-j1", "--json", "--out", str(out), str(path)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    [report] = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return report, report["seconds"], proc.stderr


@pytest.fixture(scope="module")
def slow_video(tmp_path_factory) -> Path:
    """Ten seconds of 1080p Motion JPEG in a MOV: a codec whose decode sample is every frame of its
    windows (not only keyframes, as for H.264), so remuxing and sample-decoding it takes about a second."""
    path = tmp_path_factory.mktemp("slow") / "clip.mov"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30:duration=10",
                    "-f", "lavfi", "-i", "sine=duration=10", "-c:v", "mjpeg", "-q:v", "4", "-c:a", "aac",
                    "-shortest", str(path)], check=True, timeout=120)
    return path


@pytest.fixture(scope="module")
def big_scan(tmp_path_factory) -> Path:
    """108 megapixels (under max_pixels), 640 KB on disk: the TIFF re-encode needs ~330 MB of pixels."""
    path = tmp_path_factory.mktemp("big") / "scan.tiff"
    Image.new("RGB", (12_000, 9_000), (10, 200, 30)).save(path, compression="tiff_deflate")
    return path


def test_a_file_past_its_wall_time_budget_is_refused_as_timeout_and_leaves_nothing(slow_video, tmp_path):
    roomy, _, _ = sanitize(slow_video, tmp_path / "default")
    assert roomy["status"] == "sanitized", roomy

    report, _, stderr = sanitize(slow_video, tmp_path / "tight", MEDIASAN_FILE_TIMEOUT_S="0.3")
    assert (report["status"], report["error"]["code"]) == ("rejected", "timeout"), report
    assert "MEDIASAN_FILE_TIMEOUT_S" in report["error"]["message"]
    assert report["output"] is None and list((tmp_path / "tight").iterdir()) == [], "no copy, no .partial"
    assert "Traceback" not in stderr
    # the timer interrupts the wait on ffmpeg (which subprocess.run then kills), not the file's end
    assert report["seconds"] < min(0.3 + 1.0, roomy["seconds"]), (report["seconds"], roomy["seconds"])


def test_a_decode_past_the_process_memory_budget_is_refused_as_too_large(big_scan, tmp_path):
    budget = str(256 * 1024**2)

    report, _, stderr = sanitize(big_scan, tmp_path / "small", MEDIASAN_PROCESS_MEMORY_BYTES=budget)
    assert (report["status"], report["error"]["code"]) == ("rejected", "too_large"), report
    assert "Traceback" not in stderr

    small = tmp_path / "small.tiff"
    Image.new("RGB", (1_200, 900), (10, 200, 30)).save(small, compression="tiff_deflate")
    report, _, _ = sanitize(small, tmp_path / "fits", MEDIASAN_PROCESS_MEMORY_BYTES=budget)
    assert report["status"] == "sanitized", "the same decode, smaller, fits the same budget"


def test_the_memory_budget_reaches_the_batch_pool_and_spares_ffmpeg(big_scan, slow_video, tmp_path):
    """-j2 forks pool processes after the CLI set its limit: the big decode is refused in a pool child,
    while the video beside it is remuxed and sample-decoded by ffmpeg children under the same budget."""
    run = subprocess.run([sys.executable, "-m", "worker.cli", "sanitize", "-j2", "--json", "--out", str(tmp_path / "out"),
                          str(big_scan), str(slow_video)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MEDIASAN_PROCESS_MEMORY_BYTES": str(256 * 1024**2)})
    reports = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    assert [(r["status"], (r["error"] or {}).get("code")) for r in reports] == [
        ("rejected", "too_large"), ("sanitized", None)], reports


@pytest.mark.skipif(not (CORPUS / "photoprism/assets/examples/iphone_7.heic").exists(), reason="no shared corpus")
def test_a_real_heic_past_the_memory_budget_is_too_large(tmp_path):
    """A 12 MP iPhone HEIC decoded and re-encoded under 64 MiB of heap: refused cleanly, whichever
    layer notices (libheif, Pillow's encoder, or the MemoryError the sanitizer maps). Under 96 MiB
    it is written: read in bands, its 36 MB picture is never whole (the whole decode needed more
    than 128 MiB)."""
    heic = CORPUS / "photoprism/assets/examples/iphone_7.heic"
    report, _, stderr = sanitize(heic, tmp_path / "small", MEDIASAN_PROCESS_MEMORY_BYTES=str(64 * 1024**2))
    assert report["error"] and report["error"]["code"] == "too_large", report
    assert "Traceback" not in stderr
    report, _, _ = sanitize(heic, tmp_path / "fits", MEDIASAN_PROCESS_MEMORY_BYTES=str(96 * 1024**2))
    assert report["status"] == "sanitized", report


# Past the memory budget, the verifier's own decode must not turn MemoryError into a finding
# (verify_failed): it goes up to the sanitizer, which answers too_large. A lossless copy (a PNG) is
# proved by bytes and never decoded, so a re-encoded JPEG copy, which is decoded in full, is checked.
VERIFY_UNDER_BUDGET = """
import sys
from pathlib import Path
from worker.budget import limit_process_memory
from worker.errors import SanitizeError
from worker.formats.base import Rebuilt
from worker.verify import verify_copy
limit_process_memory(int(sys.argv[2]))
try:
    verify_copy(Path(sys.argv[1]), Rebuilt(format="jpeg", media_type="image/jpeg", extension=".jpg"))
except MemoryError:
    print("MemoryError")
except SanitizeError as e:
    print(e.code)
else:
    print("verified")
"""


def test_the_verifiers_decode_past_the_memory_budget_is_not_a_finding(tmp_path):
    copy = tmp_path / "copy.jpg.partial"
    Image.new("RGB", (10_000, 8_000), (10, 200, 30)).save(copy, "JPEG")   # 80 MP: 320 MB decoded, ~1 MB here

    def verify(budget: int) -> str:
        proc = subprocess.run([sys.executable, "-c", VERIFY_UNDER_BUDGET, str(copy), str(budget)],
                              capture_output=True, text=True, timeout=120, env=os.environ)
        return proc.stdout.strip() or proc.stderr[-2000:]

    assert verify(0) == "verified"                       # no budget: the copy is fine
    assert verify(256 * 1024**2) == "MemoryError"        # not verify_failed


def test_the_deadline_in_process_restores_the_callers_signal_state(slow_video, tmp_path):
    """The worker calls sanitize_file in a long-lived process: after a timeout, and after a file that
    finished in time, no timer is left running and the caller's SIGALRM handler is back."""
    import signal

    from worker.formats.base import Limits
    from worker.sanitizer import sanitize_file

    def callers_handler(signum, frame):
        raise AssertionError("the caller's handler must not fire")

    previous = signal.signal(signal.SIGALRM, callers_handler)
    try:
        report = sanitize_file(slow_video, tmp_path / "tight", Limits(file_timeout_s=0.3))
        assert report.error is not None and report.error.code == "timeout", report.as_json()
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        assert signal.getsignal(signal.SIGALRM) is callers_handler
        report = sanitize_file(slow_video, tmp_path / "roomy", Limits(file_timeout_s=120))
        assert report.status == "sanitized", (report.error.code, report.error.message)
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        assert signal.getsignal(signal.SIGALRM) is callers_handler
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_a_deadline_during_the_first_file_leaves_every_format_registered(slow_video, tmp_path):
    """The first file of a fresh process imports every format family (a few tenths of a second); a
    deadline that fires during those imports must not leave a registry without the families it had
    not reached, or every later file of that process is unsupported_format. Fresh processes with
    deadlines spread over the import time: some land inside it."""
    script = (
        "import sys; from pathlib import Path\n"
        "from worker.formats.base import Limits\n"
        "from worker.sanitizer import sanitize_file\n"
        "first = sanitize_file(Path(sys.argv[1]), Path(sys.argv[2]) / 'a', Limits(file_timeout_s=float(sys.argv[3])))\n"
        "second = sanitize_file(Path(sys.argv[1]), Path(sys.argv[2]) / 'b', Limits(file_timeout_s=120))\n"
        "print(first.error.code if first.error else 'sanitized', second.status)\n")
    for seconds in ("0.05", "0.1", "0.15", "0.2", "0.3"):
        proc = subprocess.run([sys.executable, "-c", script, str(slow_video), str(tmp_path), seconds],
                              capture_output=True, text=True, timeout=300)
        assert proc.stdout.split() == ["timeout", "sanitized"], (seconds, proc.stdout + proc.stderr[-2000:])


def test_tools_run_under_their_own_cap_not_the_process_budget():
    """ffmpeg and ffprobe get the tool cap (an address-space limit); the process budget lowered in the
    sanitizing process must not follow them into the child."""
    script = (
        "import sys\n"
        "from worker.budget import limit_process_memory\n"
        "from worker.formats.base import Limits\n"
        "from worker.tools import run_tool\n"
        "limit_process_memory(256 * 1024**2)\n"
        "probe = 'import resource; print(*resource.getrlimit(resource.RLIMIT_DATA), *resource.getrlimit(resource.RLIMIT_AS))'\n"
        "print(run_tool([sys.executable, '-c', probe], Limits(memory_bytes=3 * 1024**3), what='probe').stdout.decode())\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    data_soft, data_hard, as_soft, as_hard = map(int, proc.stdout.split())
    assert data_soft == data_hard and (data_soft == -1 or data_soft > 256 * 1024**2), proc.stdout
    assert as_soft == as_hard == 3 * 1024**3
