"""The task message the upload API sends: its schema is the contract with producers in any language.

Celery task ``tasks.sanitize_upload``, serializer JSON, keyword arguments only (``kwargs`` in the
message body). ``python -m worker.messages`` prints the JSON Schema.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class UploadMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    upload_id: str = Field(pattern=ID_PATTERN, description="idempotency key; names the stored objects")
    complaint_id: str = Field(pattern=ID_PATTERN)
    channel: Literal["mobile_app", "311_online", "social"]
    source_key: str = Field(pattern=r"^incoming/[A-Za-z0-9_-]{1,64}/[A-Za-z0-9._-]{1,64}$",
                            description="object in the incoming store")
    filename: str | None = Field(default=None, max_length=255, description="as the client sent it: untrusted")
    content_type: str | None = Field(default=None, max_length=127, description="as the client sent it: untrusted")
    agency: str | None = Field(default=None, pattern=r"^[A-Z0-9_]{1,32}$", description="routing code, e.g. DSNY")
    received_at: datetime = Field(description="ISO 8601; a time without offset is taken as UTC")

    @field_validator("received_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

    def as_kwargs(self) -> dict:
        return self.model_dump(mode="json")


if __name__ == "__main__":
    print(json.dumps(UploadMessage.model_json_schema(), indent=2))
