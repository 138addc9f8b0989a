"""worker/formats/photo's read memory: each file read once for its walks and the verifier's proof."""
from __future__ import annotations

import os

from worker.formats import photo


def test_a_file_is_read_once_and_again_when_it_changes(tmp_path):
    upload, copy, other = tmp_path / "upload", tmp_path / "copy", tmp_path / "other"
    upload.write_bytes(b"upload")
    copy.write_bytes(b"copy")
    other.write_bytes(b"other")
    photo.release_file()
    first = photo.file_bytes(upload)
    copy_bytes = photo.file_bytes(copy)
    assert copy_bytes == b"copy"
    assert photo.file_bytes(upload) is first              # the upload and its copy are both remembered
    walks = []
    walk = lambda p: walks.append(p) or len(photo.file_bytes(p))   # noqa: E731 - a walk that reads the bytes
    assert photo.once_per_file(upload, walk) == photo.once_per_file(upload, walk) == 6 and len(walks) == 1
    upload.write_bytes(b"changed upload")
    os.utime(upload, ns=(1, 1))
    changed = photo.file_bytes(upload)
    assert changed == b"changed upload"                   # a changed file is read again
    assert photo.file_bytes(copy) is copy_bytes
    photo.file_bytes(other)                                # a third file: the oldest (the upload) goes
    assert photo.file_bytes(copy) is copy_bytes
    assert photo.file_bytes(upload) is not changed


def test_release_read_keeps_the_bytes_and_release_file_forgets_them(tmp_path):
    upload = tmp_path / "upload"
    upload.write_bytes(b"upload")
    photo.release_file()
    data = photo.file_bytes(upload)
    walks = []
    walk = lambda p: walks.append(p)   # noqa: E731
    photo.once_per_file(upload, walk)
    photo.release_read()
    assert photo.file_bytes(upload) is data               # the verifier's proof reads these next
    photo.once_per_file(upload, walk)
    assert len(walks) == 2                                 # the walk was forgotten
    photo.release_file()
    assert photo.file_bytes(upload) is not data
