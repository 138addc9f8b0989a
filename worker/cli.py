"""`mediasan`: the command line. Each command parses arguments and calls one service function."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from worker.cli_access import register as register_access
from worker.cli_batch import register as register_batch
from worker.logs import configure_for_cli

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The 311 media sanitizer.")
app.callback()(configure_for_cli)   # MEDIASAN_LOG_FORMAT for every command


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


@app.command()
def enqueue(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    complaint: str = typer.Option(..., "--complaint", help="The complaint the file is attached to."),
    agency: Optional[str] = typer.Option(None, "--agency", help="Routing code, e.g. DSNY."),
    channel: str = typer.Option("mobile_app", "--channel", help="mobile_app, 311_online or social."),
) -> None:
    """Put a file in the incoming store, write its job row, enqueue it; print the upload id."""
    from worker.intake import enqueue_file
    from worker.services import get_services

    upload_id = enqueue_file(path, services=get_services(), complaint_id=complaint, channel=channel, agency=agency)
    typer.echo(upload_id)


@app.command()
def worker(
    concurrency: int = typer.Option(2, "--concurrency", "-c", help="Worker processes."),
    beat: bool = typer.Option(True, "--beat/--no-beat", help="Also run the sweeper's schedule in this worker."),
    loglevel: str = typer.Option("INFO", "--loglevel"),
) -> None:
    """Run a Celery worker on the configured broker."""
    from worker.app import app as celery_app
    from worker.services import get_services

    get_services()   # migrate the database before the first task
    argv = ["worker", f"--loglevel={loglevel}", "-Q", _settings().queue, f"--concurrency={concurrency}", "--without-gossip",
            "--without-mingle"]
    if beat:
        argv += ["-B", "--schedule", str(_settings().resolved_data_dir() / "beat-schedule")]
    celery_app.worker_main(argv)


@app.command()
def status(
    upload_id: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The job and its variants (never its location)."""
    from rich.console import Console
    from rich.table import Table

    from worker.intake import job_status
    from worker.services import get_services

    info = job_status(services=get_services(), upload_id=upload_id)
    if info is None:
        typer.echo(f"no upload {upload_id}", err=True)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps(info))
        return
    console = Console()
    console.print(f"upload [bold]{info['upload_id']}[/] complaint {info['complaint_id']}: "
                  f"[bold]{info['state']}[/] after {info['attempts']} attempt(s)")
    if info["error"]:
        console.print(f"  error {info['error']['code']}: {info['error']['message']}")
    table = Table("variant", "key", "bytes", "sha256", "tags")
    for v in info["variants"]:
        table.add_row(v["variant"], v["key"], str(v["bytes"]), v["sha256"][:16] + "…",
                      ", ".join(f"{k}={val}" for k, val in sorted(v["tags"].items())))
    console.print(table)


@app.command()
def demo(
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for the worker."),
) -> None:
    """The whole flow on the embedded default, on phone-like files it makes."""
    from worker.demo import run_demo

    raise typer.Exit(run_demo(settings=_settings(), timeout_s=timeout))


def _unique_stem(path: Path, used: set[str]) -> str:
    """The copy is named after the input's stem; clashes get a counter, inputs are never overwritten."""
    stem, n = path.stem or "media", 1
    candidate = stem
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


register_access(app)
register_batch(app)

if __name__ == "__main__":
    app()
