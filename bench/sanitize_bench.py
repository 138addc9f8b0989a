"""Benchmark of sanitize_file per format, its peak memory, `mediasan sanitize` over the corpus, and side by side with the tools it replaces.

    bench/run [--quick] [--iterations N] [--formats jpeg,png,...] [--samples DIR] [--no-corpus]

Each measurement runs in a fresh subprocess (so imports, caches and peak RSS are per format); the
samples are built once per run (or reused from --samples DIR). Writes bench/results/latest.json.
Nothing here asserts on time: it reports.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import samples, side_by_side

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CORPUS = Path("/work/shared/corpus")
RESULTS = REPO / "bench" / "results" / "latest.json"
MB = 1_000_000

console = Console(width=None if sys.stdout.isatty() else 150)


# A child's ru_maxrss starts at the peak RSS of the process it was spawned from (Linux carries the
# old mm's high-water mark into the new program at exec, and vfork shares the parent's mm). So every
# measured process is started by a shell that forks it: its floor is the shell's ~2 MB, not ours.
TRAMPOLINE = ["/bin/sh", "-c", '"$@"; exit $?', "sh"]


def child(*args: str, env: dict | None = None) -> dict:
    proc = subprocess.run([*TRAMPOLINE, PYTHON, "-m", "bench.child", *args], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=1800)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"status": "bench_error", "error": {"code": "bench", "message": proc.stderr.strip()[-500:]}, "runs": []}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile (for fewer than 20 runs that is the slowest run)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def tool_shim_dir(folder: Path) -> Path:
    """A PATH folder whose ffmpeg/ffprobe log their own peak RSS (see bench/toolshim.py)."""
    shim = folder / "shim"
    shim.mkdir(exist_ok=True)
    for tool in ("ffmpeg", "ffprobe"):
        real = shutil.which(tool)
        if real is None:
            continue
        script = shim / tool
        script.write_text(f'#!/bin/sh\nexec "{PYTHON}" -I -S "{REPO / "bench" / "toolshim.py"}" "{real}" "$@"\n')
        script.chmod(0o755)
    return shim


def measure_memory(src: Path, out: Path, shim: Path, log: Path) -> dict:
    if log.exists():
        log.unlink()
    env = dict(os.environ, PATH=f"{shim}{os.pathsep}{os.environ.get('PATH', '')}", BENCH_TOOL_LOG=str(log))
    result = child("mem", str(src), str(out), env=env)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    tools: dict[str, dict] = {}
    for call in calls:
        t = tools.setdefault(call["tool"], {"calls": 0, "peak_rss_kb": 0, "cpu_s": 0.0})
        t["calls"] += 1
        t["peak_rss_kb"] = max(t["peak_rss_kb"], call["maxrss_kb"])
        t["cpu_s"] += call["cpu_s"]
    result["tools"] = tools
    return result


def shim_floor(shim: Path, folder: Path) -> int | None:
    """The shim's own contribution (running /bin/true through it): tool figures near it are the shim's."""
    log = folder / "floor.log"
    true = shutil.which("true")
    if true is None:
        return None
    env = dict(os.environ, BENCH_TOOL_LOG=str(log))
    subprocess.run([*TRAMPOLINE, PYTHON, "-I", "-S", str(REPO / "bench" / "toolshim.py"), true],
                   capture_output=True, env=env)
    try:
        return json.loads(log.read_text().splitlines()[-1])["maxrss_kb"]
    except (OSError, IndexError, ValueError):
        return None


def build_sample(name: str, sample_dir: Path) -> tuple[Path | None, str]:
    """Build (or reuse) one sample in a process of its own: (path, "") or (None, why not)."""
    # in a process of its own: a 12 MP picture in this process would raise every child's floor
    built = subprocess.run([PYTHON, "-m", "bench.samples", name, str(sample_dir)], cwd=REPO,
                           capture_output=True, text=True)
    if built.returncode == 0 and built.stdout.strip():
        return Path(built.stdout.strip().splitlines()[-1]), ""
    return None, (built.stderr.strip().splitlines() or ["no output"])[-1]


def bench_formats(names: list[str], iterations: int, sample_dir: Path, work: Path) -> tuple[list[dict], dict]:
    baseline = child("baseline").get("maxrss_kb", 0)
    shim = tool_shim_dir(work)
    floor = shim_floor(shim, work)
    rows = []
    for name in names:
        _, _, description = samples.SAMPLES[name]
        row: dict = {"format": name, "sample": description}
        t0 = time.perf_counter()
        src, why = build_sample(name, sample_dir)
        if src is None:     # e.g. no HEIF encoder: skip the format, say why
            row.update(status="skipped", error=f"sample not built: {why}")
            rows.append(row)
            console.print(f"[yellow]skip[/] {name}: {row['error']}")
            continue
        row["build_s"] = round(time.perf_counter() - t0, 2)
        row["bytes"] = src.stat().st_size
        console.print(f"[dim]{name}: {row['bytes'] / MB:.1f} MB sample; measuring memory, then {iterations} runs[/]")
        mem = measure_memory(src, work / "out", shim, work / "tools.log")
        timed = child("time", str(src), str(work / "out"), str(iterations))
        row.update(status=timed.get("status"), copy_format=timed.get("copy_format"),
                   copy_bytes=timed.get("copy_bytes"), location_found=timed.get("location_found"),
                   error=timed.get("error"))
        walls = [r["wall_s"] for r in timed.get("runs", [])]
        if timed.get("status") == "sanitized" and walls:
            median = statistics.median(walls)
            row.update(
                iterations=len(walls), wall_s=walls, median_s=median, p95_s=p95(walls), first_s=walls[0],
                mb_per_s=row["bytes"] / MB / median, files_per_s=1 / median,
                cpu_s_median=statistics.median(r["cpu_s"] + r["tools_cpu_s"] for r in timed["runs"]),
            )
        row["memory"] = {
            "status": mem.get("status"),
            "peak_rss_kb": mem.get("maxrss_kb"),
            "baseline_rss_kb": baseline,
            "peak_rss_over_baseline_kb": (mem["maxrss_kb"] - baseline) if mem.get("maxrss_kb") else None,
            "children_maxrss_kb": mem.get("children_maxrss_kb"),
            "tools": mem.get("tools", {}),
        }
        rows.append(row)
    return rows, {"baseline_rss_kb": baseline, "tool_shim_floor_kb": floor}


def bench_corpus(work: Path) -> dict | None:
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.exists():
        return None
    lines = manifest.read_text().splitlines()
    header = lines[0].split("\t")
    column = header.index("relative_path")
    files = [CORPUS / line.split("\t")[column] for line in lines[1:] if line.strip()]
    files = [f for f in files if f.is_file()]
    # the console script's entry, from this checkout (the venv's `mediasan` may belong to another one)
    cmd = side_by_side.MEDIASAN
    out = work / "corpus-out"
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, "sanitize", *map(str, files), "--out", str(out), "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        try:
            report = json.loads(line)
        except ValueError:
            continue
        statuses[report["status"]] = statuses.get(report["status"], 0) + 1
        if report.get("error"):
            errors[report["error"]["code"]] = errors.get(report["error"]["code"], 0) + 1
    total = sum(f.stat().st_size for f in files)
    return {"files": len(files), "bytes": total, "wall_s": wall, "files_per_s": len(files) / wall,
            "mb_per_s": total / MB / wall, "exit_status": proc.returncode, "statuses": statuses, "errors": errors,
            "reports": sum(statuses.values())}


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    except (ValueError, OSError):
        mem_gb = None
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0] \
        if shutil.which("ffmpeg") else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "cores": os.cpu_count(),
            "cpu": cpu, "memory_gb": mem_gb, "platform": platform.platform(), "python": platform.python_version(),
            "ffmpeg": ffmpeg, "commit": commit}


def mb(kb: int | None) -> str:
    return f"{kb / 1024:.0f}" if kb else "-"


def print_tables(rows: list[dict], corpus: dict | str | None, meta: dict, iterations: int) -> None:
    m = meta["machine"]
    console.print(f"\n[bold]sanitize_file[/] on {m['cores']} cores ({m['cpu']}), {iterations} run(s) per format, "
                  f"commit {m['commit']}, {m['date']}, load average {meta['loadavg_1m_before_after'][0]} before, "
                  f"{meta['loadavg_1m_before_after'][1]} after")
    table = Table("format", "sample MB", "copy", "fix", "median s", "p95 s", "first s", "MB/s", "files/s", "CPU s",
                  "peak RSS MB\n(- import base)", "tool starts,\npeak MB")
    for r in rows:
        if r.get("status") != "sanitized":
            err = r.get("error")
            why = err if isinstance(err, str) else (f"{err['code']}: {err['message']}" if err else r.get("status"))
            table.add_row(r["format"], f"{r['bytes'] / MB:.1f}" if r.get("bytes") else "-",
                          f"[red]{r.get('status')}[/]", "", f"[dim]{str(why)[:70]}[/]", *[""] * 7)
            continue
        memory = r["memory"]
        # tool starts per file and each tool's peak: "ffprobe x1 47, ffmpeg x2 58"
        tools = ", ".join(f"{k} x{v['calls']} {mb(v['peak_rss_kb'])}" for k, v in sorted(memory["tools"].items())) or "none"
        table.add_row(r["format"], f"{r['bytes'] / MB:.1f}", r["copy_format"], "yes" if r["location_found"] else "no",
                      f"{r['median_s']:.3f}",
                      f"{r['p95_s']:.3f}", f"{r['first_s']:.3f}", f"{r['mb_per_s']:.1f}", f"{r['files_per_s']:.2f}",
                      f"{r['cpu_s_median']:.2f}", f"{mb(memory['peak_rss_kb'])} ({mb(memory['peak_rss_over_baseline_kb'])})",
                      tools)
    console.print(table)
    console.print(f"[dim]import baseline {mb(meta['baseline_rss_kb'])} MB; tool figures measured through a PATH "
                  f"shim whose own floor is {mb(meta['tool_shim_floor_kb'])} MB; CPU s = process + tools per file; "
                  f"fix = a location was found and moved[/]")
    if isinstance(corpus, str):
        console.print(f"\n[dim]corpus: {corpus}[/]")
    elif corpus:
        console.print(f"\n[bold]corpus[/] `mediasan sanitize --json` over {corpus['files']} files "
                      f"({corpus['bytes'] / MB:.1f} MB): {corpus['wall_s']:.1f} s wall, {corpus['files_per_s']:.1f} files/s, "
                      f"{corpus['mb_per_s']:.1f} MB/s; {corpus['statuses']}; error codes {corpus['errors']}")
    else:
        console.print(f"\n[dim]corpus: {CORPUS} not present, skipped[/]")


def print_side_by_side(result: dict, meta: dict) -> None:
    console.print(f"\n[bold]side by side[/] (#10): whole processes, median of {result['cases'][0]['runs'] if result['cases'] else 0} "
                  f"interleaved runs; ratio = mediasan / peer (above 1: mediasan slower); load average "
                  f"{meta['loadavg_1m_before_after'][0]} before, {meta['loadavg_1m_before_after'][1]} after")
    table = Table("case", "mediasan wall s", "CPU s", "peak MB", "exit", "peer", "wall s", "CPU s", "peak MB", "exit",
                  "ratio wall", "ratio CPU", "ratio peak")
    for case in result["cases"]:
        ours = case["mediasan"]
        mine = [f"{ours['wall_s']:.3f}", f"{ours['cpu_s']:.3f}", f"{ours['peak_mb']:.0f}",
                ",".join(map(str, ours["exit"]))]
        if not case["peers"]:
            table.add_row(case["case"], *mine, "[dim]no peer installed[/]", *[""] * 7)
        for i, peer in enumerate(case["peers"]):
            table.add_row(case["case"] if i == 0 else "", *(mine if i == 0 else [""] * 4), peer["peer"],
                          f"{peer['wall_s']:.3f}", f"{peer['cpu_s']:.3f}", f"{peer['peak_mb']:.0f}",
                          ",".join(map(str, peer["exit"])),
                          f"{peer['ratio_wall']:.2f}x", f"{peer['ratio_cpu']:.2f}x", f"{peer['ratio_peak']:.2f}x")
    console.print(table)
    console.print("[dim]exit: the exit statuses seen (mediasan exits 1 when any input is rejected, e.g. the corpus's "
                  "truncated JPEGs)[/]")
    for note in result["notes"]:
        console.print(f"[dim]{note}[/]")
    if result.get("scaling"):
        table = Table("file", "MB", "mediasan wall s", "CPU s", "peak MB", "ffmpeg -c copy wall s", "peak MB")
        for row in result["scaling"]:
            m, f = row["mediasan"], row["ffmpeg"]
            status = "" if m["exit"] == 0 else f" [red](exit {m['exit']})[/]"
            table.add_row(f"{row['format']} x{row['times']}", f"{row['bytes'] / MB:.0f}", f"{m['wall_s']:.2f}{status}",
                          f"{m['cpu_s']:.2f}", f"{m['peak_kb'] / 1024:.0f}", f"{f['wall_s']:.2f}", f"{f['peak_kb'] / 1024:.0f}")
        console.print("\n[bold]peak memory against size (video) and duration (audio)[/], one run each "
                      "(x N = the sample concatenated N times by stream copy)")
        console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", "-n", type=int, default=5, help="timed runs per format (default 5)")
    parser.add_argument("--quick", action="store_true", help="one run per format, 3 interleaved runs a side-by-side case")
    parser.add_argument("--formats", default=",".join(samples.SAMPLES), help="comma-separated subset")
    parser.add_argument("--samples", type=Path, help="build samples here and reuse them next time (default: a temp folder)")
    parser.add_argument("--no-corpus", action="store_true", help=f"skip the run over {CORPUS}")
    parser.add_argument("--only", choices=("formats", "side-by-side"), help="run one part (default: both)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs per side-by-side case (default 5, --quick 3)")
    parser.add_argument("--no-scaling", action="store_true", help="skip peak memory against size and duration")
    parser.add_argument("--install-peers", action="store_true",
                        help="apt-get install the missing Debian peers (exiftool, jpegtran, heif-convert, mat2) first")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"results file (default {RESULTS.relative_to(REPO)})")
    args = parser.parse_args(argv)
    iterations = 1 if args.quick else max(1, args.iterations)
    names = [n.strip() for n in args.formats.split(",") if n.strip()]
    unknown = [n for n in names if n not in samples.SAMPLES]
    if unknown:
        parser.error(f"unknown format(s) {unknown}; known: {', '.join(samples.SAMPLES)}")

    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mediasan-bench-") as tmp:
        work = Path(tmp)
        sample_dir = args.samples or work / "samples"
        rows, meta = ([], {"baseline_rss_kb": None, "tool_shim_floor_kb": None}) if args.only == "side-by-side" \
            else bench_formats(names, iterations, sample_dir, work)
        corpus = "skipped (--no-corpus)" if args.no_corpus or args.only == "side-by-side" else bench_corpus(work)
        side = None
        if args.only != "formats":
            install_notes = side_by_side.install_peers() if args.install_peers else []
            built = {}
            for name in ("jpeg", "heic", "mp4", "m4a", "mp3"):
                path, why = build_sample(name, sample_dir)
                if path is None:
                    install_notes.append(f"{name} sample not built: {why}")
                else:
                    built[name] = path
            side = side_by_side.run(built, sample_dir, work, 3 if args.quick else max(1, args.runs),
                                    with_scaling=not args.no_scaling)
            side["notes"] = install_notes + side["notes"]
    meta["machine"] = machine()
    # other work on the machine stretches wall times (CPU s does not move much): say how busy it was
    meta["loadavg_1m_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    meta["total_s"] = time.perf_counter() - started
    results = {"meta": meta, "iterations": iterations, "formats": rows, "corpus": corpus,
               "side_by_side": side, "worker_end_to_end": "not measured"}
    if rows or args.only != "side-by-side":
        print_tables(rows, corpus, meta, iterations)
    if side is not None:
        print_side_by_side(side, meta)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"\n[dim]wrote {args.json} in {meta['total_s']:.0f} s total[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
