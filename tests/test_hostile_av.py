"""The audio/video hostile cases (fixtures/hostile_av.py) through `mediasan sanitize --json`, as a
user runs it: one process, cwd the folder of uploads, relative names (some named like ffmpeg URLs).

Every case gets one report with a documented code, never ``internal``; a case's expectation holds;
no copy holds the planted marker or coordinate in its raw bytes; no file takes more than 60 s.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import hostile_av
from fixtures.hostile import CANARY
from worker.errors import FAILING_CODES, REJECTING_CODES

REPO = Path(__file__).resolve().parents[1]
NEEDLES = (CANARY, b"40.7127", b"-74.0059", b"+40.7", b"40.712776", b"74.005974")
PER_FILE_S = 60.0


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile_av")
    cases = hostile_av.build(folder)
    names = [case.path.name for case in cases]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "sanitize", "--json", "--out", "out", *names],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reports, seconds, last = [], [], time.monotonic()
    for line in proc.stdout:
        if line.strip():
            reports.append(json.loads(line))
            now = time.monotonic()
            seconds.append(now - last)
            last = now
    proc.wait(timeout=60)
    return folder, cases, reports, seconds


def test_one_report_per_case_with_a_documented_code(outcome):
    folder, cases, reports, _ = outcome
    assert [r["input"] for r in reports] == [c.path.name for c in cases]
    for case, report in zip(cases, reports):
        if report["status"] == "sanitized":
            continue
        code = report["error"]["code"]
        assert code in REJECTING_CODES | FAILING_CODES and code != "internal", (case.what, report["error"])
        assert code != "verify_failed", (case.what, report["error"])


def test_each_case_meets_its_expectation(outcome):
    _, cases, reports, _ = outcome
    for case, report in zip(cases, reports):
        if case.expect:
            got = "sanitized" if report["status"] == "sanitized" else report["error"]["code"]
            assert got in case.expect, (case.path.name, case.what, report)


def test_planted_cases_are_sanitized_and_no_copy_holds_a_marker(outcome):
    folder, cases, reports, _ = outcome
    for case, report in zip(cases, reports):
        if case.planted and not case.expect:
            # a planted, otherwise sound file must still reach the agency, minus the plant
            assert report["status"] == "sanitized", (case.path.name, case.what, report["error"])
        if report["output"]:
            data = (folder / report["output"]).read_bytes()
            found = [n for n in NEEDLES if n in data]
            assert not found, (case.path.name, case.what, found)


def test_no_case_takes_long(outcome):
    _, cases, _, seconds = outcome
    slow = [(c.path.name, round(s, 1)) for c, s in zip(cases, seconds) if s > PER_FILE_S]
    assert not slow
