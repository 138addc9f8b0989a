"""The table of #10: `mediasan sanitize` against the tools it replaces, as ratios measured in one run.

Every figure is a whole process tree (interpreter start, imports, child tools), started through a
shell that forks it (see TRAMPOLINE in sanitize_bench) and reaped with wait4: wall seconds, CPU
seconds (user + system of the tree) and peak RSS (the largest single process of the tree). The
commands of a case run interleaved (mediasan, peer, mediasan, peer, …) so a neighbour's burst of
load falls on both; each figure is the median over the runs. A peer that is not installed is
skipped with a note (bench/run --install-peers installs the Debian ones).

The peers do less than mediasan: ExifTool and jpegtran drop ICC and Orientation, mat2 re-encodes,
heif-convert and ffmpeg only convert; none of them verifies its output.
"""
from __future__ import annotations

import glob
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CORPUS = Path("/work/shared/corpus")
TRAMPOLINE = ["/bin/sh", "-c", '"$@"; exit $?', "sh"]
# the `mediasan` console script's own path (worker.cli_sanitize:main), run from this checkout
MEDIASAN = [PYTHON, "-m", "worker.cli_sanitize"]
DEBIAN_PEERS = {"exiftool": "libimage-exiftool-perl", "jpegtran": "libjpeg-turbo-progs",
                "heif-convert": "libheif-examples", "mat2": "mat2", "ffmpeg": "ffmpeg"}
BATCH_SIZE = 173
BIG_JPEGS = 20


def run_tree(argv: list[str], cwd: Path) -> dict:
    """One whole process tree: wall s, CPU s, peak RSS KB, exit status."""
    t0 = time.perf_counter()
    # PYTHONPATH: `python -m worker.cli_sanitize` runs this checkout from the work folder
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([*TRAMPOLINE, *argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_kb": usage.ru_maxrss,
            "exit": proc.returncode}


@dataclass
class Command:
    label: str
    argv: list[str]
    out: Path                       # emptied before every run
    cleanup: str | None = None      # a glob of files the tool writes next to its inputs (mat2)


@dataclass
class Case:
    name: str
    sample: str
    commands: list[Command]         # the first is mediasan
    results: dict[str, list[dict]] = field(default_factory=dict)


def _reset(cmd: Command) -> None:
    shutil.rmtree(cmd.out, ignore_errors=True)
    cmd.out.mkdir(parents=True)
    if cmd.cleanup:
        for leftover in glob.glob(cmd.cleanup):
            os.unlink(leftover)


def measure(case: Case, runs: int, work: Path) -> None:
    for _ in range(runs):
        for cmd in case.commands:
            _reset(cmd)
            case.results.setdefault(cmd.label, []).append(run_tree(cmd.argv, work))
    for cmd in case.commands:
        _reset(cmd)


def summary(results: list[dict]) -> dict:
    return {"wall_s": statistics.median(r["wall_s"] for r in results),
            "cpu_s": statistics.median(r["cpu_s"] for r in results),
            "peak_mb": max(r["peak_kb"] for r in results) / 1024,
            "exit": sorted({r["exit"] for r in results}), "runs": results}


# --- samples ------------------------------------------------------------------------------------

def jpeg_batch(folder: Path) -> tuple[list[Path], str]:
    """173 JPEGs: the corpus's JPEGs repeated (each copy its own name) when the corpus is here,
    else generated 2 MP phone-like JPEGs."""
    batch = folder / "jpeg-batch"
    files = sorted(batch.glob("*.jpg")) if batch.exists() else []
    if len(files) == BATCH_SIZE:
        return files, (batch / "SOURCE").read_text()
    shutil.rmtree(batch, ignore_errors=True)
    batch.mkdir(parents=True)
    manifest = CORPUS / "MANIFEST.tsv"
    sources: list[Path] = []
    if manifest.exists():
        rows = [line.split("\t") for line in manifest.read_text().splitlines()[1:] if line.strip()]
        sources = [CORPUS / r[0] for r in rows if len(r) > 4 and r[4] == "image/jpeg" and (CORPUS / r[0]).is_file()]
    if sources:
        note = f"the corpus's {len(sources)} JPEGs repeated to {BATCH_SIZE} files"
    else:
        from bench import samples
        for i in range(8):
            im = samples.phone_picture((1600, 1200), seed=400 + i)
            path = folder / f"gen{i}.jpg"
            im.save(path, "JPEG", quality=90, exif=samples.phone_exif(im))
            sources.append(path)
        note = f"{len(sources)} generated 2 MP phone JPEGs repeated to {BATCH_SIZE} files (no corpus)"
    for i in range(BATCH_SIZE):
        src = sources[i % len(sources)]
        shutil.copyfile(src, batch / f"{i:03d}-{src.stem}.jpg")
    (batch / "SOURCE").write_text(note)
    return sorted(batch.glob("*.jpg")), note


def big_jpegs(folder: Path, single: Path) -> list[Path]:
    batch = folder / "jpeg-12mp"
    batch.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(BIG_JPEGS):
        path = batch / f"IMG_{i:02d}.jpg"
        if not path.exists():
            shutil.copyfile(single, path)
        files.append(path)
    return files


def tiny_jpeg(folder: Path) -> Path:
    path = folder / "tiny.jpg"
    if not path.exists():
        from PIL import Image
        Image.new("RGB", (8, 8), (200, 30, 30)).save(path, quality=80)
    return path


def concatenated(src: Path, times: int, folder: Path) -> Path:
    """``src`` repeated ``times`` times by ffmpeg's concat demuxer, stream copy (no re-encoding)."""
    path = folder / f"{src.stem}-x{times}{src.suffix}"
    if path.exists() and path.stat().st_size > 0:
        return path
    listing = folder / f"{src.stem}-x{times}.txt"
    listing.write_text(f"file '{src}'\n" * times)
    tmp = folder / f"building-{path.name}"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                    "-map", "0", "-c", "copy", str(tmp)], check=True)
    listing.unlink()
    tmp.rename(path)
    return path


# --- the cases ----------------------------------------------------------------------------------

def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def sanitize(inputs: list[Path], out: Path, *extra: str) -> list[str]:
    return [*MEDIASAN, "sanitize", "--json", "--out", str(out), *extra, *map(str, inputs)]


def build_cases(sample: dict[str, Path], folder: Path, work: Path, notes: list[str]) -> list[Case]:
    cases = []
    out = work / "out"

    def peer(tool: str) -> bool:
        if have(tool):
            return True
        notes.append(f"{tool} not installed (Debian: {DEBIAN_PEERS.get(tool, '?')}): skipped")
        return False

    batch, source = jpeg_batch(folder)
    cmds = [Command("mediasan", sanitize(batch, out / "m"), out / "m")]
    if peer("exiftool"):
        cmds.append(Command("exiftool batch", ["exiftool", "-q", "-q", "-all=", "-o", f"{out / 'e'}/", *map(str, batch)],
                            out / "e"))
    if peer("jpegtran"):
        # every file is tried (a corpus file jpegtran refuses does not end the loop); exit 1 if any failed
        loop = 'status=0; for f in "$@"; do jpegtran -copy none -outfile "$OUT/${f##*/}" "$f" || status=1; done; exit $status'
        cmds.append(Command("jpegtran a process a file",
                            ["env", f"OUT={out / 'j'}", "/bin/sh", "-c", loop, "sh", *map(str, batch)], out / "j"))
    cases.append(Case("jpeg batch", f"{len(batch)} JPEGs, {source}", cmds))

    if "jpeg" in sample:
        big = big_jpegs(folder, sample["jpeg"])
        cmds = [Command("mediasan", sanitize(big, out / "m"), out / "m")]
        if have("exiftool"):
            cmds.append(Command("exiftool batch", ["exiftool", "-q", "-q", "-all=", "-o", f"{out / 'e'}/",
                                                   *map(str, big)], out / "e"))
        if peer("mat2"):
            cmds.append(Command("mat2", ["mat2", *map(str, big)], out / "t", cleanup=str(big[0].parent / "*.cleaned.*")))
        cases.append(Case("12 MP JPEG x20", f"{BIG_JPEGS} x 12 MP phone JPEG", cmds))

    if "heic" in sample:
        cmds = [Command("mediasan", sanitize([sample["heic"]], out / "m"), out / "m")]
        if peer("heif-convert"):
            cmds.append(Command("heif-convert -q 95", ["heif-convert", "-q", "95", str(sample["heic"]),
                                                       str(out / "h" / "photo.jpg")], out / "h"))
        cases.append(Case("12 MP HEIC -> JPEG", "12 MP HEIC", cmds))

    for name, label, extra in (("mp4", "10 s 1080p MP4", ["-movflags", "+faststart"]),
                               ("m4a", "3 min M4A", []), ("mp3", "3 min MP3", [])):
        if name not in sample:
            continue
        src = sample[name]
        cmds = [Command("mediasan", sanitize([src], out / "m"), out / "m")]
        if peer("ffmpeg"):
            cmds.append(Command(f"ffmpeg -c copy {' '.join(extra)}".strip(),
                                ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-map", "0", "-c", "copy",
                                 *extra, str(out / "f" / src.name)], out / "f"))
        cases.append(Case(label, src.name, cmds))

    tiny = tiny_jpeg(folder)
    cmds = [Command("mediasan", sanitize([tiny], out / "m"), out / "m")]
    if have("exiftool"):
        cmds.append(Command("exiftool (read)", ["exiftool", str(tiny)], out / "e"))
    cases.append(Case("start: one tiny JPEG", "8x8 JPEG", cmds))
    return cases


def scaling(sample: dict[str, Path], folder: Path, work: Path) -> list[dict]:
    """Peak memory against size (video) and duration (audio): one run each, mediasan and ffmpeg -c copy."""
    rows = []
    out = work / "out-scale"
    series = []
    if "mp4" in sample:
        series += [("mp4", times) for times in (1, 10, 100)]        # ~20 MB, ~200 MB, ~2 GB
    for name in ("m4a", "mp3"):
        if name in sample:
            series += [(name, times) for times in (1, 10, 59)]      # 3 min, 30 min, 177 min
    for name, times in series:
        print(f"scaling: {name} x{times}", file=sys.stderr)
        src = sample[name] if times == 1 else concatenated(sample[name], times, folder)
        row = {"format": name, "times": times, "bytes": src.stat().st_size}
        for label, argv in (("mediasan", sanitize([src], out)),
                            ("ffmpeg", ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-map", "0",
                                        "-c", "copy", str(out / f"ff{src.suffix}")])):
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            row[label] = run_tree(argv, work)
        shutil.rmtree(out, ignore_errors=True)
        rows.append(row)
    return rows


def run(sample: dict[str, Path], folder: Path, work: Path, runs: int, with_scaling: bool) -> dict:
    notes: list[str] = []
    cases = build_cases(sample, folder, work, notes)
    table = []
    for case in cases:
        print(f"side by side: {case.name}, {runs} interleaved run(s) of {len(case.commands)} command(s)", file=sys.stderr)
        measure(case, runs, work)
        figures = {label: summary(results) for label, results in case.results.items()}
        ours = figures["mediasan"]
        rows = []
        for label, theirs in figures.items():
            if label == "mediasan":
                continue
            rows.append({"peer": label, **{k: v for k, v in theirs.items() if k != "runs"},
                         "ratio_wall": ours["wall_s"] / theirs["wall_s"], "ratio_cpu": ours["cpu_s"] / theirs["cpu_s"],
                         "ratio_peak": ours["peak_mb"] / theirs["peak_mb"]})
        table.append({"case": case.name, "sample": case.sample, "runs": runs,
                      "mediasan": {k: v for k, v in ours.items() if k != "runs"}, "peers": rows,
                      "raw": {label: f["runs"] for label, f in figures.items()}})
    picture_note = heic_peak_against_picture(table, sample)
    if picture_note:
        notes.append(picture_note)
    return {"cases": table, "notes": notes, "scaling": scaling(sample, folder, work) if with_scaling else None}


def heic_peak_against_picture(table: list[dict], sample: dict[str, Path]) -> str | None:
    """#10's memory figure: the HEIC case's peak above a bare start (the start case's peak: the
    interpreter and its imports), against the decoded picture (RGB, 3 bytes a pixel)."""
    peaks = {row["case"]: row["mediasan"]["peak_mb"] for row in table}
    heic = next((peak for case, peak in peaks.items() if "HEIC" in case), None)
    start = next((peak for case, peak in peaks.items() if case.startswith("start")), None)
    if heic is None or start is None or "heic" not in sample:
        return None
    import pillow_heif
    width, height = pillow_heif.open_heif(sample["heic"]).size
    picture_mb = width * height * 3 / 1024 ** 2   # the MB of peak_mb: KiB / 1024
    return (f"HEIC peak {heic:.0f} MB = {heic - start:.0f} MB above a bare start ({start:.0f} MB) = "
            f"{(heic - start) / picture_mb:.2f}x the decoded {width}x{height} RGB picture ({picture_mb:.0f} MB)")


def install_peers() -> list[str]:
    """apt-get install the Debian peers that are missing (root only); returns what it could not do."""
    missing = [pkg for tool, pkg in DEBIAN_PEERS.items() if not have(tool)]
    if not missing:
        return []
    if os.geteuid() != 0 or not have("apt-get"):
        return [f"not root or no apt-get: {', '.join(missing)} not installed"]
    proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                          env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), capture_output=True, text=True)
    return [] if proc.returncode == 0 else [f"apt-get install {' '.join(missing)} failed: {proc.stderr.strip()[-200:]}"]
