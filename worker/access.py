"""Who may read what: the one place that decides (DESIGN.md "The privacy policy, as code", 3.1 and 1).

Roles:
* ``restricted`` — originals and locations, each read with a stated purpose; agency copies too.
* ``agency:<CODE>`` — agency copies of uploads routed to that agency (job and stored tags agree), nothing else.
* ``service`` — the worker and operators on the worker's machine: everything, still with a purpose
  for originals and locations, still audited.

A refusal raises ``AccessDenied``: never an empty success. Every read of an original or a location
and every refusal adds exactly one ``AuditEvent`` row, committed before the function returns or raises,
so the record exists even if the caller then fails to send the bytes. Reads of agency copies are
not audited (they hold nothing restricted); refusals of them are.

These functions decide from the database (the job's routing and the variant's tags), never from the
store: a storage key is only followed after the row it came from has passed the checks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker import records
from worker.storage import Store, StoredObject, key_area

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
AGENCY_RE = re.compile(r"^[A-Z0-9_]{1,32}$")
MAX_PURPOSE = 500

ACTION_ORIGINAL = "read_original"
ACTION_MEDIA = "read_media"
ACTION_LOCATION = "read_location"
ACTION_LIST = "list_media"


class AccessDenied(Exception):
    """The caller may not have this, or it does not exist: callers must not tell the two apart.

    ``reason`` is for the audit row and the operator's log, never for the requester.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class PurposeRequired(AccessDenied):
    """A role that may read restricted data asked without stating why (policy 3.1)."""


@dataclass(frozen=True)
class Role:
    kind: str                 # restricted | agency | service
    agency: str | None = None

    def __str__(self) -> str:
        return f"agency:{self.agency}" if self.kind == "agency" else self.kind

    @property
    def may_read_restricted(self) -> bool:
        return self.kind in ("restricted", "service")


def parse_role(text: str) -> Role:
    """``restricted``, ``service`` or ``agency:<CODE>`` (CODE as routed, e.g. DSNY); ValueError otherwise."""
    if text in ("restricted", "service"):
        return Role(text)
    kind, _, code = text.partition(":")
    if kind == "agency" and AGENCY_RE.fullmatch(code):
        return Role("agency", code)
    raise ValueError(f"unknown role {text!r}: use restricted, service or agency:<CODE>")


@dataclass(frozen=True)
class MediaEntry:
    upload_id: str
    complaint_id: str
    media_type: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class LocationRecord:
    upload_id: str
    complaint_id: str
    lat: float | None
    lon: float | None
    alt: float | None
    accuracy: float | None
    captured_at: str | None
    source: str | None
    retain_until: datetime


# --- the decisions --------------------------------------------------------------------------------

def authorize_variant(*, session: Session, upload_id: str, role: Role, actor: str, purpose: str | None,
                      original: bool) -> StoredObject:
    """The stored object the caller may read: the original, or the agency copy. Audited as described above."""
    action = ACTION_ORIGINAL if original else ACTION_MEDIA
    audit = _Audit(session=session, actor=actor, role=role, action=action, upload_id=upload_id, purpose=purpose)
    if not ID_RE.fullmatch(upload_id or ""):
        raise audit.deny("malformed upload id")
    if original:
        _require_restricted(audit, role, purpose)
    job = session.get(records.Job, upload_id)
    if job is None:
        raise audit.deny("no such upload")
    audit.complaint_id = job.complaint_id
    variant = _variant(session, upload_id, "original" if original else "sanitized")
    if variant is None:
        raise audit.deny("no such variant")
    expected_area = "restricted" if original else "agency"
    if key_area(variant.key) != expected_area:   # a mis-recorded key must never lead into another area
        raise audit.deny(f"variant key outside the {expected_area} area")
    if original:
        if variant.retain_until is not None and variant.retain_until <= records.utcnow():
            raise audit.deny("past its retention period")
        audit.allow()
    elif role.kind == "agency":
        tags = variant.tags or {}
        if job.agency != role.agency or tags.get("agency") != role.agency or tags.get("access") != "agency":
            raise audit.deny(f"routed to {job.agency or 'no agency'}, not {role.agency}")
    return _stored(variant)


def fetch_variant(*, session: Session, store: Store, upload_id: str, role: Role, actor: str,
                  purpose: str | None, original: bool, dest: Path) -> StoredObject:
    """Authorize, then copy the object into ``dest`` (sha256 checked by the store)."""
    stored = authorize_variant(session=session, upload_id=upload_id, role=role, actor=actor, purpose=purpose,
                               original=original)
    return store.get_file(stored.key, dest)


def read_location(*, session: Session, upload_id: str, role: Role, actor: str,
                  purpose: str | None) -> LocationRecord | None:
    """The upload's restricted location record, or None when the upload has none (that read is audited too)."""
    audit = _Audit(session=session, actor=actor, role=role, action=ACTION_LOCATION, upload_id=upload_id,
                   purpose=purpose)
    if not ID_RE.fullmatch(upload_id or ""):
        raise audit.deny("malformed upload id")
    _require_restricted(audit, role, purpose)
    job = session.get(records.Job, upload_id)
    if job is None:
        raise audit.deny("no such upload")
    audit.complaint_id = job.complaint_id
    row = session.get(records.Location, upload_id)
    if row is not None and row.retain_until <= records.utcnow():
        row = None   # past retention: as if already purged
    audit.allow(detail=None if row is not None else "no location recorded")
    if row is None:
        return None
    return LocationRecord(upload_id=row.upload_id, complaint_id=row.complaint_id, lat=row.lat, lon=row.lon,
                          alt=row.alt, accuracy=row.accuracy, captured_at=row.captured_at, source=row.source,
                          retain_until=row.retain_until)


def list_agency_media(*, session: Session, complaint_id: str, role: Role, actor: str) -> list[MediaEntry]:
    """The complaint's agency copies this role may see. None visible is a refusal, not an empty list:
    an agency cannot learn that a complaint routed elsewhere exists."""
    audit = _Audit(session=session, actor=actor, role=role, action=ACTION_LIST, upload_id=None, purpose=None)
    if not ID_RE.fullmatch(complaint_id or ""):
        raise audit.deny("malformed complaint id")
    audit.complaint_id = complaint_id
    query = (select(records.Job, records.Variant)
             .join(records.Variant, records.Variant.upload_id == records.Job.upload_id)
             .where(records.Job.complaint_id == complaint_id, records.Variant.variant == "sanitized")
             .order_by(records.Job.received_at, records.Job.upload_id))
    if role.kind == "agency":
        query = query.where(records.Job.agency == role.agency)
    entries = []
    for job, variant in session.execute(query):
        tags = variant.tags or {}
        if key_area(variant.key) != "agency":
            continue
        if role.kind == "agency" and (tags.get("agency") != role.agency or tags.get("access") != "agency"):
            continue
        entries.append(MediaEntry(upload_id=job.upload_id, complaint_id=job.complaint_id,
                                  media_type=variant.media_type or "application/octet-stream",
                                  bytes=variant.bytes, sha256=variant.sha256))
    if not entries:
        raise audit.deny("no agency media visible to this role")
    return entries


def list_audit(*, session: Session, upload_id: str | None = None, since: datetime | None = None,
               limit: int = 10_000) -> list[records.AuditEvent]:
    """Audit rows, oldest first. For operators with database access (the CLI), not exposed over HTTP."""
    query = select(records.AuditEvent).order_by(records.AuditEvent.at, records.AuditEvent.id).limit(limit)
    if upload_id is not None:
        query = query.where(records.AuditEvent.upload_id == upload_id)
    if since is not None:
        query = query.where(records.AuditEvent.at >= since)
    return list(session.scalars(query))


# --- helpers --------------------------------------------------------------------------------------

def _require_restricted(audit: "_Audit", role: Role, purpose: str | None) -> None:
    if not role.may_read_restricted:
        raise audit.deny(f"role {role} may not read restricted data")
    if not (purpose or "").strip():
        raise audit.deny("no purpose stated", error=PurposeRequired)


def _variant(session: Session, upload_id: str, variant: str) -> records.Variant | None:
    return session.scalars(select(records.Variant).where(records.Variant.upload_id == upload_id,
                                                         records.Variant.variant == variant)).one_or_none()


def _stored(variant: records.Variant) -> StoredObject:
    return StoredObject(key=variant.key, bytes=variant.bytes, sha256=variant.sha256,
                        content_type=variant.media_type or "application/octet-stream", tags=dict(variant.tags or {}))


def _clean_purpose(purpose: str | None) -> str | None:
    if purpose is None:
        return None
    text = "".join(ch if ch.isprintable() else " " for ch in purpose).strip()
    return text[:MAX_PURPOSE] or None


class _Audit:
    """Writes the one audit row of a decision and commits it (exactly once per decision)."""

    def __init__(self, *, session: Session, actor: str, role: Role, action: str, upload_id: str | None,
                 purpose: str | None):
        self.session, self.actor, self.role, self.action = session, actor, role, action
        # an id that is not well-formed is kept only in the detail, shortened: it names nothing
        self.upload_id = upload_id if upload_id and ID_RE.fullmatch(upload_id) else None
        self.requested = None if self.upload_id or upload_id is None else repr(upload_id[:80])
        self.purpose = _clean_purpose(purpose)
        self.complaint_id: str | None = None
        self.written = False

    def _write(self, outcome: str, detail: str | None) -> None:
        assert not self.written, "one decision, one audit row"
        if self.requested:
            detail = f"{detail} (requested {self.requested})" if detail else f"requested {self.requested}"
        records.record_audit(self.session, actor=self.actor[:128], role=str(self.role), action=self.action,
                             outcome=outcome, upload_id=self.upload_id, complaint_id=self.complaint_id,
                             purpose=self.purpose, detail=detail)
        self.session.commit()
        self.written = True

    def allow(self, detail: str | None = None) -> None:
        self._write("allowed", detail)

    def deny(self, reason: str, error: type[AccessDenied] = AccessDenied) -> AccessDenied:
        self._write("denied", reason)
        return error(reason)
