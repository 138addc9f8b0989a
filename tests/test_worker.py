"""A real worker process, end to end: on the embedded default and on this machine's Redis and PostgreSQL."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fixtures.jpeg import android_phone_jpeg
from tests.moto_s3 import moto_endpoint  # noqa: F401  (fixture)
from tests.readback import exiftool, sensitive_tags
from tests.workerproc import running_deployment, wait_final
from worker import records
from worker.intake import enqueue_file, send_upload
from worker.messages import UploadMessage


@pytest.fixture(params=["embedded", "redis+postgresql", "redis+postgresql+s3"])
def deployment(request, tmp_path):
    """(name, services, worker) of one deployment; the S3 one writes through moto's server over HTTP."""
    endpoint = request.getfixturevalue("moto_endpoint") if request.param.endswith("+s3") else None
    with running_deployment(request.param, tmp_path, s3_endpoint=endpoint) as (env, services, worker):
        yield request.param, services, worker


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_photo_goes_in_location_and_clean_copy_come_out(deployment, tmp_path):
    name, services, worker = deployment
    photo = tmp_path / "PXL_20261129.jpg"
    lat, lon = android_phone_jpeg(photo)
    upload_id = enqueue_file(photo, services=services, complaint_id="311-1001", agency="DSNY")

    info = wait_final(services, upload_id, worker)
    assert info["state"] == "done", info
    assert info["error"] is None and info["attempts"] == 1

    with services.sessions() as session:
        rows = session.scalars(select(records.Location).where(records.Location.upload_id == upload_id)).all()
        assert len(rows) == 1
        assert rows[0].lat == pytest.approx(lat, abs=1e-6) and rows[0].lon == pytest.approx(lon, abs=1e-6)
        assert rows[0].source == "exif" and rows[0].complaint_id == "311-1001"

    variants = {v["variant"]: v for v in info["variants"]}
    assert set(variants) == {"original", "sanitized"}
    original, copy = variants["original"], variants["sanitized"]
    assert original["key"] == f"restricted/{upload_id}/original.jpg"
    assert original["tags"] == {"variant": "original", "access": "restricted", "complaint": "311-1001"}
    assert copy["key"] == f"agency/{upload_id}/media.jpg"
    assert copy["tags"] == {"variant": "sanitized", "access": "agency", "agency": "DSNY", "complaint": "311-1001"}

    stored_original = tmp_path / "original.jpg"
    services.store.get_file(original["key"], stored_original)
    assert stored_original.read_bytes() == photo.read_bytes()
    assert original["sha256"] == sha256(photo.read_bytes())
    stored_copy = tmp_path / "copy.jpg"
    services.store.get_file(copy["key"], stored_copy)
    assert copy["sha256"] == sha256(stored_copy.read_bytes())
    assert sensitive_tags(exiftool(stored_copy)) == []
    # the incoming object is gone once the original is kept under restriction
    assert services.store.head(f"incoming/{upload_id}/upload") is None
    if name == "embedded":   # policy 5: the embedded default's database holds locations: owner only
        data_dir = services.settings.resolved_data_dir()
        assert data_dir.stat().st_mode & 0o777 == 0o700
        assert (data_dir / "mediasan.sqlite3").stat().st_mode & 0o777 == 0o600


def test_same_upload_enqueued_twice_changes_nothing(deployment, tmp_path):
    name, services, worker = deployment
    photo = tmp_path / "IMG_1.jpg"
    android_phone_jpeg(photo)
    upload_id = enqueue_file(photo, services=services, complaint_id="311-1002", agency="NYPD")
    first = wait_final(services, upload_id, worker)
    assert first["state"] == "done"

    repeat = UploadMessage(upload_id=upload_id, complaint_id="311-1002", channel="mobile_app",
                           source_key=f"incoming/{upload_id}/upload", agency="NYPD",
                           received_at="2026-11-29T10:00:00Z")
    send_upload(services, repeat)
    send_upload(services, repeat)
    # a later upload proves the worker went through the repeats before it
    marker = tmp_path / "marker.jpg"
    android_phone_jpeg(marker)
    wait_final(services, enqueue_file(marker, services=services, complaint_id="311-1003"), worker)

    again = wait_final(services, upload_id, worker)
    assert again == first
    with services.sessions() as session:
        assert session.scalar(select(func.count()).select_from(records.Location)
                              .where(records.Location.upload_id == upload_id)) == 1
        assert session.scalar(select(func.count()).select_from(records.Variant)
                              .where(records.Variant.upload_id == upload_id)) == 2


@pytest.mark.parametrize("content, code", [
    (b"", "empty"),
    (b"<html><body>not a photo</body></html>", "unsupported_format"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xdb\x00\x43\x00", "truncated"),
])
def test_bad_input_is_rejected_and_the_worker_goes_on(deployment, tmp_path, content, code):
    name, services, worker = deployment
    bad = tmp_path / "IMG_9999.jpg"   # the name says JPEG; the content decides
    bad.write_bytes(content)
    upload_id = enqueue_file(bad, services=services, complaint_id="311-2001", agency="DOT",
                             content_type="image/jpeg")
    info = wait_final(services, upload_id, worker)
    assert info["state"] == "rejected"
    assert info["error"]["code"] == code and info["error"]["message"]
    assert [v["variant"] for v in info["variants"]] == ["original"]   # kept under restriction, no agency copy

    good = tmp_path / "good.jpg"
    android_phone_jpeg(good)
    assert wait_final(services, enqueue_file(good, services=services, complaint_id="311-2002"), worker)["state"] == "done"


def _every_kind_of_upload(folder: Path) -> list[tuple[Path, tuple[float, float] | None, str]]:
    """One upload of each family a phone or browser sends: (file, the fix it holds, the copy's format)."""
    from fixtures import audio, heif, lossless, video

    samples = []
    for builder, name, copy_format in (
        (lossless.png_with_text_and_exif, "screenshot.png", "png"),
        (heif.iphone_like_heic, "IMG_0001.HEIC", "jpeg"),
        (video.iphone_like_mov, "IMG_0002.MOV", "mp4"),
        (video.voice_memo_m4a, "Memo.m4a", "m4a"),
        (audio.mp3_with_all_tags, "note.mp3", "mp3"),
    ):
        path = folder / name
        result = builder(path)
        samples.append((path, result if isinstance(result, tuple) else None, copy_format))
    return samples


@pytest.mark.parametrize("deployment", ["embedded"], indirect=True)
def test_every_family_through_the_worker(deployment, tmp_path):
    name, services, worker = deployment
    for path, fix, copy_format in _every_kind_of_upload(tmp_path):
        upload_id = enqueue_file(path, services=services, complaint_id="311-3001", agency="DEP")
        info = wait_final(services, upload_id, worker)
        assert info["state"] == "done", (path.name, info)
        assert info["format"] == copy_format, (path.name, info["format"])
        variants = {v["variant"]: v for v in info["variants"]}
        stored_original, stored_copy = tmp_path / f"{upload_id}.orig", tmp_path / f"{upload_id}.copy"
        services.store.get_file(variants["original"]["key"], stored_original)
        services.store.get_file(variants["sanitized"]["key"], stored_copy)
        assert stored_original.read_bytes() == path.read_bytes()
        assert sensitive_tags(exiftool(stored_copy)) == [], path.name
        with services.sessions() as session:
            location = session.get(records.Location, upload_id)
            original = session.scalars(select(records.Variant).where(records.Variant.upload_id == upload_id,
                                                                     records.Variant.variant == "original")).one()
            job = session.get(records.Job, upload_id)
            if fix is None:
                assert location is None or location.lat is None, path.name
            else:
                assert (location.lat, location.lon) == (pytest.approx(fix[0], abs=1e-6),
                                                        pytest.approx(fix[1], abs=1e-6)), path.name
            # policy 4.3: a voice note's original is kept 14 days, a photo's or a video's a year
            days = (original.retain_until - job.received_at).days
            assert days == (14 if job.kind == "audio" else 365), (path.name, job.kind, days)
