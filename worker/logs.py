"""Log lines of every mediasan process: text, or one JSON object a line (``MEDIASAN_LOG_FORMAT=json``).

A JSON line always has ``ts`` (UTC, ISO 8601), ``level``, ``event`` (a stable name such as
``task_received`` or ``upload_finished``; ``log`` for a line without one), ``logger`` and ``message``;
``upload_id`` and ``task_id`` wherever they are known, and the fields of the event (``state``,
``kind``, ``format``, ``seconds``, ``error_code`` of a finished upload; ``method``, ``path``,
``status`` of an HTTP request).

Celery's own lines name a task id, not an upload: the worker remembers which upload each task id
carries (worker.observe) and ``UploadFilter`` attaches it. ``RedactFilter`` is the last line of
defence of policy principle 5: whatever a message or a traceback holds, coordinates, bearer tokens,
Authorization headers and credentials in URLs are replaced before the line is written.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import os
import re
import sys
import traceback
from collections import OrderedDict

current_upload: contextvars.ContextVar[str | None] = contextvars.ContextVar("mediasan_upload", default=None)

_TASK_UPLOADS: OrderedDict[str, str] = OrderedDict()
_TASK_UPLOADS_MAX = 10_000          # a worker holds a handful at a time; the bound only stops a leak
# Patterns are compiled on first use (re caches them), not at import: a one-file `mediasan
# sanitize` that logs nothing should not pay for them.
_TASK_ID_IN_TEXT = r"\[([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\]"
REDACTED = "[redacted]"
_UPLOAD_IN_PATH = r"^/(?:ui/)?uploads/([A-Za-z0-9_-]{1,64})(?:/|$)"


# --- which upload a line is about ------------------------------------------------------------------

def remember_task(task_id: str | None, upload_id: str | None) -> None:
    if task_id and upload_id:
        _TASK_UPLOADS[task_id] = upload_id
        _TASK_UPLOADS.move_to_end(task_id)
        while len(_TASK_UPLOADS) > _TASK_UPLOADS_MAX:
            _TASK_UPLOADS.popitem(last=False)


def forget_task(task_id: str | None) -> None:
    _TASK_UPLOADS.pop(task_id, None)


def upload_for_task(task_id: str | None) -> str | None:
    return _TASK_UPLOADS.get(task_id) if task_id else None


@contextlib.contextmanager
def upload_context(upload_id: str | None):
    """Every line logged inside names this upload."""
    token = current_upload.set(upload_id)
    try:
        yield
    finally:
        current_upload.reset(token)


def _celery_events() -> dict[str, str]:
    from celery.app import trace
    return {trace.LOG_RECEIVED.strip(): "task_received", trace.LOG_SUCCESS.strip(): "task_succeeded",
            trace.LOG_FAILURE.strip(): "task_failed", trace.LOG_RETRY.strip(): "task_retried",
            trace.LOG_REJECTED.strip(): "task_rejected", trace.LOG_IGNORED.strip(): "task_ignored",
            "Task handler raised error: %r": "task_handler_error"}


class UploadFilter(logging.Filter):
    """Adds ``event``, ``task_id`` and ``upload_id`` to a record that does not carry them yet."""

    def __init__(self) -> None:
        super().__init__()
        self._events: dict[str, str] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)     # Celery passes its format arguments here
        task_id = getattr(record, "task_id", None) or (data.get("id") if isinstance(data, dict) else None)
        if task_id is None and isinstance(record.msg, str) and "[" in record.msg:
            found = re.search(_TASK_ID_IN_TEXT, record.msg)
            task_id = found.group(1) if found else None
        record.task_id = task_id
        if getattr(record, "upload_id", None) is None:
            record.upload_id = current_upload.get() or upload_for_task(task_id)
        if getattr(record, "event", None) is None:
            if self._events is None and record.name.startswith("celery"):
                self._events = _celery_events()
            record.event = (self._events or {}).get(record.msg.strip() if isinstance(record.msg, str) else "", "log")
        return True


# --- what a line must never hold ---------------------------------------------------------------------

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_REDACTION_RULES: list[tuple[str, str]] = [
    # credentials
    (r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+", r"\1 " + REDACTED),
    (r"(?i)(authorization|x-api-key|cookie)(['\"]?\s*[:=,]\s*['\"]?)[^'\"\s,;}]+", r"\1\2" + REDACTED),
    (r"(?i)((?:access_|api_|session_|auth_)?token|password|passwd|secret|signature|credential|"
     r"x-amz-[a-z-]+)(['\"]?\s*[:=]\s*['\"]?)[^'\"\s&,;}]+", r"\1\2" + REDACTED),
    (r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s'\"]*):[^@/\s'\"]+@", r"\1:" + REDACTED + "@"),
    # coordinates: named values, ISO 6709 strings, pairs of decimal degrees, DMS, EXIF rationals
    # ISO 6709 as phones write it (+40.7128-074.0060+010.000/); decimals required, so that ids such as
    # a task id's "-1234-5678" are left alone
    (r"[-+]\d{2,6}\.\d+[-+]\d{3,7}\.\d+(?:[-+]\d+(?:\.\d+)?)?(?:CRS[A-Za-z0-9_]*)?/?", REDACTED),
    # degrees-minutes-seconds and EXIF rationals, before a key could take their first number
    (r"\d{1,3}\s*(?:°|deg)\s*\d{1,2}\s*['′]\s*(?:\d{1,2}(?:\.\d+)?\s*(?:\"|″|'')?)?\s*[NSEW]?", REDACTED),
    (r"\(\(\d+,\s*\d+\),\s*\(\d+,\s*\d+\),\s*\(\d+,\s*\d+\)\)", REDACTED),
    (r"\b\d+/\d+,\s*\d+/\d+,\s*\d+/\d+\b", REDACTED),
    (r"(?i)\b(gps[a-z]*|lat(?:itude)?|lon(?:gitude)?|lng|alt(?:itude)?|coord(?:inate)?s?|location|"
     r"iso6709|xyz)(['\"]?\s*[:=\s]\s*['\"]?\(?)" + _NUMBER + r"(?:\s*,\s*" + _NUMBER + r")*",
     r"\1\2" + REDACTED),
    (r"[-+]?\d{1,3}\.\d{3,}\s*[,;/ ]\s*[-+]?\d{1,3}\.\d{3,}", REDACTED),
    # any lone decimal degree as devices write them (5+ places); a duration such as "0.52847s" is spared
    (r"(?<![\w.])[-+]?\d{1,3}\.\d{5,}(?![\d.]|s\b)", REDACTED),
]


@functools.cache
def _redactions() -> list[tuple[re.Pattern, str]]:
    return [(re.compile(pattern), replacement) for pattern, replacement in _REDACTION_RULES]


def redact(text: str) -> str:
    for pattern, replacement in _redactions():
        text = pattern.sub(replacement, text)
    return text


class RedactFilter(logging.Filter):
    """Renders the message (and traceback) once and replaces what must not be written."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "redacted", False):
            return True
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _, status = record.args
            record.fields = {**getattr(record, "fields", {}), "method": method, "path": redact(str(path)),
                             "status": status}
            record.event = "http_request"
            named = re.match(_UPLOAD_IN_PATH, str(path))
            if named and getattr(record, "upload_id", None) is None:
                record.upload_id = named.group(1)
        try:
            message = record.getMessage()
        except Exception:   # a bad format string must not lose the line
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        fields = getattr(record, "fields", None)
        if fields:
            record.fields = {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        record.redacted = True
        return True


# --- formats ---------------------------------------------------------------------------------------

class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        from datetime import datetime, timezone   # here, not at import: a text-logging command never needs it

        line = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or "log",
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for name in ("upload_id", "task_id"):
            if getattr(record, name, None):
                line[name] = getattr(record, name)
        for name, value in (getattr(record, "fields", None) or {}).items():
            line.setdefault(name, value)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str, ensure_ascii=False)


TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"   # Celery's own


def configure(log_format: str, level: str | int = "INFO", stream=None) -> None:
    """The root logger's one handler: everything (Celery, uvicorn, ours) goes through the filters."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(UploadFilter())
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler._mediasan = True   # replaced, never stacked, when configure runs again
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, "_mediasan", False)] + [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)   # warnings.warn lines are log lines too (py.warnings), not raw stderr
    # billiard (the prefork pool) logs "Process … exited with …" on its own logger, which does not propagate
    pool_logger = logging.getLogger("multiprocessing")
    pool_logger.handlers = [h for h in pool_logger.handlers if not getattr(h, "_mediasan", False)] + [handler]
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's loggers write through the root handler when it is given no log config of its own
        logging.getLogger(name).handlers, logging.getLogger(name).propagate = [], True


def configure_from_settings(level: str | int = "WARNING") -> None:
    from worker.settings import get_settings
    configure(get_settings().log_format, level)


def configure_for_cli() -> None:
    # a typer callback: runs before every command; `worker` and `serve` raise the level to INFO
    configure_from_settings("WARNING")


def say_json(message: str, stream=None) -> None:
    """A console line written from a signal handler, where logging's locks must not be taken: one
    JSON line, written with a single os.write."""
    # a worker (the only caller) has long imported datetime (Celery does): this takes no import lock
    from datetime import datetime, timezone

    line = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": "warning", "event": "worker_console", "logger": "celery.apps.worker",
            "message": redact(str(message).strip()), "pid": os.getpid()}
    with contextlib.suppress(OSError, ValueError):
        os.write((stream or sys.__stderr__).fileno(), (json.dumps(line) + "\n").encode())


def log_event(logger: logging.Logger, event: str, message: str, *args, level: int = logging.INFO,
              upload_id: str | None = None, **fields) -> None:
    """One line with a stable event name and its fields (the JSON format shows them as keys)."""
    extra = {"event": event, "fields": fields}
    if upload_id is not None:
        extra["upload_id"] = upload_id
    logger.log(level, message, *args, extra=extra)
