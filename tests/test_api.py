"""The investigators' API: what each token can and cannot get, over HTTP.

In-process (FastAPI's TestClient) on the local store and on S3 through moto's server, and against a
real uvicorn process for streaming memory, raw path tricks and a schemathesis run.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.media_world import DOT, DSNY, RESTRICTED, TOKENS, Upload, add_upload, audit_rows, build, standard_world
from tests.moto_s3 import moto_endpoint, s3_url  # noqa: F401  (fixture)
from worker.api import NOT_FOUND, create_app, parse_range, UnsatisfiableRange

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["local", "s3"])
def api(request, tmp_path):
    url = s3_url(request.getfixturevalue("moto_endpoint")) if request.param == "s3" else None
    services = build(tmp_path, url)
    world = standard_world(services, tmp_path)
    client = TestClient(create_app(services.settings, services=services))
    return client, services, world


def get(client, path, token=None, **headers):
    if token:
        headers["Authorization"] = token
    return client.get(path, headers=headers)


def test_agency_gets_its_copy(api):
    client, services, up = api
    r = get(client, "/uploads/up-dsny-1/media", DSNY)
    assert r.status_code == 200
    assert r.content == up["dsny"].copy
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["etag"] == f'"{hashlib.sha256(up["dsny"].copy).hexdigest()}"'
    assert r.headers["accept-ranges"] == "bytes"
    assert audit_rows(services) == []


def test_no_or_unknown_token_is_401(api):
    client, services, _ = api
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic " + "x" * 20},
                    {"Authorization": DSNY.replace("Bearer ", "")}):
        r = client.get("/uploads/up-dsny-1/media", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.content != b"" and b"DSNY" not in r.content
    assert audit_rows(services) == []


def test_other_agency_gets_the_same_404_as_for_nothing(api):
    client, services, _ = api
    other = get(client, "/uploads/up-dsny-1/media", DOT)
    missing = get(client, "/uploads/does-not-exist/media", DOT)
    assert other.status_code == missing.status_code == 404
    assert other.json() == missing.json() == NOT_FOUND
    assert other.headers.get("content-length") == missing.headers.get("content-length")
    rows = audit_rows(services)
    assert [(r.role, r.action, r.outcome, r.upload_id) for r in rows] == [
        ("agency:DOT", "read_media", "denied", "up-dsny-1"), ("agency:DOT", "read_media", "denied", "does-not-exist")]


@pytest.mark.parametrize("path", ["/uploads/up-dsny-1/original", "/uploads/up-dsny-1/location",
                                  "/uploads/up-dot-1/original", "/uploads/up-dot-1/location"])
def test_agency_never_gets_original_or_location(api, path):
    client, services, up = api
    for purpose in (None, "investigating"):
        r = get(client, path, DSNY, **({"X-Purpose": purpose} if purpose else {}))
        assert r.status_code == 404 and r.json() == NOT_FOUND
        assert up["dsny"].original not in r.content and b"40.71" not in r.content
    assert [(r.outcome, r.role) for r in audit_rows(services)] == [("denied", "agency:DSNY")] * 2


def test_restricted_original_needs_purpose_and_is_audited_once(api):
    client, services, up = api
    r = get(client, "/uploads/up-dsny-1/original", RESTRICTED)
    assert r.status_code == 400 and "X-Purpose" in r.json()["detail"]
    r = get(client, "/uploads/up-dsny-1/original", RESTRICTED, **{"X-Purpose": "FOIL request 17"})
    assert r.status_code == 200 and r.content == up["dsny"].original
    assert r.headers["cache-control"] == "no-store"
    rows = audit_rows(services)
    assert [(r.actor, r.role, r.action, r.outcome, r.purpose) for r in rows] == [
        ("privacy.officer", "restricted", "read_original", "denied", None),
        ("privacy.officer", "restricted", "read_original", "allowed", "FOIL request 17")]


def test_restricted_location(api):
    client, services, up = api
    assert get(client, "/uploads/up-dsny-1/location", RESTRICTED).status_code == 400
    r = get(client, "/uploads/up-dsny-1/location", RESTRICTED, **{"X-Purpose": "site visit"})
    assert r.status_code == 200
    body = r.json()
    assert body["upload_id"] == "up-dsny-1"
    assert (body["location"]["lat"], body["location"]["lon"]) == (40.712776, -74.005974)
    none = get(client, "/uploads/up-dot-2/location", RESTRICTED, **{"X-Purpose": "site visit"})
    assert none.status_code == 200 and none.json() == {"upload_id": "up-dot-2", "location": None}
    assert get(client, "/uploads/nope/location", RESTRICTED, **{"X-Purpose": "x"}).json() == NOT_FOUND
    assert [(r.action, r.outcome) for r in audit_rows(services)] == [
        ("read_location", "denied"), ("read_location", "allowed"), ("read_location", "allowed"),
        ("read_location", "denied")]


def test_complaint_media_lists_only_what_the_caller_may_see(api):
    client, services, _ = api
    dsny = get(client, "/complaints/C-100/media", DSNY).json()
    assert [m["upload_id"] for m in dsny["media"]] == ["up-dsny-1"]
    assert dsny["media"][0]["href"] == "/uploads/up-dsny-1/media"
    both = get(client, "/complaints/C-100/media", RESTRICTED).json()
    assert sorted(m["upload_id"] for m in both["media"]) == ["up-dot-1", "up-dsny-1"]
    for complaint in ("C-200", "C-404"):
        r = get(client, f"/complaints/{complaint}/media", DSNY)
        assert r.status_code == 404 and r.json() == NOT_FOUND
    assert len(audit_rows(services)) == 2


@pytest.mark.parametrize("header,status,expected", [
    ("bytes=0-9", 206, (0, 9)), ("bytes=100-", 206, (100, 10239)), ("bytes=-16", 206, (10224, 10239)),
    ("bytes=10000-99999", 206, (10000, 10239)), ("bytes=10239-10239", 206, (10239, 10239)),
    ("bytes=10240-", 416, None), ("bytes=-0", 416, None),
    ("bytes=0-1,5-6", 200, None), ("items=0-5", 200, None),
    ("bytes=9-3", 400, None), ("bytes=x-y", 400, None), ("bytes=-", 400, None), ("bytes=1-2-3", 400, None),
    # positions longer than Python converts (4300 digits) are past any object, not a 500
    ("bytes=" + "9" * 5000 + "-", 416, None), ("bytes=0-" + "9" * 5000, 206, (0, 10239)),
    ("bytes=-" + "9" * 5000, 206, (0, 10239)), ("bytes=" + "0" * 5000 + "5-9", 206, (5, 9)),
])
def test_range_requests(api, header, status, expected):
    client, _, up = api
    data = up["dsny"].copy
    assert len(data) == 10240
    r = get(client, "/uploads/up-dsny-1/media", DSNY, Range=header)
    assert r.status_code == status
    if status == 206:
        start, end = expected
        assert r.content == data[start:end + 1]
        assert r.headers["content-range"] == f"bytes {start}-{end}/10240"
        assert int(r.headers["content-length"]) == end - start + 1
    elif status == 416:
        assert r.headers["content-range"] == "bytes */10240"
    elif status == 400:
        assert r.json() == {"detail": "malformed Range header"}
    else:
        assert r.content == data


def test_range_on_the_original(api):
    client, services, up = api
    r = get(client, "/uploads/up-dsny-1/original", RESTRICTED, Range="bytes=0-3", **{"X-Purpose": "check header"})
    assert r.status_code == 206 and r.content == up["dsny"].original[:4]
    assert len(audit_rows(services)) == 1


def test_original_audit_never_claims_a_read_that_did_not_happen(api):
    """A malformed Range is refused before the decision (no row); a range past the end, or an original
    lost from the store, leaves the "allowed" row followed by one saying nothing was sent."""
    client, services, up = api
    purpose = {"X-Purpose": "FOIL request 17"}
    r = get(client, "/uploads/up-dsny-1/original", RESTRICTED, Range="bytes=9-3", **purpose)
    assert r.status_code == 400 and audit_rows(services) == []
    r = get(client, "/uploads/up-dsny-1/original", RESTRICTED, Range="bytes=" + "7" * 5000 + "-", **purpose)
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(up['dsny'].original)}"
    services.store.delete(up["dsny"].original_key)
    r = get(client, "/uploads/up-dsny-1/original", RESTRICTED, **purpose)
    assert r.status_code == 503 and up["dsny"].original[:20] not in r.content
    rows = [(r.action, r.outcome, r.upload_id, r.complaint_id, r.purpose, r.detail) for r in audit_rows(services)]
    assert rows == [
        ("read_original", "allowed", "up-dsny-1", "C-100", "FOIL request 17", None),
        ("read_original", "failed", "up-dsny-1", "C-100", "FOIL request 17", "nothing sent: range not satisfiable"),
        ("read_original", "allowed", "up-dsny-1", "C-100", "FOIL request 17", None),
        ("read_original", "failed", "up-dsny-1", "C-100", "FOIL request 17", "nothing sent: the stored object is missing"),
    ]


def test_no_cdn_docs_and_no_redirect_from_the_host_header(api):
    client, _, up = api
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert client.get(path).status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "mediasan investigators' API"
    for path in ("/uploads/up-dsny-1/media/", "/complaints/C-100/media/", "/ui", "/ui/search/"):
        r = client.get(path, headers={"Host": "evil.example", "Authorization": DSNY}, follow_redirects=False)
        assert "evil" not in r.headers.get("location", ""), path
        assert r.status_code in (303, 404), (path, r.status_code)
        if r.status_code == 303:
            assert r.headers["location"].startswith("/ui/")
    assert get(client, "/uploads/up-dsny-1/media", DSNY).content == up["dsny"].copy


def test_parse_range_empty_file():
    with pytest.raises(UnsatisfiableRange):
        parse_range("bytes=0-", 0)
    assert parse_range(None, 0) is None


def test_no_route_writes(api):
    client, services, up = api
    schema = client.get("/openapi.json").json()
    assert {m for ops in schema["paths"].values() for m in ops} == {"get"}
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        r = client.request(method, "/uploads/up-dsny-1/media", headers={"Authorization": RESTRICTED})
        assert r.status_code == 405
    assert get(client, "/uploads/up-dsny-1/media", DSNY).content == up["dsny"].copy


def test_empty_agency_copy(api, tmp_path):
    client, services, _ = api
    add_upload(services, tmp_path, Upload("up-empty", "C-500", "DSNY", b"o", b"", None))
    r = get(client, "/uploads/up-empty/media", DSNY)
    assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "0"


def test_service_tokens_are_refused_at_startup(tmp_path):
    from tests.media_world import make_settings
    settings = make_settings(tmp_path)
    settings.api_tokens = {"0" * 64: "worker=service"}
    with pytest.raises(ValueError):
        create_app(settings)
    settings.api_tokens = {"not-a-digest": "x=restricted"}
    with pytest.raises(ValueError):
        create_app(settings)


# --- a real server in its own process --------------------------------------------------------------

BIG = 200 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """uvicorn in a subprocess on the local store, with the standard world and a 200 MiB agency copy."""
    tmp = tmp_path_factory.mktemp("live")
    services = build(tmp)
    world = standard_world(services, tmp)
    big = tmp / "big.mp4"
    with open(big, "wb") as f:          # mostly holes: cheap to make, still 200 MiB to send
        f.write(b"\x00\x00\x00\x20ftypisom")
        f.truncate(BIG)
        f.seek(BIG - 5)
        f.write(b"tail!")
    add_upload(services, tmp, Upload("up-big", "C-600", "DSNY", b"o", b"", None), copy_path=big)
    big.unlink()
    port = _free_port()
    config = tmp / "server.json"
    config.write_text(json.dumps({"data_dir": str(tmp / "data"), "port": port}))
    proc = subprocess.Popen([sys.executable, "-m", "tests.api_server", str(config)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode())
            try:
                httpx.get(base + "/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield base, port, proc, services, world
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_large_file_streams_in_bounded_memory(live):
    base, _, proc, services, _ = live
    headers = {"Authorization": DSNY}
    assert httpx.get(base + "/uploads/up-dsny-1/media", headers=headers).status_code == 200  # warm up
    before = _peak_rss_kib(proc.pid)
    digest, received = hashlib.sha256(), 0
    with httpx.stream("GET", base + "/uploads/up-big/media", headers=headers, timeout=60) as r:
        assert r.status_code == 200 and int(r.headers["content-length"]) == BIG
        for chunk in r.iter_raw(1 << 20):
            digest.update(chunk)
            received += len(chunk)
    growth_mib = (_peak_rss_kib(proc.pid) - before) / 1024
    assert received == BIG
    assert f'"{digest.hexdigest()}"' == r.headers["etag"]
    assert growth_mib < 48, f"server peak memory grew {growth_mib:.0f} MiB sending a 200 MiB file"

    # a range deep inside the large file
    r = httpx.get(base + "/uploads/up-big/media", headers={**headers, "Range": f"bytes={BIG - 5}-"})
    assert r.status_code == 206 and r.content == b"tail!"


def _raw_get(port: int, path: str, token: str, **headers) -> tuple[int, bytes]:
    """Sends the path byte for byte: no client-side normalisation of `..` or percent-escapes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True, skip_host="Host" in headers)
        conn.putheader("Authorization", token)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


TRICKS = [
    "/uploads/up-dsny-1/original", "/uploads/up-dsny-1/location",
    "/uploads/up-dsny-1/media/../original", "/uploads/up-dsny-1/media/%2e%2e/original",
    "/uploads/up-dsny-1%2Foriginal/media", "/uploads/up-dsny-1%2foriginal", "/uploads/%2e%2e/media",
    "/uploads/../uploads/up-dsny-1/original", "/uploads/..%2Frestricted%2Fup-dsny-1%2Foriginal.jpg/media",
    "/uploads/up-dsny-1/original.jpg", "/uploads/up-dsny-1/media?original=1", "/uploads/up-dsny-1/./original",
    "/uploads/up-dot-1/media", "/uploads/up-dot-2/media", "/uploads/UP-DSNY-1/original",
    "/uploads/up-dsny-1%00/original", "/uploads/up-dsny-1;/original", "/restricted/up-dsny-1/original.jpg",
    "/complaints/C-200/media", "/complaints/C-100%2F..%2FC-200/media", "/uploads//original",
    "//uploads/up-dsny-1/original", "/uploads/up-dsny-1/location%20",
]


def test_agency_path_tricks_get_nothing(live):
    _, port, _, services, world = live
    secrets = [u.original for u in world.values()] + [b"40.71", b"40.70", b"-74.00", b"-73.99"]
    before = len(audit_rows(services))
    for path in TRICKS:
        for purpose in ({}, {"X-Purpose": "curious"}):
            status, body = _raw_get(port, path, DSNY, **purpose)
            if status == 200:   # a harmless variation of its own copy's URL: the copy, nothing else
                assert body == world["dsny"].copy, path
                continue
            assert status in (400, 404), (path, status)
            assert not any(s in body for s in secrets), path
            if status == 404:
                assert json.loads(body) == NOT_FOUND, path
    assert len(audit_rows(services)) > before  # the refusals that reached a route were audited
    # the one thing DSNY may have is still there
    assert _raw_get(port, "/uploads/up-dsny-1/media", DSNY)[1] == world["dsny"].copy


def test_forged_host_gets_no_redirect_from_the_real_server(live):
    _, port, _, _, world = live
    for path in ("/uploads/up-dsny-1/media/", "/complaints/C-100/media/", "/ui", "/openapi.json/"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", "evil.example")
            conn.endheaders()
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        location = response.getheader("Location") or ""
        assert "evil" not in location and response.status in (303, 404), (path, response.status, location)
    status, body = _raw_get(port, "/uploads/up-dsny-1/media", DSNY, Host="evil.example")
    assert status == 200 and body == world["dsny"].copy


@pytest.mark.parametrize("token,known_ids", [(RESTRICTED, False), (RESTRICTED, True), (DSNY, True)],
                         ids=["restricted-random-ids", "restricted-known-ids", "agency-known-ids"])
def test_schemathesis_finds_no_server_errors(live, tmp_path, token, known_ids):
    """Generated requests against the OpenAPI document: random ids, then ids that exist (so that Range
    and X-Purpose values are fuzzed on real objects). No request may get a 5xx."""
    base, *_ = live
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.upload_id" = "up-dsny-1"\n"path.complaint_id" = "C-100"\n'
                      if known_ids else "")
    exe = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [str(exe), "--config-file", str(config), "run", base + "/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "15", "--phases", "examples,coverage,fuzzing", "--workers", "1", "--seed", "311",
         "-H", f"Authorization: {token}", "--request-timeout", "30", "--report-dir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, env=dict(os.environ, NO_COLOR="1"))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "4 operations" in run.stdout or "Tested: 4" in run.stdout, run.stdout[-2000:]
