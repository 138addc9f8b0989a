"""`mediasan sanitize` over many files: every core, reports in input order.

Each input is sanitized in a pool process (forked from the CLI, which holds no socket) and its
report comes back as the JSON contract's dict, in the order the inputs were given. One input, or
``jobs=1``, runs in this process: no pool to start for the common single-file call.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

from worker.formats.base import Limits


def default_jobs() -> int:
    """The CPUs this process may run on (a container's or taskset's share, not the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not Linux
        return max(1, os.cpu_count() or 1)


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Each copy is named after its input's stem; clashes get a counter, so no copy overwrites another."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem, n = path.stem or "media", 1
        candidate = stem
        while candidate in used:
            n += 1
            candidate = f"{stem}-{n}"
        used.add(candidate)
        stems.append(candidate)
    return stems


def sanitize_one(path: Path, dst_stem: Path, limits: Limits) -> dict:
    """One input's report as the JSON contract's dict (plain data: it crosses a process boundary)."""
    from worker.errors import SanitizeError
    from worker.sanitizer import Report, sanitize_file

    if not path.is_file():
        return Report(input=str(path), status="rejected",
                      error=SanitizeError("unsupported_format", "not a readable file")).as_json()
    return sanitize_file(path, dst_stem, limits).as_json()


def sanitize_many(paths: Sequence[Path], out: Path, limits: Limits, jobs: int) -> Iterator[dict]:
    """Reports for ``paths`` in input order, computed ``jobs`` at a time."""
    stems = [out / stem for stem in unique_stems(paths)]
    jobs = max(1, min(jobs, len(paths)))
    if jobs == 1:
        for path, stem in zip(paths, stems):
            yield sanitize_one(path, stem, limits)
        return
    # fork: the CLI process has no connection to share, and forking skips re-importing everything;
    # one task a child at a time (chunksize 1) so a slow video does not hold a queue of small photos
    from concurrent.futures import ProcessPoolExecutor   # here: a one-file run starts no pool (#10, start time)
    from multiprocessing import get_context

    # imported once here, before the fork, rather than once in every child
    import worker.sanitizer  # noqa: F401

    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("fork")) as pool:
        yield from pool.map(sanitize_one, paths, stems, [limits] * len(paths), chunksize=1)
