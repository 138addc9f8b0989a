"""worker.access: who may read what, and the audit row each restricted read or refusal leaves.
Run on the local store and on S3 (moto's server over HTTP)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.media_world import Upload, add_upload, audit_rows, build, standard_world
from tests.moto_s3 import moto_endpoint, s3_url  # noqa: F401  (fixture)
from worker import access
from worker.access import AccessDenied, PurposeRequired, Role, parse_role

ROOT = Path(__file__).resolve().parent.parent
DSNY, DOT, RESTRICTED, SERVICE = Role("agency", "DSNY"), Role("agency", "DOT"), Role("restricted"), Role("service")


@pytest.fixture(params=["local", "s3"])
def world(request, tmp_path):
    url = s3_url(request.getfixturevalue("moto_endpoint")) if request.param == "s3" else None
    services = build(tmp_path, url)
    return services, standard_world(services, tmp_path)


def fetch(services, tmp_path, upload_id, role, *, original=False, purpose=None, actor="someone"):
    dest = tmp_path / "out" / f"{upload_id}-{original}"
    with services.sessions() as session:
        access.fetch_variant(session=session, store=services.store, upload_id=upload_id, role=role, actor=actor,
                             purpose=purpose, original=original, dest=dest)
    return dest.read_bytes()


def location(services, upload_id, role, purpose=None):
    with services.sessions() as session:
        return access.read_location(session=session, upload_id=upload_id, role=role, actor="someone",
                                    purpose=purpose)


def test_parse_role():
    assert parse_role("restricted") == RESTRICTED
    assert parse_role("agency:DSNY") == DSNY and str(DSNY) == "agency:DSNY"
    for bad in ("", "agency", "agency:", "agency:dsny", "agency:DSNY:x", "admin", "Restricted", "agency:../x"):
        with pytest.raises(ValueError):
            parse_role(bad)


def test_agency_reads_its_own_copy_unaudited(world, tmp_path):
    services, up = world
    assert fetch(services, tmp_path, "up-dsny-1", DSNY) == up["dsny"].copy
    assert audit_rows(services) == []


def test_other_agency_gets_nothing_and_is_audited(world, tmp_path):
    services, up = world
    with pytest.raises(AccessDenied):
        fetch(services, tmp_path, "up-dsny-1", DOT, actor="dot.engineer")
    rows = audit_rows(services)
    assert len(rows) == 1
    row = rows[0]
    assert (row.actor, row.role, row.action, row.outcome, row.upload_id, row.complaint_id) == (
        "dot.engineer", "agency:DOT", "read_media", "denied", "up-dsny-1", "C-100")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("purpose", [None, "investigating complaint C-100"])
def test_agency_never_gets_original_or_location(world, tmp_path, purpose):
    services, up = world
    with pytest.raises(AccessDenied) as denied:
        fetch(services, tmp_path, "up-dsny-1", DSNY, original=True, purpose=purpose)
    assert not isinstance(denied.value, PurposeRequired)  # the refusal is about the role, whatever the purpose
    with pytest.raises(AccessDenied):
        location(services, "up-dsny-1", DSNY, purpose=purpose)
    rows = audit_rows(services)
    assert [(r.action, r.outcome, r.role) for r in rows] == [
        ("read_original", "denied", "agency:DSNY"), ("read_location", "denied", "agency:DSNY")]


def test_restricted_read_needs_a_purpose_and_leaves_one_row(world, tmp_path):
    services, up = world
    for blank in (None, "", "   "):
        with pytest.raises(PurposeRequired):
            fetch(services, tmp_path, "up-dsny-1", RESTRICTED, original=True, purpose=blank)
    assert [r.outcome for r in audit_rows(services)] == ["denied"] * 3

    got = fetch(services, tmp_path, "up-dsny-1", RESTRICTED, original=True, purpose="FOIL request 2024-17",
                actor="privacy.officer")
    assert got == up["dsny"].original
    rows = audit_rows(services)
    assert len(rows) == 4
    last = rows[-1]
    assert (last.actor, last.role, last.action, last.outcome, last.upload_id, last.complaint_id, last.purpose) == (
        "privacy.officer", "restricted", "read_original", "allowed", "up-dsny-1", "C-100", "FOIL request 2024-17")
    assert last.at is not None and last.at.tzinfo is not None


def test_restricted_reads_location(world):
    services, up = world
    with pytest.raises(PurposeRequired):
        location(services, "up-dsny-1", RESTRICTED)
    found = location(services, "up-dsny-1", RESTRICTED, purpose="site visit")
    assert (found.lat, found.lon, found.source) == (40.712776, -74.005974, "exif_gps")
    assert location(services, "up-dot-2", RESTRICTED, purpose="site visit") is None  # none recorded, still a read
    rows = audit_rows(services)
    assert [(r.action, r.outcome, r.upload_id) for r in rows] == [
        ("read_location", "denied", "up-dsny-1"), ("read_location", "allowed", "up-dsny-1"),
        ("read_location", "allowed", "up-dot-2")]
    assert rows[-1].detail == "no location recorded"


def test_service_role_is_audited_too(world, tmp_path):
    services, up = world
    with pytest.raises(PurposeRequired):
        fetch(services, tmp_path, "up-dot-2", SERVICE, original=True)
    assert fetch(services, tmp_path, "up-dot-2", SERVICE, original=True, purpose="reprocess") == up["dot"].original
    assert [(r.role, r.outcome) for r in audit_rows(services)] == [("service", "denied"), ("service", "allowed")]


@pytest.mark.parametrize("upload_id", ["nope", "../up-dsny-1", "up-dsny-1/../x", "up-dsny-1%2F", "%2e%2e", "",
                                       "x" * 200, "up-dsny-1\n"])
def test_unknown_and_malformed_ids_are_refused_and_audited(world, tmp_path, upload_id):
    services, _ = world
    for role, original in ((DSNY, False), (RESTRICTED, True)):
        with pytest.raises(AccessDenied):
            fetch(services, tmp_path, upload_id, role, original=original, purpose="why")
    rows = audit_rows(services)
    assert len(rows) == 2 and all(r.outcome == "denied" for r in rows)
    assert all(r.upload_id in (None, "nope") for r in rows)  # a malformed id is never stored as an id


def test_tags_and_routing_must_agree(world, tmp_path):
    """A copy whose stored tags name another agency than the job's routing is refused (fail closed)."""
    services, _ = world
    add_upload(services, tmp_path, Upload("up-mixed", "C-300", "DSNY", b"o" * 10, b"c" * 10, None),
               copy_tags={"variant": "sanitized", "access": "agency", "agency": "DOT", "complaint": "C-300"})
    for role in (DSNY, DOT):
        with pytest.raises(AccessDenied):
            fetch(services, tmp_path, "up-mixed", role)
    assert fetch(services, tmp_path, "up-mixed", RESTRICTED) == b"c" * 10


def test_original_past_retention_is_refused(world, tmp_path):
    services, _ = world
    add_upload(services, tmp_path, Upload("up-old", "C-400", "DSNY", b"old" * 10, b"c", None),
               original_retain_until=datetime.now(timezone.utc) - timedelta(minutes=1))
    with pytest.raises(AccessDenied):
        fetch(services, tmp_path, "up-old", RESTRICTED, original=True, purpose="audit")
    assert audit_rows(services)[-1].detail == "past its retention period"


def test_list_agency_media(world):
    services, _ = world

    def listing(complaint, role):
        with services.sessions() as session:
            return [e.upload_id for e in access.list_agency_media(session=session, complaint_id=complaint,
                                                                  role=role, actor="a")]

    assert listing("C-100", DSNY) == ["up-dsny-1"]
    assert sorted(listing("C-100", DOT)) == ["up-dot-1"]
    assert sorted(listing("C-100", RESTRICTED)) == ["up-dot-1", "up-dsny-1"]
    for complaint in ("C-200", "C-999", "../C-100"):
        with pytest.raises(AccessDenied):
            listing(complaint, DSNY)
    assert [(r.action, r.outcome) for r in audit_rows(services)] == [("list_media", "denied")] * 3


def test_list_audit_filters(world, tmp_path):
    services, _ = world
    fetch(services, tmp_path, "up-dsny-1", RESTRICTED, original=True, purpose="one")
    fetch(services, tmp_path, "up-dot-2", RESTRICTED, original=True, purpose="two")
    with services.sessions() as session:
        assert [r.purpose for r in access.list_audit(session=session)] == ["one", "two"]
        assert [r.purpose for r in access.list_audit(session=session, upload_id="up-dot-2")] == ["two"]
        later = datetime.now(timezone.utc) + timedelta(seconds=1)
        assert access.list_audit(session=session, since=later) == []


def test_cli_fetch_and_audit(tmp_path, monkeypatch):
    """`mediasan fetch` and `mediasan audit`, with settings from the environment as in production."""
    import typer
    from typer.testing import CliRunner

    from worker import services as services_module
    from worker import settings as settings_module
    from worker.cli_access import register

    services = build(tmp_path)
    up = standard_world(services, tmp_path)
    monkeypatch.setenv("MEDIASAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MEDIASAN_STORAGE_URL", raising=False)
    monkeypatch.delenv("MEDIASAN_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    for cached in (settings_module.get_settings, services_module.get_services):
        cached.cache_clear()
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def run(*args):
        return runner.invoke(app, list(args))

    try:
        out = tmp_path / "copy.jpg"
        assert run("fetch", "up-dsny-1", "--as", "agency:DSNY", "-o", str(out)).exit_code == 0
        assert out.read_bytes() == up["dsny"].copy
        refused = run("fetch", "up-dsny-1", "--as", "agency:DSNY", "--original", "--purpose", "x", "-o",
                      str(tmp_path / "no.jpg"))
        assert refused.exit_code == 2 and not (tmp_path / "no.jpg").exists()
        assert run("fetch", "up-dsny-1", "--as", "restricted", "--original", "-o",
                   str(tmp_path / "no.jpg")).exit_code == 2
        ok = run("fetch", "up-dsny-1", "--as", "restricted", "--original", "--purpose", "FOIL 17", "-o",
                 str(tmp_path / "orig.jpg"))
        assert ok.exit_code == 0, ok.output
        assert (tmp_path / "orig.jpg").read_bytes() == up["dsny"].original
        assert run("fetch", "up-dsny-1", "--as", "boss", "-o", str(tmp_path / "x")).exit_code != 0

        listed = run("audit", "--upload", "up-dsny-1", "--json")
        assert listed.exit_code == 0, listed.output
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [(r["role"], r["action"], r["outcome"], r["purpose"]) for r in rows] == [
            ("agency:DSNY", "read_original", "denied", "x"), ("restricted", "read_original", "denied", None),
            ("restricted", "read_original", "allowed", "FOIL 17")]
        assert all(r["actor"].startswith("cli:") for r in rows)
        assert run("audit", "--since", "1h", "--json").stdout.count("\n") == 3
        assert run("audit", "--since", "2999-01-01", "--json").stdout == ""
        assert run("audit", "--since", "yesterday").exit_code != 0
        assert run("audit").exit_code == 0

        token = run("api-token", "--actor", "j.doe", "--role", "agency:DSNY")
        assert token.exit_code == 0
        from worker.api import token_digest
        secret = token.stdout.strip()
        assert len(secret) >= 40 and token_digest(secret) in token.stderr and "j.doe=agency:DSNY" in token.stderr
        assert run("api-token", "--actor", "w", "--role", "service").exit_code != 0
    finally:
        for cached in (settings_module.get_settings, services_module.get_services):
            cached.cache_clear()
