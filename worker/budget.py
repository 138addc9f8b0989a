"""Budgets of the sanitizing process itself: wall time per file and a memory bound.

The format walkers count what they read against ``Limits``; external tools get their own timeout
and cap (``worker/tools.py``). What neither covers is a Python-level walk or a Pillow decode that
is slow or hungry without breaking any single limit. These two budgets catch it:

- ``start_deadline(seconds)``: an interval timer (``ITIMER_REAL``) around one file. When it fires,
  ``FileTimeout`` is raised wherever Python code is running, and turned into ``timeout`` at the
  edge. It derives from BaseException so that a parser's ``except Exception`` cannot swallow it.
  Only on the main thread (signals are delivered there); elsewhere, and for a C call that does not
  return to Python, the memory bound and the worker's soft time limit are what is left.
- ``limit_process_memory(nbytes)``: ``RLIMIT_DATA`` (heap and private anonymous mappings: what a
  decode allocates) for the whole process, set once at the start of ``mediasan sanitize`` and of
  each worker pool child. Past it an allocation fails and Python raises ``MemoryError``, which the
  sanitizer reports as ``too_large`` naming this budget. ``RLIMIT_AS`` would be the wrong measure:
  thread stacks, malloc arenas and shared libraries reserve address space that is never used
  (a plain ``mediasan sanitize`` over the corpus peaks near 1 GiB of it with 400 MB resident).
  Only the soft limit is lowered: the ffmpeg children ``tools.py`` starts lift it back and run under
  their own cap (``MEDIASAN_TOOL_MEMORY_BYTES``, an address-space limit).
"""
from __future__ import annotations

import resource
import signal
import threading

from worker.errors import SanitizeError

TIMEOUT_SETTING = "MEDIASAN_FILE_TIMEOUT_S"
MEMORY_SETTING = "MEDIASAN_PROCESS_MEMORY_BYTES"
# RLIMIT_DATA counts the heap, not code and shared libraries (~100 MiB resident with every decoder
# loaded): 896 MiB of data keeps the process's resident peak under 1 GiB
DEFAULT_PROCESS_MEMORY_BYTES = 896 * 1024**2
DEFAULT_FILE_TIMEOUT_S = 120.0


class FileTimeout(BaseException):
    """The per-file wall-time budget ran out (raised by the SIGALRM handler)."""


def _on_alarm(signum, frame) -> None:
    raise FileTimeout()


class Deadline:
    """One file's wall-time budget, armed by ``start_deadline`` and always ``cancel``-ed in a finally."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        # off the main thread no signal arrives; and a timer already running (an enclosing deadline,
        # or the caller's own alarm) is left alone rather than replaced and then cancelled
        self.armed = (bool(seconds and seconds > 0) and threading.current_thread() is threading.main_thread()
                      and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
        self._previous = None
        if self.armed:
            self._previous = signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, seconds)

    def cancel(self) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)
            self.armed = False

    def error(self) -> SanitizeError:
        return SanitizeError("timeout", f"sanitizing ran past the per-file budget of {self.seconds:g} s "
                                        f"({TIMEOUT_SETTING})")


def start_deadline(seconds: float | None) -> Deadline:
    """Arm the per-file timer: after ``seconds`` of wall time, FileTimeout is raised in this thread.

    Does nothing for ``seconds`` None or <= 0, off the main thread, or while a timer already runs.
    """
    return Deadline(seconds)


def limit_process_memory(nbytes: int | None) -> None:
    """Lower this process's soft RLIMIT_DATA to ``nbytes`` (None or <= 0: leave it as it is).

    Inherited by children forked afterwards (the batch pool). Never raises the limit, and leaves the
    hard limit alone so that tool children can set their own.
    """
    if not nbytes or nbytes <= 0:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        nbytes = min(nbytes, hard)
    if soft == resource.RLIM_INFINITY or nbytes < soft:
        resource.setrlimit(resource.RLIMIT_DATA, (nbytes, hard))


def memory_exhausted() -> SanitizeError:
    """The error for a MemoryError while sanitizing: the input needs more than the budget in force."""
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    bound = "the memory available" if soft == resource.RLIM_INFINITY else f"{soft // (1 << 20)} MiB"
    return SanitizeError("too_large", f"the input needs more memory than the process budget of {bound} "
                                      f"({MEMORY_SETTING})")
