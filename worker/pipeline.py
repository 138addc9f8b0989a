"""One upload, top to bottom, as in DESIGN.md "The flow": claim, fetch, sanitize, record, store, finish.

All I/O of the worker happens here and in the modules it calls (records, storage); the sanitizing
itself is worker.sanitizer on files in this process's work folder (worker.workdir).

Nothing is left behind by a crash at any point (DESIGN.md "Reliability"). The order:

1. fetch the incoming object into the job's work folder (a kill here: the folder of a dead process,
   removed by the next worker at start and by the sweeper; the job's lease runs out, it is redone);
2. store the original and the verified agency copy under keys derived from the upload id (a kill
   here: objects at the job's own keys; the retry writes the same keys and records them);
3. one transaction: location, variant rows, the job final (the records now know every object);
4. ``clean_after_finish``: the incoming object and any agency object the records no longer name
   are deleted. A kill between 3 and 4 is repaired by the repeated message (the "already final"
   path runs step 4 again) and by the sweeper, which runs it for final jobs that still have an
   incoming object.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete

from worker import __version__, formats, observe, records, store_audit, workdir
from worker.errors import SanitizeError
from worker.messages import UploadMessage
from worker.sanitizer import Report, sanitize_file
from worker.services import Services
from worker.storage import StoredObject, file_sha256

log = logging.getLogger(__name__)


class LeaseHeld(Exception):
    """Another worker holds this job right now; try again after ``seconds``."""

    def __init__(self, seconds: float):
        super().__init__(f"job is held by another worker for {seconds:.0f} s more")
        self.seconds = seconds


@dataclass(frozen=True)
class Outcome:
    upload_id: str
    state: str
    error_code: str | None = None


def original_key(upload_id: str, extension: str) -> str:
    return f"restricted/{upload_id}/original{extension}"


def agency_key(upload_id: str, extension: str) -> str:
    return f"agency/{upload_id}/media{extension}"


def original_tags(msg: UploadMessage) -> dict[str, str]:
    return {"variant": "original", "access": "restricted", "complaint": msg.complaint_id}


def agency_tags(msg: UploadMessage) -> dict[str, str]:
    tags = {"variant": "sanitized", "access": "agency", "complaint": msg.complaint_id}
    if msg.agency:
        tags["agency"] = msg.agency
    return tags


def process_upload(msg: UploadMessage, services: Services) -> Outcome:
    """Run one upload. Idempotent: a repeat of a finished upload changes nothing but leftovers.

    Raises LeaseHeld when another worker is on it, and lets infrastructure errors (database,
    store) propagate after handing the job back, so the task can retry with backoff.
    """
    settings = services.settings
    final: Outcome | None = None
    remaining = 0.0
    with services.sessions() as session:
        records.insert_job(session, upload_id=msg.upload_id, complaint_id=msg.complaint_id, channel=msg.channel,
                           agency=msg.agency, source_key=msg.source_key, filename=msg.filename,
                           content_type=msg.content_type, received_at=msg.received_at)
        session.commit()
        attempt = records.claim_job(session, msg.upload_id, timedelta(seconds=settings.lease_s))
        if attempt is None:
            job = session.get(records.Job, msg.upload_id)
            if job.state in records.FINAL_STATES:
                log.info("upload %s already %s; nothing to do", msg.upload_id, job.state)
                final = Outcome(msg.upload_id, job.state, job.error_code)
            elif job.lease_until is not None:
                remaining = (job.lease_until - records.utcnow()).total_seconds()
    if attempt is None:
        if final is None:
            raise LeaseHeld(max(remaining, 1.0))
        # a worker killed after finishing but before cleaning up left the incoming object: finish it off
        clean_after_finish(services, msg.upload_id)
        return final
    try:
        return _run_claimed(msg, services, attempt)
    except Exception as e:
        with services.sessions() as session:
            records.release_job(session, msg.upload_id, attempt, error_code="retrying",
                                error_message=f"{type(e).__name__}: {str(e)[:500]}")
        raise


def clean_after_finish(services: Services, upload_id: str) -> list[str]:
    """Delete what a final job no longer needs: the incoming object (once the original is kept under
    restriction) and objects of this upload the records do not name (an earlier run's). Idempotent; the
    pipeline, the "already final" path, ``tasks.sanitize``'s give-up and the sweeper all call it.
    Returns the keys deleted."""
    with services.sessions() as session:
        job = session.get(records.Job, upload_id)
        if job is None or job.state not in records.FINAL_STATES:
            return []
        variants = records.variants_of(session, upload_id)
        state, source_key, finished_at = job.state, job.source_key, job.finished_at
    deleted = []
    has_original = any(v.variant == "original" for v in variants)
    if store_audit.incoming_removable(state=state, has_original=has_original) and \
            services.store.head(source_key) is not None:
        services.store.delete(source_key)
        deleted.append(source_key)
    recorded = {v.key for v in variants}
    # an earlier run's agency copy under another extension, or its original under another name (the
    # input identified differently after an upgrade)
    for area in ("agency", "restricted"):
        for obj in store_audit.list_objects(services.store, area, f"{upload_id}/"):
            # an object written after this job finished belongs to a later run (a reprocess under way)
            if obj.key not in recorded and (finished_at is None or obj.modified <= finished_at):
                services.store.delete(obj.key)
                deleted.append(obj.key)
    if deleted:
        log.info("upload %s: removed %s", upload_id, ", ".join(deleted))
    return deleted


def pause_for_test(step: str, attempt: int, work: Path) -> None:
    """TEST HOOK, inert unless MEDIASAN_TEST_PAUSE_AT names ``step`` ("fetched", "stored", "finished"):
    the first attempt of a job then leaves a ``paused-at-{step}`` file in its work folder and sleeps,
    so a test (tests/test_residue.py) can SIGKILL this very process at that point of the pipeline."""
    if attempt == 1 and os.environ.get("MEDIASAN_TEST_PAUSE_AT") == step:
        (work / f"paused-at-{step}").touch()
        time.sleep(3600)


def _run_claimed(msg: UploadMessage, services: Services, attempt: int) -> Outcome:
    settings, store = services.settings, services.store
    with workdir.job_folder(settings.resolved_work_dir(), msg.upload_id) as work:
        src = work / "upload"
        _fetch_source(msg, services, src)
        pause_for_test("fetched", attempt, work)
        report = sanitize_file(src, work / "media", settings.limits())
        # policy principle 4: retention runs from when the upload arrived, so a reprocess never extends it
        retain_original = msg.received_at + timedelta(days=(settings.retain_audio_original_days
                                                            if report.kind == "audio" else settings.retain_original_days))
        retain_location = msg.received_at + timedelta(days=settings.retain_location_days)
        extension, original_media_type = _original_naming(report)
        stored_original = _store_original(msg, store, src, extension, original_media_type)
        stored_copy: StoredObject | None = None
        if report.status == "sanitized":
            stored_copy = store.put_file(agency_key(msg.upload_id, Path(report.output).suffix),
                                         Path(report.output), content_type=report.media_type or "application/octet-stream",
                                         tags=agency_tags(msg), replace=True)
        pause_for_test("stored", attempt, work)
        with services.sessions() as session:
            fix = report.found.fix
            if (fix or report.found.captured_at) and retain_location > records.utcnow():   # never revive a purged one
                records.upsert_location(
                    session, upload_id=msg.upload_id, complaint_id=msg.complaint_id,
                    values={"lat": fix.lat if fix else None, "lon": fix.lon if fix else None,
                            "alt": fix.alt if fix else None, "accuracy": fix.accuracy if fix else None,
                            "source": fix.source if fix else None, "captured_at": report.found.captured_at},
                    retain_until=retain_location)
            records.upsert_variant(session, upload_id=msg.upload_id, variant="original", key=stored_original.key,
                                   sha256=stored_original.sha256, size=stored_original.bytes,
                                   media_type=original_media_type, tags=stored_original.tags,
                                   sanitizer_version=__version__, retain_until=retain_original)
            if stored_copy is not None:
                records.upsert_variant(session, upload_id=msg.upload_id, variant="sanitized", key=stored_copy.key,
                                       sha256=stored_copy.sha256, size=stored_copy.bytes,
                                       media_type=stored_copy.content_type, tags=stored_copy.tags,
                                       sanitizer_version=__version__, retain_until=None)
            else:   # this run makes no copy: an earlier run's is unpublished (its object goes in clean_after_finish)
                session.execute(delete(records.Variant).where(records.Variant.upload_id == msg.upload_id,
                                                              records.Variant.variant == "sanitized"))
            state = "done" if report.status == "sanitized" else report.status
            error = report.error
            finished = records.finish_job(session, msg.upload_id, attempt, state=state, kind=report.kind,
                                          fmt=report.format, removed=list(report.removed),
                                          error_code=error.code if error else None,
                                          error_message=error.message if error else None)
            if not finished:   # our lease ran out and another worker took over: let it finish
                session.rollback()
                log.warning("upload %s: lost the claim before finishing; leaving it to the new holder", msg.upload_id)
                return Outcome(msg.upload_id, "processing")
            session.commit()
            observe.upload_finished(msg.upload_id, state, report)
        pause_for_test("finished", attempt, work)
    # policy principle 4: the incoming copy is not needed once the original is kept under restriction
    clean_after_finish(services, msg.upload_id)
    return Outcome(msg.upload_id, state, error.code if error else None)


def _fetch_source(msg: UploadMessage, services: Services, dest: Path) -> None:
    """The incoming object; after a crash between storing the original and finishing, the original."""
    store = services.store
    if store.head(msg.source_key) is not None:
        store.get_file(msg.source_key, dest)
        return
    with services.sessions() as session:
        kept = [v for v in records.variants_of(session, msg.upload_id) if v.variant == "original"]
    if kept:
        store.get_file(kept[0].key, dest)
        return
    raise SourceMissing(f"{msg.source_key} is not in the incoming store")


class SourceMissing(Exception):
    """The upload's bytes are nowhere: an infrastructure problem, retried, never silently dropped."""


def _store_original(msg: UploadMessage, store, src: Path, extension: str, media_type: str | None) -> StoredObject:
    """Keep the original bit-exact under restriction and check the store holds exactly those bytes."""
    expected, _ = file_sha256(src)
    stored = store.put_file(original_key(msg.upload_id, extension), src,
                            content_type=media_type or "application/octet-stream", tags=original_tags(msg))
    if stored.sha256 != expected:
        raise SanitizeError("internal", f"the stored original's sha256 {stored.sha256} is not the upload's {expected}")
    return stored


def _original_naming(report: Report) -> tuple[str, str | None]:
    """The original's extension and media type by its identified content (never the client's file
    name); ``.bin`` and no type when the content was not recognised."""
    if report.input_format is None:
        return ".bin", None
    fmt = formats.by_name(report.input_format)
    return (fmt.extensions[0] if fmt.extensions else f".{fmt.name}"), fmt.media_type
