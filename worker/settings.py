"""One Settings object: environment variables prefixed MEDIASAN_, and an optional .env file.

With nothing set, everything lives under one data folder: a filesystem broker, SQLite, a local store.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.budget import DEFAULT_FILE_TIMEOUT_S, DEFAULT_PROCESS_MEMORY_BYTES
from worker.formats.base import Limits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDIASAN_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path(".mediasan"), description="the one folder the embedded default lives in")
    broker_url: str | None = None          # default: filesystem:// under data_dir
    database_url: str | None = None        # default: sqlite under data_dir
    storage_url: str | None = None         # default: file:// under data_dir
    queue: str = "mediasan"                # the broker queue producers send tasks.sanitize_upload to

    # limits
    max_bytes: int = 2 * 1024**3
    max_pixels: int = 120_000_000
    max_frames: int = 2_000
    max_duration_s: float = 3 * 3600.0
    max_streams: int = 16
    tool_timeout_s: float = 300.0
    tool_memory_bytes: int = 2 * 1024**3
    # budgets of the sanitizing process itself (worker/budget.py): wall time for one file, and the
    # memory bound (RLIMIT_DATA) of `mediasan sanitize` and of each worker pool child; 0 turns one off
    file_timeout_s: float = DEFAULT_FILE_TIMEOUT_S
    process_memory_bytes: int = DEFAULT_PROCESS_MEMORY_BYTES

    # retention (policy principle 4): originals and locations carry retain_until; a purge deletes them
    retain_original_days: int = 365
    retain_audio_original_days: int = 14     # voice notes: policy 4.3
    retain_location_days: int = 365
    purge_interval_s: int = 24 * 3600         # how often beat runs tasks.purge

    # reliability
    lease_s: int = 30 * 60                   # a claim lasts longer than the hard time limit
    task_soft_time_limit_s: int = 15 * 60
    task_time_limit_s: int = 20 * 60
    task_max_retries: int = 5
    worker_max_tasks_per_child: int = 200
    sweep_interval_s: int = 60
    stale_received_s: int = 10 * 60         # a received job untouched this long may have lost its message
    # reconnection attempts after a broker loss (pauses grow 2 s, 4 s, … to 30 s: 100 is about 45 min),
    # then the worker exits non-zero for its supervisor to restart; -1 retries for ever
    broker_connection_max_retries: int = 100
    # work files (worker/workdir.py): one folder a process under here, never the system temp folder
    work_dir: Path | None = None            # default: {data_dir}/work
    sweep_queue: str | None = None          # default: "{queue}.sweep": tasks.sweep and tasks.purge, off the work queue

    # investigators' API (worker/api.py): sha256 hex of each bearer token -> "actor=role",
    # e.g. MEDIASAN_API_TOKENS='{"<sha256>": "j.doe=agency:DSNY"}'; `mediasan api-token` makes entries
    api_tokens: dict[str, str] = Field(default_factory=dict)

    # operations (worker/metrics.py, worker/logs.py): Prometheus metrics of `mediasan worker` on this
    # port when set (all pool processes aggregated), and the log line format of every command
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_format: Literal["text", "json"] = "text"

    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    def resolved_work_dir(self) -> Path:
        return (self.work_dir.expanduser() if self.work_dir else self.resolved_data_dir() / "work").resolve()

    def resolved_sweep_queue(self) -> str:
        return self.sweep_queue or f"{self.queue}.sweep"

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_data_dir() / 'mediasan.sqlite3'}"

    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    def limits(self) -> Limits:
        return Limits(max_bytes=self.max_bytes, max_pixels=self.max_pixels, max_frames=self.max_frames,
                      max_duration_s=self.max_duration_s, max_streams=self.max_streams,
                      timeout_s=self.tool_timeout_s, memory_bytes=self.tool_memory_bytes,
                      file_timeout_s=self.file_timeout_s)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
