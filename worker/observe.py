"""What a worker tells the people who run it: Celery's signals wired to worker.metrics and worker.logs.

worker/app.py imports this module, which only connects receivers; they run in a worker's processes:

* ``celeryd_init`` and ``setup_logging`` (main process; ``setup_logging`` again in each pool child):
  our handler and format (MEDIASAN_LOG_FORMAT) instead of Celery's; ``celeryd_after_setup``: with
  JSON logs, no banner and Celery's console lines ("Warm shutdown") as JSON.
* ``worker_init`` (main process, before the pool forks): the metrics folder and server when
  MEDIASAN_METRICS_PORT is set, and ``ObservedRequest`` on our tasks, which names the upload of each
  task id for the main process's lines (received, worker lost).
* ``worker_process_init`` / ``worker_process_shutdown`` (each pool child): drop the inherited server
  socket; ``mark_process_dead`` when the child exits.
* ``task_prerun`` / ``task_postrun`` / ``task_retry`` (pool child): the upload of the running task
  for every line, the ``task_started`` line, the start time for ``seconds``, retries by reason.

The pipeline calls ``upload_finished`` where the outcome is known; the sweeper ``republished``.
"""
from __future__ import annotations

import logging
import os
import re
import time

from celery import signals
from celery.exceptions import WorkerLostError
from celery.worker.request import Request

from worker import logs, metrics

log = logging.getLogger("worker.observe")

_task_started: dict[str, float] = {}    # task id -> monotonic start, in the pool child running it


def _upload_id_of(kwargs) -> str | None:
    upload_id = kwargs.get("upload_id") if isinstance(kwargs, dict) else None
    return upload_id if isinstance(upload_id, str) else None


# --- the pipeline's and the sweeper's calls ---------------------------------------------------------

def upload_finished(upload_id: str, state: str, report=None, *, error_code: str | None = None) -> None:
    """One upload reached its final state (``report``: the sanitizer's Report, when it ran): the
    metrics and the ``upload_finished`` line."""
    from celery import current_task

    kind, fmt = (report.kind, report.format) if report is not None else (None, None)
    if report is not None and report.error is not None:
        error_code = report.error.code

    task_id = current_task.request.id if current_task else None
    started = _task_started.get(task_id) if task_id else None
    seconds = round(time.monotonic() - started, 3) if started is not None else None
    metrics.record_finished(state=state, kind=kind, error_code=error_code, seconds=seconds)
    logs.log_event(log, "upload_finished", "upload %s %s (%s)", upload_id, state, error_code or fmt,
                   level=logging.WARNING if state == "failed" else logging.INFO, upload_id=upload_id,
                   state=state, kind=kind, format=fmt, seconds=seconds, error_code=error_code)


def rescheduled(upload_id: str, reason: str, countdown_s: float) -> None:
    """A task put itself back on the queue without Celery's retry (waiting out another worker's
    lease spends no retry): counted and logged like a retry, with its reason."""
    metrics.record_retry(reason)
    logs.log_event(log, "task_retried", "upload %s rescheduled in %.0f s (%s)", upload_id, countdown_s, reason,
                   upload_id=upload_id, reason=reason)


def republished(count: int) -> None:
    metrics.record_republished(count)


# --- the main process: which upload a task id carries, and lost workers ----------------------------

class ObservedRequest(Request):
    """Celery's request (the main process's view of one message) that knows its upload.

    Celery's custom-request hook: the received line is logged right after construction, and a
    pool child's death is reported through ``on_failure`` in the main process. The task id stays
    remembered after the request ends (a bounded map): a retry is sent under the same id and may be
    received before the run it replaces has reported.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        logs.remember_task(self.id, _upload_id_of(self.kwargs))

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        upload_id = logs.upload_for_task(self.id)
        exc = getattr(exc_info.exception, "exc", exc_info.exception)   # ExceptionWithTraceback
        with logs.upload_context(upload_id):
            # billiard >= 4.3 reports a dead child as SystemExit before Celery turns it into WorkerLostError;
            # one we cancelled or revoked ourselves is not a loss
            if isinstance(exc, (WorkerLostError, SystemExit, KeyboardInterrupt)) and not (
                    getattr(self, "_already_cancelled", False) or getattr(self, "_already_revoked", False)):
                requeued = self.task.acks_late and self.task.reject_on_worker_lost
                logs.log_event(log, "worker_lost", "the pool process running upload %s died (%s)%s", upload_id,
                               exc, "; the message goes back to the queue" if requeued else "",
                               level=logging.ERROR, upload_id=upload_id)
                if requeued:
                    metrics.record_retry("worker_lost")
            return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def on_success(self, failed__retval__runtime, **kwargs):
        with logs.upload_context(logs.upload_for_task(self.id)):
            return super().on_success(failed__retval__runtime, **kwargs)


@signals.celeryd_init.connect
@signals.setup_logging.connect
def _setup_logging(loglevel=None, **_) -> None:
    # celeryd_init comes first: Celery warns about privileges before it sets up logging;
    # a receiver here makes Celery leave logging to us: one handler, our format, the redaction filter
    from worker.settings import get_settings
    logs.configure(get_settings().log_format, loglevel or "INFO")


@signals.celeryd_after_setup.connect
def _json_console(sender=None, instance=None, **_) -> None:
    """Celery prints a banner at start and a few lines from its signal handlers ("Warm shutdown")
    straight to the console; with JSON logs those become JSON lines too (or go, the banner)."""
    from celery.apps import worker as celery_worker

    from worker.settings import get_settings
    if get_settings().log_format == "json" and instance is not None:
        instance.quiet = True
        celery_worker.safe_say = logs.say_json


@signals.worker_init.connect
def _worker_init(sender=None, **_) -> None:
    from worker.settings import get_settings

    settings = get_settings()
    for task in sender.app.tasks.values():
        if task.name.startswith("tasks."):
            task.Request = ObservedRequest
    if settings.metrics_port:
        folder = metrics.multiprocess_dir(settings.resolved_data_dir(), sender.hostname, os.getpid())
        metrics.serve_worker_metrics(folder=folder, host=settings.metrics_host, port=settings.metrics_port)
        log.info("metrics of %s on http://%s:%d/metrics", sender.hostname, settings.metrics_host,
                 settings.metrics_port)


@signals.worker_process_init.connect
def _child_init(**_) -> None:
    metrics.forget_server_in_child()


@signals.worker_process_shutdown.connect
def _child_shutdown(pid=None, **_) -> None:
    metrics.mark_process_dead(pid or os.getpid())


# --- the pool child: the running task -------------------------------------------------------------

@signals.task_prerun.connect
def _task_prerun(task_id=None, task=None, kwargs=None, **_) -> None:
    upload_id = _upload_id_of(kwargs)
    _task_started[task_id] = time.monotonic()
    logs.remember_task(task_id, upload_id)
    logs.current_upload.set(upload_id)
    if upload_id:
        logs.log_event(log, "task_started", "upload %s started (%s)", upload_id, task.name,
                       upload_id=upload_id, retries=task.request.retries or 0)


@signals.task_postrun.connect
def _task_postrun(task_id=None, **_) -> None:
    _task_started.pop(task_id, None)
    logs.forget_task(task_id)
    logs.current_upload.set(None)


@signals.task_retry.connect
def _task_retry(request=None, reason=None, **_) -> None:
    metrics.record_retry(retry_reason(reason))


def retry_reason(retry) -> str:
    """A low-cardinality label: the retried exception's class in snake_case (``lease_held``,
    ``operational_error``, ``source_missing``, …)."""
    cause = getattr(retry, "exc", None) or getattr(retry, "__context__", None)
    if cause is None:
        return "unspecified"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(cause).__name__).lower()
