"""One Settings object: environment variables prefixed MEDIASAN_, and an optional .env file.

With nothing set, everything lives under one data folder: a filesystem broker, SQLite, a local store.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.formats.base import Limits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDIASAN_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path(".mediasan"), description="the one folder the embedded default lives in")
    broker_url: str | None = None          # default: filesystem:// under data_dir
    database_url: str | None = None        # default: sqlite under data_dir
    storage_url: str | None = None         # default: file:// under data_dir

    # limits
    max_bytes: int = 2 * 1024**3
    max_pixels: int = 120_000_000
    max_frames: int = 2_000
    max_duration_s: float = 3 * 3600.0
    max_streams: int = 16
    tool_timeout_s: float = 300.0
    tool_memory_bytes: int = 2 * 1024**3

    def limits(self) -> Limits:
        return Limits(max_bytes=self.max_bytes, max_pixels=self.max_pixels, max_frames=self.max_frames,
                      max_duration_s=self.max_duration_s, max_streams=self.max_streams,
                      timeout_s=self.tool_timeout_s, memory_bytes=self.tool_memory_bytes)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
