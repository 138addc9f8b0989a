"""tasks.sanitize_upload: the message of worker.messages.UploadMessage, handed to worker.pipeline."""
from __future__ import annotations

import logging
from datetime import timedelta

from celery.exceptions import Reject
from pydantic import ValidationError

from worker import pipeline, records
from worker import observe
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
        raise self.retry(countdown=e.seconds, max_retries=None) from None
    except Exception as e:
        if self.request.retries >= self.max_retries:
            _give_up(msg, services, e)
            return "failed"
        log.warning("upload %s: %s; retrying", msg.upload_id, e)
        raise self.retry(exc=e, countdown=min(600, 5 * 2 ** self.request.retries)) from None


def _give_up(msg: UploadMessage, services, error: Exception) -> None:
    """Infrastructure kept failing: end the job `failed` with the reason; the original stays where it is."""
    with services.sessions() as session:
        attempt = records.claim_job(session, msg.upload_id, timedelta(seconds=60))
        if attempt is not None:
            records.finish_job(session, msg.upload_id, attempt, state="failed", error_code="retries_exhausted",
                               error_message=f"{type(error).__name__}: {str(error)[:500]}")
            session.commit()
            observe.upload_finished(msg.upload_id, "failed", error_code="retries_exhausted")
