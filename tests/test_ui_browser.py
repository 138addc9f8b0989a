"""The investigators' pages in a real browser: Debian's headless Chromium through chromedriver (Selenium,
pointed at /usr/bin/chromium and /usr/bin/chromedriver, so Selenium Manager never downloads anything).

The media are real: fixtures from fixtures/ go through worker.pipeline on the embedded default
(SQLite, local store), and `mediasan serve`'s app runs in its own uvicorn process. Without the browser
these tests skip with the reason; MEDIASAN_REQUIRE_BROWSER=1 (set by .ci/run) makes that a failure.
A screenshot of each page goes to MEDIASAN_SCREENSHOT_DIR, or to a folder under the test's tmp path.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.media_world import TOKENS, make_settings

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REQUIRE_BROWSER = os.environ.get("MEDIASAN_REQUIRE_BROWSER") == "1"
DSNY_TOKEN, DOT_TOKEN, RESTRICTED_TOKEN = TOKENS
PURPOSE = "FOIL request 2026-17"


def _browser_or_skip() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium Python package")
    if missing:
        message = f"browser tests need {', '.join(missing)} (./dev test installs them)"
        if REQUIRE_BROWSER:
            pytest.fail(message + " and MEDIASAN_REQUIRE_BROWSER=1 makes them required")
        pytest.skip(message)


# --- the site: real media through the real pipeline, served by a real uvicorn ----------------------

def _ingest(services, path: Path, *, upload_id: str, complaint: str, agency: str, received_at: datetime) -> None:
    from worker import pipeline
    from worker.intake import incoming_key
    from worker.messages import UploadMessage

    msg = UploadMessage(upload_id=upload_id, complaint_id=complaint, channel="mobile_app",
                        source_key=incoming_key(upload_id), filename=path.name, content_type=None, agency=agency,
                        received_at=received_at)
    services.store.put_file(msg.source_key, path, content_type="application/octet-stream",
                            tags={"variant": "incoming", "access": "restricted", "complaint": complaint})
    outcome = pipeline.process_upload(msg, services)
    assert outcome.state == "done", (path.name, outcome)


def _street_photo(path: Path) -> tuple[float, float]:
    """A 640x480 photo with the GPS IFD a phone writes (accuracy 8 m)."""
    import piexif

    from fixtures.jpeg import BROOKLYN, gps_ifd, picture

    exif = {"0th": {piexif.ImageIFD.Make: b"Google", piexif.ImageIFD.Model: b"Pixel 7"},
            "Exif": {piexif.ExifIFD.DateTimeOriginal: b"2024:05:17 10:05:09"},
            "GPS": gps_ifd(*BROOKLYN, alt=21.0, accuracy=8.0)}
    picture((640, 480)).save(path, "JPEG", quality=88, exif=piexif.dump(exif))
    return BROOKLYN


def _hevc_mp4(path: Path) -> None:
    """What an iPhone records by default: HEVC in MP4 (browsers without a platform decoder cannot play it)."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=160x120:rate=10:duration=1", "-c:v", "libx265", "-tag:v", "hvc1",
                    "-pix_fmt", "yuv420p", "-x265-params", "log-level=error", "-f", "mp4", str(path)],
                   check=True, capture_output=True)


def _hevc_mkv(path: Path) -> None:
    """HEVC in Matroska: the server does not read Matroska's codec, so only the page's script can tell."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=160x120:rate=10:duration=1", "-c:v", "libx265", "-pix_fmt", "yuv420p",
                    "-x265-params", "log-level=error", "-f", "matroska", str(path)], check=True, capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    _browser_or_skip()
    from fixtures.jpeg import iphone_like_jpeg
    from fixtures.lossless import png_with_text_and_exif
    from fixtures.video import android_like_mp4, voice_memo_m4a
    from worker.services import build_services

    tmp = tmp_path_factory.mktemp("ui-site")
    files = tmp / "files"
    files.mkdir()
    services = build_services(make_settings(tmp))
    now = datetime.now(timezone.utc).replace(microsecond=0)
    # complaint C1, routed to DSNY: two photos, a video, a voice note, an HEVC video; C2 is DOT's
    fix = _street_photo(files / "street.jpg")
    png_with_text_and_exif(files / "sign.png")
    android_like_mp4(files / "video.mp4")
    voice_memo_m4a(files / "voice.m4a")
    _hevc_mp4(files / "iphone.mp4")
    _hevc_mkv(files / "edited.mkv")
    iphone_like_jpeg(files / "dot.jpg")
    plan = [("up-c1-photo", "street.jpg", "C1", "DSNY", 50), ("up-c1-sign", "sign.png", "C1", "DSNY", 40),
            ("up-c1-video", "video.mp4", "C1", "DSNY", 30), ("up-c1-voice", "voice.m4a", "C1", "DSNY", 20),
            ("up-c1-hevc", "iphone.mp4", "C1", "DSNY", 10), ("up-c1-mkv", "edited.mkv", "C1", "DSNY", 8),
            ("up-c2-photo", "dot.jpg", "C2", "DOT", 5)]
    for upload_id, name, complaint, agency, minutes_ago in plan:
        _ingest(services, files / name, upload_id=upload_id, complaint=complaint, agency=agency,
                received_at=now - timedelta(minutes=minutes_ago))
    port = _free_port()
    config = tmp / "server.json"
    config.write_text(json.dumps({"data_dir": str(tmp / "data"), "port": port}))
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tests.api_server", str(config)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError((tmp / "server.log").read_text())
            try:
                httpx.get(base + "/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        screenshots = Path(os.environ.get("MEDIASAN_SCREENSHOT_DIR") or tmp / "screenshots")
        screenshots.mkdir(parents=True, exist_ok=True)
        yield {"base": base, "tmp": tmp, "services": services, "fix": fix, "screenshots": screenshots,
               "data_dir": tmp / "data"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        services.engine.dispose()


@pytest.fixture(scope="module")
def chrome(site):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Chromium puts its singleton socket under TMPDIR, and a Unix socket path has at most 107 bytes:
    # the work folder that running the pipeline in this process made TMPDIR is too deep for it
    short_tmp = tempfile.mkdtemp(prefix="msan-chr-", dir="/tmp")
    profile = tempfile.mkdtemp(prefix="profile-", dir=short_tmp)
    downloads = site["tmp"] / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})   # the CDP network log
    driver = webdriver.Chrome(options=options,
                              service=Service(str(CHROMEDRIVER), env={**os.environ, "TMPDIR": short_tmp}))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(20)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(short_tmp, ignore_errors=True)


@pytest.fixture
def browser(chrome, site):
    """The module's browser, signed out, with its network log drained."""
    chrome.delete_all_cookies()
    chrome.get(site["base"] + "/ui/static/icon.svg")
    chrome.delete_all_cookies()
    chrome.execute_script("localStorage.clear(); sessionStorage.clear();")
    network_log(chrome)
    return chrome


def network_log(driver) -> list[dict]:
    """Responses the browser received since the last call: url, status, and the Range it asked for."""
    sent, seen = {}, []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]
        elif message["method"] == "Network.responseReceived":
            request = sent.get(params["requestId"], {})
            headers = {k.lower(): v for k, v in (request.get("headers") or {}).items()}
            seen.append({"url": params["response"]["url"], "status": params["response"]["status"],
                         "range": headers.get("range")})
        elif message["method"] == "Network.requestWillBeSentExtraInfo":
            pass
    for request in sent.values():
        if not any(r["url"] == request["url"] for r in seen):
            seen.append({"url": request["url"], "status": None, "range": None})
    return seen


def wait_for(driver, script: str, timeout: float = 15, *args):
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script, *args)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {script}")
        time.sleep(0.1)


def check_page(driver) -> None:
    """What every page must have: a language, a title, one main landmark, a label on every field,
    alt text on every image."""
    found = driver.execute_script("""
        const fields = [...document.querySelectorAll('input:not([type=hidden]), select, textarea')];
        return {lang: document.documentElement.lang, title: document.title,
                mains: document.querySelectorAll('main').length,
                unlabelled: fields.filter(f => !f.labels.length).map(f => f.outerHTML),
                no_alt: [...document.images].filter(i => !i.alt).map(i => i.outerHTML)};""")
    assert found["lang"] == "en" and found["title"].endswith(" · mediasan") and found["mains"] == 1, found
    assert found["unlabelled"] == [] and found["no_alt"] == [], found


def shot(driver, site, name: str) -> None:
    check_page(driver)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, min(max(height + 140, 600), 3000))
    driver.save_screenshot(str(site["screenshots"] / f"{name}.png"))


def tab_to(driver, script: str, presses: int = 30) -> None:
    """Press Tab from the top of the page until ``script`` is true of the focused element."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0);")
    for _ in range(presses):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if driver.execute_script(script):
            return
    raise AssertionError(f"Tab never reached the element: {script}")


def keyboard_sign_in(driver, site, token: str) -> None:
    """Sign in with the keyboard alone: the token field has the focus, Tab reaches the button, Enter."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.get(site["base"] + "/ui/")
    assert driver.title == "Sign in · mediasan"
    assert driver.execute_script("return document.activeElement.id") == "token"
    assert driver.execute_script("return document.querySelector('label[for=token]').textContent") == "Access token"
    ActionChains(driver).send_keys(token).send_keys(Keys.TAB).perform()
    assert driver.execute_script("return document.activeElement.textContent") == "Sign in"
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    wait_for(driver, "return location.pathname === '/ui/search'")


def search_with_keyboard(driver, complaint: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    assert driver.execute_script("return document.activeElement.id") == "complaint_id"
    ActionChains(driver).send_keys(complaint).send_keys(Keys.ENTER).perform()
    wait_for(driver, "return location.pathname === arguments[0]", 15, f"/ui/complaints/{complaint}")


# --- the tests -------------------------------------------------------------------------------------

def test_agency_sees_its_photos_video_and_voice_note(browser, site):
    keyboard_sign_in(browser, site, DSNY_TOKEN)
    shot(browser, site, "2-search")
    search_with_keyboard(browser, "C1")
    assert browser.title == "Complaint C1 · mediasan"
    assert browser.execute_script("return document.querySelectorAll('main').length") == 1

    # newest first
    order = browser.execute_script("return [...document.querySelectorAll('article h2')].map(h => h.id)")
    assert order == ["h-up-c1-mkv", "h-up-c1-hevc", "h-up-c1-voice", "h-up-c1-video", "h-up-c1-sign",
                     "h-up-c1-photo"]
    # the photos decode, and each has its alt text
    photos = wait_for(browser, """
        const imgs = [...document.querySelectorAll('main img')];
        return imgs.length && imgs.every(i => i.complete) &&
               imgs.map(i => [i.getAttribute('src'), i.naturalWidth, i.alt]);""")
    assert [(src, width > 0, alt.startswith("Photo received")) for src, width, alt in photos] == [
        ("/uploads/up-c1-sign/media", True, True), ("/uploads/up-c1-photo/media", True, True)]
    assert photos[1][1] == 640

    # the H.264 video plays, then seeks
    video = "document.querySelector('video[src=\"/uploads/up-c1-video/media\"]')"
    browser.execute_script(f"const v = {video}; v.muted = true; v.play();")
    wait_for(browser, f"const v = {video}; return v.currentTime > 0.2 && v.videoWidth > 0")
    browser.execute_script(f"const v = {video}; v.pause(); v.dataset.seeked = ''; "
                           "v.addEventListener('seeked', () => v.dataset.seeked = 'yes', {once: true}); "
                           "v.currentTime = 0.1;")
    wait_for(browser, f"return {video}.dataset.seeked === 'yes'")
    assert abs(browser.execute_script(f"return {video}.currentTime") - 0.1) < 0.05
    assert browser.execute_script(f"return {video}.getVideoPlaybackQuality().totalVideoFrames") > 0

    # the voice note loads and plays
    audio = "document.querySelector('audio[src=\"/uploads/up-c1-voice/media\"]')"
    browser.execute_script(f"const a = {audio}; a.muted = true; a.play();")
    wait_for(browser, f"return {audio}.currentTime > 0.2")

    # the HEVC video says it cannot play here, next to its player, and keeps its download link
    note = browser.execute_script("const n = document.getElementById('note-up-c1-hevc'); "
                                  "return n.hidden ? null : n.textContent")
    assert note and "HEVC (H.265)" in note
    assert browser.execute_script("return document.getElementById('note-up-c1-video').hidden") is True
    assert browser.execute_script(
        "return !!document.querySelector('a[href=\"/uploads/up-c1-hevc/media\"][download]')")
    # ...and the browser agrees: it refuses the file, or has no picture for it
    hevc = "document.querySelector('video[src=\"/uploads/up-c1-hevc/media\"]')"
    wait_for(browser, f"const v = {hevc}; return v.error !== null || v.readyState >= 1")
    assert browser.execute_script(f"const v = {hevc}; return v.error !== null || v.videoWidth === 0")
    # HEVC in Matroska: nothing said by the server, the page's script notices there is no picture
    mkv = "document.querySelector('video[src=\"/uploads/up-c1-mkv/media\"]')"
    wait_for(browser, f"const v = {mkv}; return v.error !== null || v.readyState >= 1")
    wait_for(browser, "return !document.getElementById('note-up-c1-mkv').hidden")
    assert "could not play this video" in browser.find_element("id", "note-up-c1-mkv").text
    shot(browser, site, "3-complaint")

    # the media came from our own route, with Range answered 206 for the video
    log = network_log(browser)
    media = [r for r in log if urlparse(r["url"]).path == "/uploads/up-c1-video/media"]
    assert any(r["status"] == 206 and (r["range"] or "").startswith("bytes=") for r in media), media

    # phone width: nothing wider than the screen
    browser.set_window_size(390, 844)
    browser.refresh()
    wait_for(browser, "return document.readyState === 'complete'")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    browser.save_screenshot(str(site["screenshots"] / "3-complaint-phone.png"))
    browser.set_window_size(1100, 1000)

    browser.get(site["base"] + "/ui/uploads/up-c1-photo")
    assert browser.title == "Upload up-c1-photo · mediasan"
    assert not browser.execute_script("return document.querySelector('input[name=purpose]')")
    shot(browser, site, "4-upload")


def test_other_agencies_complaint_and_a_random_id_give_the_same_page(browser, site):
    keyboard_sign_in(browser, site, DSNY_TOKEN)
    pages = {}
    for path in ("/ui/complaints/C2", "/ui/complaints/C-7f3a9e", "/ui/uploads/up-c2-photo",
                 "/ui/uploads/up-c1-photo/location", "/ui/uploads/up-c1-photo/original"):
        browser.get(site["base"] + path)
        pages[path] = (browser.title, browser.find_element("tag name", "main").text)
    assert len(set(pages.values())) == 1, pages
    assert browser.title == "Nothing here · mediasan"
    shot(browser, site, "5-nothing-here")
    assert all(urlparse(r["url"]).netloc == urlparse(site["base"]).netloc for r in network_log(browser)
               if urlparse(r["url"]).scheme != "data")


def test_sign_out_and_the_old_cookie_is_refused(browser, site):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    keyboard_sign_in(browser, site, DSNY_TOKEN)
    old = {c["name"]: c["value"] for c in browser.get_cookies()}["mediasan_session"]
    tab_to(browser, "return document.activeElement.textContent === 'Sign out'")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_for(browser, "return location.pathname === '/ui/' && document.title.startsWith('Sign in')")
    assert "mediasan_session" not in {c["name"] for c in browser.get_cookies()}
    shot(browser, site, "1-sign-in")
    # the browser replays the old cookie: refused
    browser.add_cookie({"name": "mediasan_session", "value": old, "path": "/"})
    browser.get(site["base"] + "/ui/complaints/C1")
    assert urlparse(browser.current_url).path == "/ui/"
    replay = httpx.get(site["base"] + "/uploads/up-c1-photo/media", cookies={"mediasan_session": old})
    assert replay.status_code == 401


def test_restricted_reader_states_a_purpose_and_the_reads_are_audited(browser, site):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    keyboard_sign_in(browser, site, RESTRICTED_TOKEN)
    browser.get(site["base"] + "/ui/uploads/up-c1-photo")
    field = browser.find_element("id", "purpose")
    assert field.get_attribute("type") == "text" and field.get_attribute("required") is not None
    shot(browser, site, "6-purpose")
    tab_to(browser, "return document.activeElement.id === 'purpose'")
    ActionChains(browser).send_keys(PURPOSE + Keys.ENTER).perform()   # Enter submits the one-line field
    wait_for(browser, "return document.title.startsWith('Location of upload up-c1-photo')")
    coords = browser.find_element("css selector", ".coords").text
    lat, lon = site["fix"]
    assert coords == f"{lat:.6f}, {lon:.6f}"
    assert "8.0 m" in browser.find_element("tag name", "main").text
    shot(browser, site, "7-location")
    browser.find_element("link text", "Download the original").click()
    deadline = time.monotonic() + 15
    while not [p for p in browser.downloads.iterdir() if p.name.startswith("up-c1-photo-original")
               and not p.name.endswith(".crdownload")]:
        assert time.monotonic() < deadline, list(browser.downloads.iterdir())
        time.sleep(0.2)
    downloaded = next(browser.downloads.glob("up-c1-photo-original*"))
    with site["services"].sessions() as session:
        from worker import records
        original = next(v for v in records.variants_of(session, "up-c1-photo") if v.variant == "original")
    import hashlib
    assert hashlib.sha256(downloaded.read_bytes()).hexdigest() == original.sha256

    env = dict(os.environ, MEDIASAN_DATA_DIR=str(site["data_dir"]))
    env.pop("MEDIASAN_DATABASE_URL", None), env.pop("MEDIASAN_STORAGE_URL", None)
    run = subprocess.run([sys.executable, "-m", "worker.cli", "audit", "--upload", "up-c1-photo", "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    restricted = [(r["actor"], r["role"], r["action"], r["outcome"], r["purpose"]) for r in rows
                  if r["role"] == "restricted"]
    assert restricted == [("privacy.officer", "restricted", "read_location", "allowed", PURPOSE),
                          ("privacy.officer", "restricted", "read_original", "allowed", PURPOSE)]


def test_no_token_in_urls_html_storage_or_cookies_and_nothing_from_another_origin(browser, site):
    keyboard_sign_in(browser, site, RESTRICTED_TOKEN)
    visited = []
    for path in ("/ui/search", "/ui/complaints/C1", "/ui/complaints/C2", "/ui/uploads/up-c1-video",
                 "/ui/uploads/up-c1-sign/location"):
        browser.get(site["base"] + path)
        wait_for(browser, "return document.readyState === 'complete'")
        visited.append(browser.current_url)
        assert RESTRICTED_TOKEN not in browser.page_source
        storage = browser.execute_script("return JSON.stringify([Object.entries(localStorage), "
                                         "Object.entries(sessionStorage), document.cookie])")
        assert RESTRICTED_TOKEN not in storage and storage == '[[],[],""]'   # the session cookie is HttpOnly
        # what the page itself loaded: the performance entries name only our origin
        entries = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(e.startswith(site["base"] + "/") for e in entries), entries
    assert all(RESTRICTED_TOKEN not in c["value"] for c in browser.get_cookies())
    requests = network_log(browser)
    # data: URLs are the media controls' own icons (Chromium's built-in player): nothing leaves the machine
    elsewhere = [r["url"] for r in requests if urlparse(r["url"]).scheme != "data"
                 and urlparse(r["url"]).netloc != urlparse(site["base"]).netloc]
    assert requests and not elsewhere, elsewhere
    assert all(RESTRICTED_TOKEN not in r["url"] for r in requests) and all(RESTRICTED_TOKEN not in u for u in visited)
