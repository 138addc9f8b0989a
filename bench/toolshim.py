"""Stand-in for ffmpeg/ffprobe on PATH during the memory measurement: runs the real tool and logs its
peak RSS and CPU time. Run with ``python -I -S`` so the shim itself stays small.

Why: the worker starts tools with ``preexec_fn`` (rlimits), which makes Python fork instead of vfork,
so the parent's RUSAGE_CHILDREN peak is at least the Python parent's own RSS at fork time. Here the
shim spawns the tool without preexec_fn (vfork), so the figure is the tool's own peak, with the
shim's RSS (reported as the floor) as the only lower bound.
"""
import json
import os
import resource
import signal
import subprocess
import sys

real, args = sys.argv[1], sys.argv[2:]
proc = subprocess.run([real, *args])
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
log = os.environ.get("BENCH_TOOL_LOG")
if log:
    with open(log, "a") as f:
        f.write(json.dumps({"tool": os.path.basename(real), "maxrss_kb": ru.ru_maxrss,
                            "cpu_s": ru.ru_utime + ru.ru_stime, "returncode": proc.returncode}) + "\n")
if proc.returncode < 0:
    signal.signal(-proc.returncode, signal.SIG_DFL)
    os.kill(os.getpid(), -proc.returncode)
sys.exit(proc.returncode)
