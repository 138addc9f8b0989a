"""The worker's Prometheus metrics, aggregated over every pool process (DESIGN.md, "Operations contract").

prometheus_client's multiprocess mode: each process writes its samples to its own files under
``PROMETHEUS_MULTIPROC_DIR`` and the main process's HTTP server sums them at scrape time
(``MultiProcessCollector``). The folder must be named before any process creates a metric, so the
worker's main process prepares it (``serve_worker_metrics``, from Celery's ``worker_init``) before the
pool forks; children inherit the variable and the metric objects.

Nothing here runs unless ``MEDIASAN_METRICS_PORT`` is set: in the CLI, the API and a worker without
metrics every ``record_*`` call is a no-op.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from worker.errors import REJECTING_CODES

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FINAL_STATES = ("done", "rejected", "failed")
KINDS = ("photo", "video", "audio", "unknown")   # unknown: refused before the content was identified
# from a small photo (tens of ms) to a long video near the hard time limit (20 min)
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)


@dataclass(frozen=True)
class WorkerMetrics:
    uploads_finished: object
    rejections: object
    sanitize_seconds: object
    task_retries: object
    sweeper_republished: object


_metrics: WorkerMetrics | None = None
_server = None


def _create_metrics() -> WorkerMetrics:
    # registry=None: in multiprocess mode the samples are read from the files, not from a registry
    from prometheus_client import Counter, Histogram

    metrics = WorkerMetrics(
        uploads_finished=Counter("mediasan_uploads_finished", "Uploads that reached a final state.",
                                 ["state", "kind"], registry=None),
        rejections=Counter("mediasan_rejections", "Uploads rejected as bad input, by error code.",
                           ["code"], registry=None),
        sanitize_seconds=Histogram("mediasan_sanitize_seconds",
                                   "Seconds a worker spent on one upload, from the task's start to its final state.",
                                   ["kind"], buckets=SECONDS_BUCKETS, registry=None),
        task_retries=Counter("mediasan_task_retries", "Task runs that will be tried again, by reason.",
                             ["reason"], registry=None),
        sweeper_republished=Counter("mediasan_sweeper_republished",
                                    "Messages the sweeper re-sent for jobs whose message or worker was lost.",
                                    registry=None),
    )
    # every series a dashboard or an alert divides by exists from the start, at 0
    for state in FINAL_STATES:
        for kind in KINDS:
            metrics.uploads_finished.labels(state=state, kind=kind)
    for code in sorted(REJECTING_CODES):
        metrics.rejections.labels(code=code)
    for kind in KINDS:
        metrics.sanitize_seconds.labels(kind=kind)
    return metrics


def multiprocess_dir(data_dir: Path, node_name: str, main_pid: int) -> Path:
    """One folder a worker run (node name and main process id): two workers sharing a data folder,
    even under the same node name, never sum or wipe each other's files."""
    return data_dir / "metrics" / f"{re.sub(r'[^A-Za-z0-9_@-]', '_', node_name)}.{main_pid}"


def remove_dead_runs(metrics_root: Path) -> None:
    """The folders of worker runs whose main process is gone: their counts were served, or are lost
    with the process that served them."""
    for folder in metrics_root.glob("*.*"):
        pid = folder.name.rsplit(".", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve_worker_metrics(*, folder: Path, host: str, port: int) -> None:
    """In a worker's main process, before the pool forks: an empty multiprocess folder, the metrics,
    and the HTTP server that aggregates every process's files at scrape time."""
    global _metrics, _server
    remove_dead_runs(folder.parent)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(folder)
    from prometheus_client import CollectorRegistry, start_http_server, values
    from prometheus_client.multiprocess import MultiProcessCollector

    # prometheus_client picks its value class when first imported; make sure it is the file-backed one
    values.ValueClass = values.get_value_class()
    _metrics = _create_metrics()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    _server, _ = start_http_server(port, addr=host, registry=registry)


def forget_server_in_child() -> None:
    """In a pool child after fork: close the inherited listening socket, so that only the main process
    holds the port (a child outliving a killed main process would keep it bound)."""
    if _server is not None:
        _server.socket.close()


def mark_process_dead(pid: int) -> None:
    if _metrics is None:
        return
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(pid, os.environ.get(MULTIPROC_ENV))


def enabled() -> bool:
    return _metrics is not None


# --- what the worker records (each a no-op without metrics) ----------------------------------------

def record_finished(*, state: str, kind: str | None, error_code: str | None, seconds: float | None) -> None:
    if _metrics is None:
        return
    kind = kind or "unknown"
    _metrics.uploads_finished.labels(state=state, kind=kind).inc()
    if state == "rejected" and error_code:
        _metrics.rejections.labels(code=error_code).inc()
    if seconds is not None:
        _metrics.sanitize_seconds.labels(kind=kind).observe(seconds)


def record_retry(reason: str) -> None:
    if _metrics is not None:
        _metrics.task_retries.labels(reason=reason).inc()


def record_republished(count: int) -> None:
    if _metrics is not None and count:
        _metrics.sweeper_republished.inc(count)
