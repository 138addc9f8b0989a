"""One upload, top to bottom, as in DESIGN.md "The flow": claim, fetch, sanitize, record, store, finish.

All I/O of the worker happens here and in the modules it calls (records, storage); the sanitizing
itself is worker.sanitizer on files in a private temporary folder.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete

from worker import __version__, formats, records
from worker import observe  # metrics and the upload_finished line
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
    """Run one upload. Idempotent: a repeat of a finished upload changes nothing.

    Raises LeaseHeld when another worker is on it, and lets infrastructure errors (database,
    store) propagate after handing the job back, so the task can retry with backoff.
    """
    settings = services.settings
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
                return Outcome(msg.upload_id, job.state, job.error_code)
            remaining = (job.lease_until - records.utcnow()).total_seconds() if job.lease_until else 0
            raise LeaseHeld(max(remaining, 1.0))
    try:
        return _run_claimed(msg, services, attempt)
    except Exception as e:
        with services.sessions() as session:
            records.release_job(session, msg.upload_id, attempt, error_code="retrying",
                                error_message=f"{type(e).__name__}: {str(e)[:500]}")
        raise


def _run_claimed(msg: UploadMessage, services: Services, attempt: int) -> Outcome:
    settings, store = services.settings, services.store
    with tempfile.TemporaryDirectory(prefix="mediasan-") as tmp:
        os.chmod(tmp, 0o700)
        work = Path(tmp)
        src = work / "upload"
        _fetch_source(msg, services, src)
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
        with services.sessions() as session:
            fix = report.found.fix
            # a copy from an earlier run is unpublished when this run makes none, or makes it under another key
            old_copies = {v.key for v in records.variants_of(session, msg.upload_id) if v.variant == "sanitized"}
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
            else:
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
    # policy principle 4: the incoming copy is not needed once the original is kept under restriction
    store.delete(msg.source_key)
    for key in old_copies - ({stored_copy.key} if stored_copy is not None else set()):
        store.delete(key)
    log.info("upload %s %s (%s)", msg.upload_id, state, error.code if error else report.format)
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
