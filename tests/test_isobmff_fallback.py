"""The in-place ISO-BMFF fallback neutralises every byte it does not understand, and the verifier
reads each of those places: ftyp brands, boxes inside stbl, dref entry strings, sample entry
vendor fields. Also: what the verifier's decode and the input check refuse."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fixtures import hostile_av
from fixtures.hostile import CANARY
from worker.formats.av.av_inspect import box_findings, inspect_copy
from worker.formats.av.av_rebuild import apply_plan, plan_neutralise
from worker.formats.base import Limits
from worker.sanitizer import sanitize_file
from worker.tools import STARTS

NEEDLES = (CANARY, b"40.7127", b"-74.0059", b"+40.7")


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fallback")
    bases = hostile_av._bases(folder)
    cases = hostile_av._iso_cases(bases, folder)
    return {case.path.name: case.path for case in cases} | {"base.mp4": bases["mp4"]}


@pytest.mark.parametrize("name,finding", [
    ("ftyp_brands.mp4", "is not a known brand"),
    ("stbl_unknown_box.mp4", "in a sample table"),
    ("dref_string.mp4", "holds a location string"),
    ("vendor_appl.mov", "names an encoder vendor"),
])
def test_verifier_reads_each_place_and_the_plan_empties_it(name, finding, planted, tmp_path):
    src = planted[name]
    assert any(finding in f for f in box_findings(src)), box_findings(src)
    copy = tmp_path / name
    shutil.copyfile(src, copy)
    with open(src, "rb") as f:
        plan = plan_neutralise(f)
    apply_plan(copy, plan)
    assert box_findings(copy) == []
    data = copy.read_bytes()
    assert not [n for n in NEEDLES if n in data]
    assert copy.stat().st_size == src.stat().st_size


def test_neutralised_copy_still_decodes_and_passes_the_whole_verifier(planted, tmp_path):
    """All four plants at once are not needed: the stbl case is the one ffmpeg must still play."""
    src = planted["stbl_unknown_box.mp4"]
    copy = tmp_path / "neutral.mp4"
    shutil.copyfile(src, copy)
    with open(src, "rb") as f:
        apply_plan(copy, plan_neutralise(f))
    assert inspect_copy(copy) == []


def test_a_copy_that_does_not_decode_is_refused_by_the_verifier(planted, tmp_path):
    copy = tmp_path / "broken.mp4"
    data = bytearray(planted["base.mp4"].read_bytes())
    mdat = data.find(b"mdat")
    for at in range(mdat + 200, mdat + 2000, 97):      # damage the first frames' slices
        data[at] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert any("does not decode" in f for f in inspect_copy(copy))


def test_a_broken_input_is_corrupt_before_any_copy_and_tool_starts_are_few(planted, tmp_path):
    data = bytearray(planted["base.mp4"].read_bytes())
    mdat = data.find(b"mdat")
    for at in range(mdat + 200, mdat + 2000, 97):
        data[at] ^= 0xFF
    src = tmp_path / "flipped.mp4"
    src.write_bytes(bytes(data))
    before = sum(STARTS.values())
    report = sanitize_file(src, tmp_path / "copy", Limits())
    assert (report.status, report.error.code) == ("rejected", "corrupt"), report.as_json()
    assert "checking the input" in report.error.message
    # no probe (our walk reads the tracks), one run: the decode sample (the copy of a plain MP4 is
    # our box copy, written while it runs), which names the cause
    assert sum(STARTS.values()) - before == 1
    before = sum(STARTS.values())
    report = sanitize_file(planted["base.mp4"], tmp_path / "good", Limits())
    assert report.status == "sanitized", report.as_json()
    # one run that decodes the input's sample while our box copy is written; our walk reads both
    # files where ffprobe did, and the copy is proved by bytes against the input, not decoded again
    assert sum(STARTS.values()) - before == 1
