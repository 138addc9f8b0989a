"""`mediasan fetch`, `mediasan audit`, `mediasan serve`, `mediasan api-token`: the reading side of the CLI.

worker/cli.py calls `register(app)`. Each command parses its arguments and calls worker.access (or
starts worker.api); the decisions are made there, not here.
"""
from __future__ import annotations

import getpass
import json
import logging
import re
import secrets
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("fetch")(fetch)
    app.command("audit")(audit)
    app.command("serve")(serve)
    app.command("api-token")(api_token)


def _services():
    from worker.services import get_services
    return get_services()


def cli_actor() -> str:
    """The audit trail's "who" for a command run on this machine: the operating-system user."""
    return f"cli:{getpass.getuser()}"


def fetch(
    upload_id: str = typer.Argument(..., help="The upload to read."),
    role_text: str = typer.Option(..., "--as", help="restricted, service or agency:<CODE>"),
    purpose: Optional[str] = typer.Option(None, "--purpose", help="Why (required for originals)."),
    original: bool = typer.Option(False, "--original", help="The bit-exact original instead of the agency copy."),
    out: Path = typer.Option(..., "-o", "--output", help="Where to write the file."),
) -> None:
    """Write what ROLE may read of an upload to FILE. Originals need --purpose; every such read is audited."""
    from worker import access
    from worker.storage import StorageError

    try:
        role = access.parse_role(role_text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--as")
    services = _services()
    try:
        with services.sessions() as session:
            stored = access.fetch_variant(session=session, store=services.store, upload_id=upload_id, role=role,
                                          actor=cli_actor(), purpose=purpose, original=original, dest=out)
    except access.PurposeRequired:
        typer.echo("refused: state why with --purpose", err=True)
        raise typer.Exit(2)
    except access.AccessDenied:
        typer.echo(f"refused: {upload_id} not found or not readable as {role}", err=True)
        raise typer.Exit(2)
    except (KeyError, StorageError) as e:
        typer.echo(f"storage error: {e}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{out}\t{stored.bytes} bytes\tsha256 {stored.sha256}", err=True)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (a time without offset is UTC) or a duration back from now: 90m, 24h, 7d."""
    now = now or datetime.now(timezone.utc)
    match = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return now - timedelta(**{unit: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither ISO 8601 nor a duration like 24h", param_hint="--since")
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def audit_row_json(row) -> dict:
    return {"id": row.id, "at": row.at.isoformat(), "actor": row.actor, "role": row.role, "action": row.action,
            "upload_id": row.upload_id, "complaint_id": row.complaint_id, "purpose": row.purpose,
            "outcome": row.outcome, "detail": row.detail}


def audit(
    upload: Optional[str] = typer.Option(None, "--upload", help="Only this upload."),
    since: Optional[str] = typer.Option(None, "--since", help="ISO 8601 time or a duration back: 24h, 7d."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line."),
) -> None:
    """The audit trail: every restricted read, every refusal, every purge."""
    from worker import access

    moment = parse_since(since) if since else None
    with _services().sessions() as session:
        rows = access.list_audit(session=session, upload_id=upload, since=moment)
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(audit_row_json(row)) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("at", "actor", "role", "action", "upload", "outcome", "purpose / detail")
    for row in rows:
        why = " / ".join(x for x in (row.purpose, row.detail) if x)
        style = "red" if row.outcome == "denied" else None
        table.add_row(row.at.strftime("%Y-%m-%d %H:%M:%S"), row.actor, row.role, row.action, row.upload_id or "",
                      row.outcome, why, style=style)
    Console().print(table)


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Listen address."),
    port: int = typer.Option(8311, "--port", help="Listen port."),
    ssl_certfile: Optional[Path] = typer.Option(None, "--ssl-certfile", help="Serve HTTPS with this certificate."),
    ssl_keyfile: Optional[Path] = typer.Option(None, "--ssl-keyfile", help="The certificate's private key."),
) -> None:
    """The investigators' read-only HTTP API, and their pages at /ui/ (one process: the pages'
    sessions live in it, so a restart signs everyone out)."""
    import uvicorn

    from worker.api import create_app
    from worker.logs import configure_from_settings
    from worker.settings import get_settings

    configure_from_settings("INFO")   # uvicorn's lines, the access log too, go through worker.logs
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise typer.BadParameter("give both --ssl-certfile and --ssl-keyfile, or neither")
    scheme = "https" if ssl_certfile else "http"
    # a log line, not a bare echo: with MEDIASAN_LOG_FORMAT=json every line on stderr is a JSON object
    logging.getLogger("worker.api").info("investigators' pages: %s://%s:%d/ui/", scheme, host, port)
    # no Services here: the API builds them at first use, so it starts (and /readyz says 503) while
    # the database is down
    uvicorn.run(create_app(get_settings()), host=host, port=port, proxy_headers=False, server_header=False,
                log_config=None, ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None)


def api_token(
    actor: str = typer.Option(..., "--actor", help="Who holds it, as the audit trail should name them."),
    role_text: str = typer.Option(..., "--role", help="restricted or agency:<CODE>"),
) -> None:
    """Make a new API token: the token (give it to its holder) and the api_tokens entry (for the settings)."""
    from worker import access
    from worker.api import token_digest

    role = access.parse_role(role_text)
    if role.kind == "service" or "=" in actor or not actor.strip():
        raise typer.BadParameter("an API token is for a person or agency system with role restricted or agency:<CODE>")
    token = secrets.token_urlsafe(32)
    typer.echo(token)
    typer.echo(f"api_tokens entry: {json.dumps({token_digest(token): f'{actor}={role}'})}", err=True)
