"""The investigators' pages under /ui/ (served by `mediasan serve` next to the JSON API, worker/api.py).

Server-rendered (Jinja2 templates in worker/templates/, one stylesheet and one small script in
worker/static/); nothing is loaded from another origin, and every /ui/ response carries a CSP that
says so. Every decision is worker.access's, exactly as for the API: the pages call the same
functions with the signed-in caller's actor and role, so the same audit rows are written.

Sign-in: the token, typed into a form, is looked up once and forgotten; the browser gets a random
session id in an HttpOnly, SameSite=Strict cookie (Secure over HTTPS). The sessions live in this
process (``SessionStore``), keyed by the id's sha256: sign-out deletes the entry, so a replayed
cookie finds nothing; restarting `mediasan serve` signs everyone out. Each session has a form token
that every POST must carry (SameSite=Strict is the first line, the form token the second); the
sign-in form, before there is a session, uses a double-submit cookie instead.

A restricted reader states a purpose on a form; the location is then read (audited), and the
session remembers that purpose for that upload for a few minutes so that the original can be
offered as a plain link, whose every request is again authorized and audited with that purpose.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select

from worker import access, records
from worker.storage import StorageError

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
COOKIE = "mediasan_session"
SIGN_IN_COOKIE = "mediasan_signin"     # double-submit token of the sign-in form (no session yet)
SESSION_IDLE_S = 30 * 60
SESSION_MAX_S = 8 * 3600
GRANT_S = 15 * 60                      # how long a stated purpose covers the original's link
MAX_SESSIONS = 10_000
MAX_FORM_BYTES = 8 * 1024
# No host, scheme or * in any fetch directive: everything is ours ('self').
CSP = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
UI_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
HEAD_BYTES = 256 * 1024                # enough of a faststart copy to find its sample descriptions


# --- sessions -------------------------------------------------------------------------------------

@dataclass
class UISession:
    caller: Any                        # worker.api.Caller: actor and role, never the token
    form_token: str
    created: float
    seen: float
    grants: dict[str, tuple[str, float]] = field(default_factory=dict)   # upload id -> (purpose, until)


class SessionStore:
    """Server-side sessions of this process, keyed by sha256 of the cookie's value."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, idle_s: float = SESSION_IDLE_S,
                 max_s: float = SESSION_MAX_S):
        self._clock, self._idle_s, self._max_s = clock, idle_s, max_s
        self._sessions: dict[str, UISession] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(session_id: str) -> str:
        return hashlib.sha256(session_id.encode()).hexdigest()

    def create(self, caller: Any) -> tuple[str, UISession]:
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        found = UISession(caller=caller, form_token=secrets.token_urlsafe(32), created=now, seen=now)
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                self._drop_expired(now)
            while len(self._sessions) >= MAX_SESSIONS:          # still full: the oldest goes
                del self._sessions[min(self._sessions, key=lambda k: self._sessions[k].created)]
            self._sessions[self._key(session_id)] = found
        return session_id, found

    def get(self, session_id: str | None) -> UISession | None:
        if not session_id or len(session_id) > 100:
            return None
        now = self._clock()
        key = self._key(session_id)
        with self._lock:
            found = self._sessions.get(key)
            if found is None:
                return None
            if now - found.seen > self._idle_s or now - found.created > self._max_s:
                del self._sessions[key]
                return None
            found.seen = now
            return found

    def revoke(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(self._key(session_id), None)

    def caller_of(self, request: Request) -> Any | None:
        found = self.get(request.cookies.get(COOKIE))
        return found.caller if found else None

    def grant(self, found: UISession, upload_id: str, purpose: str) -> None:
        found.grants[upload_id] = (purpose, self._clock() + GRANT_S)

    def purpose_for(self, found: UISession, upload_id: str) -> str | None:
        purpose, until = found.grants.get(upload_id, (None, 0.0))
        return purpose if self._clock() < until else None

    def _drop_expired(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items()
                    if now - s.seen > self._idle_s or now - s.created > self._max_s]:
            del self._sessions[key]


# --- headers on every /ui/ response ---------------------------------------------------------------

def is_ui_path(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


class UISecurityHeaders:
    """ASGI middleware: the CSP and friends on every /ui/ response (pages, redirects, errors, static
    files), and an error page of our own, with those headers, when a /ui/ view fails."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not is_ui_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {name for name, _ in UI_HEADERS}
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": headers + UI_HEADERS}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("an investigators' page failed")
            if started:
                raise
            response = render("error.html", status_code=500, title="Something went wrong")
            await response(scope, receive, send_with_headers)


# --- templates ------------------------------------------------------------------------------------

_templates = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(default=True),
                         trim_blocks=True, lstrip_blocks=True)


def render(name: str, *, status_code: int = 200, found: UISession | None = None, **context) -> HTMLResponse:
    signed_in = found is not None
    html = _templates.get_template(name).render(
        signed_in=signed_in, form_token=found.form_token if found else None,
        who=f"{found.caller.actor} ({found.caller.role})" if found else None, **context)
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})


def nothing_here(found: UISession) -> HTMLResponse:
    """The one page for "does not exist" and "not for you": the same bytes either way."""
    return render("nothing.html", status_code=404, found=found, title="Nothing here")


def to(path: str) -> RedirectResponse:
    """A redirect to one of our own paths: never built from the Host header."""
    return RedirectResponse(path, status_code=303, headers={"Cache-Control": "no-store"})


# --- what the pages show about one agency copy -----------------------------------------------------

@dataclass(frozen=True)
class MediaView:
    upload_id: str
    kind: str                  # photo | video | audio | file
    format: str
    media_type: str
    bytes: int
    size: str
    received: str
    href: str
    download_name: str
    page: str
    alt: str
    cannot_play: str | None    # why a browser will not play it, or None


KIND_OF_TOP_TYPE = {"image": "photo", "video": "video", "audio": "audio"}
EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/gif": ".gif",
              "video/mp4": ".mp4", "video/quicktime": ".mov", "video/3gpp": ".3gp", "video/3gpp2": ".3g2",
              "video/webm": ".webm", "video/x-matroska": ".mkv", "video/ogg": ".ogv", "audio/mp4": ".m4a",
              "audio/3gpp": ".3ga", "audio/mpeg": ".mp3", "audio/flac": ".flac", "audio/ogg": ".ogg",
              "audio/wav": ".wav", "audio/aiff": ".aiff", "audio/amr": ".amr"}
ISO_BMFF_TYPES = {"video/mp4", "video/quicktime", "video/3gpp", "video/3gpp2", "audio/mp4", "audio/3gpp"}
# What today's browsers cannot decode in software (checked against Debian's Chromium 156 for HEVC and
# Theora; AMR, H.263, MPEG-4 Part 2 and AIFF are not in any browser's media stack).
UNPLAYABLE_ENTRIES = {
    b"hvc1": "HEVC (H.265) video", b"hev1": "HEVC (H.265) video", b"mp4v": "MPEG-4 Part 2 video",
    b"s263": "H.263 video", b"h263": "H.263 video", b"samr": "AMR audio", b"sawb": "AMR-WB audio",
}
UNPLAYABLE_TYPES = {"video/ogg": "Theora video", "audio/amr": "AMR audio", "audio/aiff": "AIFF audio"}
_CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


def sample_entries(head: bytes) -> list[bytes]:
    """The sample-entry codes (avc1, hvc1, mp4a…) of every stsd in the first bytes of an ISO-BMFF file.

    Tolerant by design: a box that runs past ``head`` is cut at its end, since only the leading
    moov of a faststart copy is read. At most 2,000 boxes are looked at."""
    found: list[bytes] = []
    budget = [2000]

    def walk(lo: int, hi: int, depth: int) -> None:
        pos = lo
        while pos + 8 <= hi and budget[0] > 0 and depth < 8:
            budget[0] -= 1
            size, kind = int.from_bytes(head[pos:pos + 4], "big"), head[pos + 4:pos + 8]
            header = 8
            if size == 1 and pos + 16 <= hi:
                size, header = int.from_bytes(head[pos + 8:pos + 16], "big"), 16
            elif size == 0:
                size = hi - pos
            if size < header:
                return
            end = min(pos + size, hi)
            if kind in _CONTAINER_BOXES:
                walk(pos + header, end, depth + 1)
            elif kind == b"stsd":
                entry = pos + header + 8                       # version, flags, entry count
                while entry + 8 <= end and budget[0] > 0:
                    budget[0] -= 1
                    entry_size = int.from_bytes(head[entry:entry + 4], "big")
                    found.append(head[entry + 4:entry + 8])
                    if entry_size < 8:
                        break
                    entry += entry_size
            pos += size

    walk(0, len(head), 0)
    return found


def cannot_play(media_type: str, head: Callable[[], bytes]) -> str | None:
    """Why a browser will not play this copy, or None when it should (or we cannot tell: then the
    page's script still says so if the player fails). ``head`` reads the copy's first bytes."""
    if media_type in UNPLAYABLE_TYPES:
        return UNPLAYABLE_TYPES[media_type]
    if media_type in ISO_BMFF_TYPES:
        for code in sample_entries(head()):
            if code in UNPLAYABLE_ENTRIES:
                return UNPLAYABLE_ENTRIES[code]
    return None


def human_size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} bytes"


def when(moment: datetime | None) -> str:
    if moment is None:
        return "unknown"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# --- the pages ------------------------------------------------------------------------------------

def mount(app: FastAPI, *, services, sessions: SessionStore, sign_in: Callable[[str], Any | None],
          serve_variant: Callable[..., Response]) -> None:
    """Adds the /ui/ routes, their static files and their headers to the API's app.

    ``sign_in(token)`` is the API's own token lookup (a Caller or None); ``serve_variant`` is the
    API's decide-then-stream, so a file reaches a page exactly as it reaches an API client."""
    app.add_middleware(UISecurityHeaders)
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="ui-static")
    playability: dict[str, str | None] = {}        # sha256 of a copy -> cannot_play(...), bounded below

    def current(request: Request) -> tuple[str | None, UISession | None]:
        session_id = request.cookies.get(COOKIE)
        return session_id, sessions.get(session_id)

    async def form(request: Request) -> dict[str, str]:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return {}
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            return {}
        return {name: values[0] for name, values in fields.items()}

    def form_ok(found: UISession, fields: dict[str, str]) -> bool:
        return hmac.compare_digest(fields.get("form_token", ""), found.form_token)

    def view_of(stored, job: records.Job | None) -> MediaView:
        upload_id = stored.key.split("/")[1]
        media_type = stored.content_type
        kind = KIND_OF_TOP_TYPE.get(media_type.split("/")[0], "file")
        received = when(job.received_at if job else None)
        fmt = (job.format if job and job.format else media_type.split("/")[-1])
        reason = None
        if kind in ("video", "audio"):
            if stored.sha256 not in playability:
                if len(playability) > 10_000:
                    playability.clear()
                playability[stored.sha256] = cannot_play(media_type, lambda: _head(services, stored))
            reason = playability[stored.sha256]
        noun = {"photo": "Photo", "video": "Video", "audio": "Voice note or audio"}.get(kind, "File")
        return MediaView(upload_id=upload_id, kind=kind, format=fmt, media_type=media_type, bytes=stored.bytes,
                         size=human_size(stored.bytes), received=received, href=f"/uploads/{upload_id}/media",
                         download_name=f"{upload_id}{EXTENSIONS.get(media_type, '')}", page=f"/ui/uploads/{upload_id}",
                         alt=f"{noun} received {received} (upload {upload_id})", cannot_play=reason)

    def jobs_of(upload_ids: list[str]) -> dict[str, records.Job]:
        # display fields (kind, format, arrival) of uploads worker.access has already let through
        with services.sessions() as session:
            rows = session.scalars(select(records.Job).where(records.Job.upload_id.in_(upload_ids)))
            jobs = {job.upload_id: job for job in rows}
            for job in jobs.values():
                session.expunge(job)
        return jobs

    @app.get("/ui", include_in_schema=False)
    def ui_bare() -> Response:
        return to("/ui/")

    @app.get("/ui/", include_in_schema=False)
    def sign_in_page(request: Request) -> Response:
        _, found = current(request)
        if found:
            return to("/ui/search")
        return _sign_in_form(request)

    @app.post("/ui/", include_in_schema=False)
    async def sign_in_submit(request: Request) -> Response:
        fields = await form(request)
        expected = request.cookies.get(SIGN_IN_COOKIE, "")
        if not expected or not hmac.compare_digest(fields.get("signin_token", ""), expected):
            return _sign_in_form(request, error="The form had expired. Please enter your token again.",
                                 status_code=400)
        token = fields.get("token", "").strip()
        caller = sign_in(token) if token else None
        if caller is None:
            return _sign_in_form(request, error="That token was not accepted.", status_code=401)
        old_id = request.cookies.get(COOKIE)
        sessions.revoke(old_id)
        session_id, _ = sessions.create(caller)
        response = to("/ui/search")
        response.set_cookie(COOKIE, session_id, max_age=int(SESSION_MAX_S), path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        response.delete_cookie(SIGN_IN_COOKIE, path="/ui/", httponly=True, samesite="strict")
        return response

    def _sign_in_form(request: Request, *, error: str | None = None, status_code: int = 200) -> Response:
        signin_token = secrets.token_urlsafe(24)
        response = render("signin.html", status_code=status_code, title="Sign in", error=error,
                          signin_token=signin_token)
        response.set_cookie(SIGN_IN_COOKIE, signin_token, max_age=3600, path="/ui/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.post("/ui/sign-out", include_in_schema=False)
    async def sign_out(request: Request) -> Response:
        session_id, found = current(request)
        if found and form_ok(found, await form(request)):
            sessions.revoke(session_id)
        elif found:
            return render("error.html", status_code=400, found=found, title="Please try again",
                          message="That form had expired. Reload the page and sign out again.")
        response = to("/ui/")
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        return response

    @app.get("/ui/search", include_in_schema=False)
    def search(request: Request) -> Response:
        _, found = current(request)
        if not found:
            return to("/ui/")
        return render("search.html", found=found, title="Find a complaint")

    @app.get("/ui/complaints", include_in_schema=False)
    def search_submit(request: Request, complaint_id: str = "") -> Response:
        _, found = current(request)
        if not found:
            return to("/ui/")
        complaint_id = complaint_id.strip()
        if not complaint_id:
            return to("/ui/search")
        return to(f"/ui/complaints/{quote(complaint_id[:200], safe='')}")

    @app.get("/ui/complaints/{complaint_id}", include_in_schema=False)
    def complaint(request: Request, complaint_id: str) -> Response:
        _, found = current(request)
        if not found:
            return to("/ui/")
        who = found.caller
        try:
            with services.sessions() as session:
                entries = access.list_agency_media(session=session, complaint_id=complaint_id, role=who.role,
                                                   actor=who.actor)
                stored = {e.upload_id: access.authorize_variant(session=session, upload_id=e.upload_id,
                                                                role=who.role, actor=who.actor, purpose=None,
                                                                original=False) for e in entries}
        except access.AccessDenied:
            return nothing_here(found)
        jobs = jobs_of(list(stored))
        views = [view_of(stored[e.upload_id], jobs.get(e.upload_id)) for e in entries]
        views.sort(key=lambda v: (jobs[v.upload_id].received_at if v.upload_id in jobs else datetime.min.replace(
            tzinfo=timezone.utc), v.upload_id), reverse=True)
        return render("complaint.html", found=found, title=f"Complaint {complaint_id}", complaint_id=complaint_id,
                      media=views)

    def one_upload(found: UISession, upload_id: str) -> tuple[Any, records.Job | None] | None:
        who = found.caller
        try:
            with services.sessions() as session:
                stored = access.authorize_variant(session=session, upload_id=upload_id, role=who.role,
                                                  actor=who.actor, purpose=None, original=False)
        except access.AccessDenied:
            return None
        return stored, jobs_of([upload_id]).get(upload_id)

    @app.get("/ui/uploads/{upload_id}", include_in_schema=False)
    def upload(request: Request, upload_id: str) -> Response:
        _, found = current(request)
        if not found:
            return to("/ui/")
        got = one_upload(found, upload_id)
        if got is None:
            return nothing_here(found)
        stored, job = got
        return render("upload.html", found=found, title=f"Upload {upload_id}", item=view_of(stored, job),
                      complaint_id=job.complaint_id if job else None,
                      may_read_restricted=found.caller.role.may_read_restricted)

    def refuse_restricted(found: UISession, upload_id: str, action: str) -> Response | None:
        """An agency role asking for a location or an original: the access module refuses (and audits
        it) exactly as for the API, and the page is the one for things that do not exist."""
        who = found.caller
        if who.role.may_read_restricted:
            return None
        try:
            with services.sessions() as session:
                if action == "location":
                    access.read_location(session=session, upload_id=upload_id, role=who.role, actor=who.actor,
                                         purpose=None)
                else:
                    access.authorize_variant(session=session, upload_id=upload_id, role=who.role, actor=who.actor,
                                             purpose=None, original=True)
        except access.AccessDenied:
            return nothing_here(found)
        raise AssertionError("worker.access let a role without restricted access read restricted data")

    def restricted_page(request: Request, upload_id: str, action: str) -> tuple[UISession | None, Response | None]:
        """The signed-in session of a page of restricted data, or the response that ends the request
        (sign-in, or the same "nothing here" page for a role without restricted access or a bad id)."""
        _, found = current(request)
        if not found:
            return None, to("/ui/")
        refused = refuse_restricted(found, upload_id, action)
        if refused:
            return found, refused
        if not access.ID_RE.fullmatch(upload_id):
            return found, nothing_here(found)
        return found, None

    @app.get("/ui/uploads/{upload_id}/location", include_in_schema=False)
    def purpose_page(request: Request, upload_id: str) -> Response:
        found, ended = restricted_page(request, upload_id, "location")
        if ended:
            return ended
        return render("purpose.html", found=found, title=f"Why do you need upload {upload_id}'s location?",
                      upload_id=upload_id, error=None)

    @app.post("/ui/uploads/{upload_id}/location", include_in_schema=False)
    async def location(request: Request, upload_id: str) -> Response:
        _, found = current(request)
        if not found:
            return to("/ui/")
        fields = await form(request)
        if not form_ok(found, fields):
            return render("error.html", status_code=400, found=found, title="Please try again",
                          message="That form had expired. Go back, reload the page and state the purpose again.")
        refused = refuse_restricted(found, upload_id, "location")
        if refused:
            return refused
        who, purpose = found.caller, fields.get("purpose", "")
        try:
            with services.sessions() as session:
                record = access.read_location(session=session, upload_id=upload_id, role=who.role, actor=who.actor,
                                              purpose=purpose)
        except access.PurposeRequired:
            return render("purpose.html", status_code=400, found=found,
                          title=f"Why do you need upload {upload_id}'s location?", upload_id=upload_id,
                          error="State the purpose of this read: it is recorded in the audit trail.")
        except access.AccessDenied:
            return nothing_here(found)
        sessions.grant(found, upload_id, purpose)
        return render("location.html", found=found, title=f"Location of upload {upload_id}", upload_id=upload_id,
                      record=record, purpose=purpose)

    @app.get("/ui/uploads/{upload_id}/original", include_in_schema=False)
    def original(request: Request, upload_id: str) -> Response:
        found, ended = restricted_page(request, upload_id, "original")
        if ended:
            return ended
        purpose = sessions.purpose_for(found, upload_id)
        if purpose is None:
            return to(f"/ui/uploads/{upload_id}/location")
        try:
            return serve_variant(services, found.caller, upload_id, original=True, purpose=purpose,
                                 range_header=request.headers.get("range"), filename=f"{upload_id}-original")
        except access.AccessDenied:
            return nothing_here(found)

    @app.api_route("/ui/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
    def anything_else(request: Request, rest: str) -> Response:
        _, found = current(request)
        if not found:
            return to("/ui/")
        return nothing_here(found)


def _head(services, stored) -> bytes:
    end = min(stored.bytes, HEAD_BYTES) - 1
    if end < 0:
        return b""
    try:
        return b"".join(services.store.iter_bytes(stored.key, start=0, end=end))
    except (KeyError, StorageError, OSError) as e:
        # only a hint for the page: the player itself (and its script) still finds out
        log.warning("could not read the head of %s: %s", stored.key, e)
        return b""
