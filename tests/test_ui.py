"""The investigators' pages over HTTP (FastAPI's TestClient on the local store): sessions, the rules of
worker.access as pages, the CSP on every /ui/ response, and which codecs the pages call unplayable.
The same flows in a real browser are in tests/test_ui_browser.py."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.media_world import DSNY, TOKENS, Upload, add_upload, audit_rows, build, standard_world
from tests.moto_s3 import moto_endpoint, s3_url  # noqa: F401  (fixture)
from worker import ui
from worker.api import create_app

DSNY_TOKEN, DOT_TOKEN, RESTRICTED_TOKEN = TOKENS


@pytest.fixture
def world(tmp_path):
    services = build(tmp_path)
    uploads = standard_world(services, tmp_path)
    app = create_app(services.settings, services=services)
    return app, services, uploads


def client_of(app, base_url="http://testserver") -> TestClient:
    return TestClient(app, base_url=base_url, follow_redirects=False, raise_server_exceptions=False)


def sign_in(client: TestClient, token: str):
    page = client.get("/ui/")
    assert page.status_code == 200
    signin_token = re.search(r'name="signin_token" value="([^"]+)"', page.text).group(1)
    return client.post("/ui/", data={"signin_token": signin_token, "token": token})


def form_token(html: str) -> str:
    return re.search(r'name="form_token" value="([^"]+)"', html).group(1)


def signed_in(app, token: str) -> TestClient:
    client = client_of(app)
    r = sign_in(client, token)
    assert r.status_code == 303 and r.headers["location"] == "/ui/search"
    return client


def assert_csp(response) -> None:
    """The policy is a header, and no fetch directive names a host, a scheme or *."""
    policy = response.headers.get("content-security-policy")
    assert policy == ui.CSP, (response.request.url, response.status_code, policy)
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    for name, sources in directives.items():
        if name.endswith("-src"):
            for source in sources.split():
                assert source in ("'self'", "'none'") or (source in ("data:", "blob:") and name in
                                                          ("img-src", "media-src")), (name, source)


def test_sign_in_sets_a_server_side_session_and_never_echoes_the_token(world):
    app, _, _ = world
    client = client_of(app)
    r = sign_in(client, DSNY_TOKEN)
    assert r.status_code == 303 and r.headers["location"] == "/ui/search"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(ui.COOKIE + "="))
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "path", "max-age"} <= attributes and "samesite=strict" in cookie.lower()
    assert "secure" not in attributes                                  # plain HTTP here
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert len(session_id) >= 40 and DSNY_TOKEN not in cookie
    pages = [client.get(p) for p in ("/ui/search", "/ui/complaints/C-100", "/ui/uploads/up-dsny-1")]
    for response in [r, *pages]:
        assert DSNY_TOKEN not in response.text and DSNY_TOKEN not in str(response.headers)
        assert_csp(response)
    assert "dsny.inspector (agency:DSNY)" in pages[0].text

    secure = client_of(app, base_url="https://testserver")
    r = sign_in(secure, DSNY_TOKEN)
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(ui.COOKIE + "="))
    assert "secure" in cookie.lower()


def test_bad_token_and_forged_sign_in_form_get_no_session(world):
    app, _, _ = world
    client = client_of(app)
    r = sign_in(client, "tok-not-a-real-token-0123456789abcdef")
    assert r.status_code == 401 and "not accepted" in r.text
    assert "tok-not-a-real-token" not in r.text               # what was typed is not sent back
    assert not any(c.startswith(ui.COOKIE + "=") for c in r.headers.get_list("set-cookie"))
    # a POST from another site carries no sign-in cookie (SameSite=Strict): refused, even with a good token
    fresh = client_of(app)
    r = fresh.post("/ui/", data={"signin_token": "whatever", "token": DSNY_TOKEN})
    assert r.status_code == 400 and not any(c.startswith(ui.COOKIE) for c in r.headers.get_list("set-cookie"))
    assert fresh.get("/ui/search").headers["location"] == "/ui/"


@pytest.mark.parametrize("path", ["/ui/search", "/ui/complaints/C-100", "/ui/uploads/up-dsny-1",
                                  "/ui/uploads/up-dsny-1/location", "/ui/uploads/up-dsny-1/original",
                                  "/ui/complaints?complaint_id=C-100", "/ui/anything", "/ui"])
def test_every_page_redirects_to_sign_in_without_a_session(world, path):
    app, services, _ = world
    client = client_of(app)
    client.cookies.set(ui.COOKIE, "made-up-session-id")
    r = client.get(path)
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    assert_csp(r)
    assert audit_rows(services) == []


def test_csp_on_every_ui_response_errors_included(world):
    app, services, _ = world
    client = signed_in(app, DSNY_TOKEN)
    responses = [client.get("/ui/"), client.get("/ui/search"), client.get("/ui/static/ui.css"),
                 client.get("/ui/static/ui.js"), client.get("/ui/static/nope.js"), client.get("/ui/complaints/C-404"),
                 client.post("/ui/sign-out", data={}), client.delete("/ui/search"),
                 client.get("/ui/uploads/up-dsny-1/original")]
    assert [r.status_code for r in responses] == [303, 200, 200, 200, 404, 404, 400, 405, 404]
    with services.engine.begin() as conn:      # a failure inside a view: our error page, same headers
        conn.execute(sa.text("DROP TABLE audit_events"))
    broken = client.get("/ui/complaints/C-200")     # a refusal writes an audit row: it cannot
    assert broken.status_code == 500 and "<main" in broken.text and "Something went wrong" in broken.text
    for r in [*responses, broken]:
        assert_csp(r)
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in client.get("/openapi.json").headers


def test_agency_pages_show_only_its_media_and_the_media_route_takes_the_cookie(world):
    app, services, up = world
    client = signed_in(app, DSNY_TOKEN)
    page = client.get("/ui/complaints/C-100")
    assert page.status_code == 200 and "<main" in page.text and "<title>Complaint C-100" in page.text
    assert 'src="/uploads/up-dsny-1/media" alt="Photo received' in page.text
    assert "up-dot-1" not in page.text
    assert 'href="/uploads/up-dsny-1/media" download="up-dsny-1.jpg"' in page.text
    assert "/location" not in page.text and "/original" not in page.text and 'name="purpose"' not in page.text
    one = client.get("/ui/uploads/up-dsny-1")
    assert one.status_code == 200 and 'name="purpose"' not in one.text and "/original" not in one.text
    # the media route answers the session cookie with the same decisions as for the token
    media = client.get("/uploads/up-dsny-1/media")
    assert media.status_code == 200 and media.content == up["dsny"].copy
    part = client.get("/uploads/up-dsny-1/media", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == up["dsny"].copy[10:20]
    assert client.get("/uploads/up-dot-1/media").status_code == 404
    # the cookie opens nothing else of the API
    for path in ("/uploads/up-dsny-1/original", "/uploads/up-dsny-1/location", "/complaints/C-100/media"):
        assert client.get(path, headers={"X-Purpose": "x"}).status_code == 401


def test_nothing_here_is_one_page_for_missing_and_forbidden(world):
    app, services, _ = world
    client = signed_in(app, DSNY_TOKEN)
    token = form_token(client.get("/ui/search").text)
    responses = {
        "other agency's complaint": client.get("/ui/complaints/C-200"),
        "random complaint": client.get("/ui/complaints/C-8a7d3b"),
        "malformed complaint": client.get("/ui/complaints/%2e%2e%2fC-100"),
        "other agency's upload": client.get("/ui/uploads/up-dot-2"),
        "random upload": client.get("/ui/uploads/up-nope"),
        "own upload's location": client.get("/ui/uploads/up-dsny-1/location"),
        "own upload's original": client.get("/ui/uploads/up-dsny-1/original"),
        "location with a purpose": client.post("/ui/uploads/up-dsny-1/location",
                                               data={"form_token": token, "purpose": "curious"}),
        "unknown page": client.get("/ui/uploads/up-dsny-1/original.jpg"),
    }
    bodies = {r.content for r in responses.values()}
    assert len(bodies) == 1 and {r.status_code for r in responses.values()} == {404}, \
        {k: r.status_code for k, r in responses.items()}
    assert b"<title>Nothing here" in bodies.pop()
    denied = [(r.action, r.outcome) for r in audit_rows(services)]
    assert ("read_location", "denied") in denied and ("read_original", "denied") in denied
    assert all(outcome == "denied" for _, outcome in denied)


def test_search_redirects_to_the_complaint_page_with_the_id_escaped(world):
    app, _, _ = world
    client = signed_in(app, DSNY_TOKEN)
    assert client.get("/ui/complaints", params={"complaint_id": " C-100 "}).headers["location"] == "/ui/complaints/C-100"
    r = client.get("/ui/complaints", params={"complaint_id": "a/../b\r\nSet-Cookie: x=1"})
    assert r.headers["location"] == "/ui/complaints/a%2F..%2Fb%0D%0ASet-Cookie%3A%20x%3D1"
    assert "x=1" not in str(r.headers.get_list("set-cookie"))


def test_restricted_flow_states_a_purpose_then_reads_location_and_original(world):
    app, services, up = world
    client = signed_in(app, RESTRICTED_TOKEN)
    page = client.get("/ui/uploads/up-dsny-1")
    assert '<input id="purpose" name="purpose" type="text" required' in page.text
    assert '<label for="purpose">' in page.text
    # no purpose given yet: the link to the original leads to the form, reading nothing
    r = client.get("/ui/uploads/up-dsny-1/original")
    assert r.status_code == 303 and r.headers["location"] == "/ui/uploads/up-dsny-1/location"
    assert client.get(r.headers["location"]).status_code == 200
    token = form_token(page.text)
    assert client.post("/ui/uploads/up-dsny-1/location", data={"purpose": "FOIL 17"}).status_code == 400
    empty = client.post("/ui/uploads/up-dsny-1/location", data={"form_token": token, "purpose": "  "})
    assert empty.status_code == 400 and "State the purpose" in empty.text
    shown = client.post("/ui/uploads/up-dsny-1/location", data={"form_token": token, "purpose": "FOIL request 17"})
    assert shown.status_code == 200
    assert "40.712776, -74.005974" in shown.text and "5.0 m" in shown.text and "2024-05-01T09:30:00-04:00" in shown.text
    assert 'href="/ui/uploads/up-dsny-1/original"' in shown.text
    original = client.get("/ui/uploads/up-dsny-1/original")
    assert original.status_code == 200 and original.content == up["dsny"].original
    assert original.headers["content-disposition"] == 'attachment; filename="up-dsny-1-original.jpg"'
    assert original.headers["cache-control"] == "no-store"
    assert_csp(original)
    # the purpose covers that upload only
    assert client.get("/ui/uploads/up-dot-1/original").status_code == 303
    rows = [(r.actor, r.role, r.action, r.outcome, r.upload_id, r.purpose) for r in audit_rows(services)]
    assert rows == [
        ("privacy.officer", "restricted", "read_location", "denied", "up-dsny-1", None),
        ("privacy.officer", "restricted", "read_location", "allowed", "up-dsny-1", "FOIL request 17"),
        ("privacy.officer", "restricted", "read_original", "allowed", "up-dsny-1", "FOIL request 17"),
    ]
    # an upload without a location says so
    client.post("/ui/uploads/up-dot-2/location", data={"form_token": token, "purpose": "FOIL request 17"})
    assert "No location or capture time was recorded" in client.post(
        "/ui/uploads/up-dot-2/location", data={"form_token": token, "purpose": "again"}).text


def test_sign_out_revokes_the_session_and_a_replayed_cookie_is_refused(world):
    app, services, up = world
    client = signed_in(app, DSNY_TOKEN)
    session_id = client.cookies.get(ui.COOKIE)
    page = client.get("/ui/search")
    # without the form token: refused, still signed in
    assert client.post("/ui/sign-out", data={}).status_code == 400
    assert client.get("/ui/search").status_code == 200
    r = client.post("/ui/sign-out", data={"form_token": form_token(page.text)})
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    assert any(c.startswith(ui.COOKIE + '=""') and "max-age=0" in c.lower() for c in r.headers.get_list("set-cookie"))
    replay = client_of(app)
    replay.cookies.set(ui.COOKIE, session_id)
    assert replay.get("/ui/complaints/C-100").headers["location"] == "/ui/"
    assert replay.get("/uploads/up-dsny-1/media").status_code == 401
    # the token itself still works for the API: sign-out ends the session, not the credential
    assert replay.get("/uploads/up-dsny-1/media", headers={"Authorization": DSNY}).content == up["dsny"].copy


def test_sessions_expire_when_idle_and_at_their_age_limit():
    now = [1000.0]
    store = ui.SessionStore(clock=lambda: now[0], idle_s=60, max_s=300)
    session_id, found = store.create("caller")
    for _ in range(4):
        now[0] += 50
        assert store.get(session_id) is found            # used within the idle time: still valid
    now[0] += 61
    assert store.get(session_id) is None                   # idle too long
    session_id, _ = store.create("caller")
    for _ in range(6):
        now[0] += 55
    assert store.get(session_id) is None                   # older than its age limit, though busy
    store.grant(found, "up-1", "FOIL")
    assert store.purpose_for(found, "up-1") == "FOIL" and store.purpose_for(found, "up-2") is None
    now[0] += ui.GRANT_S + 1
    assert store.purpose_for(found, "up-1") is None
    assert store.get("x" * 500) is None and store.get(None) is None


def _encode(path: Path, *args: str) -> bytes:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=64x48:rate=5:duration=1", "-f", "lavfi", "-i", "sine=duration=1", *args,
                    "-movflags", "+faststart", str(path)], check=True, capture_output=True)
    return path.read_bytes()


def test_unplayable_codecs_are_named_from_the_copy_and_its_type(tmp_path):
    h264 = _encode(tmp_path / "a.mp4", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac")
    hevc = _encode(tmp_path / "b.mp4", "-c:v", "libx265", "-tag:v", "hvc1", "-pix_fmt", "yuv420p", "-c:a", "aac",
                   "-x265-params", "log-level=error")
    assert ui.sample_entries(h264) == [b"avc1", b"mp4a"]
    assert ui.sample_entries(hevc) == [b"hvc1", b"mp4a"]
    assert ui.sample_entries(hevc[:400]) == []            # cut before the moov: nothing claimed
    assert ui.cannot_play("video/mp4", lambda: h264) is None
    assert ui.cannot_play("video/quicktime", lambda: hevc) == "HEVC (H.265) video"
    assert ui.cannot_play("video/ogg", lambda: b"") == "Theora video"
    assert ui.cannot_play("video/webm", lambda: b"") is None and ui.cannot_play("audio/mpeg", lambda: b"") is None
    assert ui.sample_entries(b"\x00\x00\x00\x01moov" + b"\xff" * 8) == []   # a largesize past the end


def test_what_people_type_is_escaped(world):
    app, services, _ = world
    client = signed_in(app, RESTRICTED_TOKEN)
    token = form_token(client.get("/ui/search").text)
    purpose = '<script>alert("x")</script> & "quotes"'
    shown = client.post("/ui/uploads/up-dsny-1/location", data={"form_token": token, "purpose": purpose})
    assert shown.status_code == 200 and "<script>alert" not in shown.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;quotes&#34;" in shown.text
    assert audit_rows(services)[-1].purpose == purpose     # the trail keeps what was typed
    r = client.get("/ui/complaints/%3Cimg%20src%3Dx%3E")
    assert r.status_code == 404 and "<img src=x>" not in r.text


@pytest.mark.parametrize("store", ["local", "s3"])
def test_the_page_reads_the_codec_from_the_copy_in_either_store(tmp_path, request, store):
    url = s3_url(request.getfixturevalue("moto_endpoint")) if store == "s3" else None
    services = build(tmp_path, url)
    hevc = tmp_path / "hevc.mp4"
    _encode(hevc, "-c:v", "libx265", "-tag:v", "hvc1", "-pix_fmt", "yuv420p", "-c:a", "aac",
            "-x265-params", "log-level=error")
    h264 = tmp_path / "h264.mp4"
    _encode(h264, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac")
    for upload_id, path in (("up-hevc", hevc), ("up-h264", h264)):
        add_upload(services, tmp_path, Upload(upload_id, "C-700", "DSNY", b"o", b"", None), copy_path=path)
    with services.engine.begin() as conn:
        conn.execute(sa.text("UPDATE variants SET media_type = 'video/mp4' WHERE variant = 'sanitized'"))
    client = signed_in(create_app(services.settings, services=services), DSNY_TOKEN)
    page = client.get("/ui/complaints/C-700").text
    players = re.findall(r'<video controls preload="metadata" src="/uploads/(up-[a-z0-9]+)/media"', page)
    assert sorted(players) == ["up-h264", "up-hevc"]
    notes = dict(re.findall(r'<p id="note-(up-[a-z0-9]+)" class="cannot-play" role="status"( hidden)?>', page))
    assert notes == {"up-hevc": "", "up-h264": " hidden"}
    assert "it is HEVC (H.265) video" in page
    assert client.get("/uploads/up-hevc/media", headers={"Range": "bytes=0-7"}).status_code == 206
