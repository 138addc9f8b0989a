"""The same question about the same bytes, asked once (#10).

The rebuild asks about the copy it wrote (ffprobe after a remux or a neutralising, a decode sample
of an audio copy, the full decode of a re-encoded JPEG in its quality check), and the verifier then
asks the same question of the same bytes. The answer is kept here, keyed by the question and by the
file's identity (device, inode, size, modification and change times, and a hash of its first and
last 64 KiB), and handed to the next asker once: the check still happens, once. Only answers that
passed are kept (a failure ends the job anyway); a few at most, so a job that stopped between the
two asks leaves nothing that grows.
"""
from __future__ import annotations

import os
from pathlib import Path

ANSWERS: dict[tuple, object] = {}
MAX_ANSWERS = 4
FINGERPRINT_BYTES = 1 << 16


def _file_identity(path: Path) -> tuple | None:
    import hashlib      # here: a file whose answers are not shared never loads OpenSSL's hashes

    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            digest = hashlib.sha256(f.read(FINGERPRINT_BYTES))
            if st.st_size > FINGERPRINT_BYTES:
                f.seek(max(st.st_size - FINGERPRINT_BYTES, FINGERPRINT_BYTES))
                digest.update(f.read(FINGERPRINT_BYTES))
    except OSError:
        return None
    return (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            digest.hexdigest())


def remember(question: tuple, path: Path, answer: object) -> None:
    """Keep the passing ``answer`` to ``question`` about the bytes at ``path``, for one more ask."""
    identity = _file_identity(path)
    if identity is None:
        return
    while len(ANSWERS) >= MAX_ANSWERS:
        ANSWERS.pop(next(iter(ANSWERS)))
    ANSWERS[(question, identity)] = answer


def recall(question: tuple, path: Path) -> object | None:
    """The answer given to ``question`` about these very bytes, once; None when there is none."""
    if not ANSWERS:
        return None
    identity = _file_identity(path)
    return None if identity is None else ANSWERS.pop((question, identity), None)
