"""The batch and operator commands: `mediasan reprocess`, `purge`, `sweep` and `verify-store`.
worker.cli calls register(app)."""
from __future__ import annotations

import getpass
import json
import sys
from datetime import datetime, timezone
from typing import List, Optional

import typer


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:   # no user name in some containers
        return "cli:unknown"


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 date or time: {value!r}", param_hint="--since") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def reprocess_command(
    upload: List[str] = typer.Option([], "--upload", help="An upload id (repeatable)."),
    complaint: Optional[str] = typer.Option(None, "--complaint", help="Every upload of this complaint."),
    state: List[str] = typer.Option([], "--state", help="done, rejected or failed (repeatable)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Agency-copy or identified input format, e.g. heic."),
    error: Optional[str] = typer.Option(None, "--error", help="Jobs that ended with this error code."),
    since: Optional[str] = typer.Option(None, "--since", help="Received at or after (ISO 8601; UTC if no offset)."),
    everything: bool = typer.Option(False, "--all", help="Every upload (required when no filter is given)."),
    purpose: Optional[str] = typer.Option(None, "--purpose", help="Why, for the audit rows."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be requeued; change nothing."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line per job, then the summary."),
) -> None:
    """Re-sanitize finished uploads from their stored originals (e.g. after a sanitizer upgrade)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from worker.reprocess import Filters, count, reprocess
    from worker.services import get_services

    try:
        filters = Filters(upload_ids=tuple(upload), complaint_id=complaint, states=tuple(state), format=fmt,
                          error_code=error, since=_parse_since(since))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if filters.empty() and not everything:
        raise typer.BadParameter("give a filter (--upload, --complaint, --state, --format, --error, --since) "
                                 "or --all")
    services = get_services()
    console = Console(stderr=True)
    try:
        total = count(services=services, filters=filters)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None

    def emit(item) -> None:
        if as_json:
            sys.stdout.write(json.dumps({"upload_id": item.upload_id, "state": item.state, "outcome": item.outcome,
                                         "reason": item.reason}) + "\n")
        elif item.outcome == "skipped" or dry_run:
            verb = "would requeue" if (dry_run and item.outcome == "requeued") else item.outcome
            console.print(f"{verb} {item.upload_id} ({item.state}){': ' + item.reason if item.reason else ''}",
                          highlight=False)

    with Progress(TextColumn("reprocess"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=as_json) as progress:
        bar = progress.add_task("reprocess", total=total)

        def on_item(item) -> None:
            progress.advance(bar)
            emit(item)

        summary = reprocess(services=services, filters=filters, dry_run=dry_run, actor=_operator(),
                            purpose=purpose, on_item=on_item)
    if as_json:
        sys.stdout.write(json.dumps({"summary": {**summary.as_json(), "dry_run": dry_run}}) + "\n")
    else:
        verb = "would requeue" if dry_run else "requeued"
        console.print(f"matched {summary.matched}, {verb} {summary.requeued}, skipped {summary.skipped}")


def purge_command(
    dry_run: bool = typer.Option(False, "--dry-run", help="List what is past retention; delete nothing."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line per purged item."),
) -> None:
    """Apply retention: delete originals and locations whose retain_until has passed (audited)."""
    from rich.console import Console

    from worker.retention import purge
    from worker.services import get_services

    console = Console(stderr=True)

    def on_item(item) -> None:
        if as_json:
            sys.stdout.write(json.dumps({**item.as_json(), "dry_run": dry_run}) + "\n")
        else:
            console.print(f"{'would purge' if dry_run else 'purged'} {item.upload_id}: {item.detail()}",
                          highlight=False)

    purged = purge(services=get_services(), dry_run=dry_run, actor=_operator(), on_item=on_item)
    if not as_json:
        originals = sum(p.what == "original" for p in purged)
        incoming = sum(p.what == "incoming" for p in purged)
        console.print(f"{'would purge' if dry_run else 'purged'} {originals} originals, "
                      f"{len(purged) - originals - incoming} locations and {incoming} incoming objects")


def sweep_command(
    every: Optional[float] = typer.Option(None, "--every", help="Run again every this many seconds, until stopped."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line per run."),
) -> None:
    """Republish uploads whose message was lost; remove incoming objects of finished jobs and dead work folders."""
    import time

    from worker import workdir
    from worker.services import get_services
    from worker.sweeper import sweep

    services = get_services()
    with workdir.process_scope(services.settings.resolved_work_dir()):
        while True:
            result = sweep(services)
            line = {"candidates": result.candidates, "republished": len(result.republished),
                    "still_queued": result.still_queued, "broker_visible": result.broker_visible,
                    "incoming_removed": len(result.incoming_removed),
                    "work_folders_removed": len(result.work_folders_removed)}
            typer.echo(json.dumps(line) if as_json else " ".join(f"{k}={v}" for k, v in line.items()))
            if every is None:
                return
            time.sleep(every)


def verify_store_command(
    fix: bool = typer.Option(False, "--fix", help="Remove what retention would (never an upload still waiting)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Run the verifier again on every agency copy."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line per finding, then a summary."),
) -> None:
    """Walk the stores and the records: objects no record explains, agency copies that fail the verifier,
    incoming objects older than the sweep window, work folders of dead processes. Exit 1 on any finding."""
    from collections import Counter

    from rich.console import Console

    from worker import store_audit, workdir
    from worker.services import get_services

    services = get_services()
    console = Console(stderr=True)
    with workdir.process_scope(services.settings.resolved_work_dir()):
        findings = store_audit.audit(services, verify=verify)
        fixed = store_audit.fix(services, findings) if fix else []
    fixed_keys = {(f.kind, f.key) for f in fixed}
    for f in findings:
        done = (f.kind, f.key) in fixed_keys
        if as_json:
            sys.stdout.write(json.dumps({**f.as_json(), "fixed": done}) + "\n")
        else:
            console.print(f"{f.kind} {f.key}: {f.detail}{' [fixed]' if done else ''}", highlight=False)
    counts = Counter(f.kind for f in findings)
    if as_json:
        sys.stdout.write(json.dumps({"summary": {"findings": len(findings), "fixed": len(fixed),
                                                 "by_kind": dict(counts)}}) + "\n")
    else:
        console.print(f"{len(findings)} findings" + (f" ({', '.join(f'{k} {n}' for k, n in sorted(counts.items()))})"
                                                      if counts else "") + (f", {len(fixed)} fixed" if fix else ""))
    raise typer.Exit(1 if findings else 0)


def register(app: typer.Typer) -> None:
    app.command("reprocess")(reprocess_command)
    app.command("purge")(purge_command)
    app.command("sweep")(sweep_command)
    app.command("verify-store")(verify_store_command)
