"""Inputs named like ffmpeg URLs are sanitized as the files they are: no connection, no other file read.

`mediasan sanitize *` in a folder of uploads hands ffmpeg whatever the uploads are called; ffmpeg
reads names as URLs (``tcp:``, ``file:``, ``subfile,…:``, ``concat:``). Run as a user runs it: one
subprocess, cwd the uploads folder, relative names; a listening socket must see no connection.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import video
from tests.readback import stream_hashes

REPO = Path(__file__).resolve().parents[1]


def sanitize_in(folder: Path, names: list[str]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "sanitize", "--json", "--out", "out", *names],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [r["input"] for r in reports] == names, proc.stderr[-2000:]
    return reports


@pytest.fixture()
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def connections(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_inputs_named_like_urls_are_read_as_themselves(tmp_path, listener):
    port = listener.getsockname()[1]
    clip, other = tmp_path / "a.mp4", tmp_path / "other.mp4"
    video.android_like_mp4(clip)
    video.iphone_like_mov(other)                 # another file, different streams
    names = [f"tcp:127.0.0.1:{port}", "file:other.mp4", "subfile,,start,0,end,0,,:other.mp4",
             "concat:a.mp4|a.mp4"]
    for name in names:
        shutil.copyfile(clip, tmp_path / name)
    reports = sanitize_in(tmp_path, names)
    assert connections(listener) == 0
    expected = stream_hashes(clip)
    for report in reports:
        assert report["status"] == "sanitized", report
        copy = tmp_path / report["output"]
        # the copy holds the named file's own streams, never other.mp4's nor a.mp4 twice
        assert stream_hashes(copy) == expected, report["input"]


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def test_reference_movies_are_refused_without_fetching(tmp_path, listener):
    port = listener.getsockname()[1]
    url = f"http://127.0.0.1:{port}/movie.mp4".encode()
    clip = tmp_path / "clip.mp4"
    video.android_like_mp4(clip)
    # QuickTime's reference movie: moov/rmra/rmda/rdrf naming a URL
    rdrf = _box(b"rdrf", b"\0\0\0\0" + b"url " + struct.pack(">I", len(url) + 1) + url + b"\0")
    reference = tmp_path / "reference.mov"
    shutil.copyfile(clip, reference)
    video.append_to_moov(reference, _box(b"rmra", _box(b"rmda", rdrf)))
    # an external data reference: dref url without the self-contained flag, naming a URL
    data = bytearray(clip.read_bytes())
    at = data.find(b"url ", data.find(b"dref"))
    data[at + 7] &= 0xFE
    external = tmp_path / "external.mp4"
    external.write_bytes(bytes(data))
    reports = sanitize_in(tmp_path, ["reference.mov", "external.mp4"])
    assert connections(listener) == 0
    assert [(r["status"], r["error"]["code"]) for r in reports] == [("rejected", "unsupported_format")] * 2
