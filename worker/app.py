"""The Celery app and its reliability settings (DESIGN.md, "Reliability").

At-least-once delivery with idempotent effects: late acks, requeue when a worker dies, one message
prefetched at a time, JSON only, time limits below the broker's redelivery timeout, recycled children.
The job row is the record of an upload; the sweeper republishes what a lost message left behind.
"""
from __future__ import annotations

import functools
import logging

from celery import Celery, signals

from worker import observe  # noqa: F401  (metrics and log lines on Celery's signals)
from worker.settings import Settings, get_settings


def filesystem_transport_options(settings: Settings) -> dict:
    """kombu's filesystem broker under the data folder; processed messages are kept for inspection."""
    root = settings.resolved_data_dir() / "broker"
    queue, processed, control = root / "queue", root / "processed", root / "control"
    for folder in (queue, processed, control):
        folder.mkdir(parents=True, exist_ok=True)
    # control_folder defaults to ./control, relative to wherever the process happens to run
    return {"data_folder_in": str(queue), "data_folder_out": str(queue), "control_folder": str(control),
            "processed_folder": str(processed), "store_processed": True}


def guard_detached_redis_channels() -> None:
    """Make a kombu Redis channel whose connection is gone fail with a connection error, as a lost
    broker should, instead of `AttributeError("'NoneType' object has no attribute 'hostname'")`,
    which stopped whole workers ("Unrecoverable error") after a broker loss. Idempotent.

    Why: after a connection loss Celery 5.7 collects and closes the connection, which detaches its
    transport (`transport.client = None`), while channels of that connection still have work to do:
    restoring the unacknowledged messages of tasks that were running (late acks) when the channel is
    finally closed, and acknowledging a message when such a task finishes. Each rebuilds the channel's
    Redis pool from `transport.client.hostname` (kombu 5.7, redis.py `_connparams`). An AttributeError
    is not among the errors Celery and kombu expect there; a connection error is, and is handled: the
    ack is logged as failed ("Couldn't ack") and the message comes back after the visibility timeout,
    the restore is skipped the same way, and the consumer goes on reconnecting. The job row, not the
    message, records the upload, so a message acknowledged late or twice changes nothing.
    """
    from kombu.transport import redis as kombu_redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    original = kombu_redis.Channel._connparams
    if getattr(original, "guards_detached_transport", False):
        return

    @functools.wraps(original)
    def _connparams(self, asynchronous=False):
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("this channel's broker connection is closed (lost broker)")
        return original(self, asynchronous=asynchronous)

    _connparams.guards_detached_transport = True
    kombu_redis.Channel._connparams = _connparams


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    broker = settings.resolved_broker_url()
    if broker.startswith(("redis", "rediss")):
        guard_detached_redis_channels()
    app = Celery("mediasan", broker=broker, include=["tasks.sanitize", "tasks.sweep", "tasks.purge"])
    transport_options: dict = {}
    if broker.startswith("filesystem"):
        transport_options = filesystem_transport_options(settings)
    elif broker.startswith(("redis", "rediss", "sqs")):
        # redelivery of an unacked message happens only after this; keep it above the hard limit
        transport_options = {"visibility_timeout": settings.task_time_limit_s * 3}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        task_default_queue=settings.queue,
        # the sweeper and retention have their own queue (every worker of the work queue takes it too):
        # a backlog of uploads never delays them, whoever sends them (beat, send_task by name)
        task_routes={"tasks.sweep": {"queue": settings.resolved_sweep_queue()},
                     "tasks.purge": {"queue": settings.resolved_sweep_queue()}},
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # a lost broker is reconnected to, with growing pauses (2 s, 4 s, … 30 s), this many times;
        # then the worker exits non-zero so that its supervisor sees it (-1: retry for ever)
        broker_connection_retry=True,
        broker_connection_max_retries=(None if settings.broker_connection_max_retries < 0
                                       else settings.broker_connection_max_retries),
        # a task running when the broker goes keeps running: its effects are idempotent and its job
        # row, not the message, records the upload; a redelivered message finds the job done
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        beat_schedule={"sweep": {"task": "tasks.sweep", "schedule": float(settings.sweep_interval_s)},
                       # retention (policy principle 4); every purge is conditional, so two beats are harmless
                       "purge": {"task": "tasks.purge", "schedule": float(settings.purge_interval_s)}},
        timezone="UTC",
    )
    return app


@signals.worker_process_init.connect
def _bound_child_memory(**_) -> None:
    """Each pool child sanitizes under the process memory budget (worker/budget.py)."""
    from worker.budget import limit_process_memory

    limit_process_memory(get_settings().process_memory_bytes)


app = create_app()


@signals.worker_process_init.connect
def _own_connections(**_) -> None:
    """A prefork child opens its own database, store and broker connections: nothing inherited."""
    from worker.services import get_services, reset_after_fork

    reset_after_fork()
    try:
        get_services()
    except Exception:   # a store or database that is down now may be back by the first task
        logging.getLogger(__name__).exception("building this process's services failed; retried on first use")


@signals.worker_process_shutdown.connect
def _close_connections(**_) -> None:
    from worker.services import close_services

    close_services()
