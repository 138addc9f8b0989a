"""`mediasan`: the command line. Each command parses arguments and calls one service function."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from worker.cli_access import register as register_access
from worker.cli_batch import register as register_batch

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The 311 media sanitizer.")


def _settings():
    from worker.settings import get_settings
    return get_settings()


@app.command()
def sanitize(
    paths: List[Path] = typer.Argument(..., exists=False, help="Files to sanitize."),
    out: Path = typer.Option(..., "--out", help="Folder for the agency copies."),
    as_json: bool = typer.Option(False, "--json", help="One JSON report a line per input, in input order."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1,
                                       help="Files sanitized at once (default: the CPUs this process may use)."),
) -> None:
    """Write the agency copy of each input into OUT, in-process: no queue, no database."""
    from worker.batch import default_jobs, sanitize_many
    from worker.budget import limit_process_memory

    limit_process_memory(_settings().process_memory_bytes)   # before the pool forks: each child inherits it
    out.mkdir(parents=True, exist_ok=True)
    console = None
    all_ok = True
    for report in sanitize_many(paths, out, _settings().limits(), jobs or default_jobs()):
        all_ok &= report["status"] == "sanitized"
        if as_json:
            sys.stdout.write(json.dumps(report) + "\n")
            sys.stdout.flush()
            continue
        if console is None:
            from rich.console import Console
            console = Console(stderr=True)
        if report["status"] == "sanitized":
            where = f" location moved ({report['location']['source']})" if report["location"] else ""
            console.print(f"[green]sanitized[/] {report['input']} -> {report['output']}{where}")
        else:
            console.print(f"[red]{report['status']}[/] {report['input']}: "
                          f"{report['error']['code']}: {report['error']['message']}")
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


register_access(app)
register_batch(app)

if __name__ == "__main__":
    app()
