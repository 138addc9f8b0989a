"""`mediasan sanitize`, and the `mediasan` console entry that runs it without typer (#10, start time).

Sanitizing one file from a shell should start about as fast as ExifTool does. typer, click, rich and
pydantic(-settings) together cost more than ExifTool's whole run, and `sanitize` needs none of them:
its options are defined here, once, with the standard library's argparse. `main` (the console
script) runs `sanitize` directly and hands every other command to the typer app in worker/cli.py,
whose `sanitize` entry forwards its arguments here, so `mediasan --help` lists it and
`mediasan sanitize --help` prints this parser's help whichever way it is reached.

Building that parser costs a one-file run more than anything of ours but Pillow (argparse, gettext,
locale and shutil: a tenth of its start), so the usual call (``PATHS… --out DIR [--json] [--jobs
N]``) is read by ``common_call`` without it; anything else (--help, a mistake, an abbreviation,
``--out=DIR``) goes to argparse, which stays the definition. tests/test_startup.py holds the two
readings equal.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SUMMARY = "Write the agency copy of each input into OUT, in-process: no queue, no database."


def parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(prog="mediasan sanitize", description=SUMMARY)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATHS", help="Files to sanitize.")
    p.add_argument("--out", required=True, type=Path, help="Folder for the agency copies.")
    p.add_argument("--json", dest="as_json", action="store_true",
                   help="One JSON report a line per input, in input order.")
    p.add_argument("--jobs", "-j", type=_positive_int, default=None,
                   help="Files sanitized at once (default: the CPUs this process may use).")
    return p


class Arguments:
    """What ``parser`` reads, for the calls ``common_call`` reads without it."""

    __slots__ = ("paths", "out", "as_json", "jobs")

    def __init__(self, paths: list[Path], out: Path, as_json: bool, jobs: int | None):
        self.paths, self.out, self.as_json, self.jobs = paths, out, as_json, jobs


def common_call(argv: list[str]) -> Arguments | None:
    """``argv`` as ``parser`` reads it when it is the usual call: one run of paths, each option
    spelled out with its value as the next argument. None for anything else, for argparse to read
    (and to answer with help or a usage error)."""
    paths: list[str] = []
    out, as_json, jobs = None, False, None
    paths_ended = False
    args = iter(argv)
    for arg in args:
        if arg == "--json":
            as_json = True
        elif arg in ("--out", "--jobs", "-j"):
            value = next(args, None)
            if value is None or value.startswith("-"):
                return None
            if arg == "--out":
                out = value
            elif value.isascii() and value.isdigit() and int(value) >= 1:
                jobs = int(value)
            else:
                return None
        elif arg.startswith("-"):
            return None
        elif paths_ended:   # argparse takes one run of paths ("a --json b" is its usage error)
            return None
        else:
            paths.append(arg)
            continue
        paths_ended = bool(paths)
    if out is None or not paths:
        return None
    return Arguments([Path(p) for p in paths], Path(out), as_json, jobs)


def _positive_int(text: str) -> int:
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def configured() -> bool:
    """Whether anything could change a setting: a MEDIASAN_ variable (any case) or a .env file here."""
    return any(name.upper().startswith("MEDIASAN_") for name in os.environ) or Path(".env").exists()


def sanitize_settings():
    """(work folder, limits, log format) for this run.

    With nothing configured these are the Settings defaults, known without importing pydantic (whose
    import alone costs more than ExifTool's start); tests/test_startup.py holds them equal to
    `Settings()`'s. Anything configured goes through the one Settings class and its validation.
    """
    from worker.formats.base import Limits

    if not configured():
        return (Path(".mediasan").expanduser().resolve() / "work").resolve(), Limits(), "text"
    from worker.settings import get_settings

    settings = get_settings()
    return settings.resolved_work_dir(), settings.limits(), settings.log_format


def process_memory_bytes() -> int:
    """The process memory budget (worker/budget.py), by the same rule as ``sanitize_settings``."""
    from worker.budget import DEFAULT_PROCESS_MEMORY_BYTES

    if not configured():
        return DEFAULT_PROCESS_MEMORY_BYTES
    from worker.settings import get_settings

    return get_settings().process_memory_bytes


def run(argv: list[str]) -> int:
    """`mediasan sanitize ARGV…`: 0 when every input was sanitized, 1 otherwise, 2 on a usage error."""
    args = common_call(argv)
    if args is None:
        try:
            args = parser().parse_args(argv)
        except SystemExit as e:          # --help (0) or a usage error (2): argparse has printed it
            return int(e.code or 0)
    from worker import logs, workdir
    from worker.batch import default_jobs, sanitize_many
    from worker.budget import limit_process_memory

    work_dir, limits, log_format = sanitize_settings()
    limit_process_memory(process_memory_bytes())     # before the pool forks: each child inherits it
    logs.configure(log_format, "WARNING")     # what the typer callback does for every other command
    args.out.mkdir(parents=True, exist_ok=True)
    all_ok = True
    # any temp file of this run lands in a work folder of its own, gone when the command ends
    with workdir.process_scope(work_dir):
        for report in sanitize_many(args.paths, args.out, limits, args.jobs or default_jobs()):
            all_ok &= report["status"] == "sanitized"
            if args.as_json:
                sys.stdout.write(json.dumps(report) + "\n")
            else:
                sys.stderr.write(_line(report) + "\n")
            sys.stdout.flush()
    return 0 if all_ok else 1


def exit_now(status: int) -> None:
    """End the process once ``sanitize`` is done, without the interpreter's teardown.

    Tearing down every module (Pillow's among them) and collecting what they hold is a tenth of a
    one-file run (#10), and nothing of the command needs it: each copy is written, verified and
    renamed, the work folder is removed, and the reports are flushed here. What was registered to
    run at exit still runs (logging's shutdown flushes its handlers).
    """
    import atexit

    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def _line(report: dict) -> str:
    if report["status"] == "sanitized":
        where = f" location moved ({report['location']['source']})" if report["location"] else ""
        return f"sanitized {report['input']} -> {report['output']}{where}"
    return f"{report['status']} {report['input']}: {report['error']['code']}: {report['error']['message']}"


def main() -> None:
    """The `mediasan` console script."""
    if sys.argv[1:2] == ["sanitize"]:
        exit_now(run(sys.argv[2:]))
    from worker.cli import app

    app()


if __name__ == "__main__":
    main()
