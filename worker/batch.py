"""`mediasan sanitize` over many files: every core, reports in input order.

Each input is sanitized in a worker process forked from the CLI (which holds no socket) and its
report comes back as the JSON contract's dict, in the order the inputs were given. One input, or
``jobs=1``, runs in this process: no worker to start for the common single-file call.

The workers are plain ``os.fork`` children, each fed one input index at a time through a pipe and
answering with the pickled report through another: a worker that finishes gets the next input, so
a slow video never holds a queue of small photos. That is what the ProcessPoolExecutor here did,
without its import (concurrent.futures and multiprocessing: a tenth of the start of a batch), its
feeder and manager threads and its per-task pickling of the arguments, which together cost a batch
of small JPEGs a third more CPU than sanitizing them in one process (#10).

A worker that dies (a decoder's crash, a kill) is replaced, and the input it held is tried once
more on another worker: a second death reports it failed, and its unverified ``.partial`` copy is
removed. (The pool ended the whole batch with BrokenProcessPool.)
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterator, Sequence

from worker.errors import SanitizeError
from worker.formats.base import Limits

_INDEX = struct.Struct(">I")    # an input's index, parent to worker
_LENGTH = struct.Struct(">I")   # the length of the pickled report that follows, worker to parent
_READABLE = 0x001 | 0x008 | 0x010   # POLLIN | POLLERR | POLLHUP: a report, or the worker is gone


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
    yield from _Workers(paths, stems, limits).reports(jobs)


class _Worker:
    """The parent's end of one forked worker: its pid, its two pipes, the input it is working on."""

    __slots__ = ("pid", "tasks", "results", "held", "status")

    def __init__(self, pid: int, tasks: int, results: int):
        self.pid, self.tasks, self.results = pid, tasks, results
        self.held: int | None = None      # the index of the input it is sanitizing
        self.status = 0                   # its wait status, once reaped


class _Workers:
    def __init__(self, paths: Sequence[Path], stems: list[Path], limits: Limits):
        self.paths, self.stems, self.limits = paths, stems, limits
        self.by_fd: dict[int, _Worker] = {}     # result pipe -> worker
        self.next = 0                           # the next input no worker has been given
        self.again: list[int] = []              # inputs whose worker died: each is tried once more
        self.retried: set[int] = set()
        self.poller = None                      # select.poll() of the result pipes, made in reports()

    def reports(self, jobs: int) -> Iterator[dict]:
        import pickle
        import select

        # imported once here, before the fork, rather than once in every worker: the sanitizer,
        # the first input's family and, for a photo, the readers photos need
        import worker.sanitizer  # noqa: F401
        from worker import formats
        from worker.formats.photo import import_readers

        first = self.paths[0]
        try:
            # a regular file only: reading a FIFO's head here could wait for ever
            if first.is_file() and formats.identify(first).kind == "photo":
                import_readers()
        except (SanitizeError, OSError):
            pass   # the first input's own worker will say what is wrong with it

        self.poller = select.poll()   # poll, not select: no limit on descriptor numbers
        done: dict[int, dict] = {}
        emitted = 0
        try:
            for _ in range(jobs):
                self._give(self._start())
            while emitted < len(self.paths):
                if emitted in done:
                    yield done.pop(emitted)
                    emitted += 1
                    continue
                for fd, _event in self.poller.poll():
                    worker = self.by_fd[fd]
                    record = _read_record(fd)
                    if record is None:      # the worker died; a new one takes over
                        self._reap(worker)
                        if worker.held is not None:
                            failed = self._died(worker)
                            if failed is not None:
                                done[worker.held] = failed
                        if self.again or self.next < len(self.paths):
                            self._give(self._start())
                        continue
                    done[worker.held] = pickle.loads(record)
                    self._give(worker)
        finally:
            for worker in list(self.by_fd.values()):
                self._reap(worker)

    def _start(self) -> _Worker:
        tasks_r, tasks_w = os.pipe()
        results_r, results_w = os.pipe()
        pid = os.fork()
        if pid == 0:   # the worker: never returns into the parent's frames
            code = 1
            try:
                # the other workers' pipe ends: held open here, they would never see end-of-file
                for other in self.by_fd.values():
                    if other.tasks >= 0:     # a worker given its last input has its task pipe closed
                        os.close(other.tasks)
                    os.close(other.results)
                os.close(tasks_w)
                os.close(results_r)
                self._serve(tasks_r, results_w)
                code = 0
            except BrokenPipeError:
                pass   # the parent stopped reading: the batch was abandoned
            except Exception:
                import traceback

                traceback.print_exc()   # a fault of the worker itself (an input's is in its report)
            finally:
                os._exit(code)
        os.close(tasks_r)
        os.close(results_w)
        worker = _Worker(pid, tasks_w, results_r)
        self.by_fd[results_r] = worker
        self.poller.register(results_r, _READABLE)
        return worker

    def _serve(self, tasks: int, results: int) -> None:
        import pickle

        while True:
            index = _read_exactly(tasks, _INDEX.size)
            if index is None:   # end of file: no more inputs
                return
            (i,) = _INDEX.unpack(index)
            report = pickle.dumps(sanitize_one(self.paths[i], self.stems[i], self.limits))
            _write_all(results, _LENGTH.pack(len(report)) + report)

    def _give(self, worker: _Worker) -> None:
        """The next input to ``worker``; with none left, end of file on its task pipe tells it to exit."""
        if self.again:
            worker.held = self.again.pop()
        elif self.next < len(self.paths):
            worker.held = self.next
            self.next += 1
        else:
            worker.held = None
            self._close_tasks(worker)
            return
        try:
            _write_all(worker.tasks, _INDEX.pack(worker.held))
        except BrokenPipeError:
            pass   # it died after its last report: the end of file read next hands the input on

    def _close_tasks(self, worker: _Worker) -> None:
        if worker.tasks >= 0:
            os.close(worker.tasks)
            worker.tasks = -1

    def _reap(self, worker: _Worker) -> None:
        self._close_tasks(worker)
        self.by_fd.pop(worker.results, None)
        self.poller.unregister(worker.results)
        os.close(worker.results)
        _, worker.status = os.waitpid(worker.pid, 0)

    def _died(self, worker: _Worker) -> dict | None:
        """The failed report of the input a dead worker held; None the first time, when the input
        is tried again on another worker (the worker may have died of something else: a kill, or
        right after its last report, before it read this input)."""
        from worker.errors import SanitizeError
        from worker.sanitizer import Report, partial_path

        index = worker.held
        # an unverified copy must not stay beside the verified ones
        partial_path(self.stems[index]).unlink(missing_ok=True)
        if index not in self.retried:
            self.retried.add(index)
            self.again.append(index)
            return None
        how = os.waitstatus_to_exitcode(worker.status)
        ended = f"killed by signal {-how}" if how < 0 else f"exited with status {how}"
        return Report(input=str(self.paths[index]), error=SanitizeError(
            "internal", f"the worker processes sanitizing it ended, twice ({ended})")).as_json()


def _read_exactly(fd: int, n: int) -> bytes | None:
    """``n`` bytes from a pipe, or None at end of file (the writer is gone)."""
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_record(fd: int) -> bytes | None:
    head = _read_exactly(fd, _LENGTH.size)
    if head is None:
        return None
    return _read_exactly(fd, _LENGTH.unpack(head)[0])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
