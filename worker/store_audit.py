"""`mediasan verify-store`: does every byte in the stores have a record that explains it?

The stores are walked area by area and each object is judged against the records of its upload:

- ``unrecorded``: an original or agency object of a final (or unknown) upload that no variant row
  names, or an incoming object with no job row older than the sweep window whose message the broker
  does not hold: nothing would ever delete it. ``--fix`` deletes it.
- ``incoming_of_finished``: the incoming object of a final job whose original is kept under
  restriction (a worker killed between finishing and cleaning up). ``--fix`` deletes it.
- ``incoming_stale``: the incoming object of a job still waiting, older than the sweep window: the
  upload is stuck (the sweeper should have republished it). Reported, never deleted.
- ``unverified``: an agency object that fails the format's verifier run again, or whose bytes are
  not the recorded ones. ``--fix`` takes it down (object and variant row): fail closed.
- ``debris``: a partial write (a local temp file, a data file without its metadata sidecar, an S3
  multipart upload never completed) older than the sweep window. ``--fix`` removes it.
- ``dead_work_folder``: a work folder of a process that is gone. ``--fix`` removes it.

Objects of jobs still being processed are theirs (a worker stores before it records) and are left
alone. ``judge`` is pure (an object and the facts of its upload in, a finding or None out), so the
chaos test reads the same rules; ``audit`` does the walking and the database reads.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Iterator

from sqlalchemy import delete, select

from worker import records, workdir
from worker.storage import LocalStore, S3Store, Store
from worker.storage.base import SIDECAR_SUFFIX

BATCH = 500
_UPLOAD_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ListedObject:
    key: str                  # a storage key, e.g. "agency/abc/media.jpg"; debris: a path or an upload marker
    bytes: int
    modified: datetime

    @property
    def area(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def upload_id(self) -> str:
        return self.key.split("/")[1]


@dataclass(frozen=True)
class UploadFacts:
    """What the records say about one upload, as far as its objects are concerned."""
    state: str
    error_code: str | None
    source_key: str
    variants: dict[str, str] = field(default_factory=dict)    # key -> "original" | "sanitized"
    formats: dict[str, str | None] = field(default_factory=dict)  # agency key -> the copy's format
    sha256: dict[str, str] = field(default_factory=dict)      # key -> recorded sha256


@dataclass(frozen=True)
class Finding:
    kind: str             # unrecorded | incoming_of_finished | incoming_stale | unverified | debris | dead_work_folder
    key: str              # storage key, or a path for debris and work folders
    upload_id: str | None
    detail: str
    fixable: bool         # whether --fix removes it

    def as_json(self) -> dict:
        return asdict(self)


def incoming_removable(*, state: str, has_original: bool) -> bool:
    """Whether a final job's incoming object may go. It stays only where it is the one copy: a job that
    failed before its original was stored (kept for a reprocess, and for retention to reach)."""
    if state not in records.FINAL_STATES:
        return False
    return has_original or state != "failed"


# --- the pure rules ------------------------------------------------------------------------------

def judge(obj: ListedObject, facts: UploadFacts | None, *, now: datetime, window: timedelta) -> Finding | None:
    """The finding for one stored object given the records of its upload (None: fully explained)."""
    old = now - obj.modified > window
    upload_id = obj.upload_id
    if facts is None:
        if old:   # younger: an upload being accepted (the object is written before its job row)
            return Finding("unrecorded", obj.key, upload_id, "no job row for this upload", True)
        return None
    if obj.area == "incoming":
        if facts.state in records.FINAL_STATES:
            has_original = "original" in facts.variants.values()
            if incoming_removable(state=facts.state, has_original=has_original):
                return Finding("incoming_of_finished", obj.key, upload_id,
                               f"the job is {facts.state} and its original is kept (or was purged)", True)
            return None   # the only copy of a job that failed before storing its original
        if old:
            return Finding("incoming_stale", obj.key, upload_id,
                           f"the job is still {facts.state} after {now - obj.modified}", False)
        return None
    if facts.state not in records.FINAL_STATES:
        return None       # a worker stores its objects before recording them
    expected = "original" if obj.area == "restricted" else "sanitized"
    if facts.variants.get(obj.key) != expected:
        return Finding("unrecorded", obj.key, upload_id, f"no {expected} variant row names this object "
                       f"(the job is {facts.state})", True)
    return None


def judge_debris(obj: ListedObject, *, now: datetime, window: timedelta) -> Finding | None:
    if now - obj.modified > window:
        return Finding("debris", obj.key, None, "a partial write nobody will finish", True)
    return None


# --- listing the stores ----------------------------------------------------------------------------

def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)


def list_objects(store: Store, area: str, prefix: str = "") -> Iterator[ListedObject]:
    """Every committed object of ``area`` whose key (after the area) starts with ``prefix``."""
    if isinstance(store, LocalStore):
        base = store.root / area
        upload, slash, _ = prefix.partition("/")
        # one upload's folder when the prefix names it (the pipeline's case), else every folder
        candidates = [base / upload] if slash and _UPLOAD_RE.fullmatch(upload) else None
        with contextlib.suppress(FileNotFoundError):
            for folder in candidates if candidates is not None else sorted(base.iterdir()):
                name = f"{folder.name}/"
                if not folder.is_dir() or not (name.startswith(prefix) or prefix.startswith(name)):
                    continue
                for sidecar in sorted(folder.glob("*" + SIDECAR_SUFFIX)):
                    data = sidecar.with_name(sidecar.name[:-len(SIDECAR_SUFFIX)])
                    key = f"{area}/{folder.name}/{data.name}"
                    if data.name.startswith(".") or not key[len(area) + 1:].startswith(prefix):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        if data.exists():
                            yield ListedObject(key, data.stat().st_size, _mtime(sidecar))
        return
    if isinstance(store, S3Store):
        paginator = store.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=store.bucket(area), Prefix=prefix):
            for item in page.get("Contents", []):
                yield ListedObject(f"{area}/{item['Key']}", int(item["Size"]), item["LastModified"])
        return
    raise TypeError(f"cannot list objects of {store!r}")


def list_debris(store: Store) -> Iterator[ListedObject]:
    """Partial writes: local temp files and data files without a sidecar; S3 multipart uploads left open."""
    if isinstance(store, LocalStore):
        for area in ("incoming", "restricted", "agency"):
            with contextlib.suppress(FileNotFoundError):
                for folder in (store.root / area).iterdir():
                    if not folder.is_dir():
                        continue
                    for path in folder.iterdir():
                        sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
                        partial = path.name.startswith(".") or (not path.name.endswith(SIDECAR_SUFFIX)
                                                                and not sidecar.exists())
                        orphan_sidecar = path.name.endswith(SIDECAR_SUFFIX) and \
                            not path.with_name(path.name[:-len(SIDECAR_SUFFIX)]).exists()
                        if partial or orphan_sidecar:
                            with contextlib.suppress(FileNotFoundError):
                                yield ListedObject(str(path), path.stat().st_size, _mtime(path))
        return
    if isinstance(store, S3Store):
        for area in ("incoming", "restricted", "agency"):
            paginator = store.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=store.bucket(area)):
                for item in page.get("Uploads", []):
                    yield ListedObject(f"s3://{store.bucket(area)}/{item['Key']}?uploadId={item['UploadId']}",
                                       0, item["Initiated"])


def _remove_debris(store: Store, where: str) -> None:
    if isinstance(store, S3Store):
        bucket_key, upload = where[len("s3://"):].split("?uploadId=", 1)
        bucket, key = bucket_key.split("/", 1)
        store.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(where)


# --- reading the records --------------------------------------------------------------------------

def facts_for(session, upload_ids: Iterable[str]) -> dict[str, UploadFacts]:
    ids = sorted({u for u in upload_ids if _UPLOAD_RE.fullmatch(u)})
    out: dict[str, UploadFacts] = {}
    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        jobs = {j.upload_id: j for j in session.scalars(select(records.Job).where(records.Job.upload_id.in_(chunk)))}
        variants: dict[str, list[records.Variant]] = {}
        for v in session.scalars(select(records.Variant).where(records.Variant.upload_id.in_(chunk))):
            variants.setdefault(v.upload_id, []).append(v)
        for upload_id, job in jobs.items():
            vs = variants.get(upload_id, [])
            out[upload_id] = UploadFacts(
                state=job.state, error_code=job.error_code, source_key=job.source_key,
                variants={v.key: v.variant for v in vs},
                formats={v.key: job.format for v in vs if v.variant == "sanitized"},
                sha256={v.key: v.sha256 for v in vs})
    return out


# --- the walk ----------------------------------------------------------------------------------------

def _batches(items: Iterable[ListedObject]) -> Iterator[list[ListedObject]]:
    batch: list[ListedObject] = []
    for item in items:
        batch.append(item)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def verify_agency_object(store: Store, key: str, *, fmt: str | None, sha256: str | None, work: Path) -> str | None:
    """Run the verifier again on a stored agency copy; the reason it fails, or None when it passes."""
    from worker.errors import SanitizeError
    from worker.formats.base import Rebuilt
    from worker.verify import verify_copy

    dest = work / ("copy" + Path(key).suffix)
    try:
        stored = store.get_file(key, dest)
        if sha256 and stored.sha256 != sha256:
            return f"the stored sha256 {stored.sha256} is not the recorded {sha256}"
        if not fmt:
            return "the job records no format for its agency copy"
        verify_copy(dest, Rebuilt(format=fmt, media_type="", extension=Path(key).suffix))
        return None
    except SanitizeError as e:
        return f"{e.code}: {e}"
    except Exception as e:  # noqa: BLE001 - an unreadable copy is not a verified one
        return f"{type(e).__name__}: {e}"
    finally:
        dest.unlink(missing_ok=True)


def audit(services, *, verify: bool = True, now: datetime | None = None) -> list[Finding]:
    """Every finding in the stores and the work folders (reads only)."""
    settings, store = services.settings, services.store
    now = now or records.utcnow()
    window = timedelta(seconds=settings.stale_received_s)
    findings: list[Finding] = []
    with workdir.process_scope(settings.resolved_work_dir()):   # the verifier's downloads, gone afterwards
        for area in ("incoming", "restricted", "agency"):
            findings += _audit_area(services, area, verify=verify, now=now, window=window)
    findings = _spare_queued_uploads(services, findings)
    findings += [f for f in (judge_debris(o, now=now, window=window) for o in list_debris(store)) if f]
    findings += [Finding("dead_work_folder", str(p), None, "the process that made it is gone", True)
                 for p in workdir.dead_folders(settings.resolved_work_dir(), stale_s=settings.lease_s)]
    return findings


def _spare_queued_uploads(services, findings: list[Finding]) -> list[Finding]:
    """A producer may send the message and let the worker write the job row: an incoming object with no
    row whose message is still queued is an upload waiting, not residue. Where the broker cannot be
    looked into, such an object is reported but never deleted."""
    rowless = [f for f in findings if f.kind == "unrecorded" and f.key.startswith("incoming/")]
    if not rowless:
        return findings
    from worker.sweeper import pending_uploads

    pending = pending_uploads(services)
    kept = []
    for f in findings:
        if f in rowless and pending is None:
            f = Finding(f.kind, f.key, f.upload_id, f.detail + " (its message may still be queued: not deleted)",
                        False)
        elif f in rowless and f.upload_id in pending:
            continue
        kept.append(f)
    return kept


def _audit_area(services, area: str, *, verify: bool, now: datetime, window: timedelta) -> list[Finding]:
    settings, store = services.settings, services.store
    findings: list[Finding] = []
    for batch in _batches(list_objects(store, area)):
        with services.sessions() as session:
            facts = facts_for(session, (o.upload_id for o in batch))
        for obj in batch:
            finding = judge(obj, facts.get(obj.upload_id), now=now, window=window)
            if finding is not None:
                findings.append(finding)
            elif verify and area == "agency" and obj.upload_id in facts:
                up = facts[obj.upload_id]
                if up.variants.get(obj.key) == "sanitized":
                    with workdir.job_folder(settings.resolved_work_dir(), f"verify-{obj.upload_id}") as work:
                        reason = verify_agency_object(store, obj.key, fmt=up.formats.get(obj.key),
                                                      sha256=up.sha256.get(obj.key), work=work)
                    if reason:
                        findings.append(Finding("unverified", obj.key, obj.upload_id, reason, True))
    return findings


def fix(services, findings: Iterable[Finding]) -> list[Finding]:
    """Remove what each fixable finding names, as retention would; returns what was fixed."""
    import shutil

    fixed = []
    for f in findings:
        if not f.fixable:
            continue
        if f.kind == "dead_work_folder":
            shutil.rmtree(f.key, ignore_errors=True)
        elif f.kind == "debris":
            _remove_debris(services.store, f.key)
        elif f.kind == "unverified":
            with services.sessions() as session:   # unpublish first: the API reads the row, not the store
                session.execute(delete(records.Variant).where(records.Variant.key == f.key,
                                                              records.Variant.variant == "sanitized"))
                records.record_audit(session, actor="verify-store", role="service", action="unpublish",
                                     outcome="done", upload_id=f.upload_id, detail=f"{f.key}: {f.detail}"[:2000])
                session.commit()
            services.store.delete(f.key)
        else:
            services.store.delete(f.key)
        fixed.append(f)
    return fixed
