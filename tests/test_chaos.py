"""The chaos test: real workers on Redis + PostgreSQL + S3 killed, cut off from their broker and stalled
while 40 uploads go through, then every invariant read back from the database and the store.

One run (60-120 s on this 2-core machine, depending on what else runs) serves every test of the
module; each test asserts one invariant and, when it breaks, prints what broke, the run's figures and
its timeline of faults. See tests/chaos.py for what runs and tests/chaos_check.py for how each
invariant is read back. MEDIASAN_CHAOS_SEED=N picks other fault times and victims.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.request

import pytest

from tests.chaos import INVARIANTS, ChaosRun, Plan
from tests.stallproxy import StallProxy
from tests.workerproc import POSTGRES_URL, REQUIRE_SERVICES, require

# 40 uploads over 20 s (MEDIASAN_CHAOS_SEED picks other fault times and victims); 4 pool children and 1 whole worker killed, the broker lost once, S3 stalled 5 s
PLAN = Plan(uploads=40, child_kills=4, worker_kills=1, broker_losses=1, stalls=1, stall_s=5.0,
            upload_window_s=20.0, seed=int(os.environ.get("MEDIASAN_CHAOS_SEED", "8")))


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed: the chaos run needs a Redis of its own to kill"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    require(POSTGRES_URL, 5432, "PostgreSQL")
    with ChaosRun(tmp_path_factory.mktemp("chaos"), PLAN, database_url=POSTGRES_URL) as run:
        findings = run.run()
    print(findings.report())
    return findings


@pytest.mark.services
def test_every_planned_fault_happened(chaos):
    """Without this, a harness that skipped its faults would pass every invariant below."""
    figures = chaos.figures
    assert figures["uploads"] == figures["accepted"] == PLAN.uploads, chaos.explain("accepted")
    assert figures["child kills (busy)"].startswith(f"{PLAN.child_kills} ("), chaos.report()
    assert figures["worker kills"] == PLAN.worker_kills, chaos.report()
    assert figures["broker losses"] == PLAN.broker_losses, chaos.report()
    assert figures["storage stalls (s)"].startswith(f"{PLAN.stalls} ("), chaos.report()


@pytest.mark.services
@pytest.mark.parametrize("invariant", list(INVARIANTS))
def test_invariant_holds_after_the_faults(chaos, invariant):
    if chaos.violations[invariant]:
        pytest.fail(chaos.explain(invariant), pytrace=False)


def test_stall_proxy_holds_traffic_until_resumed(tmp_path):
    """The stall the chaos run relies on: a request through a stalled proxy waits, then completes."""
    import http.server

    (tmp_path / "f").write_bytes(b"x" * 100_000)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with StallProxy("127.0.0.1", server.server_address[1]) as proxy:
            assert len(urllib.request.urlopen(proxy.endpoint + "/f", timeout=5).read()) == 100_000
            proxy.stall()
            threading.Timer(1.0, proxy.resume).start()
            started = time.monotonic()
            body = urllib.request.urlopen(proxy.endpoint + "/f", timeout=5).read()
            assert len(body) == 100_000 and time.monotonic() - started >= 0.9
            assert proxy.stalls == 1 and proxy.stalled_s >= 0.9
    finally:
        server.shutdown()
