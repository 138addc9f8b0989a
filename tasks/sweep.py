"""tasks.sweep: republish jobs whose message is lost, remove what killed workers left. See worker.sweeper.

It runs off the work queue, on its own queue (``MEDIASAN_SWEEP_QUEUE``, default ``{queue}.sweep``),
which every worker of the work queue also consumes: a backlog of uploads does not hold it up.
``mediasan sweep --every S`` runs the same in a process of its own, with no broker in between.
"""
from __future__ import annotations

import logging

from celery.signals import worker_init

from worker import observe, sweeper
from worker.app import app
from worker.services import get_services
from worker.settings import get_settings

log = logging.getLogger(__name__)


# on its own queue (worker/app.py task_routes): a backlog of uploads never delays it
@app.task(name="tasks.sweep", acks_late=True, ignore_result=True)
def sweep() -> int:
    republished = sweeper.sweep(get_services()).republished
    observe.republished(len(republished))
    return len(republished)


@worker_init.connect
def _consume_the_sweep_queue(sender=None, **_) -> None:
    """A worker of the work queue also takes the sweeper's queue (no change to how workers are started)."""
    settings = get_settings()
    queues = sender.app.amqp.queues
    if settings.queue in queues.consume_from:
        queues.select_add(settings.resolved_sweep_queue())
