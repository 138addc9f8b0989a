"""The chaos bench: a big chaos run (tests/chaos.py) and the figures it reads back, then the same uploads
on a quiet deployment (no faults, the shipped settings) and in-process sanitizing of the same files.

    bench/chaos [--uploads 300] [--child-kills 30] [--worker-kills 2] [--broker-losses 1] [--stalls 2]
                [--stall-s 10] [--window 120] [--seed 8] [--no-quiet] [--no-inprocess] [--keep DIR]

Needs redis-server on the PATH (the run kills its own) and PostgreSQL (MEDIASAN_TEST_DATABASE_URL,
default postgresql+psycopg://postgres@127.0.0.1:5432/test). Writes bench/results/chaos-latest.json.
Exit status 1 when any invariant broke in the chaos run (the figures say which), else 0.
"""
from __future__ import annotations

import argparse
import json
import resource
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.sanitize_bench import machine
from tests.chaos import ChaosRun, Findings, Plan, build_inputs

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "chaos-latest.json"
DATABASE_URL = os.environ.get("MEDIASAN_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def log(text: str) -> None:
    print(text, flush=True)


def chaos_plan(args) -> Plan:
    # a 10 s stall must fit well inside the soft limit, and the lease outlasts the hard limit
    return Plan(uploads=args.uploads, child_kills=args.child_kills, worker_kills=args.worker_kills,
                broker_losses=args.broker_losses, stalls=args.stalls, stall_s=args.stall_s,
                upload_window_s=args.window, lease_s=45, soft_time_limit_s=30, time_limit_s=40,
                sweep_interval_s=2, stale_received_s=15, settle_timeout_s=300, grace_s=15, seed=args.seed)


def quiet_plan(args) -> Plan:
    """No faults, every upload sent at once. The leases and limits of the chaos run (so that a job
    stuck by a bug is taken over in a minute, not the shipped 30), but the shipped 10 minutes before
    a received job counts as lost: a backlog is not mistaken for lost messages."""
    return Plan(uploads=args.uploads, child_kills=0, worker_kills=0, broker_losses=0, stalls=0,
                upload_window_s=0, lease_s=45, soft_time_limit_s=30, time_limit_s=40,
                sweep_interval_s=2, stale_received_s=10 * 60, settle_timeout_s=300, grace_s=0, seed=args.seed)


def run_plan(folder: Path, plan: Plan, what: str) -> tuple[Findings, float]:
    log(f"\n== {what}: {plan.uploads} uploads, {plan.workers} workers x {plan.concurrency} ==")
    started = time.monotonic()
    with ChaosRun(folder, plan, database_url=DATABASE_URL, log=lambda t: log("  " + t)) as run:
        findings = run.run()
    log(findings.report())
    return findings, time.monotonic() - started


def in_process(folder: Path, count: int) -> dict:
    """sanitize_file over the same kind of inputs, one after another in this process."""
    from worker.sanitizer import sanitize_file
    from worker.settings import Settings

    inputs = build_inputs(folder / "inputs", count)
    out = folder / "out"
    out.mkdir()
    limits = Settings(_env_file=None).limits()
    sanitize_file(inputs[0].path, out / "warmup", limits)   # lazy imports are paid once, not timed
    statuses: dict[str, int] = {}
    started = time.monotonic()
    cpu_started = time.process_time()
    tools_started = resource.getrusage(resource.RUSAGE_CHILDREN)
    for n, item in enumerate(inputs):
        report = sanitize_file(item.path, out / f"{n:05d}", limits)
        statuses[report.status] = statuses.get(report.status, 0) + 1
    wall = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    tools = resource.getrusage(resource.RUSAGE_CHILDREN)
    tools_cpu = tools.ru_utime + tools.ru_stime - tools_started.ru_utime - tools_started.ru_stime
    return {"files": len(inputs), "seconds": round(wall, 2), "files_per_s": round(len(inputs) / wall, 2),
            "cpu_seconds_in_process": round(cpu, 2), "cpu_seconds_tools": round(tools_cpu, 2), "statuses": statuses}


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=300)
    parser.add_argument("--child-kills", type=int, default=30)
    parser.add_argument("--worker-kills", type=int, default=2)
    parser.add_argument("--broker-losses", type=int, default=1)
    parser.add_argument("--stalls", type=int, default=2)
    parser.add_argument("--stall-s", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=120.0, help="seconds the uploads are spread over")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--no-quiet", action="store_true", help="skip the quiet end-to-end run")
    parser.add_argument("--no-inprocess", action="store_true", help="skip in-process sanitizing")
    parser.add_argument("--no-chaos", action="store_true", help="skip the chaos run")
    parser.add_argument("--keep", type=Path, help="keep the runs' folders (logs, inputs) here")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the run's workers, Redis and moto are stopped, never orphaned
    signal.signal(signal.SIGTERM, _interrupt)
    if shutil.which("redis-server") is None:
        print("bench/chaos needs redis-server on the PATH (apt-get install redis-server)", file=sys.stderr)
        return 2

    root = args.keep or Path(tempfile.mkdtemp(prefix="chaos-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    meta = {"machine": machine(), "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    results: dict = {"meta": meta, "args": vars(args) | {"keep": str(args.keep) if args.keep else None}}
    broken = False
    try:
        if not args.no_chaos:
            plan = chaos_plan(args)
            findings, total = run_plan(root / "chaos", plan, "chaos run")
            broken = not findings.ok
            results["chaos"] = {"plan": asdict(plan), "figures": findings.figures, "log_signals": findings.log_signals,
                                "violations": {k: v[:50] for k, v in findings.violations.items() if v},
                                "timeline": findings.timeline, "harness_seconds": round(total, 1)}
        if not args.no_quiet:
            plan = quiet_plan(args)
            findings, total = run_plan(root / "quiet", plan, "quiet run (no faults)")
            results["quiet"] = {"plan": asdict(plan), "figures": findings.figures, "log_signals": findings.log_signals,
                                "violations": {k: v[:50] for k, v in findings.violations.items() if v},
                                "harness_seconds": round(total, 1)}
        if not args.no_inprocess:
            log(f"\n== in-process sanitize_file, one process, {args.uploads} files ==")
            results["in_process"] = in_process(root / "inprocess", args.uploads)
            log(f"  {results['in_process']}")
    finally:
        meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str))
    summary(results)
    return 1 if broken else 0


def summary(results: dict) -> None:
    m = results["meta"]["machine"]
    log(f"\n== summary: commit {m['commit']}, {m['date']}, {m['cores']} cores ({m['cpu']}), load average "
        f"{results['meta']['loadavg_before'][0]} before, {results['meta']['loadavg_after'][0]} after ==")
    if "chaos" in results:
        f = results["chaos"]["figures"]
        log("chaos:     " + ", ".join(f"{k} {v}" for k, v in f.items()))
        broken = results["chaos"]["violations"]
        log("           invariants broken: " + (", ".join(f"{k} ({len(v)})" for k, v in broken.items()) or "none"))
    if "quiet" in results:
        f = results["quiet"]["figures"]
        log(f"quiet:     {f['accepted']} uploads end to end in {f['wall time (s)']} s = {f['uploads/s']} uploads/s "
            f"(retries {f['retries (attempts - 1)']}, invariants broken: "
            f"{', '.join(results['quiet']['violations']) or 'none'})")
    if "in_process" in results:
        r = results["in_process"]
        log(f"in-process: {r['files']} files in {r['seconds']} s = {r['files_per_s']} files/s "
            f"(CPU: {r['cpu_seconds_in_process']} s in the process, {r['cpu_seconds_tools']} s in ffmpeg/ffprobe)")
    log(f"results: {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
