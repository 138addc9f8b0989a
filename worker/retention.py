"""Retention (policy principle 4): delete originals and locations whose retain_until has passed.

Each purge is one small transaction: a conditional DELETE of the row (``retain_until`` still past),
the stored object deleted, one audit row (principle 1), commit. The row goes rather than being
marked: a purged location has nothing left worth keeping, the original's key and sha256 go into the
audit row, and "no original row" is what `status`, `fetch` and `reprocess` already understand.

Order and repeats: the row is deleted first (which holds its lock), then the object, then the
commit. If the object cannot be deleted the transaction rolls back and the next run tries again;
if the process dies after the object went but before the commit, the next run finds the row, the
store delete is a no-op and the row goes then. Two purges at once: the second DELETE matches no row,
so it writes no audit row. Jobs not in a final state (being processed or reprocessed) are left for
the next run, so a purge never pulls an original out from under a running worker.

A job that ended `failed` before its original was stored (infrastructure kept failing) still has its
incoming object, the only copy, kept for a reprocess: it gets the original's window, counted from
arrival, and then goes like an original (``what == "incoming"``), so retention reaches every byte.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Callable, Iterator

from sqlalchemy import delete, exists, select, update

from worker import records
from worker.services import Services

BATCH = 500


@dataclass(frozen=True)
class Purged:
    upload_id: str
    complaint_id: str | None
    what: str                 # "original" | "location" | "incoming"
    key: str | None           # the stored object's key (originals and incoming objects)
    retain_until: datetime

    def detail(self) -> str:
        where = f" {self.key}" if self.key else ""
        return f"{self.what}{where} (retain_until {self.retain_until.isoformat()})"

    def as_json(self) -> dict:
        out = asdict(self)
        out["retain_until"] = self.retain_until.isoformat()
        return out


def purge(*, services: Services, now: datetime | None = None, dry_run: bool = False, actor: str = "retention",
          on_item: Callable[[Purged], None] | None = None) -> list[Purged]:
    """Delete every expired original and location (or, with dry_run, only list them). Idempotent."""
    now = now or records.utcnow()
    done: list[Purged] = []
    for item in _expired(services, now):
        if dry_run or _purge_one(services, item, now=now, actor=actor):
            done.append(item)
            if on_item is not None:
                on_item(item)
    return done


def _expired(services: Services, now: datetime) -> Iterator[Purged]:
    """Expired originals, then expired locations, of jobs in a final state; read in pages by key."""
    final = tuple(records.FINAL_STATES)
    V, L, J = records.Variant, records.Location, records.Job
    last_id = 0
    while True:
        with services.sessions() as session:
            rows = session.execute(
                select(V.id, V.upload_id, J.complaint_id, V.key, V.retain_until)
                .join(J, J.upload_id == V.upload_id)
                .where(V.variant == "original", V.retain_until < now, J.state.in_(final), V.id > last_id)
                .order_by(V.id).limit(BATCH)).all()
        if not rows:
            break
        for _id, upload_id, complaint_id, key, retain_until in rows:
            yield Purged(upload_id, complaint_id, "original", key, retain_until)
        last_id = rows[-1][0]
    last_upload = ""
    while True:
        with services.sessions() as session:
            rows = session.execute(
                select(L.upload_id, L.complaint_id, L.retain_until)
                .join(J, J.upload_id == L.upload_id)
                .where(L.retain_until < now, J.state.in_(final), L.upload_id > last_upload)
                .order_by(L.upload_id).limit(BATCH)).all()
        if not rows:
            break
        for upload_id, complaint_id, retain_until in rows:
            yield Purged(upload_id, complaint_id, "location", None, retain_until)
        last_upload = rows[-1][0]
    yield from _expired_incoming(services, now)


def _expired_incoming(services: Services, now: datetime) -> Iterator[Purged]:
    """Incoming objects of jobs that failed with no original stored, past the original's window."""
    settings = services.settings
    J, V = records.Job, records.Variant
    shortest = min(settings.retain_original_days, settings.retain_audio_original_days)
    no_original = ~exists().where(V.upload_id == J.upload_id, V.variant == "original")
    last_upload = ""
    while True:
        with services.sessions() as session:
            rows = session.execute(
                select(J.upload_id, J.complaint_id, J.source_key, J.received_at, J.kind)
                .where(J.state == "failed", no_original, J.received_at < now - timedelta(days=shortest),
                       J.upload_id > last_upload)
                .order_by(J.upload_id).limit(BATCH)).all()
        if not rows:
            return
        for upload_id, complaint_id, key, received_at, kind in rows:
            days = settings.retain_audio_original_days if kind == "audio" else settings.retain_original_days
            until = received_at + timedelta(days=days)
            if until < now and services.store.head(key) is not None:
                yield Purged(upload_id, complaint_id, "incoming", key, until)
        last_upload = rows[-1][0]


def _purge_one(services: Services, item: Purged, *, now: datetime, actor: str) -> bool:
    """Purge one thing in one transaction. False when it was no longer there (or no longer expired)."""
    with services.sessions() as session:
        if item.what == "original":
            V = records.Variant
            gone = session.execute(delete(V).where(V.upload_id == item.upload_id, V.variant == "original",
                                                   V.key == item.key, V.retain_until < now))
        elif item.what == "incoming":
            # no row to delete: the job row holds it (still failed, still without an original) while we do
            J, V = records.Job, records.Variant
            gone = session.execute(update(J).where(J.upload_id == item.upload_id, J.state == "failed",
                                                   ~exists().where(V.upload_id == J.upload_id,
                                                                   V.variant == "original"))
                                   .values(updated_at=records.utcnow()))
        else:
            L = records.Location
            gone = session.execute(delete(L).where(L.upload_id == item.upload_id, L.retain_until < now))
        if gone.rowcount != 1:
            session.rollback()
            return False
        if item.key:
            services.store.delete(item.key)   # raises on trouble: the row stays, the next run retries
        records.record_audit(session, actor=actor, role="service", action="purge", outcome="done",
                             upload_id=item.upload_id, complaint_id=item.complaint_id,
                             purpose="retention (policy principle 4)", detail=item.detail())
        session.commit()
    return True
