"""What the upload API does for one file: store it as incoming, write the job row, then enqueue.

The message is sent only after the job row is committed (the row is the record that the upload
exists; if sending fails, the sweeper republishes it).
"""
from __future__ import annotations

from pathlib import Path

from worker import records
from worker.messages import UploadMessage
from worker.services import Services


def incoming_key(upload_id: str) -> str:
    return f"incoming/{upload_id}/upload"


def enqueue_file(path: Path, *, services: Services, complaint_id: str, channel: str = "mobile_app",
                 agency: str | None = None, content_type: str | None = None, upload_id: str | None = None) -> str:
    """Accept one file for sanitizing; returns its upload id."""
    upload_id = upload_id or records.new_upload_id()
    msg = UploadMessage(upload_id=upload_id, complaint_id=complaint_id, channel=channel,
                        source_key=incoming_key(upload_id), filename=path.name[:255], content_type=content_type,
                        agency=agency, received_at=records.utcnow())
    services.store.put_file(msg.source_key, path, content_type="application/octet-stream",
                            tags={"variant": "incoming", "access": "restricted", "complaint": complaint_id})
    with services.sessions() as session:
        records.insert_job(session, upload_id=upload_id, complaint_id=complaint_id, channel=channel, agency=agency,
                           source_key=msg.source_key, filename=msg.filename, content_type=content_type,
                           received_at=msg.received_at)
        session.commit()
    send_upload(services, msg)
    return upload_id


def message_for(job: records.Job) -> UploadMessage:
    """The task message of a job row: what the sweeper and reprocess re-send."""
    return UploadMessage(upload_id=job.upload_id, complaint_id=job.complaint_id, channel=job.channel,
                         source_key=job.source_key, filename=job.filename, content_type=job.content_type,
                         agency=job.agency, received_at=job.received_at)


def send_upload(services: Services, msg: UploadMessage) -> None:
    services.broker.send_task("tasks.sanitize_upload", kwargs=msg.as_kwargs())


def job_status(*, services: Services, upload_id: str) -> dict | None:
    """`mediasan status --json`: the job and its variants. Never a location: that is a restricted read."""
    with services.sessions() as session:
        job = session.get(records.Job, upload_id)
        if job is None:
            return None
        return {
            "upload_id": job.upload_id,
            "complaint_id": job.complaint_id,
            "state": job.state,
            "attempts": job.attempts,
            "kind": job.kind,
            "format": job.format,
            "removed": job.removed or [],
            "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
            "variants": [{"variant": v.variant, "key": v.key, "sha256": v.sha256, "bytes": v.bytes, "tags": v.tags}
                         for v in records.variants_of(session, upload_id)],
        }
