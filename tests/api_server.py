"""Runs the API in its own process for tests that need a real server (memory, raw paths, schemathesis).

`python -m tests.api_server CONFIG.json`; CONFIG holds data_dir, storage_url and port.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import uvicorn

from tests.media_world import ApiSettings, token_table
from worker.api import create_app


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    settings = ApiSettings(data_dir=Path(config["data_dir"]), storage_url=config.get("storage_url"),
                           api_tokens=token_table())
    uvicorn.run(create_app(settings), host="127.0.0.1", port=int(config["port"]), log_level="warning")


if __name__ == "__main__":
    main()
