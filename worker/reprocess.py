"""Batch re-sanitizing from the stored originals (`mediasan reprocess`): after a sanitizer upgrade, or
when a format that used to be rejected became supported.

For each matching job: a conditional UPDATE back to `received`, only from a final state (a job being
processed is left alone), one audit row (the service will read the original again: principle 1),
commit, then the usual `tasks.sanitize_upload` message. The pipeline finds the incoming object gone,
reads the stored original instead, replaces the agency copy and upserts the location. If sending
fails after the commit, the job is `received` and the sweeper republishes it.

A job is skipped when there is nothing to rebuild from: its original was purged (or never stored and
the incoming object is gone too), or the original is past its retention and waits for the purge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterator

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from worker import records
from worker.intake import message_for, send_upload
from worker.services import Services

BATCH = 500


@dataclass(frozen=True)
class Filters:
    """Which jobs to reprocess; every filter given must match (AND)."""
    upload_ids: tuple[str, ...] = ()
    complaint_id: str | None = None
    states: tuple[str, ...] = ()            # among records.FINAL_STATES
    format: str | None = None               # the agency copy's format or the identified input format
    error_code: str | None = None           # e.g. unsupported_format, after that format became supported
    since: datetime | None = None           # received at or after

    def __post_init__(self):
        bad = [s for s in self.states if s not in records.FINAL_STATES]
        if bad:
            raise ValueError(f"--state takes {', '.join(sorted(records.FINAL_STATES))}, not {', '.join(bad)}")
        if self.since is not None and self.since.tzinfo is None:
            raise ValueError("since must carry a time zone")

    def empty(self) -> bool:
        return not (self.upload_ids or self.complaint_id or self.states or self.format or self.error_code
                    or self.since)


@dataclass(frozen=True)
class Item:
    upload_id: str
    state: str                 # the state it was found in
    outcome: str               # "requeued" | "skipped" (a dry run says what it would do)
    reason: str | None = None  # why it was skipped


@dataclass
class Summary:
    matched: int = 0
    requeued: int = 0
    skipped: int = 0
    items: list[Item] = field(default_factory=list)

    def add(self, item: Item) -> None:
        self.items.append(item)
        if item.outcome == "requeued":
            self.requeued += 1
        else:
            self.skipped += 1

    def as_json(self) -> dict:
        return {"matched": self.matched, "requeued": self.requeued, "skipped": self.skipped}


def reopen_job(session: Session, upload_id: str) -> bool:
    """Move a finished job back to `received` so a worker can claim it again. Only from a final state:
    a job someone is processing (or that waits for a worker) is left alone. False when nothing changed."""
    now = records.utcnow()
    result = session.execute(
        update(records.Job)
        .where(records.Job.upload_id == upload_id, records.Job.state.in_(tuple(records.FINAL_STATES)))
        .values(state="received", lease_until=None, finished_at=None, updated_at=now))
    return result.rowcount == 1


def count(*, services: Services, filters: Filters) -> int:
    with services.sessions() as session:
        return session.scalar(select(func.count()).select_from(records.Job).where(*_conditions(filters)))


def reprocess(*, services: Services, filters: Filters, dry_run: bool = False, actor: str = "reprocess",
              purpose: str | None = None, on_item: Callable[[Item], None] | None = None) -> Summary:
    """Requeue every matching job in a final state; skip the others. Returns what happened to each."""
    summary = Summary()
    for upload_id in _matching_ids(services, filters):
        summary.matched += 1
        item = _one(services, upload_id, dry_run=dry_run, actor=actor, purpose=purpose)
        summary.add(item)
        if on_item is not None:
            on_item(item)
    return summary


def _conditions(filters: Filters) -> list:
    J, V = records.Job, records.Variant
    where = []
    if filters.upload_ids:
        where.append(J.upload_id.in_(filters.upload_ids))
    if filters.complaint_id:
        where.append(J.complaint_id == filters.complaint_id)
    if filters.states:
        where.append(J.state.in_(filters.states))
    if filters.error_code:
        where.append(J.error_code == filters.error_code)
    if filters.since is not None:
        where.append(J.received_at >= filters.since)
    if filters.format:
        from worker import formats
        try:
            media_type = formats.by_name(filters.format).media_type
        except KeyError:
            names = ", ".join(f.name for f in formats.FORMATS)
            raise ValueError(f"unknown format {filters.format!r}; one of: {names}") from None
        input_was = exists().where(V.upload_id == J.upload_id, V.variant == "original", V.media_type == media_type)
        where.append((J.format == filters.format) | input_was)
    return where


def _matching_ids(services: Services, filters: Filters) -> Iterator[str]:
    """Matching upload ids in pages, keyed by id (a reopened job still matches: the pages do not move)."""
    conditions, last = _conditions(filters), ""
    while True:
        with services.sessions() as session:
            ids = list(session.scalars(select(records.Job.upload_id).where(*conditions, records.Job.upload_id > last)
                                       .order_by(records.Job.upload_id).limit(BATCH)))
        if not ids:
            return
        yield from ids
        last = ids[-1]


def _one(services: Services, upload_id: str, *, dry_run: bool, actor: str, purpose: str | None) -> Item:
    with services.sessions() as session:
        job = session.get(records.Job, upload_id)
        state = job.state
        if state not in records.FINAL_STATES:
            return Item(upload_id, state, "skipped", f"{state}: not in a final state")
        reason = _nothing_to_rebuild_from(services, session, job)
        if reason:
            return Item(upload_id, state, "skipped", reason)
        if dry_run:
            return Item(upload_id, state, "requeued")
        if not reopen_job(session, upload_id):
            session.rollback()
            return Item(upload_id, state, "skipped", "changed state while we looked")
        records.record_audit(session, actor=actor, role="service", action="reprocess", outcome="done",
                             upload_id=upload_id, complaint_id=job.complaint_id, purpose=purpose,
                             detail=f"requeued from {state} to rebuild from the stored original")
        session.commit()
        msg = message_for(job)
    send_upload(services, msg)   # if this raises, the job is `received` and the sweeper republishes it
    return Item(upload_id, state, "requeued")


def _nothing_to_rebuild_from(services: Services, session: Session, job: records.Job) -> str | None:
    originals = [v for v in records.variants_of(session, job.upload_id) if v.variant == "original"]
    if originals:
        original = originals[0]
        if original.retain_until is not None and original.retain_until <= records.utcnow():
            return "the original is past its retention and waits for the purge"
        if services.store.head(original.key) is None:
            return f"the original {original.key} is not in the store"
        return None
    if services.store.head(job.source_key) is not None:
        return None   # never got as far as storing the original (e.g. failed): the upload itself is still there
    return "no stored original (purged, or never stored)"
