"""tasks.purge: apply retention once a day (scheduled by beat). See worker.retention."""
from __future__ import annotations

import logging

from worker import retention
from worker.app import app
from worker.services import get_services

log = logging.getLogger(__name__)


# on the sweeper's queue (worker/app.py task_routes): a backlog of uploads never delays retention
@app.task(name="tasks.purge", acks_late=True, ignore_result=True)
def purge() -> int:
    purged = retention.purge(services=get_services(), actor="retention")
    if purged:
        log.info("purge deleted %d originals and %d locations past retention",
                 sum(p.what == "original" for p in purged), sum(p.what == "location" for p in purged))
    return len(purged)
