"""`mediasan`: the command line. Each command parses arguments and calls one service function."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

if __name__ == "__main__" and sys.argv[1:2] == ["sanitize"]:
    # `python -m worker.cli sanitize …` (scripts, tests): the same fast path as the console script
    from worker.cli_sanitize import main

    main()

import typer

from worker import cli_sanitize
from worker.cli_access import register as register_access
from worker.cli_batch import register as register_batch
from worker.logs import configure_for_cli

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The 311 media sanitizer.")
app.callback()(configure_for_cli)   # MEDIASAN_LOG_FORMAT for every command


def _settings():
    from worker.settings import get_settings
    return get_settings()


@app.command(help=cli_sanitize.SUMMARY, add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sanitize(ctx: typer.Context) -> None:
    # defined once, in worker/cli_sanitize.py (argparse: the console script runs it without typer)
    raise typer.Exit(cli_sanitize.run(ctx.args))


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
    hostname: Optional[str] = typer.Option(None, "--hostname", "-n",
                                           help="The node name, e.g. worker1@%h (Celery's default: celery@%h)."),
) -> None:
    """Run a Celery worker on the configured broker; exit with Celery's status (non-zero on an error)."""
    from worker import records
    from worker.services import close_services, get_services

    services = get_services()   # the embedded default migrates here; PostgreSQL must already be at head
    try:
        records.require_head(services.engine)
    except records.SchemaNotAtHead as e:
        typer.echo(f"mediasan worker: {e}", err=True)
        raise typer.Exit(3)
    except Exception as e:
        typer.echo(f"mediasan worker: cannot read the database schema: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(3)
    # the pool children fork from this process: it must hold no database socket when they do
    close_services()

    from worker.app import app as celery_app

    argv = ["worker", f"--loglevel={loglevel}", "-Q", _settings().queue, f"--concurrency={concurrency}", "--without-gossip",
            "--without-mingle"]
    if hostname:
        argv += ["--hostname", hostname]
    if beat:
        argv += ["-B", "--schedule", str(_settings().resolved_data_dir() / "beat-schedule")]
    raise typer.Exit(run_celery(celery_app, argv))


def run_celery(celery_app, argv: list[str]) -> int:
    """Run a `celery` subcommand on our app and return its exit status. Celery's own `worker_main` and
    `start` drop it: click, outside standalone mode, returns `ctx.exit(code)`'s code instead of raising,
    and they ignore what it returns; a worker that stopped on an unrecoverable error then exits 0."""
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = celery_app   # --app, as Celery.start sets it
    try:
        code = celery_command.main(args=argv, standalone_mode=False)
    finally:
        celery_command.params[0].default = None
    return code if isinstance(code, int) else 0


@app.command()
def doctor(
    migrate: bool = typer.Option(False, "--migrate", help="Bring the database to head first (advisory-locked)."),
    create_buckets: bool = typer.Option(False, "--create-buckets", help="Create the S3 store's buckets first."),
) -> None:
    """Check ffmpeg, ffprobe, the database, the store and the broker; one line each, non-zero if any fails."""
    from worker.doctor import run_checks

    checks = run_checks(_settings(), migrate=migrate, create_buckets=create_buckets)
    for check in checks:
        typer.echo(check.line())
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


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
    cli_sanitize.main()
