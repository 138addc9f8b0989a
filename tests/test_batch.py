"""worker/batch.py's forked workers: input order, every input once, and a worker that dies costs one input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from fixtures.jpeg import android_phone_jpeg, iphone_like_jpeg
from worker import batch
from worker.formats.base import Limits


def photos(folder: Path, n: int) -> list[Path]:
    (folder / "out").mkdir()   # the CLI makes --out before the batch starts
    paths = []
    for i in range(n):
        path = folder / f"{i:02d}-{'a' if i % 2 else 'b'}.jpg"
        (android_phone_jpeg if i % 2 else iphone_like_jpeg)(path)
        paths.append(path)
    return paths


def test_more_inputs_than_workers_come_back_once_each_in_input_order(tmp_path):
    inputs = photos(tmp_path, 9) + [tmp_path / "missing.jpg"]
    reports = list(batch.sanitize_many(inputs, tmp_path / "out", Limits(), jobs=3))
    assert [r["input"] for r in reports] == [str(p) for p in inputs]
    assert [r["status"] for r in reports] == ["sanitized"] * 9 + ["rejected"]
    assert len({r["output"] for r in reports[:9]}) == 9
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".partial")]


def test_an_input_that_kills_its_workers_fails_and_the_others_finish(tmp_path, monkeypatch):
    """A crash inside a decoder (a signal, not an exception) takes its worker down, and the one
    that tries the input again: the input is reported failed, its unverified copy is gone, new
    workers take over, and no other input is lost or reordered."""
    inputs = photos(tmp_path, 6)
    doomed = inputs[2]
    sanitize_one = batch.sanitize_one

    def crashing(path: Path, dst_stem: Path, limits: Limits) -> dict:
        if path == doomed:
            (tmp_path / "out" / f"{doomed.stem}.partial").write_bytes(b"half a copy")
            os.kill(os.getpid(), signal.SIGKILL)
        return sanitize_one(path, dst_stem, limits)

    monkeypatch.setattr(batch, "sanitize_one", crashing)   # the forked workers inherit it
    reports = list(batch.sanitize_many(inputs, tmp_path / "out", Limits(), jobs=2))
    assert [r["input"] for r in reports] == [str(p) for p in inputs]
    assert [r["status"] for r in reports] == ["sanitized"] * 2 + ["failed"] + ["sanitized"] * 3
    assert reports[2]["error"]["code"] == "internal" and "signal 9" in reports[2]["error"]["message"]
    assert reports[2]["output"] is None
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()) == [".jpg"] * 5


def test_a_worker_started_after_another_has_its_last_input_starts_cleanly(tmp_path, monkeypatch):
    """The other worker has been told there is nothing left (its task pipe closed), and has not
    exited yet, when the first one dies: the worker that replaces it must not trip over that closed pipe, and tries the input
    again (it dies of the same crash: the report names the signal, not a fault of the worker)."""
    import time

    doomed, other = photos(tmp_path, 2)
    sanitize_one = batch.sanitize_one

    def crashing(path: Path, dst_stem: Path, limits: Limits) -> dict:
        if path == doomed:
            time.sleep(0.5)                # the other input is done, and its worker idle, first
            os.kill(os.getpid(), signal.SIGKILL)
        return sanitize_one(path, dst_stem, limits)

    serve = batch._Workers._serve

    def slow_to_exit(self, tasks: int, results: int) -> None:
        serve(self, tasks, results)
        time.sleep(1.5)                    # told there is nothing left, it has not exited yet

    monkeypatch.setattr(batch, "sanitize_one", crashing)
    monkeypatch.setattr(batch._Workers, "_serve", slow_to_exit)
    reports = list(batch.sanitize_many([doomed, other], tmp_path / "out", Limits(), jobs=2))
    assert [r["status"] for r in reports] == ["failed", "sanitized"]
    assert "twice (killed by signal 9)" in reports[0]["error"]["message"], reports[0]["error"]


def test_a_worker_that_dies_between_inputs_loses_none(tmp_path, monkeypatch):
    """A worker gone right after sending a report (its next input cannot even be handed to it):
    the report counts, and its next input goes to a new worker."""
    inputs = photos(tmp_path, 6)
    parent, write_all = os.getpid(), batch._write_all

    def dying_after_second_report(fd: int, data: bytes) -> None:
        write_all(fd, data)
        if os.getpid() != parent:
            sent = getattr(dying_after_second_report, "sent", 0) + 1
            dying_after_second_report.sent = sent
            if sent == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(batch, "_write_all", dying_after_second_report)
    reports = list(batch.sanitize_many(inputs, tmp_path / "out", Limits(), jobs=2))
    assert [r["input"] for r in reports] == [str(p) for p in inputs]
    assert [r["status"] for r in reports] == ["sanitized"] * 6


def test_a_fifo_first_is_rejected_not_waited_on(tmp_path):
    """The parent looks at the first input before its workers fork; a FIFO there must not block it."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    inputs = [fifo, *photos(tmp_path, 2)]
    proc = subprocess.run([sys.executable, "-m", "worker.cli_sanitize", "sanitize", "--json", "-j", "2",
                           "--out", str(tmp_path / "out"), *map(str, inputs)],
                          capture_output=True, text=True, timeout=120)
    reports = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["status"] for r in reports] == ["rejected", "sanitized", "sanitized"], proc.stderr[-2000:]


def test_a_batch_left_early_ends_its_workers(tmp_path):
    inputs = photos(tmp_path, 6)
    reports = batch.sanitize_many(inputs, tmp_path / "out", Limits(), jobs=2)
    assert next(reports)["status"] == "sanitized"
    reports.close()   # the consumer stopped (a closed stdout): the workers are told to stop and are reaped
    assert not _children_of(os.getpid())


def _children_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in children.read_text().split()] if children.exists() else []
