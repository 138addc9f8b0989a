"""Every hostile photo case (fixtures/hostile_photo.py) through sanitize_file, in this process.

One report each with a documented code (never ``internal``), the outcome the case expects, no
planted canary or coordinate in any copy's bytes or in what ExifTool reads from it, and each fast.
The shared driver (fixtures/hostile.py) runs the same cases through the CLI under time and memory
limits; this test keeps the photo families honest on their own.
"""
from __future__ import annotations

import json
import struct
import subprocess
import time
from pathlib import Path

import pytest

from fixtures.hostile import CANARY
from fixtures.hostile_photo import build
from worker.errors import REJECTING_CODES
from worker.formats.base import Limits
from worker.sanitizer import sanitize_file

# the coordinate in the forms a copy could hold it: decimal text, XMP's "D,M.mmN", EXIF rationals
NEEDLES = (CANARY, b"40.7127", b"74.0059", b"40,42.76", b"74,0.35",
           struct.pack(">II", 40, 1) + struct.pack(">II", 42, 1), struct.pack("<II", 40, 1) + struct.pack("<II", 42, 1))
SECONDS_PER_CASE = 15


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile_photo")
    results = []
    (folder / "out").mkdir()
    for case in build(folder / "in"):
        started = time.monotonic()
        report = sanitize_file(case.path, folder / "out" / case.path.stem, Limits())
        results.append((case, report, time.monotonic() - started))
    return results


def test_every_case_ends_in_a_documented_outcome(outcomes):
    wrong = []
    for case, report, _ in outcomes:
        outcome = report.status if report.status == "sanitized" else report.error.code
        if outcome != "sanitized" and outcome not in REJECTING_CODES:
            wrong.append(f"{case.path.name} ({case.what}): {outcome} {report.error.message[:200]}")
        elif case.expect and outcome not in case.expect:
            message = report.error.message[:200] if report.error else ""
            wrong.append(f"{case.path.name} ({case.what}): {outcome}, expected {sorted(case.expect)} {message}")
    assert not wrong, "\n".join(wrong)
    assert len(outcomes) >= 50


def test_no_copy_holds_the_canary_or_the_coordinate(outcomes):
    copies = [Path(r.output) for _, r, _ in outcomes if r.output]
    leaks = [f"{p.name}: {n!r}" for p in copies for n in NEEDLES if n in p.read_bytes()]
    tags = subprocess.run(["exiftool", "-a", "-u", "-b", "-j", *map(str, copies)], capture_output=True, check=False).stdout
    read_back = json.dumps(json.loads(tags)).encode()
    leaks += [f"ExifTool: {n!r}" for n in NEEDLES[:5] if n in read_back]
    assert not leaks, leaks


def test_planted_cases_are_sanitized_and_their_fix_found(outcomes):
    planted = [(c, r) for c, r, _ in outcomes if c.planted]
    assert all(r.status == "sanitized" for _, r in planted)
    located = [c.what for c, r in planted if r.found.fix and abs(r.found.fix.lat - 40.712776) < 1e-3]
    # where the fix hides: EXIF, XMP, extended XMP, the MPO's second image, the motion photo's video, ...
    assert {"extended XMP carrying the fix and the canary", "MPO-like second image carrying EXIF GPS after EOI",
            "motion photo: a video with ISO 6709 location after EOI"} <= set(located)


def test_every_case_is_fast(outcomes):
    slow = [f"{c.path.name}: {seconds:.1f} s" for c, _, seconds in outcomes if seconds > SECONDS_PER_CASE]
    assert not slow, slow
