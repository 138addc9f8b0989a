"""`mediasan sanitize`, and the `mediasan` console entry that runs it without typer (#10, start time).

Sanitizing one file from a shell should start about as fast as ExifTool does. typer, click, rich and
pydantic(-settings) together cost more than ExifTool's whole run, and `sanitize` needs none of them:
its options are defined here, once, with the standard library's argparse. `main` (the console
script) runs `sanitize` directly and hands every other command to the typer app in worker/cli.py,
whose `sanitize` entry forwards its arguments here, so `mediasan --help` lists it and
`mediasan sanitize --help` prints this parser's help whichever way it is reached.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

SUMMARY = "Write the agency copy of each input into OUT, in-process: no queue, no database."


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mediasan sanitize", description=SUMMARY)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATHS", help="Files to sanitize.")
    p.add_argument("--out", required=True, type=Path, help="Folder for the agency copies.")
    p.add_argument("--json", dest="as_json", action="store_true",
                   help="One JSON report a line per input, in input order.")
    p.add_argument("--jobs", "-j", type=_positive_int, default=None,
                   help="Files sanitized at once (default: the CPUs this process may use).")
    return p


def _positive_int(text: str) -> int:
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


def _line(report: dict) -> str:
    if report["status"] == "sanitized":
        where = f" location moved ({report['location']['source']})" if report["location"] else ""
        return f"sanitized {report['input']} -> {report['output']}{where}"
    return f"{report['status']} {report['input']}: {report['error']['code']}: {report['error']['message']}"


def main() -> None:
    """The `mediasan` console script."""
    if sys.argv[1:2] == ["sanitize"]:
        sys.exit(run(sys.argv[2:]))
    from worker.cli import app

    app()


if __name__ == "__main__":
    main()
