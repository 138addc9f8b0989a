"""What `mediasan serve` tells the people who run it: /healthz, /readyz, /metrics, and a request counter.

* ``GET /healthz``: 200 while the process answers; it checks nothing else, so a supervisor restarts
  only a server that is really stuck.
* ``GET /readyz``: 200 when the database (through the API's own connections) and the store answer,
  else 503 with ``{"checks": {...}}`` naming the one that does not. Each check has a deadline; a
  stalled dependency makes the answer 503 within seconds, never a hung probe.
* ``GET /metrics``: ``mediasan_jobs{state}`` counted from the database at scrape time,
  ``mediasan_job_oldest_received_seconds`` (how long the oldest waiting job has waited),
  ``mediasan_database_up`` and ``mediasan_api_requests_total{route,status}`` (route templates such
  as ``/uploads/{upload_id}/media``, never ids; a path no route matches is ``unmatched``).

The server starts without its dependencies: the API's Services (which open the database) are built
at the first request or probe that needs them (``LazyServices``), and again after a failure.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.routing import Match

from worker.settings import Settings

log = logging.getLogger(__name__)

CHECK_DEADLINE_S = 3.0
UNMATCHED_ROUTE = "unmatched"


class LazyServices:
    """The API's Services, built (database engine, store, broker) at the first attribute read that
    needs them, and again at the next read when building failed: a server started while the database
    was down serves as soon as it is back."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._built = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._built is None:
            from worker.services import build_services
            with self._lock:
                if self._built is None:
                    self._built = build_services(self.settings)
        return getattr(self._built, name)


class Probes:
    """The database and the store as the readiness probe and the job counter see them, each call
    under a deadline. The database is the API's own (its Services, built here if no request has
    built them yet: a fresh embedded deployment creates its database then); the store is probed
    through a client of its own with short timeouts."""

    def __init__(self, settings: Settings, services):
        self.settings = settings
        self.services = services
        self._store_check = None
        self._lock = threading.Lock()
        # a bounded pool: a dependency that hangs holds at most these threads
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mediasan-probe")

    def check_database(self) -> None:
        from sqlalchemy import text
        with self.services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def check_store(self) -> None:
        with self._lock:
            if self._store_check is None:
                self._store_check = store_check(self.settings)
        self._store_check()

    def within_deadline(self, check):
        return self._pool.submit(check).result(timeout=CHECK_DEADLINE_S)

    def readiness(self) -> dict[str, str]:
        checks = {"database": self.check_database, "store": self.check_store}
        futures = {name: self._pool.submit(check) for name, check in checks.items()}
        results = {}
        for name, future in futures.items():
            try:
                future.result(timeout=CHECK_DEADLINE_S)
                results[name] = "ok"
            except FutureTimeout:
                results[name] = f"no answer within {CHECK_DEADLINE_S:.0f} s"
                log.warning("readiness: the %s did not answer within %.0f s", name, CHECK_DEADLINE_S)
            except Exception as e:
                results[name] = f"failed: {type(e).__name__}"
                log.warning("readiness: the %s check failed: %s: %s", name, type(e).__name__, e)
        return results

    def job_counts(self) -> tuple[dict[str, int], float | None]:
        """(jobs by state, seconds the oldest received job has waited)."""
        from sqlalchemy import func, select

        from worker import records

        with self.services.engine.connect() as connection:
            counts = dict(connection.execute(select(records.Job.state, func.count()).group_by(records.Job.state)).all())
            oldest = connection.execute(select(func.min(records.Job.received_at))
                                        .where(records.Job.state == "received")).scalar()
        waited = (records.utcnow() - oldest).total_seconds() if oldest is not None else None
        return counts, waited


def store_check(settings: Settings):
    """A function that raises unless the store answers: each S3 bucket (a client of its own without
    retries, 2 s timeouts), or the local store's folder."""
    from worker.storage import AREAS, S3Store, open_store

    store = open_store(settings.storage_url, settings.resolved_data_dir())
    if isinstance(store, S3Store):
        import boto3
        from botocore.config import Config

        meta = store.client.meta
        client = boto3.session.Session().client(
            "s3", endpoint_url=meta.endpoint_url, region_name=meta.region_name,
            config=meta.config.merge(Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=2)))

        def check_s3() -> None:
            for area in AREAS:
                client.head_bucket(Bucket=store.bucket(area))
        return check_s3

    root = Path(store.root)

    def check_local() -> None:
        # a fresh embedded deployment has no store folder until the first upload creates it
        if root.is_dir():
            if not os.access(root, os.R_OK | os.X_OK):
                raise PermissionError(f"the store folder {root} is not readable")
        elif not (root.parent.is_dir() and os.access(root.parent, os.W_OK)):
            raise FileNotFoundError(f"the store folder {root} does not exist and cannot be created")
    return check_local


class JobsCollector:
    """``mediasan_jobs{state}`` and friends, read from the database when Prometheus scrapes."""

    def __init__(self, probes: Probes):
        self.probes = probes

    def describe(self):
        return []   # nothing to check at registration; collect() talks to the database

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from worker.records import JOB_STATES

        up = GaugeMetricFamily("mediasan_database_up", "1 when this scrape could count the jobs in the database.")
        try:
            counts, waited = self.probes.within_deadline(self.probes.job_counts)
        except Exception as e:
            log.warning("metrics: cannot count jobs: %s: %s", type(e).__name__, e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("mediasan_jobs", "Jobs by state, counted from the database at scrape time.",
                                 labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        oldest = GaugeMetricFamily("mediasan_job_oldest_received_seconds",
                                   "Seconds the oldest job still in state received has waited (0 when none).")
        oldest.add_metric([], max(waited or 0.0, 0.0))
        yield oldest


class RequestMetrics:
    """ASGI middleware: one count per request, by route template and status."""

    def __init__(self, app, *, router, counter):
        self.app = app
        self.router = router
        self.counter = counter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500   # what the client gets when the app raises before answering

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.counter.labels(route=route_template(self.router.routes, scope), status=str(status)).inc()


def route_template(routes, scope) -> str:
    """The path template of the route that served ``scope``: FastAPI notes its route in the scope;
    otherwise (a mount, a method mismatch) the first route whose pattern matches."""
    template = getattr(scope.get("route"), "path_format", None)
    if template:
        return template
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path_format", None) or UNMATCHED_ROUTE
        if match == Match.PARTIAL and partial is None:
            partial = route
    return getattr(partial, "path_format", None) or UNMATCHED_ROUTE


def install(app: FastAPI, settings: Settings, services) -> None:
    """Add the probes, /metrics and the request counter to the API (``services``: its Services, or
    the LazyServices that build them at first use)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

    probes = Probes(settings, services)
    registry = CollectorRegistry()
    requests_total = Counter("mediasan_api_requests", "HTTP requests answered, by route template and status.",
                             ["route", "status"], registry=registry)
    registry.register(JobsCollector(probes))
    # the operators' endpoints stay out of the investigators' OpenAPI document
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz", summary="200 while the server process answers")
    def healthz() -> dict:
        return {"status": "ok"}

    @router.get("/readyz", summary="200 when the database and the store answer, else 503 naming the failing one",
                responses={503: {"description": "a dependency does not answer; `checks` names it"}})
    def readyz() -> JSONResponse:
        checks = probes.readiness()
        ready = all(result == "ok" for result in checks.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                            status_code=200 if ready else 503, headers={"Cache-Control": "no-store"})

    @router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics of the API and the jobs")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router)
    app.add_middleware(RequestMetrics, router=app.router, counter=requests_total)
