"""One root error for everything that stops an upload, typed by cause through a stable code.

The code is what the job row, the CLI's JSON report and the logs carry; the message is for people.
Input problems are `rejected` (retrying cannot help); problems of ours are `failed`.
"""
from __future__ import annotations

# code -> the job state it ends in
REJECTING_CODES = frozenset({
    "unsupported_format",  # not on DESIGN.md's list, or not recognised at all
    "empty",               # zero bytes
    "truncated",           # the container ends before its structure does
    "corrupt",             # structure present but inconsistent or undecodable
    "too_large",           # over a byte, pixel, frame, duration or stream limit
    "timeout",             # parsing or a decoder ran past its time limit
})
FAILING_CODES = frozenset({
    "verify_failed",       # the rebuilt copy still holds something it must not: never published
    "tool_failed",         # ffmpeg or another decoder crashed or refused for a reason not the input's
    "internal",            # a bug of ours
})


class SanitizeError(Exception):
    """An upload cannot be sanitized. `code` is stable and machine-readable."""

    def __init__(self, code: str, message: str):
        if code not in REJECTING_CODES | FAILING_CODES:
            raise ValueError(f"unknown SanitizeError code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> str:
        """The report status / final job state this error leads to."""
        return "rejected" if self.code in REJECTING_CODES else "failed"

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def unsupported(message: str) -> SanitizeError:
    return SanitizeError("unsupported_format", message)


def truncated(message: str) -> SanitizeError:
    return SanitizeError("truncated", message)


def corrupt(message: str) -> SanitizeError:
    return SanitizeError("corrupt", message)


def too_large(message: str) -> SanitizeError:
    return SanitizeError("too_large", message)


def verify_failed(message: str) -> SanitizeError:
    return SanitizeError("verify_failed", message)
