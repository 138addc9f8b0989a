"""Test data for the reading side: job, variant and location rows written with the records session,
files put in the store directly (not through the worker), and API tokens for a few callers."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from worker import records
from worker.services import Services, build_services
from worker.settings import Settings

UTC = timezone.utc


class ApiSettings(Settings):
    """Settings with the proposed `api_tokens` field, until worker/settings.py carries it."""
    api_tokens: dict[str, str] = {}


TOKENS = {  # token -> "actor=role"
    "tok-dsny-0123456789abcdef0123456789": "dsny.inspector=agency:DSNY",
    "tok-dot-0123456789abcdef01234567890": "dot.engineer=agency:DOT",
    "tok-restricted-0123456789abcdef0123": "privacy.officer=restricted",
}
DSNY, DOT, RESTRICTED = (f"Bearer {t}" for t in TOKENS)


def token_table() -> dict[str, str]:
    return {hashlib.sha256(t.encode()).hexdigest(): who for t, who in TOKENS.items()}


def make_settings(tmp_path: Path, storage_url: str | None = None) -> ApiSettings:
    return ApiSettings(data_dir=tmp_path / "data", storage_url=storage_url, api_tokens=token_table())


@dataclass
class Upload:
    upload_id: str
    complaint_id: str
    agency: str | None
    original: bytes
    copy: bytes
    location: tuple[float, float] | None
    original_key: str = field(init=False)
    copy_key: str = field(init=False)

    def __post_init__(self):
        self.original_key = f"restricted/{self.upload_id}/original.jpg"
        self.copy_key = f"agency/{self.upload_id}/media.jpg"


def add_upload(services: Services, tmp_path: Path, upload: Upload, *, copy_path: Path | None = None,
               copy_tags: dict | None = None, original_retain_until: datetime | None = None) -> Upload:
    """Rows and stored objects as a finished job leaves them."""
    store = services.store
    now = datetime.now(UTC)
    src = tmp_path / f"{upload.upload_id}.orig"
    src.write_bytes(upload.original)
    if copy_path is None:
        copy_path = tmp_path / f"{upload.upload_id}.copy"
        copy_path.write_bytes(upload.copy)
    o_tags = {"variant": "original", "access": "restricted", "complaint": upload.complaint_id}
    c_tags = copy_tags or {"variant": "sanitized", "access": "agency", "complaint": upload.complaint_id,
                           **({"agency": upload.agency} if upload.agency else {})}
    original = store.put_file(upload.original_key, src, content_type="image/jpeg", tags=o_tags)
    copy = store.put_file(upload.copy_key, copy_path, content_type="image/jpeg", tags=c_tags)
    with services.sessions() as session:
        records.insert_job(session, upload_id=upload.upload_id, complaint_id=upload.complaint_id,
                           channel="mobile_app", agency=upload.agency, source_key=f"incoming/{upload.upload_id}/upload",
                           filename="IMG_0001.jpg", content_type="image/jpeg", received_at=now)
        session.get(records.Job, upload.upload_id).state = "done"
        records.upsert_variant(session, upload_id=upload.upload_id, variant="original", key=original.key,
                               sha256=original.sha256, size=original.bytes, media_type="image/jpeg", tags=o_tags,
                               sanitizer_version="test",
                               retain_until=original_retain_until or now + timedelta(days=365))
        records.upsert_variant(session, upload_id=upload.upload_id, variant="sanitized", key=copy.key,
                               sha256=copy.sha256, size=copy.bytes, media_type="image/jpeg", tags=c_tags,
                               sanitizer_version="test", retain_until=None)
        if upload.location:
            records.upsert_location(session, upload_id=upload.upload_id, complaint_id=upload.complaint_id,
                                    values={"lat": upload.location[0], "lon": upload.location[1], "alt": 12.5,
                                            "accuracy": 5.0, "source": "exif_gps",
                                            "captured_at": "2024-05-01T09:30:00-04:00"},
                                    retain_until=now + timedelta(days=365))
        session.commit()
    return upload


def audit_rows(services: Services) -> list[records.AuditEvent]:
    from sqlalchemy import select
    with services.sessions() as session:
        return list(session.scalars(select(records.AuditEvent).order_by(records.AuditEvent.id)))


def standard_world(services: Services, tmp_path: Path) -> dict[str, Upload]:
    """Complaint C-100 has one upload routed to DSNY and one to DOT; C-200 is DOT's alone."""
    uploads = {
        "dsny": Upload("up-dsny-1", "C-100", "DSNY", b"ORIGINAL-DSNY" * 100, bytes(range(256)) * 40,
                       (40.712776, -74.005974)),
        "dot_same_complaint": Upload("up-dot-1", "C-100", "DOT", b"ORIGINAL-DOT1" * 100, b"dot copy 1" * 50,
                                     (40.7001, -73.9901)),
        "dot": Upload("up-dot-2", "C-200", "DOT", b"ORIGINAL-DOT2" * 100, b"dot copy 2" * 50, None),
    }
    for u in uploads.values():
        add_upload(services, tmp_path, u)
    return uploads


def build(tmp_path: Path, storage_url: str | None = None) -> Services:
    settings = make_settings(tmp_path, storage_url)
    services = build_services(settings)
    ensure = getattr(services.store, "ensure_buckets", None)
    if ensure:
        ensure()
    return services
