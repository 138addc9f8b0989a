"""The invariants of a chaos run, read back from the database, the store, the folders and the logs.

Nothing here trusts what the workers said they did: each original is downloaded and hashed against
the input it came from, each agency copy is downloaded and run through the verifier again, every
bucket is listed and each object matched to a record.
"""
from __future__ import annotations

import contextlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos_inputs import sha256_of

# Worker log lines worth counting: each names a known way things go wrong under faults.
LOG_SIGNALS = {
    "traceback": re.compile(r"Traceback \(most recent call last\)"),
    "shared connection": re.compile(r"DuplicatePreparedStatement|can't change 'autocommit' now|EMPTY_QUERY|"
                                    r"NotImplementedError"),
    "lost the claim": re.compile(r"lost the claim before finishing"),
    "worker lost (child killed)": re.compile(r"WorkerLostError"),
    "unrecoverable error": re.compile(r"Unrecoverable error"),
    "retrying": re.compile(r"retrying|Retry in \d"),
    "broker connection lost": re.compile(r"[Cc]onnection to broker lost|Cannot connect to redis"),
}


# --- what a run reports ------------------------------------------------------------------------

INVARIANTS = {
    "accepted": "every upload was accepted by the intake (job row and incoming object written)",
    "lost": "no upload lost: every job is final",
    "outcome": "every job ended as its input requires (done with the copy's format, or rejected with the code)",
    "duplicated": "none finished twice: one original and at most one agency copy per upload, in records and store",
    "attempts": "attempts are sane (at least 1, at most the retries plus the faults that can cost one)",
    "originals": "every original is byte-equal to its input (sha256 of the stored object) and to its record",
    "copies": "every agency copy is present, matches its record and passes the verifier again",
    "unexplained objects": "no object in any bucket that no record explains",
    "incoming left": "no incoming object of a finished job",
    "work folders": "no work folder left (the work dir, and mediasan-* in the workers' temp folder)",
    "processes": "no worker or beat stopped by itself, and no process of the run is left",
    "verify-store": "the operator's `mediasan verify-store` agrees: no finding, exit status 0",
}


@dataclass
class Findings:
    violations: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name in INVARIANTS})
    figures: dict[str, object] = field(default_factory=dict)
    log_signals: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)

    def add(self, invariant: str, problem: str) -> None:
        self.violations[invariant].append(problem)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def explain(self, invariant: str, limit: int = 12) -> str:
        problems = self.violations[invariant]
        lines = [f"{INVARIANTS[invariant]}: {len(problems)} violation(s)"]
        lines += [f"  - {p}" for p in problems[:limit]]
        if len(problems) > limit:
            lines.append(f"  … and {len(problems) - limit} more")
        return "\n".join(lines) + "\n\n" + self.report()

    def report(self) -> str:
        width = max(len(k) for k in self.figures) if self.figures else 10
        lines = ["chaos run figures:"]
        lines += [f"  {k:<{width}}  {v}" for k, v in self.figures.items()]
        if self.log_signals:
            lines.append("  worker log signals: " + ", ".join(f"{k} {v}" for k, v in self.log_signals.items() if v))
        broken = [name for name, problems in self.violations.items() if problems]
        lines.append("  invariants broken: " + (", ".join(f"{n} ({len(self.violations[n])})" for n in broken)
                                                 if broken else "none"))
        lines += [f"  note: {n}" for n in self.notes]
        if self.timeline:
            lines.append("  timeline:")
            lines += [f"    {e}" for e in self.timeline]
        return "\n".join(lines)


def read_back(run) -> Findings:
    """Every invariant of INVARIANTS, from the records, the store, the folders and the logs of ``run``
    (a ChaosRun whose processes have stopped)."""
    from sqlalchemy import select

    from worker import records

    f = Findings()
    with run.services.sessions() as session:
        jobs = {j.upload_id: j for j in session.scalars(select(records.Job))}
        variants: dict[str, list] = {}
        for v in session.scalars(select(records.Variant)):
            variants.setdefault(v.upload_id, []).append(v)
    objects = {area: run.list_bucket(area) for area in ("incoming", "restricted", "agency")}
    stored: dict[str, dict[str, list[str]]] = {}     # upload id -> area -> keys
    for area, keys in objects.items():
        for key in keys:
            stored.setdefault(key.split("/")[1], {}).setdefault(area, []).append(key)

    for problem in run.refused:
        f.add("accepted", problem)
    kills = run.counts["child kills"] + run.counts["worker kills"] * run.plan.concurrency
    max_attempts = 1 + run.services.settings.task_max_retries + kills + 4 * (run.counts["broker losses"]
                                                                            + run.counts["stalls"])
    scratch = run.folder / "readback"
    scratch.mkdir(exist_ok=True)
    finishes = finish_events(run.workers)
    tally = Counter()
    for upload_id, item in run.accepted.items():
        what = f"{upload_id} ({item.path.name})"
        job = jobs.get(upload_id)
        if job is None:
            f.add("lost", f"{what}: no job row")
            tally["lost"] += 1
            continue
        tally["retries"] += max(job.attempts - 1, 0)
        if job.state not in records.FINAL_STATES:
            f.add("lost", f"{what}: still {job.state} after {job.attempts} attempt(s), "
                          f"lease until {job.lease_until}, last error {job.error_code}: {job.error_message}")
            tally["lost"] += 1
            continue
        expected = (item.state, item.format if item.state == "done" else item.code)
        got = (job.state, job.format if job.state == "done" else job.error_code)
        if got != expected:
            tally["wrong"] += 1
            f.add("outcome", f"{what}: ended {got}, expected {expected} "
                             f"(attempts {job.attempts}, error {job.error_code}: {job.error_message})")
        elif job.attempts > 1:
            tally["recovered"] += 1
        if not 1 <= job.attempts <= max_attempts:
            f.add("attempts", f"{what}: {job.attempts} attempts (sane: 1..{max_attempts})")
        rows = variants.get(upload_id, [])
        twice = _finished_twice(upload_id, job, rows, stored.get(upload_id, {}), finishes.get(upload_id, []))
        if twice:
            tally["duplicated"] += 1
            f.add("duplicated", f"{what}: " + "; ".join(twice))
        for v in rows:
            if v.variant == "original":
                problem = _original_problem(run.services.store, v, item, scratch / f"{upload_id}.original")
                invariant = "originals"
            else:
                problem = _copy_problem(run.services.store, v, job.format, scratch / f"{upload_id}.copy")
                invariant = "copies"
            if problem:
                tally["mismatched"] += 1
                f.add(invariant, f"{what}: {problem}")

    explained = {v.key for rows in variants.values() for v in rows}
    finished = {u for u, j in jobs.items() if j.state in records.FINAL_STATES}
    unexplained = [k for area in ("restricted", "agency") for k in objects[area] if k not in explained]
    unexplained += [k for k in objects["incoming"] if k.split("/")[1] not in jobs]
    unexplained += _unfinished_multipart(run.services.store)
    incoming_left = [k for k in objects["incoming"] if k.split("/")[1] in finished]
    for key in unexplained:
        f.add("unexplained objects", key)
    for key in incoming_left:
        job = jobs[key.split("/")[1]]
        f.add("incoming left", f"{key} (job {job.state}, finished {job.finished_at})")
    work_left = run.work_folders_left()
    for path in work_left:
        f.add("work folders", f"{path}: {_describe_folder(Path(path))}")
    supervised = run.workers + [run.beat]
    for proc in supervised:
        for exit_text in proc.unexpected_exits:
            f.add("processes", exit_text)
    for text in _processes_in_groups(run.pgids):
        f.add("processes", f"still running after the run: {text}")
    for problem in run.verify_store_problems:
        f.add("verify-store", problem)

    states = Counter(j.state for j in jobs.values())
    f.figures.update({
        "uploads": len(run.inputs),
        "accepted": len(run.accepted),
        "done / rejected / failed": f"{states['done']} / {states['rejected']} / {states['failed']}",
        "child kills (busy)": f"{run.counts['child kills']} ({run.counts['busy child kills']})",
        "worker kills": run.counts["worker kills"],
        "broker losses": run.counts["broker losses"],
        "storage stalls (s)": f"{run.counts['stalls']} ({run.proxy.stalled_s:.0f})",
        "intake sends failed": run.send_failures,
        "recovered (attempts > 1)": tally["recovered"],
        "retries (attempts - 1)": tally["retries"],
        "lost": tally["lost"],
        "duplicated": tally["duplicated"],
        "mismatched": tally["mismatched"],
        "wrong outcome": tally["wrong"],
        "objects left": len(unexplained) + len(incoming_left),
        "work folders left": len(work_left),
        "unexpected exits": sum(len(p.unexpected_exits) for p in supervised),
    })
    f.log_signals = log_signals(run.workers)
    if run.notes_hostname:
        f.notes.append(run.notes_hostname)
    return f


def _finished_twice(upload_id: str, job, rows: list, stored: dict[str, list[str]], finishes: list[str]) -> list[str]:
    """Signs that an upload was finished more than once: in the records, in the store, in the logs."""
    originals = [v for v in rows if v.variant == "original"]
    copies = [v for v in rows if v.variant == "sanitized"]
    signs = []
    if len(originals) != 1:
        signs.append(f"{len(originals)} original records")
    if len(copies) != (1 if job.state == "done" else 0):
        signs.append(f"{len(copies)} agency-copy records for a {job.state} job")
    for area in ("restricted", "agency"):
        if len(stored.get(area, [])) > 1:
            signs.append(f"{area} objects {stored[area]}")
    for v in rows:
        if f"/{upload_id}/" not in v.key:
            signs.append(f"its {v.variant} record names another upload's object {v.key}")
    if len(finishes) > 1:
        signs.append(f"finished {len(finishes)} times: " + "; ".join(finishes))
    return signs


def _original_problem(store, variant, item, local: Path) -> str | None:
    """The stored original must be the input's bytes, and its record must say so."""
    try:
        store.get_file(variant.key, local)
    except Exception as e:  # noqa: BLE001 - absent, unreadable or not the bytes its metadata names
        return f"original {variant.key} unreadable: {type(e).__name__}: {e}"
    actual = sha256_of(local)
    local.unlink()
    if actual != item.sha256 or variant.sha256 != item.sha256 or variant.bytes != item.size:
        return (f"stored original sha256 {actual[:12]}…, record {variant.sha256[:12]}… ({variant.bytes} bytes), "
                f"input {item.sha256[:12]}… ({item.size} bytes)")
    return None


def _copy_problem(store, variant, copy_format: str | None, local: Path) -> str | None:
    """The agency copy must be the recorded bytes with the recorded tags, and pass the verifier again."""
    from worker.formats.base import Rebuilt
    from worker.verify import verify_copy

    try:
        store.get_file(variant.key, local)
    except Exception as e:  # noqa: BLE001
        return f"agency copy {variant.key} unreadable: {type(e).__name__}: {e}"
    problems = []
    if sha256_of(local) != variant.sha256:
        problems.append("bytes differ from the record's sha256")
    head = store.head(variant.key)
    if head is not None and head.tags != variant.tags:
        problems.append(f"object tags {head.tags} differ from the record's {variant.tags}")
    try:
        verify_copy(local, Rebuilt(format=copy_format or "", media_type=variant.media_type or "", extension=""))
    except Exception as e:  # noqa: BLE001 - SanitizeError(verify_failed), or anything else it raises
        problems.append(f"fails the verifier: {getattr(e, 'message', e)}")
    local.unlink()
    return f"{variant.key}: " + "; ".join(problems) if problems else None


def _unfinished_multipart(store) -> list[str]:
    keys = []
    for area in ("incoming", "restricted", "agency"):
        listing = store.client.list_multipart_uploads(Bucket=store.bucket(area))
        keys += [f"{area}/{u['Key']}: a multipart upload never completed" for u in listing.get("Uploads", [])]
    return keys


def finish_events(workers) -> dict[str, list[str]]:
    """upload id -> the `upload_finished` lines of the workers' JSON logs (one a committed finish)."""
    import json
    events: dict[str, list[str]] = {}
    for w in workers:
        if not w.log_path.exists():
            continue
        for line in w.log_path.read_text(errors="replace").splitlines():
            if '"upload_finished"' not in line:
                continue
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == "upload_finished" and entry.get("upload_id"):
                    events.setdefault(entry["upload_id"], []).append(
                        f"{w.name} {entry.get('ts')} {entry.get('state')}")
    return events

def log_signals(workers) -> dict[str, int]:
    text = "".join(w.log_path.read_text(errors="replace") for w in workers if w.log_path.exists())
    return {name: len(pattern.findall(text)) for name, pattern in LOG_SIGNALS.items()}



def _describe_folder(path: Path) -> str:
    try:
        if path.is_dir():
            names = sorted(p.name for p in path.iterdir())
            return f"folder holding {names[:6]}"
        return f"file of {path.stat().st_size} bytes"
    except OSError as e:
        return f"({e})"


def _processes_in_groups(pgids: list[int]) -> list[str]:
    import psutil
    left = []
    groups = set(pgids)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) in groups and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"pid {proc.pid}: {' '.join(proc.info['cmdline'] or [])[:120]}")
    return left
