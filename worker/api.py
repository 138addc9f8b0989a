"""The investigators' read-only HTTP API (`mediasan serve`). Views only call worker.access and stream.

Authentication: `Authorization: Bearer <token>`. The settings hold no tokens, only their sha256 hex
digests, each mapped to `actor=role` (`api_tokens`, e.g. MEDIASAN_API_TOKENS='{"<sha256 hex>":
"j.doe=agency:DSNY"}'). Tokens must be random and long (`mediasan api-token` makes one), which is
why an unsalted digest suffices. The `service` role is not accepted over HTTP.

Anything the caller may not see gets the same 404 body whether or not it exists; worker.access has
already audited the refusal. No route writes. `/ui/` (worker/ui.py) is the same rules as web pages
for people; `/uploads/{id}/media` also accepts its session cookie, so the pages can show the media.

No route builds a URL from the Host header (no trailing-slash redirects), and there is no /docs or
/redoc: their pages load scripts from a CDN. /openapi.json stays.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Callable

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from worker import __version__, access, api_ops, records, ui
from worker.services import Services, build_services
from worker.settings import Settings
from worker.storage import StoredObject

log = logging.getLogger(__name__)

NOT_FOUND = {"detail": "not found"}
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
# a byte position longer than this is past any object we hold (and int() of 5000 digits raises)
_MAX_POSITION_DIGITS = 18


@dataclass(frozen=True)
class Caller:
    actor: str
    role: access.Role


class Unauthenticated(Exception):
    pass


class UnsatisfiableRange(Exception):
    def __init__(self, size: int):
        self.size = size


class MalformedRange(Exception):
    """A `bytes=` Range the client should not have sent (first > last, no digits, junk): 400."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_token_table(table: dict[str, str]) -> dict[str, Caller]:
    """{sha256 hex: "actor=role"} → {digest: Caller}. A malformed entry stops the server from starting."""
    callers = {}
    for digest, entry in table.items():
        actor, sep, role_text = entry.rpartition("=")
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not sep or not actor:
            raise ValueError(f"api_tokens entries must be '<sha256 hex>': 'actor=role', got {entry!r}")
        role = access.parse_role(role_text)
        if role.kind == "service":
            raise ValueError("the service role is for the worker, not for API tokens")
        callers[digest] = Caller(actor=actor, role=role)
    return callers


# --- response models (they make the OpenAPI document) ----------------------------------------------

class MediaItem(BaseModel):
    upload_id: str
    complaint_id: str
    media_type: str
    bytes: int
    sha256: str
    href: str


class MediaList(BaseModel):
    complaint_id: str
    media: list[MediaItem]


class Location(BaseModel):
    lat: float | None
    lon: float | None
    alt: float | None
    accuracy: float | None
    captured_at: str | None
    source: str | None
    retain_until: str


class LocationResponse(BaseModel):
    upload_id: str
    location: Location | None


class Problem(BaseModel):
    detail: str


STREAM_RESPONSES = {
    200: {"content": {"application/octet-stream": {}}, "description": "the whole file"},
    206: {"content": {"application/octet-stream": {}}, "description": "the requested byte range"},
    401: {"model": Problem}, 404: {"model": Problem}, 416: {"model": Problem},
}


# --- the app -------------------------------------------------------------------------------------

def create_app(settings: Settings, *, services: Services | None = None) -> FastAPI:
    services = services or api_ops.LazyServices(settings)   # the server starts even when the database is down
    callers = parse_token_table(getattr(settings, "api_tokens", None) or {})
    bearer = HTTPBearer(auto_error=False, description="a token listed (as its sha256) in api_tokens")

    app = FastAPI(title="mediasan investigators' API", version=__version__, docs_url=None, redoc_url=None,
                  redirect_slashes=False,
                  description="Read-only access to 311 media: agency copies for agencies, originals and "
                              "locations for restricted readers with a stated purpose. Every restricted "
                              "read and every refusal is audited.")
    api_ops.install(app, settings, services)   # /healthz, /readyz, /metrics and the request counter

    sessions = ui.SessionStore()

    def caller(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthenticated()
        found = callers.get(token_digest(credentials.credentials))
        if found is None:
            raise Unauthenticated()
        return found

    def media_caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
        """The bearer token, or else the investigators' pages' session cookie (the same actor and role)."""
        if credentials is not None:
            return caller(credentials)
        found = sessions.caller_of(request)
        if found is None:
            raise Unauthenticated()
        return found

    @app.exception_handler(Unauthenticated)
    def _unauthenticated(request: Request, exc: Unauthenticated) -> JSONResponse:
        return JSONResponse({"detail": "a valid bearer token is required"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(access.PurposeRequired)
    def _purpose_required(request: Request, exc: access.PurposeRequired) -> JSONResponse:
        return JSONResponse({"detail": "state the purpose of this read in the X-Purpose header"}, status_code=400)

    @app.exception_handler(access.AccessDenied)
    def _denied(request: Request, exc: access.AccessDenied) -> JSONResponse:
        return JSONResponse(NOT_FOUND, status_code=404)

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # the router's own 404 (e.g. a path trick that matches no route) looks like every other 404
        body = NOT_FOUND if exc.status_code == 404 else {"detail": exc.detail}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(MalformedRange)
    def _bad_range(request: Request, exc: MalformedRange) -> JSONResponse:
        return JSONResponse({"detail": "malformed Range header"}, status_code=400)

    @app.exception_handler(UnsatisfiableRange)
    def _range(request: Request, exc: UnsatisfiableRange) -> JSONResponse:
        return JSONResponse({"detail": "range not satisfiable"}, status_code=416,
                            headers={"Content-Range": f"bytes */{exc.size}"})

    @app.get("/uploads/{upload_id}/media", responses=STREAM_RESPONSES, response_class=Response,
             summary="The upload's agency copy (metadata removed); Range requests supported")
    def get_media(upload_id: str, who: Caller = Depends(media_caller),
                  range_: str | None = Header(default=None, alias="Range")) -> Response:
        return serve_variant(services, who, upload_id, original=False, purpose=None, range_header=range_)

    @app.get("/uploads/{upload_id}/original", responses={**STREAM_RESPONSES, 400: {"model": Problem}},
             response_class=Response, summary="The bit-exact original: role restricted, X-Purpose required")
    def get_original(upload_id: str, who: Caller = Depends(caller),
                     x_purpose: str | None = Header(default=None, description="why this read is needed"),
                     range_: str | None = Header(default=None, alias="Range")) -> Response:
        return serve_variant(services, who, upload_id, original=True, purpose=x_purpose, range_header=range_)

    @app.get("/uploads/{upload_id}/location", response_model=LocationResponse,
             responses={400: {"model": Problem}, 401: {"model": Problem}, 404: {"model": Problem}},
             summary="Where and when the media was made: role restricted, X-Purpose required")
    def get_location(upload_id: str, response: Response, who: Caller = Depends(caller),
                     x_purpose: str | None = Header(default=None, description="why this read is needed")):
        with services.sessions() as session:
            found = access.read_location(session=session, upload_id=upload_id, role=who.role, actor=who.actor,
                                         purpose=x_purpose)
        response.headers["Cache-Control"] = "no-store"
        if found is None:
            return LocationResponse(upload_id=upload_id, location=None)
        fields = asdict(found)
        fields["retain_until"] = found.retain_until.isoformat()
        for name in ("upload_id", "complaint_id"):
            fields.pop(name)
        return LocationResponse(upload_id=upload_id, location=Location(**fields))

    @app.get("/complaints/{complaint_id}/media", response_model=MediaList,
             responses={401: {"model": Problem}, 404: {"model": Problem}},
             summary="The complaint's agency copies this caller may see")
    def list_media(complaint_id: str, who: Caller = Depends(caller)) -> MediaList:
        with services.sessions() as session:
            entries = access.list_agency_media(session=session, complaint_id=complaint_id, role=who.role,
                                               actor=who.actor)
        return MediaList(complaint_id=complaint_id, media=[
            MediaItem(**asdict(e), href=f"/uploads/{e.upload_id}/media") for e in entries])

    ui.mount(app, services=services, sessions=sessions, sign_in=lambda token: callers.get(token_digest(token)),
             serve_variant=serve_variant)
    return app


def serve_variant(services: Services, who: Caller, upload_id: str, *, original: bool, purpose: str | None,
                  range_header: str | None, filename: str | None = None) -> Response:
    """Decide (worker.access), then stream. A malformed Range is refused before the decision, so it
    leaves no audit row; an original whose bytes are then not sent (range past the end, object lost
    from the store) gets a second row saying so, so the trail never shows a read that did not happen."""
    spec = range_spec(range_header)
    with services.sessions() as session:
        stored = access.authorize_variant(session=session, upload_id=upload_id, role=who.role, actor=who.actor,
                                          purpose=purpose, original=original)
    unsent = _record_unsent(services, who, upload_id, purpose) if original else None
    if filename:
        filename += PurePosixPath(stored.key).suffix
    return _stream(services, stored, spec, cache="no-store" if original else "private", unsent=unsent,
                   filename=filename)


def _record_unsent(services: Services, who: Caller, upload_id: str, purpose: str | None) -> Callable[[str], None]:
    def record(reason: str) -> None:
        with services.sessions() as session:
            job = session.get(records.Job, upload_id)
            records.record_audit(session, actor=who.actor[:128], role=str(who.role), action=access.ACTION_ORIGINAL,
                                 outcome="failed", upload_id=upload_id, complaint_id=job.complaint_id if job else None,
                                 # cleaned as worker.access cleaned it in the "allowed" row this one follows
                                 purpose=access._clean_purpose(purpose), detail=f"nothing sent: {reason}")
            session.commit()
    return record


def _stream(services: Services, stored: StoredObject, spec: tuple[int | None, int | None] | None, *, cache: str,
            unsent: Callable[[str], None] | None = None, filename: str | None = None) -> Response:
    """A streamed body from the store, whole or one byte range; memory stays at one chunk."""
    size = stored.bytes
    disposition = f'attachment; filename="{filename}"' if filename else "attachment"
    headers = {"ETag": f'"{stored.sha256}"', "Accept-Ranges": "bytes", "Cache-Control": cache,
               "X-Content-Type-Options": "nosniff", "Content-Disposition": disposition}
    try:
        span = resolve_range(spec, size)
    except UnsatisfiableRange:
        if unsent:
            unsent("range not satisfiable")
        raise
    start, end = span if span else (0, size - 1)
    try:
        chunks = services.store.iter_bytes(stored.key, start=start, end=end) if size else iter(())
    except KeyError:
        # the database lists it but the store has lost it: an operator problem, not the caller's
        log.error("stored object %s is missing", stored.key)
        if unsent:
            unsent("the stored object is missing")
        return JSONResponse({"detail": "temporarily unavailable"}, status_code=503, headers={"Retry-After": "60"})
    headers["Content-Length"] = str(end - start + 1 if size else 0)
    if span:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(chunks, status_code=206 if span else 200, media_type=stored.content_type,
                             headers=headers)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One `bytes=` range, clipped to the file (RFC 9110 14.1.2). None: serve the whole file (no header,
    several ranges or another unit, which a server may ignore). Raises MalformedRange (400) and
    UnsatisfiableRange (416)."""
    return resolve_range(range_spec(header), size)


def range_spec(header: str | None) -> tuple[int | None, int | None] | None:
    """(first, last) of a single `bytes=` range, either possibly None; None to ignore the header.
    Positions too long to be any object's are capped, not converted (int() refuses 5000 digits)."""
    if not header:
        return None
    text = header.strip()
    if not text.lower().startswith("bytes=") or "," in text:
        return None                      # another unit, or several ranges: a server may ignore it
    match = _RANGE_RE.fullmatch(text)
    if not match or match.group(1) == match.group(2) == "":
        raise MalformedRange()
    first, last = (_position(g) for g in match.groups())
    if first is not None and last is not None and last < first:
        raise MalformedRange()
    return first, last


def _position(digits: str) -> int | None:
    if digits == "":
        return None
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_POSITION_DIGITS else 10 ** _MAX_POSITION_DIGITS


def resolve_range(spec: tuple[int | None, int | None] | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte span of ``spec`` in an object of ``size`` bytes; raises UnsatisfiableRange."""
    if spec is None:
        return None
    first, last = spec
    if first is None:                    # suffix: the last N bytes
        if last == 0 or size == 0:
            raise UnsatisfiableRange(size)
        return max(size - last, 0), size - 1
    if first >= size:
        raise UnsatisfiableRange(size)
    return first, size - 1 if last is None else min(last, size - 1)
