"""One measurement in a fresh process; prints one JSON object. Started by bench.sanitize_bench.

    python -m bench.child baseline
    python -m bench.child time SRC OUTDIR N
    python -m bench.child mem SRC OUTDIR
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path


def _rusage() -> tuple[float, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def main(argv: list[str]) -> dict:
    # what a sanitizing process imports before it sees a file: the baseline subtracts exactly this
    from worker.sanitizer import sanitize_file
    from worker.settings import get_settings

    limits = get_settings().limits()
    mode = argv[0]
    if mode == "baseline":
        return {"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    src, out = Path(argv[1]), Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    n = int(argv[3]) if mode == "time" else 1
    runs = []
    result: dict = {}
    for i in range(n):
        cpu0, kcpu0 = _rusage()
        t0 = time.perf_counter()
        report = sanitize_file(src, out / f"copy{i}", limits)
        wall = time.perf_counter() - t0
        cpu1, kcpu1 = _rusage()
        runs.append({"wall_s": wall, "cpu_s": cpu1 - cpu0, "tools_cpu_s": kcpu1 - kcpu0})
        result = {"status": report.status, "input_format": report.input_format, "copy_format": report.format,
                  "error": report.error.as_dict() if report.error else None,
                  "location_found": report.found.fix is not None}
        if report.output:
            result["copy_bytes"] = os.path.getsize(report.output)
            os.unlink(report.output)
        if report.status != "sanitized":
            break
    result["runs"] = runs
    result["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["children_maxrss_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return result


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main(sys.argv[1:])) + "\n")
