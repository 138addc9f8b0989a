"""The sweeper (``tasks.sweep``, or ``mediasan sweep`` as a process of its own): an upload is never lost
because a message was, and nothing a killed worker left behind stays.

Each run:

1. **Lost messages.** Candidates are jobs ``processing`` with an expired lease (the worker died) or
   ``received`` and untouched for ``stale_received_s`` (the message may be lost). A candidate is
   republished only when its message is nowhere in the broker: on Redis neither in the queue lists
   (every priority) nor in the ``unacked`` hash with a delivery younger than a lease (a live worker
   holds it, e.g. a retry waiting for its countdown); on the filesystem broker not in the queue
   folder. A message in the backlog is left where it is, however long the backlog. Where the broker
   cannot be looked into (AMQP), the time rule alone decides. Each republish first moves the job's
   ``updated_at`` conditionally, so two sweepers at once republish a job once, and a job is
   republished (or its queued message looked for) at most once every ``stale_received_s``.
2. **Incoming objects of finished jobs** (a worker killed between finishing and cleaning up):
   ``pipeline.clean_after_finish`` for each; the incoming area holds only uploads in flight, so
   listing it is cheap.
3. **Work folders** of processes that are gone (worker.workdir).
"""
from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from worker import records, store_audit, workdir
from worker.intake import message_for, send_upload
from worker.services import Services

log = logging.getLogger(__name__)

REDIS_PRIORITY_SEP = "\x06\x16"     # kombu.transport.redis.Channel.sep
REDIS_PRIORITIES = (3, 6, 9)        # kombu's PRIORITY_STEPS beyond 0 (0 is the bare queue name)


@dataclass
class SweepResult:
    candidates: int = 0                 # jobs the time rule alone would republish
    republished: list[str] = field(default_factory=list)
    still_queued: int = 0               # candidates whose message the broker still holds
    broker_visible: bool = False
    incoming_removed: list[str] = field(default_factory=list)
    work_folders_removed: list[Path] = field(default_factory=list)


# --- what the broker still holds -------------------------------------------------------------------

def _upload_id_of(payload: dict) -> str | None:
    """The upload id of a kombu message payload (Celery protocol 2, JSON body), or None."""
    try:
        headers = payload.get("headers") or {}
        if headers.get("task") != "tasks.sanitize_upload":
            return None
        body = payload["body"]
        if (payload.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        upload_id = kwargs.get("upload_id")
        return upload_id if isinstance(upload_id, str) else None
    except (KeyError, TypeError, ValueError):
        return None


def pending_in_redis(broker_url: str, queue: str, *, held_for_s: float, now: float | None = None) -> set[str]:
    """Upload ids with a message in the queue lists, or delivered to a worker less than ``held_for_s`` ago."""
    import redis

    client = redis.Redis.from_url(broker_url)
    now = now or time.time()
    found: set[str] = set()
    try:
        for name in [queue, *(f"{queue}{REDIS_PRIORITY_SEP}{p}" for p in REDIS_PRIORITIES)]:
            length, start = client.llen(name), 0
            while start < length:
                for raw in client.lrange(name, start, start + 999):
                    upload_id = _upload_id_of(json.loads(raw))
                    if upload_id:
                        found.add(upload_id)
                start += 1000
        delivered_at = dict(client.zrange("unacked_index", 0, -1, withscores=True))
        for tag, raw in client.hscan_iter("unacked"):
            if now - delivered_at.get(tag, 0.0) >= held_for_s:
                continue   # its worker is gone (kombu restores it only after the visibility timeout)
            payload, _exchange, routing_key = json.loads(raw)
            if routing_key == queue:
                upload_id = _upload_id_of(payload)
                if upload_id:
                    found.add(upload_id)
    finally:
        client.close()
    return found


def pending_in_folder(folder: Path, queue: str) -> set[str]:
    """Upload ids with a message file in kombu's filesystem queue folder."""
    found: set[str] = set()
    for path in Path(folder).glob(f"*.{queue}.msg"):
        if path.name.partition(".")[2] != f"{queue}.msg":
            continue
        try:
            upload_id = _upload_id_of(json.loads(path.read_bytes()))
        except (OSError, ValueError):
            continue   # taken by a worker while we looked
        if upload_id:
            found.add(upload_id)
    return found


def pending_uploads(services: Services) -> set[str] | None:
    """Upload ids whose message the broker still holds, or None where the broker cannot be looked into."""
    settings = services.settings
    url = settings.resolved_broker_url()
    if url.startswith(("redis://", "rediss://")):
        return pending_in_redis(url, settings.queue, held_for_s=settings.lease_s)
    if url.startswith("filesystem"):
        from worker.app import filesystem_transport_options
        return pending_in_folder(Path(filesystem_transport_options(settings)["data_folder_in"]), settings.queue)
    return None


# --- one run ---------------------------------------------------------------------------------------

def lost_candidates(session, *, now: datetime, untouched_before: datetime, limit: int = 500) -> list[records.Job]:
    """Jobs whose message may be lost: a lease that ran out, or received and untouched; in both cases not
    touched (claimed, republished) since ``untouched_before``."""
    J = records.Job
    return list(session.scalars(
        select(J).where(((J.state == "processing") & (J.lease_until < now))
                        | (J.state == "received"), J.updated_at < untouched_before)
        .order_by(J.received_at).limit(limit)))


def _take_for_republish(session, job: records.Job, now: datetime) -> bool:
    """Move updated_at only if nobody else did since we read the row: one sweeper republishes a job."""
    result = session.execute(update(records.Job).where(records.Job.upload_id == job.upload_id,
                                                       records.Job.state == job.state,
                                                       records.Job.updated_at == job.updated_at)
                             .values(updated_at=now))
    return result.rowcount == 1


def sweep(services: Services, *, now: datetime | None = None) -> SweepResult:
    from worker.pipeline import clean_after_finish

    settings = services.settings
    now = now or records.utcnow()
    result = SweepResult()
    with services.sessions() as session:
        candidates = lost_candidates(session, now=now,
                                     untouched_before=now - timedelta(seconds=settings.stale_received_s))
    result.candidates = len(candidates)
    if candidates:
        pending = pending_uploads(services)
        result.broker_visible = pending is not None
        for job in candidates:
            queued = pending is not None and job.upload_id in pending
            with services.sessions() as session:
                # touched either way: a queued job is looked at again only after another stale window
                if not _take_for_republish(session, job, now):
                    session.rollback()
                    continue
                session.commit()
            if queued:
                result.still_queued += 1
                continue
            send_upload(services, message_for(job))
            result.republished.append(job.upload_id)
    if result.republished:
        log.warning("sweep republished %d jobs whose message was lost (%d more are still queued)",
                    len(result.republished), result.still_queued)

    window = timedelta(seconds=settings.stale_received_s)
    for batch in store_audit._batches(store_audit.list_objects(services.store, "incoming")):
        with services.sessions() as session:
            facts = store_audit.facts_for(session, (o.upload_id for o in batch))
        for obj in batch:
            finding = store_audit.judge(obj, facts.get(obj.upload_id), now=now, window=window)
            if finding is not None and finding.kind == "incoming_of_finished":
                result.incoming_removed += clean_after_finish(services, obj.upload_id)
    result.work_folders_removed = workdir.remove_dead(settings.resolved_work_dir(), stale_s=settings.lease_s)
    return result
