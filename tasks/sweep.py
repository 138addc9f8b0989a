"""tasks.sweep: republish jobs whose worker died or whose message was lost. An upload is never lost."""
from __future__ import annotations

import logging
from datetime import timedelta

from worker import records
from worker import observe
from worker.app import app
from worker.intake import message_for, send_upload
from worker.services import get_services

log = logging.getLogger(__name__)


@app.task(name="tasks.sweep", acks_late=True, ignore_result=True)
def sweep() -> int:
    services = get_services()
    cutoff = records.utcnow() - timedelta(seconds=services.settings.stale_received_s)
    with services.sessions() as session:
        jobs = records.stale_jobs(session, received_before=cutoff)
        for job in jobs:
            job.updated_at = records.utcnow()   # one republish per stale period, not one per sweep
        session.commit()
        messages = [message_for(job) for job in jobs]
    for msg in messages:
        send_upload(services, msg)
    observe.republished(len(messages))
    if messages:
        log.info("sweep republished %d jobs", len(messages))
    return len(messages)
