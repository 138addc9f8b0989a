"""`mediasan`: the command line. Each command parses arguments and calls one service function."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The 311 media sanitizer.")


def _settings():
    from worker.settings import get_settings
    return get_settings()


@app.command()
def sanitize(
    paths: List[Path] = typer.Argument(..., exists=False, help="Files to sanitize."),
    out: Path = typer.Option(..., "--out", help="Folder for the agency copies."),
    as_json: bool = typer.Option(False, "--json", help="One JSON report a line per input."),
) -> None:
    """Write the agency copy of each input into OUT, in-process: no queue, no database."""
    from rich.console import Console

    from worker.sanitizer import sanitize_file

    limits = _settings().limits()
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    all_ok = True
    used_stems: set[str] = set()
    for path in paths:
        stem = _unique_stem(path, used_stems)
        if not path.is_file():
            from worker.errors import SanitizeError
            from worker.sanitizer import Report
            report = Report(input=str(path), status="rejected",
                            error=SanitizeError("unsupported_format", "not a readable file"))
        else:
            report = sanitize_file(path, out / stem, limits)
        all_ok &= report.status == "sanitized"
        if as_json:
            sys.stdout.write(json.dumps(report.as_json()) + "\n")
            sys.stdout.flush()
        elif report.status == "sanitized":
            where = f" location moved ({report.found.fix.source})" if report.found.fix else ""
            console.print(f"[green]sanitized[/] {path} -> {report.output}{where}")
        else:
            console.print(f"[red]{report.status}[/] {path}: {report.error.code}: {report.error.message}")
    raise typer.Exit(0 if all_ok else 1)


def _unique_stem(path: Path, used: set[str]) -> str:
    """The copy is named after the input's stem; clashes get a counter, inputs are never overwritten."""
    stem, n = path.stem or "media", 1
    candidate = stem
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


if __name__ == "__main__":
    app()
