"""tasks.sanitize_upload: the message of worker.messages.UploadMessage, handed to worker.pipeline."""
from __future__ import annotations

import logging
from datetime import timedelta

from celery.exceptions import Reject
from celery.signals import worker_init, worker_process_shutdown
from pydantic import ValidationError
from sqlalchemy import delete

from worker import observe, pipeline, records, workdir
from worker.app import app
from worker.messages import UploadMessage
from worker.services import get_services
from worker.settings import get_settings

log = logging.getLogger(__name__)


@app.task(name="tasks.sanitize_upload", bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=get_settings().task_max_retries)
def sanitize_upload(self, **message) -> str:
    try:
        msg = UploadMessage.model_validate(message)
    except ValidationError as e:
        # a malformed message can never succeed: drop it loudly rather than retry forever
        log.error("rejecting malformed sanitize_upload message: %s", e.errors(include_input=False))
        raise Reject(str(e), requeue=False) from None
    services = get_services()
    try:
        return pipeline.process_upload(msg, services).state
    except pipeline.LeaseHeld as e:
        # Someone else holds the job: come back when its lease runs out. A new message carrying the
        # infrastructure-retry count unchanged, so waiting on a lease never counts toward max_retries.
        self.apply_async(kwargs=message, countdown=e.seconds, retries=self.request.retries)
        observe.rescheduled(msg.upload_id, "lease_held", e.seconds)
        return "held"
    except Exception as e:
        if self.request.retries >= self.max_retries:
            _give_up(msg, services, e)
            return "failed"
        log.warning("upload %s: %s; retrying", msg.upload_id, e)
        raise self.retry(exc=e, countdown=min(600, 5 * 2 ** self.request.retries)) from None


def _give_up(msg: UploadMessage, services, error: Exception) -> None:
    """Infrastructure kept failing: end the job `failed` with the reason. An agency copy of an earlier
    attempt or run is unpublished (row and object: nothing stale stays published); the original stays
    where it is (the incoming object too when it is the only copy)."""
    with services.sessions() as session:
        attempt = records.claim_job(session, msg.upload_id, timedelta(seconds=60))
        if attempt is None:
            return
        session.execute(delete(records.Variant).where(records.Variant.upload_id == msg.upload_id,
                                                      records.Variant.variant == "sanitized"))
        finished = records.finish_job(session, msg.upload_id, attempt, state="failed", error_code="retries_exhausted",
                                      error_message=f"{type(error).__name__}: {str(error)[:500]}")
        if not finished:
            session.rollback()
            return
        session.commit()
    observe.upload_finished(msg.upload_id, "failed", error_code="retries_exhausted")
    try:
        pipeline.clean_after_finish(services, msg.upload_id)
    except Exception as e:  # noqa: BLE001 - the store is what kept failing; the sweeper finishes this later
        log.warning("upload %s: cleaning up after giving up failed: %s", msg.upload_id, e)


@worker_init.connect
def _remove_dead_work_folders(**_) -> None:
    """A worker at start removes the work folders of processes that are gone (e.g. its own killed children)."""
    settings = get_settings()
    workdir.remove_dead(settings.resolved_work_dir(), stale_s=settings.lease_s)


@worker_process_shutdown.connect
def _remove_own_work_folder(**_) -> None:
    workdir.remove_own(get_settings().resolved_work_dir())
